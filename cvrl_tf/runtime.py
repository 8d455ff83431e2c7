"""Where training runs: strategy choice, mixed precision, determinism, the run's working directory.

Library code: everything is a function of its arguments (the entry points read the flags).
"""

import json
import os
import shutil
import tempfile
import keras
import tensorflow as tf

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


def save_dir(directory: str, strategy: tf.distribute.Strategy) -> str:
  """Where this worker saves: `directory` on the chief, a private scratch folder elsewhere.

  MultiWorkerMirrored saving is collective (every worker must call save), but only the chief's
  copy belongs in the run's directory; the others are discarded after each save.
  """
  if is_chief(strategy):
    return directory
  resolver = strategy.cluster_resolver
  return tempfile.mkdtemp(prefix=f"cvrl_{resolver.task_type}{resolver.task_id}_checkpoint_")


def discard_scratch(saved_in: str, directory: str) -> None:
  """Deletes a non-chief worker's scratch copy (see save_dir); keeps the chief's."""
  if os.path.abspath(saved_in) != os.path.abspath(directory):
    for name in os.listdir(saved_in):
      path = os.path.join(saved_in, name)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def set_precision(policy: str) -> None:
  """float32 or mixed_bfloat16 (bfloat16 compute, float32 variables; the loss stays float32)."""
  if policy not in ("float32", "mixed_bfloat16"):
    raise ValueError(f"mixed_precision must be float32 or mixed_bfloat16, got {policy!r}")
  keras.mixed_precision.set_global_policy(policy)


def set_determinism(seed: int, deterministic: bool) -> None:
  """Seeds Python, NumPy and TF; with `deterministic`, TF ops give the same result every run."""
  keras.utils.set_random_seed(seed)
  if deterministic:
    tf.config.experimental.enable_op_determinism()
