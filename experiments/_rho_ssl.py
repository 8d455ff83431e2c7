"""The shared recipe of the ρ-SSL study (Feichtenhofer et al., CVPR 2021, "A Large-Scale Study on
Unsupervised Spatiotemporal Representation Learning"): not an experiment (the name starts with _).

`study_config(objective, num_clips)` is the pretraining of one of the study's four frameworks on
Kinetics-400; the rho_*_k400*.py experiments call it and say in their docstrings where it departs
from the paper (arXiv 2104.14558 §B.1) and from its public code (SlowFast,
configs/contrastive_ssl/*.yaml, "the code" below). What every method shares:

  backbone   Slow-R50: R3D-50 with a 1×7×7 stem without temporal stride, temporal kernels 1, 1, 3, 3
             in res2..res5 (SlowFast's "slow"); 8 frames at stride 8, crops of 224
  data       K400 train; ρ = data.num_clips clips per video, each start uniform over the whole
             video (the study's default "global" sampling: temporal_sampling "uniform",
             max_span_seconds None); clips may overlap
  augment    the shipped configs' "aug+" (the paper's Table 9 best), see AUG_PLUS
             (in the training step: data.augment_in_step, uint8 infeed; add
             --config=data.augment_in_step=false on a CPU-only host)
  schedule   200 epochs, global batch 512 videos (ρ × 512 clips), linear warm-up over 35 epochs
             (the code's; the paper mentions none), then cosine to 0
  optimizer  SGD momentum 0.9 (MoCo) or LARS (the others, trust 0.001, BN and biases excluded);
             learning rate = base_learning_rate × global batch / 512

Frames: the code takes 8 frames spread over 64 frames at 30 fps (2.1 s). Our records store frames
on a constant grid of `build_tfrecords.py --fps` frames a second (25 by default), so stride 8 means
8 × 8 only on records built with --fps=30 (Kinetics is mostly 30 fps: nothing is interpolated):

  python dataset_tools/build_tfrecords.py --csv=k400/train.csv --video_dir=k400/videos \
      --fps=30 --output_dir=/data/kinetics400_tfrecords

On the default 25-fps records a clip spans 2.6 s instead of 2.1 s, about 20% more (use stride
6 or 7 there to keep the span, at a lower frame rate); nothing checks the records' fps.

Summed versus averaged ρ losses, and why ρMoCo's learning rate is 0.4 × ρ here: for MoCo and BYOL
the code runs one backward pass per query clip (CONTRASTIVE.SEQUENTIAL) and adds up the gradients
of the ρ per-query losses, each a mean over the ρ − 1 keys; our losses average over all ρ(ρ − 1)
ordered pairs, so their gradient is 1/ρ of the code's. (SwAV averages as we do; SimCLR sums its
ρ − 1 consecutive pairs, one pair at ρ = 2.) LARS divides by the gradient's norm, so for BYOL the
two differ only in the relative weight of the 1e-6 weight decay (ρ× here): negligible, and the
paper's values are kept. Plain SGD (MoCo) is linear in the gradient: the code's update
lr·(ρ·g + wd·w) is exactly ours with lr' = ρ·lr and wd' = wd/ρ. So MoCo takes the paper's
η = 0.4 @ 512 as η' = 0.4·ρ and wd' = 1e-4/ρ: the paper's update, in our convention.

Departures shared by the four methods (each experiment lists its own):
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

import dataclasses

from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline
from cvrl_tf import video_ops

from _kinetics import K400_TRAIN_PATTERN, K400_TRAIN_VIDEOS

BATCH_SIZE = 512        # videos: 64 GPUs × 8 in the paper (each gives ρ clips)
REFERENCE_BATCH = 512   # the batch the paper's learning rates are given for
EPOCHS = 200
WARMUP_EPOCHS = 35      # SOLVER.WARMUP_EPOCHS of all four configs

# SlowFast's "slow" ResNet-50: no temporal stride anywhere, so the 8 input frames stay 8 down to
# res5; temporal convolutions (3×1×1) only in res4 and res5.
SLOW_R50 = dict(depth=50, width_multiplier=1.0, stem_temporal_kernel=1, stem_temporal_stride=1,
                temporal_kernels=(1, 1, 3, 3), sync_batch_norm=True)

# "aug+" as shipped in all four configs (SSL_MOCOV2_AUG, SSL_COLOR_JITTER, ...). The code applies
# torchvision's ColorJitter(brightness=0.6, contrast=0.6, saturation=0.6, hue=0.15) with p 0.8:
# factors U[max(0, 1 − 0.6), 1 + 0.6] for brightness (multiplicative), contrast and saturation, a
# hue shift U[−0.15, 0.15] of the hue circle, four ops in random order. That is exactly what our
# brightness / contrast / saturation / hue mean (U(1 − b, 1 + b), hue in turns), so the numbers
# carry over unchanged. Then grayscale p 0.2 and a Gaussian blur σ ~ U[0.1, 2.0] with p 0.5 on
# EVERY clip (no BYOL-style asymmetry, no solarize); the crop is Inception-style, area
# U[0.2, 0.766] of the frame (the paper rounds it to 0.76), aspect [3/4, 4/3]; flip p 0.5.
AUG_PLUS = video_ops.AugmentationConfig(
    area_range=(0.2, 0.766), aspect_ratio_range=(3 / 4, 4 / 3), flip_probability=0.5,
    color_jitter_probability=0.8, brightness=0.6, contrast=0.6, saturation=0.6, hue=0.15,
    grayscale_probability=0.2,
    blur_probability_view_1=0.5, blur_probability_view_2=0.5, blur_sigma_range=(0.1, 2.0),
    solarize_probability_view_1=0.0, solarize_probability_view_2=0.0,
    temporally_consistent=True)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What differs between the four methods (learning rate at REFERENCE_BATCH videos)."""
  optimizer: str
  learning_rate: float
  weight_decay: float
  head_hidden_sizes: tuple
  head_output_size: int
  head_batch_norm: bool
  objective: cfg.ObjectiveConfig
  temperature: float = 0.1


def recipe(objective: str, num_clips: int) -> Recipe:
  """The paper's §B.1 recipe of `objective` at ρ = `num_clips`, in our conventions."""
  if objective == "simclr":
    # LARS 4.8 (the config's last duplicate BASE_LR, 1.2 × 8 = 9.6, is not the paper's); a
    # 3-layer MLP with BN as the paper (the code's config has no BN in it).
    return Recipe("lars", 4.8, 1e-6, (2048, 2048), 128, True, cfg.ObjectiveConfig(name="simclr"))
  if objective == "moco":
    # SGD, no LARS; η = 0.4 @ 512 (the config's last duplicate BASE_LR gives 0.8) in our averaged
    # convention (module docstring): ×ρ, and the weight decay /ρ. A 3-layer MLP without BN (BN in
    # MoCo's MLP costs it badly, the paper's Fig. 5); m0 0.994; 65,536 keys.
    return Recipe("sgd", 0.4 * num_clips, 1e-4 / num_clips, (2048, 2048), 128, False,
                  cfg.ObjectiveConfig(name="moco", momentum=0.994, queue_size=65536))
  if objective == "byol":
    # LARS 4.8 at ρ = 2. At ρ = 4, 9.6: the shipped config's own note `BASE_LR: 1.2 # for rho=4
    # clips` (× 8 machines), the setting its ρ = 4 models most likely used (the paper gives one
    # η for all ρ; ρ = 3 keeps 4.8). Projection and predictor: 2-layer MLPs, hidden 4096 with
    # BN, output 256; m0 0.996.
    return Recipe("lars", 9.6 if num_clips >= 4 else 4.8, 1e-6, (4096,), 256, True,
                  cfg.ObjectiveConfig(name="byol", momentum=0.996,
                                      predictor_hidden_sizes=(4096,)))
  if objective == "swav":
    # LARS 4.8; the 3-layer MLP with BN; 1000 prototypes (hard-coded in the code, not in the
    # paper), Sinkhorn ε 0.05 × 3 iterations, prototypes frozen in the first epoch.
    return Recipe("lars", 4.8, 1e-6, (2048, 2048), 128, True,
                  cfg.ObjectiveConfig(name="swav", num_prototypes=1000, sinkhorn_epsilon=0.05,
                                      sinkhorn_iterations=3, freeze_prototypes_epochs=1.0))
  raise ValueError(f"objective must be one of simclr, moco, byol, swav; got {objective!r}")


def study_config(objective: str, num_clips: int = 2) -> cfg.ExperimentConfig:
  """ρ-SSL pretraining of Slow-R50 on K400 with `objective` and ρ = `num_clips` clips per video.

  ρ sets MoCo's learning rate and weight decay and BYOL's learning rate: change it by choosing the
  _rho4 experiment, not with --config=data.num_clips (which would keep the ρ = 2 values).
  """
  method = recipe(objective, num_clips)
  return cfg.ExperimentConfig(
      data=input_pipeline.PretrainDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern=K400_TRAIN_PATTERN,
                                             shuffle_buffer_size=1024),
          num_frames=8, stride=8, crop_size=224,          # 8 × 8 on 30-fps records
          num_clips=num_clips, temporal_sampling="uniform", max_span_seconds=None,
          augmentation=AUG_PLUS,
          augment_in_step=True),                        # uint8 infeed, colour in the step
      model=cfg.ModelConfig(
          **SLOW_R50, head_hidden_sizes=method.head_hidden_sizes,
          head_output_size=method.head_output_size, head_batch_norm=method.head_batch_norm),
      objective=method.objective,
      optimizer=cfg.OptimizerConfig(
          name=method.optimizer,
          base_learning_rate=method.learning_rate,      # lr = this × batch / 512
          reference_batch_size=REFERENCE_BATCH,
          momentum=0.9, trust_coefficient=0.001, weight_decay=method.weight_decay,
          schedule="warmup_cosine", warmup_epochs=WARMUP_EPOCHS),
      train=cfg.TrainConfig(
          global_batch_size=BATCH_SIZE, epochs=EPOCHS, num_train_examples=K400_TRAIN_VIDEOS,
          temperature=method.temperature, steps_per_loop=50, log_every_steps=100,
          checkpoint_every_steps=1000, mixed_precision="float32"))
