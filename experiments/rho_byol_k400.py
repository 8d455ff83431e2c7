"""ρBYOL pretraining (ρ = 2) of Slow-R50 on Kinetics-400, the ρ-SSL study's recipe: 8 × 8 clips at
224, 200 epochs, batch 512 videos, LARS with learning rate 4.8 @ 512 and weight decay 1e-6, a
2-layer projection (4096 with BN → 256), a 2-layer predictor (4096 with BN → 256), momentum
encoder m0 = 0.996 annealed to 1. No negatives (train.temperature is unused).

K400 linear top-1 (60-epoch linear protocol, 30 views; experiments/rho_k400_linear_eval.py): the
released model 67.4 (the paper's ρ = 2 cell is in a table we could not read).

  python -m cvrl_tf.train --experiment=rho_byol_k400 --workdir=/ckpt/rho_byol_k400 \
      --config=data.reader.file_pattern='/data/kinetics400_tfrecords/train-*'
  python -m cvrl_tf.train --experiment=rho_k400_linear_eval --workdir=/ckpt/rho_byol_k400_linear \
      --init_checkpoint=/ckpt/rho_byol_k400/checkpoints

The records must be built with --fps=30 (see _rho_ssl.py).

Departures specific to this method:
- Loss 2 − 2·cos (the code: −2·cos; same gradient). The momentum network's predictor is unused,
  as in the code. Predictor and projection: Dense → SyncBN → ReLU → Dense as the code.
- Momentum encoder: an EMA of every variable, BN moving statistics included (the code averages
  the parameters only; its key encoder runs in training mode, as ours does, so neither uses
  them), updated after the optimizer step (the code: before the next forward, the same sequence);
  m annealed by cosine from m0 to 1 over the schedule's steps, as the code.

Departures shared by the four methods: _rho_ssl.py.
"""

import _rho_ssl


def get_config():
  return _rho_ssl.study_config("byol", num_clips=2)
