"""ρSwAV pretraining (ρ = 2) of Slow-R50 on Kinetics-400, the ρ-SSL study's recipe: 8 × 8 clips at
224, 200 epochs, batch 512 videos, LARS with learning rate 4.8 @ 512 and weight decay 1e-6,
τ = 0.1, a 3-layer MLP head with BN (2048, 2048 → 128), 1000 prototypes, Sinkhorn ε = 0.05 with
3 iterations, prototypes frozen for the first epoch.

K400 linear top-1 (60-epoch linear protocol, 30 views; experiments/rho_k400_linear_eval.py): the
paper 61.6 (default augmentation), the released model 62.6.

  python -m cvrl_tf.train --experiment=rho_swav_k400 --workdir=/ckpt/rho_swav_k400 \
      --config=data.reader.file_pattern='/data/kinetics400_tfrecords/train-*'
  python -m cvrl_tf.train --experiment=rho_k400_linear_eval --workdir=/ckpt/rho_swav_k400_linear \
      --init_checkpoint=/ckpt/rho_swav_k400/checkpoints

The records must be built with --fps=30 (see _rho_ssl.py).

Departures specific to this method:
- Sinkhorn over the global batch (the code's is global only on more than one machine, as in the
  paper's 8-machine runs); prototypes renormalised after each step (the code: at the start of
  each step) and frozen (no gradient) for the first epoch, as the code; no queue (the code's
  default SWAV_QEUE_LEN 0).
- 1000 prototypes: the code's hard-coded number (the paper gives none).

Departures shared by the four methods: _rho_ssl.py.
"""

import _rho_ssl


def get_config():
  return _rho_ssl.study_config("swav", num_clips=2)
