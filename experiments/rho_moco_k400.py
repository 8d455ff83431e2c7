"""ρMoCo pretraining (ρ = 2) of Slow-R50 on Kinetics-400, the ρ-SSL study's recipe: 8 × 8 clips at
224, 200 epochs, batch 512 videos, SGD momentum 0.9 (no LARS) with the paper's learning rate 0.4
and weight decay 1e-4 at batch 512 (entered as 0.4 × 2 and 1e-4 / 2: see below), τ = 0.1, a
3-layer MLP head without BN (2048, 2048 → 128), momentum encoder m0 = 0.994 annealed to 1, a
queue of 65,536 keys.

K400 linear top-1 (60-epoch linear protocol, 30 views; experiments/rho_k400_linear_eval.py): the
paper 65.8 (default augmentation; this recipe's "aug+" adds about 1), the released model 66.6.

  python -m cvrl_tf.train --experiment=rho_moco_k400 --workdir=/ckpt/rho_moco_k400 \
      --config=data.reader.file_pattern='/data/kinetics400_tfrecords/train-*'
  python -m cvrl_tf.train --experiment=rho_k400_linear_eval --workdir=/ckpt/rho_moco_k400_linear \
      --init_checkpoint=/ckpt/rho_moco_k400/checkpoints

The records must be built with --fps=30 (see _rho_ssl.py).

Departures specific to this method:
- Learning rate 0.4·ρ @ 512 and weight decay 1e-4/ρ: the paper's η = 0.4 and 1e-4 on the code's
  summed loss, exactly, for our averaged one (_rho_ssl.py). The config's last duplicate BASE_LR
  would give 0.8 on the summed loss (0.8·ρ here).
- Weight decay on kernels only, as an L2 term in the loss: the code's SGD decays biases too (not
  BN).
- Queue: all ρ key sets of every replica enter it after each step (ρ × 512 keys, MoCo's design);
  the code enqueues each GPU's own keys, and DDP's buffer broadcast leaves rank 0's (8ρ keys per
  iteration; inferred from the code, not run). It starts as random unit vectors and training
  starts at step 0; the code holds the optimizer for the first 65,536 / 512 = 128 iterations
  while its queue fills.
- SyncBN instead of shuffle-BN: each key's BN statistics come from the whole global batch, so no
  replica can recognise its positives by them (the reason for shuffle-BN).
- Momentum encoder: an EMA of every variable, BN moving statistics included (the code averages
  the parameters only; its key encoder runs in training mode, as ours does, so neither uses
  them), updated after the optimizer step (the code: before the next forward, the same sequence);
  m annealed by cosine from m0 to 1 over the schedule's steps, as the code.

Departures shared by the four methods: _rho_ssl.py.
"""

import _rho_ssl


def get_config():
  return _rho_ssl.study_config("moco", num_clips=2)
