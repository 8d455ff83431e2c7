"""CVRL pretraining on Kinetics-400, 200 epochs (paper: 63.8% K400 linear-eval top-1).

  python -m cvrl_tf.train --experiment=cvrl_k400_200ep --workdir=/ckpt/cvrl_k400_200ep
"""

import dataclasses

import cvrl_k400


def get_config():
  config = cvrl_k400.get_config()
  return dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=200))
