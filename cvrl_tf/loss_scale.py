"""Dynamic loss scaling, for float16 compute (train.mixed_precision=mixed_float16).

  DynamicLossScale  the scale S, its growth counter and the skipped steps, in the checkpoint
  NoLossScale       the same interface, doing nothing (float32 and mixed_bfloat16)
  for_precision     policy name -> one of the two

float16 has 5 exponent bits: gradients under 6·10⁻⁸ flush to zero on the way back through the
network, over 65504 they overflow. The step differentiates S·loss instead of the loss (S a power
of two), so the backward pass's float16 values sit well inside the range, and divides the float32
gradients by S before anything else sees them (the objective, the logged norm, the optimizer):
a division by a power of two is exact, so the gradients are those of the loss itself. Then:

  1) every replica's gradients finite: the update is applied; after GROWTH_STEPS such steps in a
     row S doubles
  2) an inf or NaN on any replica: the step is skipped, S halves. Skipped: the weights, the
     optimizer's slots and `iterations` (hence the learning-rate schedule and the momentum
     encoder's schedule), and the objective's state (momentum network, queue, prototypes) are
     left as they were. BN moving statistics took the forward pass's update, as in PyTorch's
     GradScaler and Keras's LossScaleOptimizer: a finite forward pass over a real batch.

Every replica decides alike: one all-reduce of the number of replicas with a non-finite
gradient. A skipped step still consumed its batch; the loop reads the data from where the run
is (`data_offset`, loop.py).

Why not keras.optimizers.LossScaleOptimizer (Keras 3.x): under a strategy that merges (Mirrored,
MultiWorkerMirrored) it decides from the first local replica's gradients, assuming they are
already all-reduced; ours are not (the optimizer sums them inside apply_gradients), so an
overflow on another replica would be applied, and workers could take different branches around
the collectives of the update and hang. It would also leave the objective's update (the momentum
network's EMA, the queue) to run on a skipped step, and move the optimizer's variables under
`inner_optimizer` in the checkpoint. The skip here follows the same pattern (a cond in the
cross-replica context around the replicas' update, as tf.keras's LossScaleOptimizer did), on a
decision that is the same everywhere.
"""

from typing import Callable, List

import tensorflow as tf

from cvrl_tf import runtime

INITIAL_SCALE = 2.0**15
GROWTH_STEPS = 2000


class NoLossScale:
  """float32 and mixed_bfloat16: nothing scaled, nothing skipped, nothing checkpointed."""

  def checkpoint_objects(self) -> dict:
    return {}

  def scaled(self, loss: tf.Tensor) -> tf.Tensor:
    return loss

  def unscale(self, gradients: List):
    """(gradients, True): as they are."""
    return gradients, tf.constant(True)

  def apply_if_finite(self, finite, update: Callable, *args) -> None:
    del finite
    update(*args)

  def data_offset(self) -> int:
    return 0

  def start_segment(self) -> None:
    pass

  def summaries(self) -> dict:
    return {}


class DynamicLossScale(tf.Module):
  """The loss scale of a float16 run and its bookkeeping; create it in the strategy's scope.

  Variables (all in the checkpoint: a resumed run scales and reads data as the uninterrupted one):
    scale: float32 S, a power of two.
    good_steps: int64, finite steps since S last changed.
    skipped_steps: int64, steps skipped since the run began.
    segment_start_skips: int64, skipped_steps when the current data segment began.
  """

  def __init__(self, initial_scale: float = INITIAL_SCALE, growth_steps: int = GROWTH_STEPS):
    super().__init__(name="loss_scale")
    if growth_steps < 1:
      raise ValueError(f"growth_steps must be a positive int, got {growth_steps!r}")
    self.growth_steps = growth_steps
    self.scale = tf.Variable(float(initial_scale), dtype=tf.float32, trainable=False,
                             name="scale")
    self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")
    self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")
    self.segment_start_skips = tf.Variable(0, dtype=tf.int64, trainable=False,
                                           name="segment_start_skips")

  def checkpoint_objects(self) -> dict:
    return {"loss_scale": self}

  # ---- in the replica context

  def scaled(self, loss: tf.Tensor) -> tf.Tensor:
    """S · loss: differentiate this instead of the loss (float32 scalar)."""
    return loss * self.scale

  def unscale(self, gradients: List):
    """The gradients of S · loss divided by S, and whether every replica's are finite.

    Args:
      gradients: float32 tensors (None where unconnected), this replica's.

    Returns:
      (the gradients of the loss, bool scalar: finite on every replica — the same everywhere).
    """
    scale = tf.convert_to_tensor(self.scale)
    gradients = [None if g is None else g / tf.cast(scale, g.dtype) for g in gradients]
    local_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                                  for g in gradients if g is not None])
    # One scalar all-reduce: the replicas whose gradients overflowed.
    bad = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(local_finite), tf.float32))
    return gradients, tf.equal(bad, 0.0)

  def apply_if_finite(self, finite: tf.Tensor, update: Callable, *args) -> None:
    """update(*args) on every replica when `finite`, else nothing; then S moves (module doc).

    `update` must take every per-replica value it uses through `args` (tensors and nests of
    them), not a closure: under a merging strategy it runs again per replica from the
    cross-replica context, where only `args` carry each replica's values.
    """
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
      tf.cond(finite, lambda: _call(update, args), lambda: None)
    else:
      def merged(strategy, finite, *args):
        # A cond in the cross-replica context around the replicas' update: a replica-context
        # cond may not hold the merge_calls of apply_gradients. `finite` is all-reduced, so any
        # replica's copy decides for all of them (and for every worker).
        decide = strategy.experimental_local_results(finite)[0]
        tf.cond(decide, lambda: _call_for_each_replica(strategy, update, args), lambda: None)

      tf.distribute.get_replica_context().merge_call(merged, args=(finite, *args))
    runtime.assign_each([self.scale, self.good_steps, self.skipped_steps], self._next, finite,
                        tf.identity(self.good_steps))

  def _next(self, i, variable, finite, good_steps):
    if i == 0:                                                    # scale
      grow = tf.logical_and(finite, good_steps + 1 >= self.growth_steps)
      return tf.where(finite, tf.where(grow, 2.0 * variable, variable), 0.5 * variable)
    if i == 1:                                                    # good_steps
      return tf.where(tf.logical_and(finite, variable + 1 < self.growth_steps),
                      variable + 1, tf.zeros_like(variable))
    return tf.where(finite, variable, variable + 1)               # skipped_steps

  # ---- on the host, between calls

  def data_offset(self) -> int:
    """Batches the current data segment's steps consumed beyond one each: its skipped steps."""
    return int(self.skipped_steps.numpy() - self.segment_start_skips.numpy())

  def start_segment(self) -> None:
    """The next steps read a new data segment (call in the cross-replica context)."""
    self.segment_start_skips.assign(self.skipped_steps)

  def summaries(self) -> dict:
    return {"loss_scale": float(self.scale.numpy()),
            "skipped_steps": float(self.skipped_steps.numpy())}


def _call(update, args):
  update(*args)
  return None


def _call_for_each_replica(strategy, update, args):
  strategy.extended.call_for_each_replica(update, args=args)
  return None


def for_precision(policy: str):
  """DynamicLossScale for mixed_float16, else NoLossScale; call in the strategy's scope."""
  return DynamicLossScale() if policy == "mixed_float16" else NoLossScale()
