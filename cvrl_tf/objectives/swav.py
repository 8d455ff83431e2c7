"""ρSwAV: each clip predicts the Sinkhorn codes of the video's other clips over learned prototypes.

The online projections, L2-normalised, are scored against K prototypes (unit vectors, a bias-free
Dense layer): S = z·c. The codes of clip i are the Sinkhorn equipartition of its scores over the
global batch (losses.sinkhorn); every other clip j predicts them through softmax(S_j / τ)
(losses.swav_loss). The prototypes are renormalised after every step and get no gradient for
the first objective.freeze_prototypes_epochs (SwAV's freeze_prototypes_niters): early codes are
arbitrary, and moving the prototypes towards them destabilises training.

Weight decay (LARS, or the SGD recipe's L2) treats the prototypes as a kernel; while they are
frozen it only rescales them, which the renormalisation undoes.
"""

import keras
import tensorflow as tf

from cvrl_tf import losses
from cvrl_tf import runtime
from cvrl_tf import schedules
from cvrl_tf.objectives import base


def normalize_prototypes(kernel: tf.Tensor) -> tf.Tensor:
  """[D, K] -> each column (prototype) scaled to unit length."""
  return tf.math.l2_normalize(kernel, axis=0)


class SwAV(base.Objective):
  """losses.swav_loss of the online projections' prototype scores."""

  summary_names = ("loss/swav", base.SPREAD)

  def build(self) -> dict:
    objective = self.config.objective
    self.prototypes = keras.layers.Dense(objective.num_prototypes, use_bias=False,
                                         name="prototypes", dtype="float32")
    self.prototypes.build((None, self.config.model.head_output_size))
    self.freeze_steps = schedules.epochs_to_steps(objective.freeze_prototypes_epochs,
                                                  self.config.steps_per_epoch)
    return {"prototypes": self.prototypes}

  def initialize(self) -> None:
    kernel = self.prototypes.kernel
    kernel.assign(normalize_prototypes(kernel))

  @property
  def trained_layers(self):
    return (self.prototypes,)

  def loss_on(self, projections, targets, step) -> base.StepOutputs:
    del targets, step
    objective = self.config.objective
    projections = tf.math.l2_normalize(projections, axis=-1)                   # [ρ, B, D]
    flat = tf.reshape(projections, [-1, projections.shape[-1]])
    scores = base.by_clip(self.prototypes(flat), self.num_clips)               # [ρ, B, K]
    loss = losses.swav_loss(scores, self.config.train.temperature, objective.sinkhorn_epsilon,
                            objective.sinkhorn_iterations)
    return base.StepOutputs(loss, (base.spread(projections),))

  def gradients(self, gradients, variables, step):
    frozen = {id(v) for v in self.prototypes.trainable_variables}
    trains = step >= self.freeze_steps
    return [tf.where(trains, g, tf.zeros_like(g)) if id(v) in frozen else g
            for g, v in zip(gradients, variables)]

  def after_update(self, state, step) -> None:
    del state, step
    runtime.assign_each([self.prototypes.kernel], lambda i, kernel: normalize_prototypes(kernel))
