"""CVRL pretraining on Kinetics-600, 200 epochs (the paper's shorter schedule).

  python -m cvrl_tf.train --experiment=cvrl_k600_200ep --workdir=/ckpt/cvrl_k600_200ep
"""

import dataclasses

import cvrl_k600


def get_config():
  config = cvrl_k600.get_config()
  return dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=200))
