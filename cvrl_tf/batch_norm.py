"""The batch normalisation of the backbone and the heads: Keras's layer, trained faster.

  FusedBatchNorm        keras.layers.BatchNormalization with Keras's variables, outputs and
                        moving-average update, whose training step over the last axis goes
                        through TF's fused kernel (one replica's statistics, also when
                        synchronized with one replica in sync) or through one all-reduce per
                        layer (synchronized over replicas: every replica's statistics).
  synchronized_moments  the per-channel mean and biased variance of every replica's batch, from
                        one all-reduce of [Σ(x − s), Σ(x − s)², count].

Keras 3's synchronized BN all-reduces the sum, the sum of squares and the count separately: three
collectives per layer forward and two backward, ≈ 160 small ones each way in an R3D-50. Ours
concatenates them into one, so one forward and one backward.

Both fast paths are TensorFlow (the fused kernel, tf.distribute's replica context). Under another
Keras backend (JAX, torch) FusedBatchNorm is Keras's own BatchNormalization in every mode, and
TensorFlow is not imported.
"""

import keras

# The fast paths are TensorFlow ops, taken only when TensorFlow is Keras's backend: imported only
# then, so that a JAX-only machine (no TensorFlow) can build the layer.
TF_BACKEND = keras.backend.backend() == "tensorflow"
if TF_BACKEND:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top


def synchronized_moments(x, shift):
  """Mean and biased variance per channel over the batches of every replica in sync (TensorFlow:
  tf.distribute's replica context).

  One all-reduce (SUM) of the local [Σ(x − shift), Σ(x − shift)², count], differentiable: its
  gradient is the all-reduce of the gradients, so each replica's input gradient is that of the
  loss summed over replicas, as if the global batch were on one device. Outside a replica context
  (cross-replica, or no strategy) the statistics are this batch's.

  Why the shift: float32 E[x²] − E[x]² cancels when |mean| ≫ std. Measured on 2 × 65536 × 16
  values of 10 ± 1 (relative error of the variance against float64): E[x²] − E[x]² (Keras's
  synchronized BN) 3e-4, 4e-2 at 100 ± 1; each replica centred on its own mean, combined with the
  parallel-variance formula, 1.5e-5 (1.6e-3 at 100 ± 1: the between-replica term still cancels),
  and a second pass over x; centred on a shift common to all replicas that lies within 0.05 std
  of the mean, 1.6e-6 (tf.nn.moments, two passes on one device: 5e-6). The layer passes its
  moving mean: the same on every replica (each applies the same all-reduced update), near the
  batch mean once training has run a few steps, and free, so the statistics stay one pass over x.
  With a fresh moving mean (0) the error is Keras's.

  Args:
    x: [..., C] float32 tf.Tensor, this replica's batch; every axis but the last is reduced.
    shift: [C] float32 tf.Tensor, the same on every replica (not differentiated); any value
      gives the same moments up to rounding.

  Returns:
    (mean, variance), each [C] float32.
  """
  channels = x.shape[-1]
  axes = list(range(len(x.shape) - 1))
  shift = tf.stop_gradient(shift)
  centred = x - shift  # [..., C]
  count = tf.cast(tf.reduce_prod(tf.shape(x, out_type=tf.int64)[:-1]), tf.float32)
  local = tf.concat([tf.reduce_sum(centred, axis=axes),
                     tf.reduce_sum(tf.square(centred), axis=axes),
                     count[None]], axis=0)  # [2C + 1]
  context = tf.distribute.get_replica_context()
  total = local if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, local)
  centred_mean = tf.math.divide_no_nan(total[:channels], total[-1])  # [C]
  centred_square = tf.math.divide_no_nan(total[channels:2 * channels], total[-1])  # [C]
  # Rounding can leave E[d²] a hair below E[d]² for a constant channel.
  variance = tf.maximum(centred_square - tf.square(centred_mean), 0.0)
  return centred_mean + shift, variance


def _replicas_in_sync() -> int:
  """How many replicas a synchronized layer would all-reduce over here (1 outside a strategy
  or in a cross-replica context)."""
  context = tf.distribute.get_replica_context()
  return 1 if context is None else context.num_replicas_in_sync


class FusedBatchNorm(keras.layers.BatchNormalization):
  """`keras.layers.BatchNormalization` whose training step over the last axis is faster.

  Unsynchronized, or synchronized with one replica in sync (one GPU, one CPU: the all-reduce
  would be the identity): TF's FusedBatchNormV3 normalises in one kernel where Keras 3 runs
  separate moments / subtract / scale ops, 1.3–1.8× faster forward + backward here, and traces
  faster (a tiny SimCLR replica step: 2,461 ops instead of 3,726, 1.2–1.6× faster to trace;
  benchmarks/trace_time.py). Synchronized with more replicas: the statistics of every
  replica's batch through one all-reduce per layer (`synchronized_moments`) instead of Keras's
  three. The replica count is the strategy's, known when the step is traced.

  Same variables (gamma, beta, moving_mean, moving_variance), same outputs (statistics in float32,
  output in the compute dtype) and the same moving-average update (from the biased batch
  variance), as Keras. Masks, inference, renorm, another axis, a frozen layer and, unsynchronized,
  inputs other than 4-D / 5-D keep Keras's own path.

  Under JAX or torch every call is Keras's own path (same variables, same results up to float
  rounding: tests/test_jax_backend.py), and synchronized=True is accepted but not synchronized by
  this layer — there is no tf.distribute replica context to all-reduce in: `self.synchronized` is
  False there. The statistics are those of the array the layer sees. Under jax.jit on a global
  batch sharded across devices (keras.distribution.DataParallel, Keras's JAX trainer) that is the
  whole global batch: XLA inserts the cross-device reductions, so the statistics are synchronized
  anyway. Under pmap / shard_map or torch DDP each device normalises its own shard.
  """

  def __init__(self, *args, synchronized: bool = False, **kwargs):
    # Keras refuses synchronized=True off TensorFlow; the note above says what runs instead.
    super().__init__(*args, synchronized=bool(synchronized) and TF_BACKEND, **kwargs)

  def call(self, inputs, training=None, mask=None):
    last_axis = self.axis in (-1, len(inputs.shape) - 1)
    if (not TF_BACKEND or mask is not None or not (training and self.trainable) or self.renorm
        or not last_axis):
      return super().call(inputs, training=training, mask=mask)
    fusable = len(inputs.shape) in (4, 5)
    # Across replicas; or, on one replica, an input the fused kernel does not take ([N, C]).
    if self.synchronized and (_replicas_in_sync() > 1 or not fusable):
      return self._synchronized_call(inputs)
    if not fusable:
      return super().call(inputs, training=training, mask=mask)
    return self._fused_call(inputs)

  def _synchronized_call(self, inputs):  # [..., C] -> [..., C]
    # In float32 whatever the compute dtype, as Keras: bf16 sums lose the statistics.
    x = tf.cast(inputs, tf.float32)
    moving_mean = tf.cast(self.moving_mean, tf.float32)
    # A non-finite moving mean (a bad restore) must not poison the batch statistics.
    shift = tf.where(tf.math.is_finite(moving_mean), moving_mean, 0.0)
    mean, variance = synchronized_moments(x, shift)
    self._update_moving_statistics(mean, variance)
    y = tf.nn.batch_normalization(
        x, mean, variance, offset=None if self.beta is None else tf.cast(self.beta, tf.float32),
        scale=None if self.gamma is None else tf.cast(self.gamma, tf.float32),
        variance_epsilon=self.epsilon)
    return tf.cast(y, self.compute_dtype)

  def _fused_call(self, inputs):  # [B, (T,) H, W, C] -> same
    # The fused kernel wants NHWC: fold time into the batch (statistics are per channel anyway).
    # It takes float32 scale / offset with float32, bfloat16 or float16 inputs.
    shape = tf.shape(inputs)
    channels = inputs.shape[-1]
    gamma = tf.ones([channels]) if self.gamma is None else tf.cast(self.gamma, tf.float32)
    beta = tf.zeros([channels]) if self.beta is None else tf.cast(self.beta, tf.float32)
    y, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
        tf.reshape(inputs, tf.concat([[-1], shape[-3:]], axis=0)), gamma, beta,
        epsilon=self.epsilon, is_training=True)[:3]
    y = tf.reshape(y, shape)
    count = tf.cast(tf.size(inputs) // channels, tf.float32)
    self._update_moving_statistics(
        mean, unbiased_variance * tf.maximum(count - 1.0, 0.0) / count)
    return tf.cast(y, self.compute_dtype)

  def _update_moving_statistics(self, mean, variance):
    """Keras's update: moving = momentum · moving + (1 − momentum) · batch (biased variance)."""
    self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
    self.moving_variance.assign(
        self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
