"""The pretraining objective: NT-Xent over two views with negatives from every replica, and the L2 penalty.

  nt_xent               [B, D] view 1, [B, D] view 2 (this replica's rows) -> ContrastiveOutputs
  gather_from_replicas  [B, ...] on each replica -> [R·B, ...], the same on every replica
  weight_decay_loss     variables -> wd/2 · Σ w², the reference release's L2 term (SGD recipe)

Everything here is a pure function of tensors. It runs in a replica context: inside
`strategy.run`, or outside any strategy (the default replica context, one replica).

How the training step must use `nt_xent` (SPEC.md §4: the reference release gets this wrong). Its
`loss` is this replica's SHARE of the global-batch loss: the shares of the R replicas sum to the
loss over the global batch of N = R·B videos, and the gradients of the shares, summed over
replicas, are the gradients of that global loss, whatever R is. A Keras optimizer called in the
replica context sums gradients over replicas, so the step differentiates `loss` as it is:

  with tf.GradientTape() as tape:
    out = losses.nt_xent(proj_1, proj_2, temperature)
    loss = out.loss                          # as it is: NOT divided by R again, NOT a local mean
    if sgd:                                  # LARS decays inside the optimizer instead
      loss += losses.weight_decay_loss(kernels, wd) / strategy.num_replicas_in_sync
  optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
  ...
  # One value at a time: MultiWorkerMirroredStrategy.reduce does not take a structure.
  global_loss = strategy.reduce("SUM", out.loss, axis=None)

The metrics are shares in the same sense: `strategy.reduce(SUM)` gives their global-batch value.

Why the shares are right: a replica's share is the sum of its own anchors' losses divided by the
global N (not the local B). Its projections also act as negatives in the other replicas' terms;
that gradient comes back to it through the all-reduce of the gather, whose gradient is itself an
all-reduce. So the gradient on replica r is that of the global loss restricted to r's rows, and
the optimizer's sum over replicas is the full gradient of the global loss.
"""

from typing import NamedTuple, Sequence

import tensorflow as tf

# Subtracted from the self-similarity logits. Finite, unlike -inf, so that softmax cross-entropy
# and its gradient stay finite: exp(-1e9) underflows to an exact 0 in float32.
LARGE_NUM = 1e9


class ContrastiveOutputs(NamedTuple):
  """This replica's shares of the global-batch values (sum over replicas -> global value).

  loss: scalar float32; the global value is mean over the N view-1 anchors of their cross-entropy
    plus mean over the N view-2 anchors (the reference release's sum of the two directions).
  contrast_accuracy: scalar float32; globally, the fraction of view-1 anchors whose positive has
    the largest logit among the N cross-view logits (the reference release's `contrast_acc`).
  contrast_entropy: scalar float32, nats; globally, the mean over view-1 anchors of the entropy of
    the softmax over those N cross-view logits (log N for a uniform softmax, 0 when certain).
  """
  loss: tf.Tensor
  contrast_accuracy: tf.Tensor
  contrast_entropy: tf.Tensor


def _replica_context() -> tf.distribute.ReplicaContext:
  context = tf.distribute.get_replica_context()
  if context is None:
    raise RuntimeError(
        "the contrastive loss gathers negatives from every replica, so it must run in a replica "
        "context: call it inside strategy.run(...), or outside any strategy scope; it was called "
        "in a cross-replica context")
  return context


def gather_from_replicas(tensor: tf.Tensor) -> tf.Tensor:
  """Concatenates every replica's `tensor` along axis 0, in replica order; differentiable.

  Each replica writes its slice at `replica_id_in_sync_group` of a zero tensor [R, B, ...] and the
  replicas sum them with `all_reduce`. `ReplicaContext.all_gather` would be the obvious call but
  fails under MultiWorkerMirroredStrategy on CPU (SPEC.md §5), and the reference release's
  `xla.replica_id()` works only on TPU; this works under every strategy. The gradient of an
  all-reduce sum is an all-reduce sum, so each replica receives the gradient that every replica's
  loss sends to its slice.

  Args:
    tensor: [B, ...], the same shape on every replica.

  Returns:
    [R·B, ...]; rows r·B ... r·B + B − 1 come from replica r. `tensor` itself when R = 1.
  """
  context = _replica_context()
  num_replicas = context.num_replicas_in_sync
  if num_replicas == 1:
    return tensor
  # A Python int under Mirrored strategies, a tensor on TPU.
  replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
  slots = tf.scatter_nd(indices=[[replica_id]], updates=[tensor],
                        shape=tf.concat([[num_replicas], tf.shape(tensor)], axis=0))  # [R, B, ...]
  slots = context.all_reduce(tf.distribute.ReduceOp.SUM, slots)
  gathered = tf.reshape(slots, tf.concat([[-1], tf.shape(tensor)[1:]], axis=0))
  batch = tensor.shape[0]
  gathered.set_shape([None if batch is None else num_replicas * batch] + tensor.shape[1:])
  return gathered


def nt_xent(view_1: tf.Tensor, view_2: tf.Tensor, temperature: float = 0.1) -> ContrastiveOutputs:
  """NT-Xent / InfoNCE of SimCLR and CVRL (SPEC.md §2), negatives from the global batch.

  Row i of `view_1` and row i of `view_2` are the two clips of one video. Every projection is
  L2-normalised; logits are cosine similarities / temperature. For each of the 2N anchors the
  candidates are the N clips of the other view (one is the positive) and the N − 1 other clips of
  its own view (its self-similarity masked out): 1 positive and 2N − 2 negatives.

  Computed in float32 whatever the inputs' dtype: at τ = 0.1 logits span [−10, 10] and bfloat16's
  8-bit mantissa would round them by up to 0.03.

  Args:
    view_1: [B, D] projections of this replica's view-1 clips (any float dtype).
    view_2: [B, D] projections of the same videos' view-2 clips.
    temperature: τ > 0.

  Returns:
    ContrastiveOutputs of this replica's shares (see the module docstring for how a training step
    must use them): summed over replicas they give the global-batch values, and the summed
    gradients of `loss` are the gradients of the global loss.
  """
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  if view_1.shape.rank != 2 or view_2.shape.rank != 2:
    raise ValueError(f"views must be [B, D], got shapes {view_1.shape} and {view_2.shape}")
  context = _replica_context()
  num_replicas = context.num_replicas_in_sync

  view_1 = tf.math.l2_normalize(tf.cast(view_1, tf.float32), axis=-1)  # [B, D]
  view_2 = tf.math.l2_normalize(tf.cast(view_2, tf.float32), axis=-1)  # [B, D]
  batch = tf.shape(view_1)[0]
  if num_replicas == 1:
    all_1, all_2 = view_1, view_2
    offset = 0
  else:
    # One collective for both views instead of two: [B, 2D] -> [N, 2D].
    both = gather_from_replicas(tf.concat([view_1, view_2], axis=1))
    all_1, all_2 = tf.split(both, 2, axis=1)  # [N, D] each
    offset = tf.cast(context.replica_id_in_sync_group, tf.int32) * batch
  global_batch = batch * num_replicas
  positives = tf.range(batch) + offset  # [B] global index of each anchor's video
  self_mask = tf.one_hot(positives, global_batch, dtype=tf.float32) * LARGE_NUM  # [B, N]

  logits_12 = tf.matmul(view_1, all_2, transpose_b=True) / temperature  # [B, N] cross-view
  logits_21 = tf.matmul(view_2, all_1, transpose_b=True) / temperature
  logits_11 = tf.matmul(view_1, all_1, transpose_b=True) / temperature - self_mask  # same view
  logits_22 = tf.matmul(view_2, all_2, transpose_b=True) / temperature - self_mask
  # The positive sits at column `positives` of the cross-view block, the first N columns.
  loss_1 = tf.nn.sparse_softmax_cross_entropy_with_logits(
      positives, tf.concat([logits_12, logits_11], axis=1))  # [B]
  loss_2 = tf.nn.sparse_softmax_cross_entropy_with_logits(
      positives, tf.concat([logits_21, logits_22], axis=1))  # [B]

  # Local sums over the GLOBAL batch size: the R shares add up to the global means, and so do
  # their gradients (see the module docstring). Dividing by the local B instead would make the
  # summed gradient R times too large: the reference release's bug (SPEC.md §4).
  norm = tf.cast(global_batch, tf.float32)
  loss = (tf.reduce_sum(loss_1) + tf.reduce_sum(loss_2)) / norm

  # Metrics on the view-1 -> view-2 logits, as the reference release logs them; no gradient.
  logits_12 = tf.stop_gradient(logits_12)
  correct = tf.equal(tf.argmax(logits_12, axis=1, output_type=tf.int32), positives)
  log_prob = tf.nn.log_softmax(logits_12, axis=1)
  entropy = -tf.reduce_sum(tf.exp(log_prob) * log_prob, axis=1)  # [B]
  return ContrastiveOutputs(
      loss=loss,
      contrast_accuracy=tf.reduce_sum(tf.cast(correct, tf.float32)) / norm,
      contrast_entropy=tf.reduce_sum(entropy) / norm)


def weight_decay_loss(variables: Sequence[tf.Variable], weight_decay: float) -> tf.Tensor:
  """The L2 penalty of the reference release's SGD recipe: wd · Σ_v Σ w² / 2, in float32.

  It is the reference release's `weight_decay * tf.add_n([tf.nn.l2_loss(v) ...])`, i.e. the
  penalty of `keras.regularizers.L2(wd / 2)` (which computes l2 · Σ w²) — half of what
  `keras.regularizers.L2(wd)` gives. Its gradient is wd · w, the same decay LARS adds to the
  gradient, so `weight_decay` means the same thing with either optimizer.

  Pass the kernels only (`lars.kernel_variables(model)`). The value is the global penalty: every
  replica computes it in full, and the optimizer sums the replicas' gradients, so a training step
  adds `weight_decay_loss(...) / strategy.num_replicas_in_sync` to the per-replica loss.

  Args:
    variables: the decayed variables.
    weight_decay: wd ≥ 0.

  Returns:
    Scalar float32.
  """
  if not weight_decay >= 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
  variables = list(variables)
  if not variables or weight_decay == 0:
    return tf.constant(0.0, tf.float32)
  return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
