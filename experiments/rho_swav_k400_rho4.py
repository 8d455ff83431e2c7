"""ρSwAV pretraining with ρ = 4 clips per video, otherwise rho_swav_k400's recipe (the paper gives
one learning rate, 4.8 @ 512, for every ρ).

K400 linear top-1: neither the paper's ρ = 4 figure (in a table we could not read) nor a
released ρ = 4 model is available; ρ = 2: the paper 61.6, the released model 62.6.

  python -m cvrl_tf.train --experiment=rho_swav_k400_rho4 \
      --workdir=/ckpt/rho_swav_k400_rho4 \
      --config=data.reader.file_pattern='/data/kinetics400_tfrecords/train-*'
  python -m cvrl_tf.train --experiment=rho_k400_linear_eval \
      --workdir=/ckpt/rho_swav_k400_rho4_linear \
      --init_checkpoint=/ckpt/rho_swav_k400_rho4/checkpoints

The records must be built with --fps=30 (see _rho_ssl.py).

Departures: rho_swav_k400's, which this recipe shares, and _rho_ssl.py's.
"""

import _rho_ssl


def get_config():
  return _rho_ssl.study_config("swav", num_clips=4)
