"""The pretraining objectives of CVRL and of the ρ-SSL study, with negatives and counts over every
replica, and the L2 penalty.

  nt_xent               [B, D] view 1, [B, D] view 2 -> ContrastiveOutputs (CVRL, SimCLR)
  rho_nt_xent           [ρ, B, D] -> ContrastiveOutputs: nt_xent averaged over the ρ(ρ−1)/2 pairs
  moco_loss             [ρ, B, D] queries, [ρ, B, D] keys, [K, D] queue -> ContrastiveOutputs
  byol_loss             [ρ, B, D] predictions, [ρ, B, D] targets -> scalar share
  sinkhorn              [B, K] prototype scores -> [B, K] SwAV codes over the global batch
  swav_loss             [ρ, B, K] prototype scores -> scalar share
  gather_from_replicas  [B, ...] on each replica -> [R·B, ...], the same on every replica
  embedding_spread      [M, D] -> scalar share: how far the embeddings are from collapse (a
                        metric, not a loss)
  weight_decay_loss     variables -> wd/2 · Σ w², the reference release's L2 term (SGD recipe)

Arrays are this replica's rows: B videos here, N = R·B in the global batch; ρ clips per video.
Everything here is a pure function of tensors, computed in float32 whatever the inputs' dtype. It
runs in a replica context: inside `strategy.run`, or outside any strategy (the default replica
context, one replica).

How the training step must use a loss (SPEC.md §4: the reference release gets this wrong). Every
loss above returns this replica's SHARE of the global-batch loss: the shares of the R replicas
sum to the loss over the global batch of N = R·B videos, and the gradients of the shares, summed
over replicas, are the gradients of that global loss, whatever R is. A Keras optimizer called in
the replica context sums gradients over replicas, so the step differentiates `loss` as it is:

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
GLOBAL count (N, or N times the number of clip pairs), not the local one. In nt_xent and
rho_nt_xent its projections also act as negatives in the other replicas' terms; that gradient
comes back to it through the all-reduce of the gather, whose gradient is itself an all-reduce. So
the gradient on replica r is that of the global loss restricted to r's rows, and the optimizer's
sum over replicas is the full gradient of the global loss. moco_loss, byol_loss and swav_loss
need no gather (each term involves one video's clips, and the queue, which every replica holds
whole); they only divide by the global count. swav_loss's codes do depend on the global batch
(Sinkhorn's equipartition), through all-reduced sums that carry no gradient.
"""

import numbers
from typing import NamedTuple, Sequence

import tensorflow as tf

# Subtracted from the self-similarity logits. Finite, unlike -inf, so that softmax cross-entropy
# and its gradient stay finite: exp(-1e9) underflows to an exact 0 in float32.
LARGE_NUM = 1e9


class ContrastiveOutputs(NamedTuple):
  """This replica's shares of the global-batch values (sum over replicas -> global value).

  For `nt_xent` (`rho_nt_xent` averages each over the clip pairs; `moco_loss` says its own):
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
        "the losses use the global batch (negatives, counts and Sinkhorn sums from every "
        "replica), so they must run in a replica context: call them inside strategy.run(...), "
        "or outside any strategy scope; this one was called in a cross-replica context")
  return context


def _sum_over_replicas(context: tf.distribute.ReplicaContext, tensor: tf.Tensor) -> tf.Tensor:
  if context.num_replicas_in_sync == 1:
    return tensor
  return context.all_reduce(tf.distribute.ReduceOp.SUM, tensor)


def _check_positive(name: str, value) -> None:
  # Tensors (e.g. a scheduled temperature) are not checked: their value is unknown when traced.
  if isinstance(value, (int, float)) and not value > 0:
    raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_clips(name: str, tensor: tf.Tensor, last: str = "D") -> int:
  """Checks that `tensor` is [ρ, B, last] with a static ρ ≥ 2; returns ρ."""
  if tensor.shape.rank != 3:
    raise ValueError(f"{name} must be [ρ, B, {last}] (ρ clips per video), got shape {tensor.shape}")
  rho = tensor.shape[0]
  if rho is None or rho < 2:
    raise ValueError(f"{name} must hold a static number ρ >= 2 of clips per video on axis 0, "
                     f"got shape {tensor.shape}")
  return rho


def _check_same_shape(name_1: str, tensor_1: tf.Tensor, name_2: str,
                      tensor_2: tf.Tensor) -> None:
  if not tensor_1.shape.is_compatible_with(tensor_2.shape):
    raise ValueError(f"{name_1} and {name_2} must have the same shape, got {tensor_1.shape} and "
                     f"{tensor_2.shape}")


def _other_clip_mask(rho: int) -> tf.Tensor:
  """[ρ, ρ, 1]: 1 for the ordered pairs (i, j), i ≠ j, 0 on the diagonal."""
  return (1.0 - tf.eye(rho, dtype=tf.float32))[:, :, None]


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
  _check_positive("temperature", temperature)
  if view_1.shape.rank != 2 or view_2.shape.rank != 2:
    raise ValueError(f"views must be [B, D], got shapes {view_1.shape} and {view_2.shape}")
  _check_same_shape("view_1", view_1, "view_2", view_2)
  # ρ = 2 of the general case: the very same operations as rho_nt_xent, so they agree bit for bit.
  return _nt_xent_over_pairs(tf.stack([tf.cast(view_1, tf.float32),
                                       tf.cast(view_2, tf.float32)]), temperature)


def rho_nt_xent(projections: tf.Tensor, temperature: float = 0.1) -> ContrastiveOutputs:
  """ρSimCLR: `nt_xent` averaged over the ρ(ρ−1)/2 unordered pairs of a video's ρ clips.

  The ρ-SSL study's generalisation of the two-view loss: for every pair i < j of clips,
  `nt_xent(projections[i], projections[j])` (negatives: the other N − 1 videos' clips in views i
  and j only), and the mean over the pairs. At ρ = 2 it is `nt_xent` exactly. Every replica's ρ
  views are gathered in ONE collective ([B, ρ·D] -> [N, ρ·D]), not one per pair.

  Args:
    projections: [ρ, B, D] projections of this replica's B videos' ρ clips (any float dtype);
      ρ ≥ 2 must be static.
    temperature: τ > 0.

  Returns:
    ContrastiveOutputs of this replica's shares (see the module docstring): loss, accuracy and
    entropy are each the mean over the pairs (i, j), i < j, of `nt_xent`'s value for that pair
    (its metrics on the view-i -> view-j logits).
  """
  _check_positive("temperature", temperature)
  _check_clips("projections", projections)
  return _nt_xent_over_pairs(tf.cast(projections, tf.float32), temperature)


def _nt_xent_over_pairs(views: tf.Tensor, temperature) -> ContrastiveOutputs:
  """`rho_nt_xent` on float32 [ρ, B, D] views, arguments already checked."""
  context = _replica_context()
  num_replicas = context.num_replicas_in_sync
  rho = views.shape[0]

  views = tf.math.l2_normalize(views, axis=-1)  # [ρ, B, D]
  batch = tf.shape(views)[1]
  if num_replicas == 1:
    everyone = views  # [ρ, N, D]
    offset = 0
  else:
    # One collective for all ρ views: [B, ρ·D] -> [N, ρ·D] (at ρ = 2, concat([view_1, view_2])).
    rows = tf.reshape(tf.transpose(views, [1, 0, 2]), [batch, -1])  # [B, ρ·D]
    gathered = gather_from_replicas(rows)  # [N, ρ·D]
    everyone = tf.transpose(tf.reshape(gathered, [-1, rho, tf.shape(views)[2]]), [1, 0, 2])
    offset = tf.cast(context.replica_id_in_sync_group, tf.int32) * batch
  global_batch = batch * num_replicas
  positives = tf.range(batch) + offset  # [B] global index of each anchor's video
  self_mask = tf.one_hot(positives, global_batch, dtype=tf.float32) * LARGE_NUM  # [B, N]

  def pair_sums(i, j):
    """Local sums over anchors of nt_xent(view i, view j): (loss, correct, entropy)."""
    logits_ij = tf.matmul(views[i], everyone[j], transpose_b=True) / temperature  # [B, N] cross
    logits_ji = tf.matmul(views[j], everyone[i], transpose_b=True) / temperature
    logits_ii = tf.matmul(views[i], everyone[i], transpose_b=True) / temperature - self_mask
    logits_jj = tf.matmul(views[j], everyone[j], transpose_b=True) / temperature - self_mask
    # The positive sits at column `positives` of the cross-view block, the first N columns.
    loss_i = tf.nn.sparse_softmax_cross_entropy_with_logits(
        positives, tf.concat([logits_ij, logits_ii], axis=1))  # [B]
    loss_j = tf.nn.sparse_softmax_cross_entropy_with_logits(
        positives, tf.concat([logits_ji, logits_jj], axis=1))  # [B]
    # Metrics on the view-i -> view-j logits, as the reference release logs them; no gradient.
    logits_ij = tf.stop_gradient(logits_ij)
    correct = tf.equal(tf.argmax(logits_ij, axis=1, output_type=tf.int32), positives)
    log_prob = tf.nn.log_softmax(logits_ij, axis=1)
    entropy = -tf.reduce_sum(tf.exp(log_prob) * log_prob, axis=1)  # [B]
    return (tf.reduce_sum(loss_i) + tf.reduce_sum(loss_j),
            tf.reduce_sum(tf.cast(correct, tf.float32)), tf.reduce_sum(entropy))

  sums = [pair_sums(i, j) for i in range(rho) for j in range(i + 1, rho)]
  # Local sums over the GLOBAL count, N anchors per pair: the R shares add up to the global means,
  # and so do their gradients (see the module docstring). Dividing by the local B instead would
  # make the summed gradient R times too large: the reference release's bug (SPEC.md §4).
  norm = tf.cast(global_batch, tf.float32) * float(len(sums))
  loss, correct, entropy = (tf.add_n(list(column)) / norm for column in zip(*sums))
  return ContrastiveOutputs(loss=loss, contrast_accuracy=correct, contrast_entropy=entropy)


def moco_loss(queries: tf.Tensor, keys: tf.Tensor, queue: tf.Tensor,
              temperature: float = 0.1) -> ContrastiveOutputs:
  """ρMoCo: InfoNCE of each clip's query against every other clip's key and a queue of negatives.

  For every video and ordered pair (i, j), i ≠ j, of its clips, with q, k and the queue rows
  L2-normalised: −log(e^{q_i·k_j/τ} / (e^{q_i·k_j/τ} + Σ_k e^{q_i·queue_k/τ})); the loss is the
  mean over the ρ(ρ−1) ordered pairs and the N videos. Keys and queue are stop-gradiented here
  (they come from the momentum encoder, which the optimizer does not train), so only `queries`
  receive a gradient. No gather: each term involves one video's clips and the queue, which is the
  same on every replica; other replicas enter only through the global count.

  Computed as softplus(logsumexp_k(q_i·queue_k/τ) − q_i·k_j/τ), which is that −log and stays
  finite for any logits; the queue's logsumexp is shared by the ρ − 1 pairs of a query.

  Args:
    queries: [ρ, B, D] the online encoder's projections of this replica's clips (any float dtype);
      ρ ≥ 2 must be static.
    keys: [ρ, B, D] the momentum encoder's projections of the same clips.
    queue: [K, D] negatives, K ≥ 1: keys of earlier batches, the same on every replica.
    temperature: τ > 0.

  Returns:
    ContrastiveOutputs of this replica's shares (see the module docstring), each globally a mean
    over the ρ(ρ−1)·N (ordered pair, video) terms: loss; contrast_accuracy, the fraction whose
    positive logit beats (strictly) every queue logit; contrast_entropy, nats, the entropy of the
    softmax over the K + 1 logits [positive, queue] (log(K + 1) if uniform, 0 when certain).
  """
  _check_positive("temperature", temperature)
  rho = _check_clips("queries", queries)
  _check_same_shape("queries", queries, "keys", keys)
  if queue.shape.rank != 2 or not queue.shape[1:].is_compatible_with(queries.shape[2:]):
    raise ValueError(f"queue must be [K, D] with the queries' D, got shape {queue.shape} for "
                     f"queries of shape {queries.shape}")
  if queue.shape[0] == 0:
    raise ValueError(f"queue must hold K >= 1 negatives, got shape {queue.shape}")
  num_replicas = _replica_context().num_replicas_in_sync

  queries = tf.math.l2_normalize(tf.cast(queries, tf.float32), axis=-1)  # [ρ, B, D]
  keys = tf.math.l2_normalize(tf.stop_gradient(tf.cast(keys, tf.float32)), axis=-1)
  queue = tf.math.l2_normalize(tf.stop_gradient(tf.cast(queue, tf.float32)), axis=-1)  # [K, D]
  positive = tf.einsum("ibd,jbd->ijb", queries, keys) / temperature  # [ρ, ρ, B] q_i·k_j / τ
  negative = tf.einsum("ibd,kd->ibk", queries, queue) / temperature  # [ρ, B, K] q_i·queue / τ
  negative_lse = tf.reduce_logsumexp(negative, axis=-1)  # [ρ, B]
  # x = log Σ_k e^{neg} − pos: the loss is −log σ(−x) = softplus(x).
  margin = negative_lse[:, None, :] - positive  # [ρ, ρ, B]
  pairs = _other_clip_mask(rho)  # [ρ, ρ, 1]
  norm = tf.cast(tf.shape(queries)[1] * num_replicas * rho * (rho - 1), tf.float32)
  loss = tf.reduce_sum(pairs * tf.nn.softplus(margin)) / norm

  # Metrics, no gradient. The softmax over [positive, queue] puts p = σ(−x) on the positive and
  # 1 − p on the queue, spread as the softmax over the queue alone, so (the chain rule of entropy)
  # H = H_binary(p) + (1 − p)·H_queue: no [ρ, ρ, B, K + 1] tensor is needed.
  margin = tf.stop_gradient(margin)
  negative = tf.stop_gradient(negative)
  beats = tf.cast(tf.stop_gradient(positive) > tf.reduce_max(negative, axis=-1)[:, None, :],
                  tf.float32)  # [ρ, ρ, B]
  log_prob = tf.nn.log_softmax(negative, axis=-1)
  queue_entropy = -tf.reduce_sum(tf.exp(log_prob) * log_prob, axis=-1)  # [ρ, B]
  p_positive = tf.sigmoid(-margin)
  binary_entropy = (p_positive * tf.nn.softplus(margin)  # −log p = softplus(x)
                    + (1.0 - p_positive) * tf.nn.softplus(-margin))  # −log(1 − p) = softplus(−x)
  entropy = binary_entropy + (1.0 - p_positive) * queue_entropy[:, None, :]  # [ρ, ρ, B]
  return ContrastiveOutputs(loss=loss,
                            contrast_accuracy=tf.reduce_sum(pairs * beats) / norm,
                            contrast_entropy=tf.reduce_sum(pairs * entropy) / norm)


def byol_loss(predictions: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
  """ρBYOL: mean over ordered clip pairs (i, j), i ≠ j, and videos of 2 − 2·cos(p_i, t_j).

  2 − 2·cos is the squared distance of the L2-normalised vectors. Targets are stop-gradiented
  here (they come from the momentum network), so only `predictions` receive a gradient. At ρ = 2
  this is the mean of BYOL's two symmetric terms, i.e. half the BYOL paper's symmetrised sum.
  No gather: each term involves one video's clips; other replicas enter only through the count.

  Args:
    predictions: [ρ, B, D] the online predictor's outputs for this replica's clips (any float
      dtype); ρ ≥ 2 must be static.
    targets: [ρ, B, D] the momentum network's projections of the same clips.

  Returns:
    Scalar float32: this replica's share (local sum / global count ρ(ρ−1)·N; see the module
    docstring). In [0, 4] once summed over replicas.
  """
  rho = _check_clips("predictions", predictions)
  _check_same_shape("predictions", predictions, "targets", targets)
  num_replicas = _replica_context().num_replicas_in_sync

  predictions = tf.math.l2_normalize(tf.cast(predictions, tf.float32), axis=-1)  # [ρ, B, D]
  targets = tf.math.l2_normalize(tf.stop_gradient(tf.cast(targets, tf.float32)), axis=-1)
  cosine = tf.einsum("ibd,jbd->ijb", predictions, targets)  # [ρ, ρ, B] cos(p_i, t_j)
  norm = tf.cast(tf.shape(predictions)[1] * num_replicas * rho * (rho - 1), tf.float32)
  return tf.reduce_sum(_other_clip_mask(rho) * (2.0 - 2.0 * cosine)) / norm


def _check_sinkhorn_arguments(epsilon, iterations) -> None:
  _check_positive("epsilon", epsilon)
  # A Python number: the loop is unrolled when traced.
  if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
    raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")


def sinkhorn(scores: tf.Tensor, epsilon: float = 0.05, iterations: int = 3) -> tf.Tensor:
  """SwAV's codes: Sinkhorn-Knopp equipartition of the GLOBAL batch over the K prototypes.

  With the N = R·B samples of every replica: Q = exp(S/ε)ᵀ [K, N], divided by its total sum, then
  `iterations` × (each row, a prototype, scaled to sum 1/K; each column, a sample, to 1/N); the
  codes are (N·Q)ᵀ, so each sample's codes sum to 1 and each prototype receives about N/K
  samples. The prototype sums run over the samples of every replica (an all-reduce per
  iteration); a sample's sum is local. No gradient flows through the codes.

  Numerical safety: exp(S/ε) would overflow for ε = 0.05 once S > 4.4. Each prototype's global
  maximum of S/ε (a max over the [R, K] gathered local maxima: there is no all-reduce max) is
  subtracted before exp. It cancels exactly: it scales Q's row k by a constant, and the first
  row normalisation divides that constant out. Per prototype rather than one global maximum, so
  that every row keeps an entry exp(0) = 1 and no prototype's row underflows to all zeros (0/0)
  when its scores are far below another prototype's.

  Args:
    scores: [B, K] this replica's samples' scores against the K prototypes (any float dtype).
    epsilon: ε > 0, the entropic regularisation (SwAV: 0.05).
    iterations: an int ≥ 1 (SwAV: 3).

  Returns:
    [B, K] float32 codes of this replica's samples: rows r·B ... of the global (N·Q)ᵀ.
  """
  if scores.shape.rank != 2:
    raise ValueError(f"scores must be [B, K], got shape {scores.shape}")
  _check_sinkhorn_arguments(epsilon, iterations)
  return _sinkhorn(tf.cast(scores, tf.float32)[None], epsilon, iterations)[0]


def _sinkhorn(scores: tf.Tensor, epsilon, iterations: int) -> tf.Tensor:
  """`sinkhorn` on V independent problems at once: float32 [V, B, K] -> [V, B, K].

  Q is kept as [V, B, K] (Qᵀ per problem): Q's rows (prototypes) are axis 2, its columns
  (samples) axis 1. One set of collectives serves all V problems.
  """
  context = _replica_context()
  num_replicas = context.num_replicas_in_sync
  scores = tf.stop_gradient(scores) / epsilon  # [V, B, K]
  num_prototypes = tf.cast(tf.shape(scores)[2], tf.float32)  # K
  num_samples = tf.cast(tf.shape(scores)[1] * num_replicas, tf.float32)  # N

  # 1) Subtract each prototype's global max (cancels, see `sinkhorn`): [V, K].
  shift = tf.reduce_max(scores, axis=1)
  if num_replicas > 1:
    shift = tf.reduce_max(gather_from_replicas(shift[None]), axis=0)  # [R, V, K] -> [V, K]
  q = tf.exp(scores - shift[:, None, :])  # [V, B, K]
  # 2) Q / sum(Q), summed over every replica's samples.
  q /= _sum_over_replicas(context, tf.reduce_sum(q, axis=[1, 2], keepdims=True))  # [V, 1, 1]
  for _ in range(iterations):
    # 3) Prototypes (Q's rows): each sums to 1/K over the GLOBAL batch.
    q /= _sum_over_replicas(context, tf.reduce_sum(q, axis=1, keepdims=True))  # [V, 1, K]
    q /= num_prototypes
    # 4) Samples (Q's columns): each sums to 1/N; a sample's K scores are all on this replica.
    q /= tf.reduce_sum(q, axis=2, keepdims=True)  # [V, B, 1]
    q /= num_samples
  return q * num_samples


def swav_loss(scores: tf.Tensor, temperature: float = 0.1, epsilon: float = 0.05,
              iterations: int = 3) -> tf.Tensor:
  """ρSwAV: predict each clip's Sinkhorn codes from every other clip of its video.

  Codes q_i = sinkhorn(S_i) per clip i (no gradient, each view equipartitioned over the global
  batch on its own, all ρ views in one set of collectives); the loss is the mean over ordered
  pairs (i, j), i ≠ j, and the N videos of −Σ_k q_ik · log softmax(S_j / τ)_k. The scores are not
  normalised here: they are already cosines of normalised embeddings and prototypes.

  Args:
    scores: [ρ, B, K] this replica's clips' scores against the K prototypes (any float dtype);
      ρ ≥ 2 must be static.
    temperature: τ > 0 of the prediction's softmax (SwAV: 0.1).
    epsilon: ε > 0 of `sinkhorn` (SwAV: 0.05).
    iterations: `sinkhorn`'s iterations, an int ≥ 1 (SwAV: 3).

  Returns:
    Scalar float32: this replica's share (local sum / global count ρ(ρ−1)·N; see the module
    docstring).
  """
  _check_positive("temperature", temperature)
  rho = _check_clips("scores", scores, last="K")
  _check_sinkhorn_arguments(epsilon, iterations)
  num_replicas = _replica_context().num_replicas_in_sync

  scores = tf.cast(scores, tf.float32)  # [ρ, B, K]
  codes = _sinkhorn(scores, epsilon, iterations)  # [ρ, B, K], no gradient
  log_prob = tf.nn.log_softmax(scores / temperature, axis=-1)  # [ρ, B, K]
  cross_entropy = -tf.einsum("ibk,jbk->ijb", codes, log_prob)  # [ρ, ρ, B] codes i, prediction j
  norm = tf.cast(tf.shape(scores)[1] * num_replicas * rho * (rho - 1), tf.float32)
  return tf.reduce_sum(_other_clip_mask(rho) * cross_entropy) / norm


def embedding_spread(embeddings: tf.Tensor) -> tf.Tensor:
  """How far a global batch of embeddings is from collapse: √D · mean_d std_n(z_nd).

  z are the L2-normalised rows of every replica, n runs over the global batch and d over the D
  dimensions. A coordinate of a unit vector spread evenly over the sphere has variance 1/D, so
  the value is about 1 for embeddings that use every direction, falls as they crowd into a few
  directions, and is 0 when every clip maps to one vector. It is SimSiam's collapse monitor (the
  std of the normalised output) times √D, comparable across output sizes. Collapse is how
  MoCo, BYOL and SwAV fail without a loss that shows it (benchmarks/RESULTS.md, the ρ-SSL demo
  runs): a collapsed SwAV sits at loss log K, a collapsed MoCo at a contrast accuracy that can
  still be high.

  One all-reduce of [2D + 1] sums (no gather); the variance is E[z²] − E[z]², clipped at 0.

  Args:
    embeddings: [M, D] this replica's rows, any float dtype; no gradient flows through.

  Returns:
    Scalar float32, this replica's share: summed over the replicas it is the global value.
  """
  if embeddings.shape.rank != 2:
    raise ValueError(f"embeddings must be [M, D], got shape {embeddings.shape}")
  context = _replica_context()
  z = tf.math.l2_normalize(tf.stop_gradient(tf.cast(embeddings, tf.float32)), axis=-1)
  count = tf.cast(tf.shape(z)[:1], tf.float32)                                    # [1]
  sums = _sum_over_replicas(context, tf.concat(
      [tf.reduce_sum(z, axis=0), tf.reduce_sum(tf.square(z), axis=0), count], axis=0))
  dim = z.shape[-1]
  mean, mean_square = sums[:dim] / sums[-1], sums[dim:2 * dim] / sums[-1]         # [D], [D]
  std = tf.sqrt(tf.maximum(mean_square - tf.square(mean), 0.0))
  return tf.reduce_mean(std) * (dim ** 0.5) / context.num_replicas_in_sync


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
