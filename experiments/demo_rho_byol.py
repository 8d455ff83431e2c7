"""ρBYOL at demo scale: experiments/demo.py's run (same tiny R3D-18, data, 40 epochs, seed,
determinism) with the study's BYOL: LARS, a 2-layer projection and a 2-layer predictor with BN,
a momentum encoder; no negatives (train.temperature is unused).

  python -m cvrl_tf.train --experiment=demo_rho_byol --workdir=demo_out/rho_byol
  python -m cvrl_tf.train --experiment=demo_rho_byol --workdir=demo_out/rho_byol_rho4 \
      --config=data.num_clips=4

The numbers:
- LARS at demo.py's 0.85 for batch 32 (the study gives BYOL the same 4.8 @ 512 as SimCLR), written
  at reference batch 32, so --config=optimizer.base_learning_rate=X sets the rate itself; weight
  decay 1e-6.
- Projection 64 → 256 (BN, ReLU) → 64 and predictor 64 → 256 (BN, ReLU) → 64: the study's 2-layer
  shapes at the demo head's width.
- m0 = 0.99 instead of 0.996: an EMA with momentum m lags the online network by about 1 / (1 − m)
  steps, 250 at 0.996, most of the demo's 320 steps (and the cosine raises m towards 1), so the
  targets would stay near the random initialisation; 0.99 gives 100.
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
      model=dataclasses.replace(config.model, head_hidden_sizes=(256,), head_batch_norm=True),
      objective=cfg.ObjectiveConfig(name="byol", momentum=0.99, predictor_hidden_sizes=(256,)),
      optimizer=dataclasses.replace(
          config.optimizer, name="lars", reference_batch_size=batch_size,
          base_learning_rate=2 * 0.075 * math.sqrt(batch_size),   # 0.85, demo.py's
          weight_decay=1e-6))
