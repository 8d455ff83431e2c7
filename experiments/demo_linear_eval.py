"""Linear evaluation of the demo pretraining (experiments/demo.py) on the demo videos' held-out split.

  python -m cvrl_tf.train --experiment=demo_linear_eval --workdir=demo_out/linear_eval \
      --init_checkpoint=demo_out/pretrain/checkpoints

The protocol of cvrl_k600_linear_eval at demo scale, with one addition (see the comments): frozen
backbone and BN statistics, L2-normalised pooled feature -> BN without scale / offset -> Dense,
SGD momentum 0.9 with warm-up + cosine and no weight decay, random resized crop (no flip: the
demo's classes come in mirror pairs) for training; the test averages the softmax over 4 clips ×
3 crops. A randomly initialised backbone (the baseline `make demo` compares with) needs
--config=evaluation.allow_random_backbone=true.
"""

import os

from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline

import demo


def get_config() -> cfg.ClassificationExperimentConfig:
  pretraining = demo.get_config()
  batch_size = 32
  clip = dict(num_frames=pretraining.data.num_frames, stride=pretraining.data.stride)
  return cfg.ClassificationExperimentConfig(
      task="linear_eval",
      train_data=input_pipeline.ClassificationTrainDataConfig(
          reader=input_pipeline.ReaderConfig(
              file_pattern=os.path.join(demo.DEMO_TFRECORDS, "train-*-of-*.tfrecord"),
              shuffle_buffer_size=256, cycle_length=4),
          crop_size=pretraining.data.crop_size, area_range=(0.3, 1.0),
          # No flip: it would turn "moving left" into "moving right" under the same label.
          aspect_ratio_range=(0.5, 2.0), flip_probability=0.0, **clip),
      eval_data=input_pipeline.EvalDataConfig(
          reader=input_pipeline.ReaderConfig(
              file_pattern=os.path.join(demo.DEMO_TFRECORDS, "val-*-of-*.tfrecord"),
              per_replica_batch_size=8),
          num_clips=4, num_crops=3, short_side=pretraining.data.crop_size,
          crop_size=pretraining.data.crop_size, **clip),
      model=pretraining.model,
      # + a BN without scale / offset after the L2 normalisation (MAE's linear probe): the
      # pooled features of a small backbone share one dominant direction, so after L2
      # normalisation their differences are tiny and a plain probe needed LR 10 at batch 32
      # and trained unstably, the random backbone's at chance. Standardised, both train at an
      # ordinary rate.
      classifier=cfg.ClassifierConfig(normalize=True, batch_norm=True, dropout_rate=0.0),
      optimizer=cfg.OptimizerConfig(
          # 1/10 of the paper's 32 @ 1024 (0.1 at batch 32): a standardised feature has unit
          # scale per dimension, an L2-normalised one about 1/√D; at 32 @ 1024 the loss ended
          # above chance level (overshooting).
          name="sgd", base_learning_rate=3.2, reference_batch_size=1024, momentum=0.9,
          weight_decay=0.0, warmup_epochs=2),
      train=cfg.TrainConfig(
          # 75 epochs = 600 steps (~40 s).
          global_batch_size=batch_size, epochs=75, num_train_examples=demo.DEMO_TRAIN_VIDEOS,
          steps_per_loop=8, log_every_steps=16, checkpoint_every_steps=80, keep_checkpoints=2,
          seed=0, deterministic=True),           # as the pretraining: a reproducible comparison
      evaluation=cfg.EvaluationConfig(num_classes=8, eval_every_steps=0))
