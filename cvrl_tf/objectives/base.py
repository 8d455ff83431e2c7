"""What every pretraining objective is to the training step, and the state it may keep.

pretrain.Trainer calls an Objective at four points:

  build()                 in the strategy scope: creates the objective's own networks and state
                          (momentum encoder, queue, prototypes); returns what the checkpoint holds
  initialize()            a new run, once the online backbone is initialised (e.g. target ← online)
  targets(clips)          in the replica context, without gradient: what the loss needs besides
                          the online projections (the momentum network's projections)
  loss_on(projections, targets, step)
                          in the replica context, under the gradient tape -> StepOutputs
  after_update(state, step)
                          in the replica context, after the optimizer step (EMA, queue, ...)

The online network (backbone + projection head) is the Trainer's; an objective's own trained
layers (a predictor, prototypes) are listed by `trained_layers` and optimised with it. The loss
sees the network only through the projections: with train.microbatches = k the Trainer computes
them (and the targets) in k chunks and back-propagates the loss's gradient with respect to them
chunk by chunk (cvrl_tf.microbatch), so every objective keeps its whole global batch.
"""

import abc
from typing import NamedTuple, Sequence, Tuple

import keras
import tensorflow as tf

from cvrl_tf import config as cfg
from cvrl_tf import losses
from cvrl_tf import networks


# Every objective reports `spread` of its online projections as its last metric, under this tag:
# the collapse its loss may not show.
SPREAD = "embedding/spread"


class StepOutputs(NamedTuple):
  """What `Objective.loss` returns.

  loss: scalar float32, this replica's share of the global-batch loss (cvrl_tf.losses' contract:
    summed over replicas it is the global loss; differentiate it as it is).
  metrics: scalar float32 shares, one per `Objective.summary_names[1:]`.
  state: what `after_update` needs (keys for the queue, ...); () when nothing.
  """
  loss: tf.Tensor
  metrics: Tuple[tf.Tensor, ...]
  state: tuple = ()


class Objective(abc.ABC):
  """One pretraining objective over the ρ clips of each video.

  Its methods run inside the replica step, which is traced as plain Python (no AutoGraph; see
  loop.TrainLoop): a branch on a tensor is tf.cond or tf.where, not `if`.

  Args:
    config: the experiment (objective, model, data.num_clips, train.temperature, ...).
    model: the online network, built.

  Attributes:
    summary_names: TensorBoard tags of `loss` and then of each metric.
  """

  summary_names: Tuple[str, ...] = ()

  def __init__(self, config: cfg.ExperimentConfig, model: networks.Model):
    self.config = config
    self.model = model
    self.num_clips = config.data.num_clips

  def build(self) -> dict:
    """Creates the objective's variables (call in the strategy scope); returns the objects the
    checkpoint must hold, by name (not "backbone", "head" or "optimizer")."""
    return {}

  def initialize(self) -> None:
    """Readies the state of a new run once the online network is initialised (eagerly)."""

  @property
  def trained_layers(self) -> Sequence[keras.layers.Layer]:
    """The objective's own layers the optimizer trains (predictor, prototypes)."""
    return ()

  @property
  def trainable_variables(self) -> list:
    return [v for layer in self.trained_layers for v in layer.trainable_variables]

  def project(self, clips: tf.Tensor) -> tf.Tensor:
    """The online network's projections of every clip, by clip.

    Args:
      clips: [ρ·B, T, S, S, 3], clip k of video b at row k·B + b (the views concatenated).

    Returns:
      [ρ, B, D] float32.
    """
    pooled = self.model.backbone(clips, training=True)["pooled"]       # [ρB, C]
    return by_clip(self.model.head(pooled, training=True), self.num_clips)

  def targets(self, clips: tf.Tensor) -> tuple:
    """What `loss_on` needs of the clips besides the online projections, without gradient.

    Args:
      clips: [ρ·B, T, S, S, 3], as in `project`.

    Returns:
      A tuple of [ρ, B, ...] tensors (split and concatenated along the video axis 1 when the
      step runs in microbatches); () when the objective needs nothing more.
    """
    del clips
    return ()

  @abc.abstractmethod
  def loss_on(self, projections: tf.Tensor, targets: tuple, step: tf.Tensor) -> StepOutputs:
    """The step's loss from this replica's online projections and targets.

    Args:
      projections: [ρ, B, D] float32, `project` of this replica's clips.
      targets: `targets` of the same clips.
      step: int64 scalar, the optimizer's step count before this step (0 first).
    """

  def loss(self, clips: tf.Tensor, step: tf.Tensor) -> StepOutputs:
    """`loss_on` this replica's clips [ρ·B, T, S, S, 3] (see `project`), in one piece."""
    return self.loss_on(self.project(clips), self.targets(clips), step)

  def gradients(self, gradients: list, variables: list, step: tf.Tensor) -> list:
    """The gradients the optimizer applies (SwAV freezes its prototypes early)."""
    del variables, step
    return gradients

  def after_update(self, state: tuple, step: tf.Tensor) -> None:
    """Updates the state after the optimizer step; `step` as in `loss`."""


def spread(projections: tf.Tensor) -> tf.Tensor:
  """losses.embedding_spread of [ρ, B, D] projections, all ρ·B rows of this replica."""
  return losses.embedding_spread(tf.reshape(projections, [-1, projections.shape[-1]]))


def by_clip(rows: tf.Tensor, num_clips: int) -> tf.Tensor:
  """[ρ·B, D] (clip-major rows) -> [ρ, B, D]."""
  return tf.reshape(rows, tf.concat([[num_clips, -1], tf.shape(rows)[1:]], axis=0))
