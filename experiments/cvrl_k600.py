"""CVRL pretraining on Kinetics-600, 800 epochs: R3D-50 1×, the paper's recipe with LARS.

  python -m cvrl_tf.train --experiment=cvrl_k600 --workdir=/ckpt/cvrl_k600 \
      --config=data.reader.file_pattern='/data/kinetics600_tfrecords/train-*'

The paper's 70.4% K600 linear-eval top-1 (68.5% on K400) comes from this recipe on 32+ TPU
cores; on fewer devices keep the global batch if memory allows (the learning rate scales with it).
The host ships uint8 crops and the colour augmentations run in the training step
(data.augment_in_step); for a CPU-only run add --config=data.augment_in_step=false.
"""


from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline

from _kinetics import K600_TRAIN_PATTERN, K600_TRAIN_VIDEOS


def get_config() -> cfg.ExperimentConfig:
  batch_size = 1024
  return cfg.ExperimentConfig(
      data=input_pipeline.PretrainDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern=K600_TRAIN_PATTERN,
                                             shuffle_buffer_size=1024),
          num_frames=16, stride=2, crop_size=224, delta_exponent=1.0,
          # For accelerators: the host decodes, crops and flips, and ships uint8 (4× fewer bytes
          # than float32 views); colour, grey, blur and solarize run in the replica step
          # (input_pipeline.augment_pretrain_batch). On a CPU-only run set it to false.
          augment_in_step=True),
      model=cfg.ModelConfig(depth=50, width_multiplier=1.0, sync_batch_norm=True,
                            head_hidden_sizes=(2048, 2048, 2048), head_output_size=128),
      optimizer=cfg.OptimizerConfig(
          name="lars",
          base_learning_rate=0.32,           # lr = 0.32 × batch_size / 1024
          reference_batch_size=1024,
          momentum=0.9, trust_coefficient=0.001, weight_decay=1e-6,
          schedule="warmup_cosine", warmup_epochs=5),   # 5 epochs linear, then cosine to 0
      train=cfg.TrainConfig(
          global_batch_size=batch_size,      # videos; 2 × batch_size clips
          epochs=800, num_train_examples=K600_TRAIN_VIDEOS,
          temperature=0.1, steps_per_loop=50, log_every_steps=100,
          checkpoint_every_steps=1000, mixed_precision="float32"))
