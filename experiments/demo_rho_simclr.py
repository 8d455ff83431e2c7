"""ρSimCLR at demo scale: experiments/demo.py's run (same tiny R3D-18, data, 40 epochs, seed,
determinism) with the objective named. At ρ = 2 with CVRL's Δ sampling ρSimCLR is CVRL's loss,
so this is demo.py itself; it exists so that the four objectives are benchmarked side by side.

  python -m cvrl_tf.train --experiment=demo_rho_simclr --workdir=demo_out/rho_simclr
  python -m cvrl_tf.train --experiment=demo_rho_simclr --workdir=demo_out/rho_simclr_rho4 \
      --config=data.num_clips=4

LARS at demo.py's 2 × 0.075 × √32 = 0.85 for batch 32 (written at reference batch 32 here, so
--config=optimizer.base_learning_rate=X sets the rate itself), τ = 0.1, its MLP head with BN.
The temporal sampling stays CVRL's: the objectives differ in nothing else.
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
      objective=cfg.ObjectiveConfig(name="simclr"),
      optimizer=dataclasses.replace(
          config.optimizer, name="lars", reference_batch_size=batch_size,
          base_learning_rate=2 * 0.075 * math.sqrt(batch_size)))   # 0.85, demo.py's
