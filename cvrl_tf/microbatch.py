"""The paper's global batch in less memory: one step's batch in k chunks (train.microbatches).

  split(tensor [B, ...], k, axis)   k equal chunks along the batch axis
  in_sequence(inputs, fn)           fn over each chunk, chunk c + 1 only once chunk c is done
  gradient_cache(...)               a batch-level loss (contrastive: every negative in the batch)
                                    with the activations of one chunk at a time
  accumulate(...)                   a loss that is a sum over examples: per-chunk gradients, summed

Contrastive losses couple every clip of the global batch (the negatives), so their gradient cannot
be accumulated chunk by chunk. The gradient cache (Gao et al., "Scaling Deep Contrastive Learning
Batch Size under Memory Limited Setup", 2021) splits the network from the loss:

  1. the embeddings of each chunk, forward only: no activation is kept     [ρ, B/k, D] each
  2. the loss of the whole batch from the concatenated embeddings, and its gradient G with respect
     to them (cheap: [ρ, B, D])
  3. each chunk again, under the tape, back-propagating its rows of G: Σ_c ∂(E_c · G_c)/∂θ

which is the gradient of the loss over the whole batch, exactly, for a network whose outputs for
an example do not depend on the other examples of its chunk. Batch normalisation in training mode
does depend on them: each chunk normalises with its own statistics (synchronised over replicas
with SyncBN, so over k · replicas chunks of B/k videos), as it would in a batch of B/k per replica,
and its moving statistics take one update per chunk. Peak activation memory is that of one chunk.

Chunk c + 1 starts only after chunk c is done (control dependencies), so the runtime cannot
schedule two chunks' activations at once and undo the saving.
"""

from typing import Callable, List, Sequence

import tensorflow as tf

from cvrl_tf import runtime


def split(tensor: tf.Tensor, k: int, axis: int = 0) -> List[tf.Tensor]:
  """`tensor` in k equal chunks along `axis`, in order.

  Raises:
    ValueError: the axis's (static) size is not a multiple of k.
  """
  size = tensor.shape[axis]
  if size is not None and size % k:
    raise ValueError(f"a batch of {size} does not split into {k} equal microbatches; use a "
                     f"per-replica batch that is a multiple of train.microbatches={k}")
  return tf.split(tensor, k, axis=axis)


def after(dependencies, structure):
  """`structure` (a nest of tensors) made to wait for `dependencies` (a nest; None ignored)."""
  tensors = [t for t in tf.nest.flatten(dependencies) if t is not None]
  with tf.control_dependencies(tensors):
    return tf.nest.map_structure(tf.identity, structure)


def in_sequence(inputs: Sequence, fn: Callable, start_after=None) -> list:
  """[fn(0, inputs[0]), fn(1, inputs[1]), ...], each call's inputs waiting for the previous
  call's outputs, the first call's for `start_after` (a nest of tensors) when given."""
  outputs = []
  for i, chunk in enumerate(inputs):
    previous = outputs[-1] if outputs else start_after
    if previous is not None:
      chunk = after(previous, chunk)
    outputs.append(fn(i, chunk))
  return outputs


def add(totals: list, gradients: list) -> list:
  """Element-wise sum of two gradient lists; None (unconnected) counts as zero."""
  return [g if t is None else t if g is None else t + g for t, g in zip(totals, gradients)]


def gradient_cache(chunks: Sequence, embed: Callable, targets: Callable, loss_on: Callable,
                   variables: Sequence, loss_variables: Sequence = (),
                   reset_after_forward: Sequence = ()):
  """The gradient of a batch-level loss, one chunk's activations at a time.

  Args:
    chunks: the k inputs (each anything `embed` takes).
    embed: chunk -> [ρ, b, D] embeddings, differentiable with respect to `variables` (b = B/k).
    targets: chunk -> tuple of [ρ, b, ...] tensors the loss needs without gradient; () if none.
    loss_on: (embeddings [ρ, B, D], targets of the whole batch) -> (loss scalar, aux): the loss
      whose gradient is taken, and anything else to return (metrics, state).
    variables: what `embed` is differentiated with respect to.
    loss_variables: what `loss_on` uses directly (a predictor, prototypes).
    reset_after_forward: variables `embed` changes as a side effect (BN moving statistics): set
      back to their values before step 1 once it is done, so that only step 3 updates them, as
      one forward pass per chunk would.

  Returns:
    (aux, gradients): `loss_on`'s aux over the whole batch, and the gradients of `variables`
    followed by those of `loss_variables` (None where unconnected).
  """
  before = [tf.identity(v) for v in reset_after_forward]
  forward = in_sequence(chunks, lambda i, chunk: (tf.stop_gradient(embed(chunk)), targets(chunk)))
  embeddings = tf.concat([e for e, _ in forward], axis=1)                         # [ρ, B, D]
  whole_targets = tuple(tf.concat(parts, axis=1) for parts in zip(*[t for _, t in forward]))
  if reset_after_forward:
    with tf.control_dependencies([embeddings]):
      runtime.assign_each(reset_after_forward, lambda i, variable, values: values[i], before)
  with tf.GradientTape() as tape:
    tape.watch(embeddings)
    loss, aux = loss_on(embeddings, whole_targets)
  embedding_gradient, *loss_gradients = tape.gradient(
      loss, [embeddings, *loss_variables])                                         # [ρ, B, D]
  parts = split(embedding_gradient, len(chunks), axis=1)

  # Only the chunk waits, not its rows of G: Grappler's dependency optimizer fails on a graph
  # whose slices of G wait for the previous chunk's gradients (and then leaves it unoptimised).
  def backward(i, chunk):
    with tf.GradientTape() as chunk_tape:
      # Σ E_c · G_c: its gradient is the chunk's share of the whole loss's gradient.
      surrogate = tf.reduce_sum(embed(chunk) * parts[i])
    return chunk_tape.gradient(surrogate, list(variables))

  # The second pass waits for G: its first chunk's forward would otherwise start with the first
  # pass and hold its activations through it, for the whole batch's loss.
  totals = [None] * len(variables)
  for gradients in in_sequence(chunks, backward, start_after=embedding_gradient):
    totals = add(totals, gradients)
  return aux, totals + list(loss_gradients)


def accumulate(chunks: Sequence, loss: Callable, variables: Sequence):
  """Σ_c ∇ loss(chunk_c): for a loss that is a sum over examples (each chunk's share of the batch
  mean), the gradient of the whole batch's loss, computed one chunk at a time.

  Args:
    chunks: the k inputs.
    loss: chunk -> (loss scalar, aux tuple of tensors to sum over chunks).
    variables: what the loss is differentiated with respect to.

  Returns:
    (aux summed over the chunks, gradients of `variables`).
  """
  def one(i, chunk):
    del i
    with tf.GradientTape() as tape:
      value, aux = loss(chunk)
    return aux, tape.gradient(value, list(variables))

  totals, summed = [None] * len(variables), None
  for aux, gradients in in_sequence(chunks, one):
    totals = add(totals, gradients)
    summed = aux if summed is None else tf.nest.map_structure(tf.add, summed, aux)
  return summed, totals
