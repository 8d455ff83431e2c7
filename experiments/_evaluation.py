"""Shared builders of the evaluation experiments (not an experiment itself: the name starts with _).

`linear_eval` is SPEC.md §2's protocol; `finetune` is the library's documented fine-tuning
default (the paper gives no full recipe): SGD momentum 0.9, dropout 0.5 on the un-normalised
pooled feature, L2 weight decay 1e-4 in the loss, warm-up + cosine, everything trained with
synchronized BN; the same 30-view test.
"""

from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline


def linear_eval(train_pattern: str, val_pattern: str, num_train_videos: int,
                num_classes: int) -> cfg.ClassificationExperimentConfig:
  """Frozen R3D-50 (BN statistics too) -> L2-normalise -> Dense; SGD, LR 32 @ 1024, 100 epochs."""
  batch_size = 1024
  return cfg.ClassificationExperimentConfig(
      task="linear_eval",
      train_data=input_pipeline.ClassificationTrainDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern=train_pattern, shuffle_buffer_size=1024),
          num_frames=32, stride=2, crop_size=224, area_range=(0.3, 1.0),
          aspect_ratio_range=(0.5, 2.0), flip_probability=0.5),
      eval_data=input_pipeline.EvalDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern=val_pattern, per_replica_batch_size=1),
          num_frames=32, stride=2, num_clips=10, num_crops=3, short_side=256, crop_size=256),
      model=cfg.ModelConfig(depth=50, width_multiplier=1.0, sync_batch_norm=False),
      classifier=cfg.ClassifierConfig(normalize=True, dropout_rate=0.0),
      optimizer=cfg.OptimizerConfig(
          name="sgd", base_learning_rate=32.0, reference_batch_size=1024, momentum=0.9,
          weight_decay=0.0, warmup_epochs=5),
      train=cfg.TrainConfig(
          global_batch_size=batch_size, epochs=100, num_train_examples=num_train_videos,
          steps_per_loop=50, log_every_steps=100, checkpoint_every_steps=1000),
      evaluation=cfg.EvaluationConfig(num_classes=num_classes))


def finetune(train_pattern: str, val_pattern: str, num_train_videos: int, num_classes: int,
             batch_size: int = 64, learning_rate: float = 0.05, epochs: float = 50,
             warmup_epochs: float = 2) -> cfg.ClassificationExperimentConfig:
  """Everything trains from the pretrained backbone; `learning_rate` at `batch_size`."""
  config = linear_eval(train_pattern, val_pattern, num_train_videos, num_classes)
  return cfg.ClassificationExperimentConfig(
      task="finetune",
      train_data=config.train_data,
      eval_data=config.eval_data,
      model=cfg.ModelConfig(depth=50, width_multiplier=1.0, sync_batch_norm=True),
      classifier=cfg.ClassifierConfig(normalize=False, dropout_rate=0.5),
      optimizer=cfg.OptimizerConfig(
          name="sgd", base_learning_rate=learning_rate, reference_batch_size=batch_size,
          momentum=0.9, weight_decay=1e-4, warmup_epochs=warmup_epochs),
      train=cfg.TrainConfig(
          global_batch_size=batch_size, epochs=epochs, num_train_examples=num_train_videos,
          steps_per_loop=10, log_every_steps=50, checkpoint_every_steps=500),
      evaluation=cfg.EvaluationConfig(num_classes=num_classes))


def knn(bank_pattern: str, val_pattern: str, num_classes: int) -> cfg.KnnExperimentConfig:
  """kNN (k = 200, τ = 0.07) on R3D-50 pooled features of one centre clip per video."""
  view = dict(num_frames=16, stride=2, num_clips=1, num_crops=1, short_side=224, crop_size=224)
  return cfg.KnnExperimentConfig(
      bank_data=input_pipeline.EvalDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern=bank_pattern, per_replica_batch_size=16),
          **view),
      eval_data=input_pipeline.EvalDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern=val_pattern, per_replica_batch_size=16),
          **view),
      model=cfg.ModelConfig(depth=50, width_multiplier=1.0, sync_batch_norm=False),
      evaluation=cfg.EvaluationConfig(num_classes=num_classes, knn_k=200, knn_temperature=0.07))
