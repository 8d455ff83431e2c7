"""ρSimCLR pretraining (ρ = 2) of Slow-R50 on Kinetics-400, the ρ-SSL study's recipe: 8 × 8 clips
at 224, 200 epochs, batch 512 videos, LARS with learning rate 4.8 @ 512 and weight decay 1e-6,
τ = 0.1, a 3-layer MLP head with BN (2048, 2048 → 128), NT-Xent over the global batch. At ρ = 2
it is CVRL's loss; the differences from cvrl_k400 are the backbone, clips, sampling, augmentation
and schedule.

K400 linear top-1 (60-epoch linear protocol, 30 views; experiments/rho_k400_linear_eval.py): the
paper 60.5 (default augmentation), the released model 61.5.

  python -m cvrl_tf.train --experiment=rho_simclr_k400 --workdir=/ckpt/rho_simclr_k400 \
      --config=data.reader.file_pattern='/data/kinetics400_tfrecords/train-*'
  python -m cvrl_tf.train --experiment=rho_k400_linear_eval --workdir=/ckpt/rho_simclr_k400_linear \
      --init_checkpoint=/ckpt/rho_simclr_k400/checkpoints

The records must be built with --fps=30 (see _rho_ssl.py).

Departures specific to this method:
- A BN in each hidden layer of the 3-layer MLP as the paper; the shipped config has none
  (BN_MLP unset).
- Learning rate 4.8 @ 512, the paper's: the config's last duplicate BASE_LR gives 9.6.
- Negatives: the other videos' clips of the same two views, from the global batch (the code
  all-gathers them too).

Departures shared by the four methods: _rho_ssl.py.
"""

import _rho_ssl


def get_config():
  return _rho_ssl.study_config("simclr", num_clips=2)
