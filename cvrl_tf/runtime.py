"""Where training runs: strategy choice, mixed precision, determinism, the run's working directory.

Library code: everything is a function of its arguments (the entry points read the flags).
"""

import json
import os
from typing import Callable, Sequence, Tuple

import keras
import tensorflow as tf

from cvrl_tf import storage

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")


def _cluster_workers() -> int:
  """Number of workers (chief included) that TF_CONFIG names; 0 without TF_CONFIG."""
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    return 0
  try:
    cluster = json.loads(raw).get("cluster", {})
  except json.JSONDecodeError as e:
    raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {raw[:200]!r}")
  return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy(kind: str = "auto", tpu: str = "") -> tf.distribute.Strategy:
  """The tf.distribute strategy to train with.

  auto: a TPU when `tpu` is given; MultiWorkerMirrored when TF_CONFIG names several workers;
  Mirrored over the local GPUs when there are several; else the default strategy (one device).

  Must be called before any other TensorFlow op runs (MultiWorkerMirrored and TPU set up the
  runtime).
  """
  if kind not in STRATEGIES:
    raise ValueError(f"strategy {kind!r} is not one of {', '.join(STRATEGIES)}")
  if kind == "auto":
    if tpu:
      kind = "tpu"
    elif _cluster_workers() > 1:
      kind = "multi_worker"
    elif len(tf.config.list_logical_devices("GPU")) > 1:
      kind = "mirrored"
    else:
      kind = "default"
  if kind == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  if kind == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  if kind == "mirrored":
    return tf.distribute.MirroredStrategy()
  return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's files (checkpoints, summaries, config)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not getattr(resolver, "task_type", None):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type == "chief" or (task_type == "worker" and task_id == 0
                                  and "chief" not in resolver.cluster_spec().as_dict())


def save_checkpoint(manager: tf.train.CheckpointManager, step: int,
                    strategy: tf.distribute.Strategy) -> None:
  """Saves `manager`'s checkpoint as number `step`; only the chief's copy is kept.

  MultiWorkerMirrored saving is collective (every worker must call save: reading the synced
  variables all-reduces), but only the chief's copy belongs in the run's directory. The other
  workers save into a private local scratch folder that is deleted at once, folder included.
  """
  if is_chief(strategy):
    manager.save(checkpoint_number=step)
    return
  resolver = strategy.cluster_resolver
  scratch = storage.make_local_scratch(
      prefix=f"cvrl_{resolver.task_type}{resolver.task_id}_checkpoint_")
  try:
    tf.train.CheckpointManager(manager.checkpoint, scratch, max_to_keep=1).save(
        checkpoint_number=step)
  finally:
    storage.remove(scratch)


def min_max_over_replicas(strategy: tf.distribute.Strategy
                          ) -> Callable[[int], Tuple[int, int]]:
  """A function `value -> (min, max)` of an int32 `value` over every replica of every worker.

  A collective: every worker must call it, in the same order as its other collectives. Built
  once (a traced tf.function; ~0.5 ms a call on one host); works for the default, Mirrored,
  MultiWorkerMirrored and TPU strategies (ReduceOp has only SUM and MEAN, so: gather, then
  reduce locally).
  """
  @tf.function
  def gather_min_max(value):
    per_replica = strategy.run(lambda v: tf.reshape(v, [1]), args=(value,))
    values = strategy.gather(per_replica, axis=0)  # [replicas]
    return tf.reduce_min(values), tf.reduce_max(values)

  def min_max(value: int) -> Tuple[int, int]:
    low, high = gather_min_max(tf.constant(value, tf.int32))
    return int(low.numpy()), int(high.numpy())

  return min_max


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def set_precision(policy: str) -> None:
  """float32, mixed_bfloat16 or mixed_float16 (16-bit compute, float32 variables; the pooled
  features, the heads' outputs, the losses and BN statistics stay float32). mixed_float16 needs
  loss scaling, which the training loop adds (cvrl_tf/loss_scale.py)."""
  if policy not in PRECISIONS:
    raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {policy!r}")
  keras.mixed_precision.set_global_policy(policy)


def set_determinism(seed: int, deterministic: bool) -> None:
  """Seeds Python, NumPy and TF; with `deterministic`, TF ops give the same result every run."""
  keras.utils.set_random_seed(seed)
  if deterministic:
    tf.config.experimental.enable_op_determinism()


def _variable(variable):
  """The tf.Variable (a DistributedVariable under a strategy) behind a Keras variable."""
  return variable.value if isinstance(variable, keras.Variable) else variable


def assign_each(variables: Sequence, new_value: Callable, *args) -> None:
  """variables[i] ← new_value(i, variables[i], *args) on every replica's copy, in place.

  Call in a replica context (inside `strategy.run`, or outside any strategy) with `args` that
  are the same on every replica (values computed alike on each, variables mirrored alike): each
  device then updates its own copy from its own inputs, with no communication — where an assign
  in the replica context would all-reduce, or fail for variables without an aggregation. This is
  how Keras's optimizers update variables under tf.distribute (merge_call + extended.update);
  tested under the default, Mirrored and MultiWorkerMirrored strategies, and the pattern Keras's
  optimizers run on TPUs.

  Args:
    variables: Keras or TF variables.
    new_value: (index, variable's local copy, *local args) -> its new value.
    *args: tensors, variables or nests of them; inside `new_value` each is this device's copy.
  """
  def merged(strategy, *merged_args):
    for i, variable in enumerate(variables):
      strategy.extended.update(
          _variable(variable), lambda local, *local_args, i=i: local.assign(
              new_value(i, local, *local_args)), args=merged_args, group=False)

  tf.distribute.get_replica_context().merge_call(merged, args=args)
