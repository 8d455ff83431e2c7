"""The embedded default: CVRL pretraining on the generated demo videos, on a CPU, in minutes.

  make demo        # builds demo_out/tfrecords, then runs this
  python -m cvrl_tf.train --experiment=demo --workdir=demo_out/pretrain

Same recipe as cvrl_k600 (NT-Xent at τ = 0.1, the Δ sampling, the full augmentation, LARS with
warm-up + cosine), scaled down: an R3D-18 of 1/4 width on 8 × 4 frames at 32×32, batch 32. Two
departures, each for a property of the demo data: no horizontal flip, and twice the square-root
learning rate (see the comments).
"""

import math
import os

from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline
from cvrl_tf import video_ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_TFRECORDS = os.path.join(REPO, "demo_out", "tfrecords")
DEMO_TRAIN_VIDEOS = 256          # 8 classes × 32 (dataset_tools/make_demo_videos.py)


def get_config() -> cfg.ExperimentConfig:
  batch_size = 32
  return cfg.ExperimentConfig(
      data=input_pipeline.PretrainDataConfig(
          reader=input_pipeline.ReaderConfig(
              file_pattern=os.path.join(DEMO_TFRECORDS, "train-*-of-*.tfrecord"),
              shuffle_buffer_size=256, cycle_length=4),
          # Stride 4: a clip spans 29 of the 60 stored frames, so a sprite moves several pixels of
          # the 32² crop within it (at stride 2 its motion was about one pixel after the stem).
          num_frames=8, stride=4, crop_size=32, delta_exponent=1.0,
          # No flip: the demo's classes come in mirror pairs (left / right, clockwise /
          # counter-clockwise), so a flipped view is another class. Everything else is the recipe.
          augmentation=video_ops.AugmentationConfig(flip_probability=0.0)),
      model=cfg.ModelConfig(depth=18, stem_filters=16, stage_filters=(16, 32, 64, 128),
                            sync_batch_norm=True, head_hidden_sizes=(256, 256),
                            head_output_size=64),
      optimizer=cfg.OptimizerConfig(
          name="lars",
          # Twice SimCLR's square-root rule for small batches, 2 × 0.075 × √batch = 0.85: the
          # rule is tuned for hundreds of epochs, and 320 steps at 0.42 barely left chance (linear
          # scaling from 0.32 @ 1024 would give 0.01).
          base_learning_rate=2 * 0.075 * math.sqrt(batch_size) * 1024 / batch_size,
          reference_batch_size=1024,
          momentum=0.9, trust_coefficient=0.001, weight_decay=1e-6,
          schedule="warmup_cosine", warmup_epochs=5),   # 5 epochs linear, then cosine to 0
      train=cfg.TrainConfig(
          global_batch_size=batch_size, epochs=40, num_train_examples=DEMO_TRAIN_VIDEOS,
          temperature=0.1, steps_per_loop=8, log_every_steps=16, checkpoint_every_steps=80,
          keep_checkpoints=3,
          # `make demo` claims pretraining beats random initialisation: the claim must come out
          # the same on every run (data order and op results fixed by the seed).
          seed=0, deterministic=True))
