"""The pretraining objectives: CVRL's, and the ρ-SSL study's four (Feichtenhofer et al. 2021).

  simclr   ρSimCLR / CVRL   simclr.py    NT-Xent over every pair of a video's ρ clips
  moco     ρMoCo            moco.py      momentum-encoder keys, negatives from a queue
  byol     ρBYOL            byol.py      a predictor regresses the momentum encoder's targets
  swav     ρSwAV            swav.py      clips predict each other's Sinkhorn codes over prototypes

base.py says what an objective is to the training step; momentum.py is the EMA encoder of MoCo
and BYOL; the loss functions themselves are pure functions in cvrl_tf.losses.
"""

from cvrl_tf import config as cfg
from cvrl_tf import networks
from cvrl_tf.objectives import base
from cvrl_tf.objectives import byol
from cvrl_tf.objectives import moco
from cvrl_tf.objectives import simclr
from cvrl_tf.objectives import swav

SPREAD = base.SPREAD  # the embedding/spread tag every objective logs
OBJECTIVES = {"simclr": simclr.SimCLR, "moco": moco.MoCo, "byol": byol.BYOL, "swav": swav.SwAV}


def make_objective(config: cfg.ExperimentConfig, model: networks.Model) -> base.Objective:
  """The objective config.objective.name names, for the online network `model` (not built:
  call its `build` in the strategy scope)."""
  name = config.objective.name
  if name not in OBJECTIVES:
    raise cfg.ConfigError(f"objective.name={name!r} is not an objective cvrl_tf has; expected "
                          f"one of {', '.join(OBJECTIVES)}")
  return OBJECTIVES[name](config, model)
