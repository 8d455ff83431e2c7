"""CVRL pretraining on Kinetics-400, 800 epochs (paper: 66.1% K400 linear-eval top-1).

  python -m cvrl_tf.train --experiment=cvrl_k400 --workdir=/ckpt/cvrl_k400 \
      --config=data.reader.file_pattern='/data/kinetics400_tfrecords/train-*'
"""

import dataclasses

import cvrl_k600
from _kinetics import K400_TRAIN_PATTERN, K400_TRAIN_VIDEOS


def get_config():
  config = cvrl_k600.get_config()
  reader = dataclasses.replace(config.data.reader, file_pattern=K400_TRAIN_PATTERN)
  return dataclasses.replace(
      config,
      data=dataclasses.replace(config.data, reader=reader),
      train=dataclasses.replace(config.train, num_train_examples=K400_TRAIN_VIDEOS))
