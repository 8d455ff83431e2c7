"""ρMoCo: the clips of a video are queries and keys of each other; negatives come from a queue.

  enqueue(queue [K, D], pointer, keys [M, D]) -> (queue, pointer)   the FIFO, pure

Queries are the online projections, keys the momentum encoder's (momentum.py). Every ordered
pair (i, j), i ≠ j, of a video's clips is a positive: query i against key j, contrasted with the
K keys of the queue (losses.moco_loss). After the step all ρ key sets, gathered from every
replica, enter the queue: ρ·N keys per step, oldest out first.

SyncBN replaces MoCo's shuffle-BN (see momentum.py).
"""

import tensorflow as tf

from cvrl_tf import losses
from cvrl_tf import runtime
from cvrl_tf.objectives import base
from cvrl_tf.objectives import momentum


def enqueue(queue: tf.Tensor, pointer: tf.Tensor, keys: tf.Tensor):
  """Writes `keys` over the oldest entries of a ring buffer.

  Args:
    queue: [K, D], entry `pointer` the oldest.
    pointer: int64 scalar in [0, K).
    keys: [M, D] with M <= K, in the order they enter.

  Returns:
    (queue [K, D] with keys[m] at (pointer + m) mod K, the new pointer (pointer + M) mod K).
  """
  size = tf.shape(queue, out_type=tf.int64)[0]
  count = tf.shape(keys, out_type=tf.int64)[0]
  slots = tf.math.floormod(pointer + tf.range(count), size)  # [M]
  return (tf.tensor_scatter_nd_update(queue, slots[:, None], tf.cast(keys, queue.dtype)),
          next_pointer(pointer, count, size))


def next_pointer(pointer: tf.Tensor, count, size) -> tf.Tensor:
  """The oldest entry once `count` keys entered a queue of `size` at `pointer`."""
  return tf.math.floormod(pointer + tf.cast(count, tf.int64), tf.cast(size, tf.int64))


def gather_keys(keys: tf.Tensor) -> tf.Tensor:
  """[ρ, B, D] keys of this replica -> [ρ·N, D] of every replica: clip-major, then video in
  global order (replica r's videos at r·B ... r·B + B − 1), the same on every replica."""
  num_clips = keys.shape[0]
  by_video = tf.reshape(tf.transpose(keys, [1, 0, 2]), [tf.shape(keys)[1], -1])   # [B, ρD]
  gathered = losses.gather_from_replicas(by_video)                               # [N, ρD]
  gathered = tf.reshape(gathered, [tf.shape(gathered)[0], num_clips, -1])         # [N, ρ, D]
  return tf.reshape(tf.transpose(gathered, [1, 0, 2]), [-1, keys.shape[-1]])       # [ρN, D]


class MoCo(base.Objective):
  """losses.moco_loss of the online queries against the momentum keys and the queue."""

  summary_names = ("loss/moco", "contrast/accuracy", "contrast/entropy", base.SPREAD)

  def build(self) -> dict:
    objective, train = self.config.objective, self.config.train
    self.encoder = momentum.MomentumEncoder(self.model, self.config, objective.momentum)
    size, dim = objective.queue_size, self.config.model.head_output_size
    # Random unit vectors until real keys replace them (MoCo's initial queue), from the run's
    # seed so that every replica and every worker starts with the same queue.
    initial = tf.random.stateless_normal([size, dim], seed=[train.seed, 2021])
    self.queue = tf.Variable(tf.math.l2_normalize(initial, axis=1), trainable=False,
                             name="queue")
    self.queue_pointer = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                     name="queue_pointer")
    return dict(self.encoder.checkpoint_objects(), queue=self.queue,
                queue_pointer=self.queue_pointer)

  def initialize(self) -> None:
    self.encoder.initialize()

  def targets(self, clips) -> tuple:
    return (self.encoder(clips, self.num_clips),)                  # [ρ, B, D] keys

  def loss_on(self, projections, targets, step) -> base.StepOutputs:
    del step
    queries, (keys,) = projections, targets                        # [ρ, B, D] each
    out = losses.moco_loss(queries, keys, self.queue, self.config.train.temperature)
    return base.StepOutputs(out.loss, (out.contrast_accuracy, out.contrast_entropy,
                                       base.spread(queries)),
                            (gather_keys(tf.math.l2_normalize(keys, axis=-1)),))

  def after_update(self, state, step) -> None:
    (keys,) = state
    self.encoder.update(step)
    size = self.config.objective.queue_size

    def new_value(i, variable, keys, pointer):
      if i == 0:
        return enqueue(variable, pointer, keys)[0]
      return next_pointer(pointer, tf.shape(keys)[0], size)

    # Both from the pointer before the step.
    runtime.assign_each([self.queue, self.queue_pointer], new_value, keys,
                     tf.identity(self.queue_pointer))
