"""kNN evaluation of the demo pretraining: the demo training videos are the memory bank, the
held-out videos the queries (k = 200 → all 256 training videos vote, weighted by
exp(cosine / 0.07)).

  python -m cvrl_tf.train --experiment=demo_knn --workdir=demo_out/knn \
      --init_checkpoint=demo_out/pretrain/checkpoints
"""

import os

from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline

import demo


def get_config() -> cfg.KnnExperimentConfig:
  pretraining = demo.get_config()
  view = dict(num_frames=pretraining.data.num_frames, stride=pretraining.data.stride,
              num_clips=4, num_crops=3, short_side=pretraining.data.crop_size,
              crop_size=pretraining.data.crop_size)
  return cfg.KnnExperimentConfig(
      bank_data=input_pipeline.EvalDataConfig(
          reader=input_pipeline.ReaderConfig(
              file_pattern=os.path.join(demo.DEMO_TFRECORDS, "train-*-of-*.tfrecord"),
              per_replica_batch_size=8), **view),
      eval_data=input_pipeline.EvalDataConfig(
          reader=input_pipeline.ReaderConfig(
              file_pattern=os.path.join(demo.DEMO_TFRECORDS, "val-*-of-*.tfrecord"),
              per_replica_batch_size=8), **view),
      model=pretraining.model,
      evaluation=cfg.EvaluationConfig(num_classes=8, knn_k=200, knn_temperature=0.07))
