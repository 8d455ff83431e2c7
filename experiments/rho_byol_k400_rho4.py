"""ρBYOL pretraining with ρ = 4 clips per video, otherwise rho_byol_k400's recipe except the
learning rate: 9.6 @ 512, not the paper's 4.8. The shipped BYOL config carries the note
`BASE_LR: 1.2 # for rho=4 clips` (1.2 × 8 machines = 9.6): the setting its ρ = 4 models most
likely used. LARS makes the step independent of the gradient's scale, so our averaged loss needs
no further correction. For the paper's single η: --config=optimizer.base_learning_rate=4.8.

K400 linear top-1: the paper 68.9 (default augmentation; 70.0 with "aug+" and a 100-epoch linear
protocol), the released model 70.1 (71.1 at 16 × 4).

  python -m cvrl_tf.train --experiment=rho_byol_k400_rho4 \
      --workdir=/ckpt/rho_byol_k400_rho4 \
      --config=data.reader.file_pattern='/data/kinetics400_tfrecords/train-*'
  python -m cvrl_tf.train --experiment=rho_k400_linear_eval \
      --workdir=/ckpt/rho_byol_k400_rho4_linear \
      --init_checkpoint=/ckpt/rho_byol_k400_rho4/checkpoints

The records must be built with --fps=30 (see _rho_ssl.py).

Departures: rho_byol_k400's, which this recipe shares, and _rho_ssl.py's.
"""

import _rho_ssl


def get_config():
  return _rho_ssl.study_config("byol", num_clips=4)
