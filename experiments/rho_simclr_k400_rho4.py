"""ρSimCLR pretraining with ρ = 4 clips per video, otherwise rho_simclr_k400's recipe (the paper
gives one learning rate, 4.8 @ 512, for every ρ; LARS makes it independent of how the ρ losses
are combined).

K400 linear top-1: neither the paper's ρ = 4 figure (in a table we could not read) nor a
released ρ = 4 model is available; ρ = 2: the paper 60.5, the released model 61.5.

  python -m cvrl_tf.train --experiment=rho_simclr_k400_rho4 \
      --workdir=/ckpt/rho_simclr_k400_rho4 \
      --config=data.reader.file_pattern='/data/kinetics400_tfrecords/train-*'
  python -m cvrl_tf.train --experiment=rho_k400_linear_eval \
      --workdir=/ckpt/rho_simclr_k400_rho4_linear \
      --init_checkpoint=/ckpt/rho_simclr_k400_rho4/checkpoints

The records must be built with --fps=30 (see _rho_ssl.py).

Departures: rho_simclr_k400's, which this recipe shares, and _rho_ssl.py's.
"""

import _rho_ssl


def get_config():
  return _rho_ssl.study_config("simclr", num_clips=4)
