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

Departures shared by the four methods (_rho_ssl.py explains the numbers):
- BN: synchronised over the whole global batch, and the ρ clip sets go through the network
  concatenated, so one BN sees all ρ × 512 clips; the code normalises each clip set on its own,
  over 8 clips per GPU (MoCo, with shuffle-BN in the key encoder) or 64 per machine (SyncBN).
- The ρ losses are averaged over ordered pairs, not summed over query clips as the code's
  SEQUENTIAL mode does (1/ρ of its gradient; see _rho_ssl.py for what that changes).
- Schedule: linear warm-up from 0 to the peak over 35 epochs, then a cosine over the remaining 165
  (the code warms up from 0.008 to the value of an unshifted 200-epoch cosine at epoch 35, 0.93 ×
  the peak; the paper mentions no warm-up). No Nesterov (the code's default is Nesterov SGD).
- LARS (where used): trust ratio 0.001·‖w‖/‖g + wd·w‖ (SimCLR's); the code's is
  0.001·‖w‖/(‖g‖ + wd·‖w‖ + 1e-8). Both exclude BN and biases from adaptation and decay.
- Frames: exactly 8 stored frames apart on records built with --fps=30 (56 frames, 1.9 s); the
  code spreads 8 frames over a 64-frame window at 30 fps (9 apart). Clip order is not permuted
  (the code shuffles it; our losses are symmetric in the clips).
- Augmentation "aug+": crop first, then colour, grey and blur on the 224² clip (the code jitters
  and blurs the decoded frames before cropping, so its σ is in frame pixels, 0.9–1.7× ours after
  the resize); contrast about the per-channel clip mean (torchvision: one grey mean), saturation
  by HSV scaling (torchvision: a blend with grey); crop aspect uniform in [3/4, 4/3] (the code:
  log-uniform), whole frame after 100 failed draws (the code: a centre crop after 10).
- float32 throughout (the code trains MoCo in mixed precision); our K400 build's 215,570 videos
  (the paper's copy had about 240k).
"""

import _rho_ssl


def get_config():
  return _rho_ssl.study_config("moco", num_clips=2)
