"""ρSwAV at demo scale: experiments/demo.py's run (same tiny R3D-18, data, 40 epochs, seed,
determinism) with the study's SwAV: LARS, the MLP head with BN, prototypes and Sinkhorn codes.

  python -m cvrl_tf.train --experiment=demo_rho_swav --workdir=demo_out/rho_swav
  python -m cvrl_tf.train --experiment=demo_rho_swav --workdir=demo_out/rho_swav_rho4 \
      --config=data.num_clips=4

The numbers:
- LARS at demo.py's 0.85 for batch 32 (the study gives SwAV the same 4.8 @ 512 as SimCLR), written
  at reference batch 32, so --config=optimizer.base_learning_rate=X sets the rate itself; weight
  decay 1e-6; τ = 0.1.
- 16 prototypes instead of 1000: Sinkhorn spreads each step's 32 clips of a view evenly over the
  prototypes, so with more prototypes than clips most get no sample and the codes are mostly
  noise; 16 gives each about 2 clips a step (the demo has 8 classes). ε = 0.05 and 3 iterations
  as the study.
- Prototypes frozen for the first epoch (8 steps) as the study.
- The temporal sampling, augmentation and backbone stay demo.py's, so that the four demo
  objectives differ only in the objective.
"""

import dataclasses
import math

from cvrl_tf import config as cfg

import demo


def get_config() -> cfg.ExperimentConfig:
  config = demo.get_config()
  batch_size = config.train.global_batch_size                     # 32
  return dataclasses.replace(
      config,
      objective=cfg.ObjectiveConfig(name="swav", num_prototypes=16, sinkhorn_epsilon=0.05,
                                    sinkhorn_iterations=3, freeze_prototypes_epochs=1.0),
      optimizer=dataclasses.replace(
          config.optimizer, name="lars", reference_batch_size=batch_size,
          base_learning_rate=2 * 0.075 * math.sqrt(batch_size),   # 0.85, demo.py's
          weight_decay=1e-6))
