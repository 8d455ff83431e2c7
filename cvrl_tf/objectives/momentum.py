"""The momentum encoder of ρMoCo and ρBYOL: an exponential moving average of the online network.

  momentum_at(step, total_steps, base)   m_k = 1 − (1 − m0)·(cos(π·k/K) + 1)/2: m0 at the first
                                         step, 1 at the end of the schedule (BYOL's annealing,
                                         which the study uses for both)
  MomentumEncoder                        backbone + projection head whose every variable follows
                                         θ' ← m·θ' + (1 − m)·θ after each optimizer step

The EMA covers the BN moving statistics too, not only the weights. The target network
normalises with batch statistics in training mode, as MoCo's key encoder and BYOL's target do
(SyncBN over the global batch, which replaces MoCo's shuffle-BN: each key's statistics come from
all the replicas' clips, so no replica can identify its positives by them). Its BNs are built with
momentum 1, so that forward pass leaves the moving statistics alone; they are the EMA of the
online network's instead, and the momentum network is a usable model of its own (evaluate or
export it as it is).
"""

import dataclasses
import itertools
import math

import tensorflow as tf

from cvrl_tf import config as cfg
from cvrl_tf import networks
from cvrl_tf import runtime
from cvrl_tf.objectives import base


def momentum_at(step, total_steps: int, base_momentum: float) -> tf.Tensor:
  """m_k of the cosine schedule from `base_momentum` (k = 0) to 1 (k = K = total_steps).

  Args:
    step: int scalar k >= 0, the steps taken before this update (clipped to K).
    total_steps: K >= 1, the schedule's steps (train.epochs, not train.max_steps).
    base_momentum: m0 in [0, 1).

  Returns:
    float32 scalar in [m0, 1].
  """
  progress = tf.minimum(tf.cast(step, tf.float64) / float(max(total_steps, 1)), 1.0)
  momentum = 1.0 - (1.0 - base_momentum) * (tf.cos(math.pi * progress) + 1.0) / 2.0
  return tf.cast(momentum, tf.float32)


def target_config(model: cfg.ModelConfig) -> cfg.ModelConfig:
  """The online network's config with BNs that never update their moving statistics."""
  return dataclasses.replace(model, bn_momentum=1.0, head_bn_momentum=1.0)


class MomentumEncoder:
  """An EMA copy of the online backbone + projection head (MoCo's key encoder, BYOL's target).

  Args:
    online: the online network, built.
    config: the experiment (model, data clip shape, train.epochs for the schedule).
    base_momentum: m0.

  Call `initialize` on a new run (copies the online network), `__call__` for the targets,
  `update(step)` after each optimizer step.
  """

  def __init__(self, online: networks.Model, config: cfg.ExperimentConfig, base_momentum: float):
    self.online = online
    self.base_momentum = float(base_momentum)
    self.total_steps = config.total_steps
    data = config.data
    self.model = networks.build_model(target_config(config.model), data.num_frames,
                                      data.crop_size)
    # Left trainable (no optimizer sees it): a Keras BN that is not trainable would normalise
    # with its moving statistics even in training mode.

  def pairs(self) -> list:
    """[(target variable, online variable)]: every variable, BN moving statistics included."""
    targets = self.model.backbone.weights + self.model.head.weights
    sources = self.online.backbone.weights + self.online.head.weights
    for target, source in itertools.zip_longest(targets, sources):
      # Paths below the model's own (uniquified) name, e.g. "res2_block1/norm1/gamma".
      if (target is None or source is None or target.shape != source.shape
          or target.path.split("/", 1)[-1] != source.path.split("/", 1)[-1]):
        raise ValueError(
            f"the momentum network does not mirror the online network variable by variable: "
            f"{target and target.path} against {source and source.path}")
    return list(zip(targets, sources))

  def checkpoint_objects(self) -> dict:
    return {"momentum_backbone": self.model.backbone, "momentum_head": self.model.head}

  def initialize(self) -> None:
    """θ' ← θ (eagerly, outside any replica function)."""
    for target, source in self.pairs():
      target.assign(source.value)

  def __call__(self, clips: tf.Tensor, num_clips: int) -> tf.Tensor:
    """The targets of [ρ·B, T, S, S, 3] clips: [ρ, B, D] float32, without gradient."""
    pooled = self.model.backbone(clips, training=True)["pooled"]
    projections = self.model.head(pooled, training=True)
    return tf.stop_gradient(base.by_clip(projections, num_clips))

  def update(self, step: tf.Tensor) -> None:
    """θ' ← m·θ' + (1 − m)·θ with m = momentum_at(step); in the replica context."""
    momentum = momentum_at(step, self.total_steps, self.base_momentum)
    targets, sources = zip(*self.pairs())
    runtime.assign_each(
        targets, lambda i, target, sources, m: m * target + (1.0 - m) * sources[i],
        list(sources), momentum)
