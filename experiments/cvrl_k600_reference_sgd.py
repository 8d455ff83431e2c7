"""CVRL on Kinetics-600 with the reference release's shipped optimizer: SGD momentum 0.9, no
Nesterov, L2 weight decay 1e-6 on kernels in the loss; 200 epochs as its YAML.

  python -m cvrl_tf.train --experiment=cvrl_k600_reference_sgd --workdir=/ckpt/cvrl_k600_sgd
"""

import dataclasses

import cvrl_k600_200ep


def get_config():
  config = cvrl_k600_200ep.get_config()
  return dataclasses.replace(
      config, optimizer=dataclasses.replace(config.optimizer, name="sgd"))
