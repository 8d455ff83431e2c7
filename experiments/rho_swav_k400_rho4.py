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

Departures specific to this method:
- Codes from every clip, each predicted by the other 3; the code computes codes for clips 0 and 1
  only (swav_crops_for_assign) and lets all other clips predict those.
- Sinkhorn over the global batch (the code's is global only on more than one machine, as in the
  paper's 8-machine runs); prototypes renormalised after each step (the code: at the start of
  each step) and frozen (no gradient) for the first epoch, as the code; no queue (the code's
  default SWAV_QEUE_LEN 0).
- 1000 prototypes: the code's hard-coded number (the paper gives none).

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
  return _rho_ssl.study_config("swav", num_clips=4)
