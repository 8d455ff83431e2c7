"""ρMoCo pretraining with ρ = 4 clips per video, otherwise rho_moco_k400's recipe: learning rate
0.4 × 4 = 1.6 @ 512 and weight decay 1e-4 / 4 (the paper's 0.4 and 1e-4 on the code's loss summed
over 4 query clips, for our averaged one), 4 × 512 = 2,048 keys into the queue per step.

K400 linear top-1: the paper 69.0 at ρ = 4 with "aug+" (its §A.2; ρ = 3: 67.3), the released
model 71.0.

  python -m cvrl_tf.train --experiment=rho_moco_k400_rho4 \
      --workdir=/ckpt/rho_moco_k400_rho4 \
      --config=data.reader.file_pattern='/data/kinetics400_tfrecords/train-*'
  python -m cvrl_tf.train --experiment=rho_k400_linear_eval \
      --workdir=/ckpt/rho_moco_k400_rho4_linear \
      --init_checkpoint=/ckpt/rho_moco_k400_rho4/checkpoints

The records must be built with --fps=30 (see _rho_ssl.py).

Departures: rho_moco_k400's, which this recipe shares, and _rho_ssl.py's.
"""

import _rho_ssl


def get_config():
  return _rho_ssl.study_config("moco", num_clips=4)
