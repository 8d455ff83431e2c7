"""ρMoCo at demo scale: experiments/demo.py's run (same tiny R3D-18, data, 40 epochs, seed,
determinism) with the study's MoCo: SGD without LARS, an MLP head without BN, a momentum encoder
and a queue of keys.

  python -m cvrl_tf.train --experiment=demo_rho_moco --workdir=demo_out/rho_moco
  python -m cvrl_tf.train --experiment=demo_rho_moco --workdir=demo_out/rho_moco_rho4 \
      --config=data.num_clips=4 --config=optimizer.base_learning_rate=0.4 \
      --config=optimizer.weight_decay=2.5e-5

The numbers, and why they differ from rho_moco_k400's:
- Learning rate 0.2 at batch 32 (reference_batch_size is the demo's batch, so the value is the
  rate itself): the study's 0.8 @ 512 (its 0.4 for a loss summed over ρ = 2 clips, _rho_ssl.py)
  scaled by the square root of the batch, 0.8 × √(32/512); linear scaling would give 0.05, too
  little for 320 steps (demo.py found the same for LARS). At ρ = 4 the study's convention doubles
  it and halves the weight decay (the second command). Tune with
  --config=optimizer.base_learning_rate=X.
- Weight decay 1e-4 / 2 as the study at ρ = 2 (kernels only, an L2 term in the loss).
- m0 = 0.99 instead of 0.994: an EMA with momentum m follows the online network with a lag of
  about 1 / (1 − m) steps, 167 at 0.994, half of the demo's 320 steps (and the cosine raises m
  towards 1 as it goes), so the keys would come from a network close to its random
  initialisation for most of the run; 0.99 gives 100. The study's m0 suits its 84,000 steps.
- Queue 256 keys (>= ρ × batch = 128 at ρ = 4), not 65,536: the demo has 256 videos, and a queue
  holding a video's earlier keys gives its queries false negatives; 256 keys are 4 steps at ρ = 2
  (half an epoch), 2 at ρ = 4.
- The temporal sampling, augmentation and τ = 0.1 stay demo.py's, so that the four demo
  objectives differ only in the objective.
"""

import dataclasses

from cvrl_tf import config as cfg

import demo


def get_config() -> cfg.ExperimentConfig:
  config = demo.get_config()
  batch_size = config.train.global_batch_size                     # 32
  return dataclasses.replace(
      config,
      model=dataclasses.replace(config.model, head_batch_norm=False),
      objective=cfg.ObjectiveConfig(name="moco", momentum=0.99, queue_size=256),
      optimizer=dataclasses.replace(
          config.optimizer, name="sgd", reference_batch_size=batch_size,
          base_learning_rate=0.8 * (batch_size / 512) ** 0.5,     # 0.2
          weight_decay=1e-4 / 2))
