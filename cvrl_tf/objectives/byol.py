"""ρBYOL: a predictor on the online projection regresses the momentum encoder's projections.

Every ordered pair (i, j), i ≠ j, of a video's clips is a target: the online prediction of clip i
against the momentum network's projection of clip j (losses.byol_loss, 2 − 2·cos). No negatives;
the momentum encoder (momentum.py) and the predictor keep it from collapsing.
"""

import tensorflow as tf

from cvrl_tf import heads
from cvrl_tf import losses
from cvrl_tf.objectives import base
from cvrl_tf.objectives import momentum


class BYOL(base.Objective):
  """losses.byol_loss of predictor(online projection) against the momentum projections."""

  # byol/cosine: the mean cosine of the prediction-target pairs, 1 − loss / 2.
  summary_names = ("loss/byol", "byol/cosine", base.SPREAD)

  def build(self) -> dict:
    model, objective = self.config.model, self.config.objective
    self.encoder = momentum.MomentumEncoder(self.model, self.config, objective.momentum)
    # BYOL's predictor: the projection head's shape (Dense -> BN -> ReLU)×n -> Dense, on [B, D].
    self.predictor = heads.ProjectionHead(
        hidden_sizes=objective.predictor_hidden_sizes, output_size=model.head_output_size,
        bn_momentum=model.head_bn_momentum, bn_epsilon=model.bn_epsilon,
        sync_batch_norm=model.sync_batch_norm, name="predictor")
    self.predictor.build((None, model.head_output_size))
    return dict(self.encoder.checkpoint_objects(), predictor=self.predictor)

  def initialize(self) -> None:
    self.encoder.initialize()

  @property
  def trained_layers(self):
    return (self.predictor,)

  def targets(self, clips) -> tuple:
    return (self.encoder(clips, self.num_clips),)                  # [ρ, B, D]

  def loss_on(self, projections, targets, step) -> base.StepOutputs:
    del step
    flat = tf.reshape(projections, [-1, projections.shape[-1]])
    predictions = base.by_clip(self.predictor(flat, training=True), self.num_clips)
    loss = losses.byol_loss(predictions, targets[0])
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    return base.StepOutputs(loss, (1.0 / replicas - loss / 2.0, base.spread(projections)))

  def after_update(self, state, step) -> None:
    self.encoder.update(step)
