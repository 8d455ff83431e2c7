"""Multi-view evaluation: per-video predictions averaged over views, metrics and their files.

The paper's protocol (SPEC.md §2): each test video is read as num_clips clips evenly spaced in time
× num_crops crops (30 views); the softmax probabilities of the views are averaged, and the video is
scored by top-1 / top-5 of that average. `predict` runs a model over
`input_pipeline.padded_eval_dataset` batches, `classification_metrics` scores the result,
`write_report` writes metrics.json and, for small label sets, a confusion-matrix PNG.

Evaluation runs under the training strategy, on every replica of every host: each host reads its
share of the videos, each replica runs the model on its batches, and the per-video outputs are
gathered to every host (so all hosts hold the same results; only the chief writes files).
"""

import io
import time
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from cvrl_tf import schema
from cvrl_tf import storage

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
# Video ids cross hosts as numbers: collectives carry no strings, and a TPU takes none. The
# UTF-8 bytes of an id are packed four to an int32; bytes beyond this many are cut.
VIDEO_ID_BYTES = 256


def average_view_probabilities(logits: tf.Tensor) -> tf.Tensor:
  """Softmax per view, then the mean over views.

  Args:
    logits: [B, V, C].

  Returns:
    [B, C] float32; each row sums to 1.
  """
  return tf.reduce_mean(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), axis=1)


def average_views(model: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
                  video: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Runs `model` ([N, T, S, S, 3] clips -> dict of [N, ...] outputs) on every view of a batch.

  Args:
    video: [B, V, T, S, S, 3].

  Returns:
    The model's outputs averaged over V per video ("logits" become averaged softmax
    "probabilities"; other outputs are averaged as they are, in float32).
  """
  shape = tf.shape(video)
  batch, views = shape[0], shape[1]
  outputs = model(tf.reshape(video, tf.concat([[batch * views], shape[2:]], axis=0)))
  averaged = {}
  for name, value in outputs.items():
    value = tf.reshape(value, tf.concat([[batch, views], tf.shape(value)[1:]], axis=0))
    if name == "logits":
      averaged["probabilities"] = average_view_probabilities(value)
    else:
      averaged[name] = tf.reduce_mean(tf.cast(value, tf.float32), axis=1)
  return averaged


def view_function(model: Callable[[tf.Tensor], Dict[str, tf.Tensor]]) -> Callable:
  """`average_views` of `model` as a tf.function of the [B, V, T, S, S, 3] video batch."""
  return tf.function(lambda video: average_views(model, video), reduce_retracing=True)


def pack_video_ids(video_ids: tf.Tensor) -> tf.Tensor:
  """[B] string -> [B, VIDEO_ID_BYTES // 4] int32: the UTF-8 bytes, zero-padded (or cut)."""
  return tf.io.decode_raw(video_ids, tf.int32, little_endian=True, fixed_length=VIDEO_ID_BYTES)


def unpack_video_ids(packed: np.ndarray) -> np.ndarray:
  """Inverse of `pack_video_ids`: [N, VIDEO_ID_BYTES // 4] int32 -> [N] str."""
  raw = np.ascontiguousarray(packed, dtype="<i4").view(np.uint8).reshape(len(packed), -1)
  return np.array([bytes(row).rstrip(b"\0").decode("utf-8", "replace") for row in raw], dtype=str)


def _replica_inputs(batch: dict) -> dict:
  """A batch as the replicas take it: numbers only, and a "valid" mask (all rows if absent)."""
  inputs = {"video": batch["video"], "label": tf.cast(batch["label"], tf.int32),
            "video_id": pack_video_ids(batch["video_id"]),
            "valid": batch.get("valid", tf.ones_like(batch["label"], tf.bool))}
  if "position" in batch:
    inputs["position"] = batch["position"]
  return inputs


def _distribute(strategy: tf.distribute.Strategy, dataset):
  """`dataset` (a Dataset, or a function of an InputContext) as a distributed dataset."""
  if isinstance(dataset, tf.data.Dataset):
    if strategy.num_replicas_in_sync > 1:
      raise ValueError(
          f"a tf.data.Dataset runs on one replica; for {strategy.num_replicas_in_sync} replicas "
          "pass a function of a tf.distribute.InputContext that returns "
          "input_pipeline.padded_eval_dataset(config, context)")
    whole = dataset
    dataset = lambda _: whole

  def replica_batches(context):
    batches = dataset(context)
    if context.num_replicas_in_sync > 1 and "valid" not in batches.element_spec:
      # Without padding, hosts would run out of batches at different steps and the collectives
      # of the one with more would wait forever.
      raise ValueError(
          "evaluation on several replicas needs endless padded batches with a 'valid' mask "
          f"(input_pipeline.padded_eval_dataset); got batches of {sorted(batches.element_spec)}")
    return batches.map(_replica_inputs)

  return strategy.distribute_datasets_from_function(replica_batches)


def predict(model: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
            dataset: Union[tf.data.Dataset, Callable[[tf.distribute.InputContext],
                                                     tf.data.Dataset]],
            log: Optional[Callable[[str], None]] = None,
            strategy: Optional[tf.distribute.Strategy] = None) -> Dict[str, np.ndarray]:
  """Runs `model` over every view of every video (one pass) on every replica of `strategy`.

  Call it on every host (with MultiWorkerMirroredStrategy every worker must): each runs the same
  number of steps, and each gets every video's outputs.

  Args:
    model: [N, T, S, S, 3] -> {"logits": [N, C], and/or other [N, ...] outputs}; its variables
      created under `strategy`'s scope.
    dataset: a function of a tf.distribute.InputContext returning that host's
      input_pipeline.padded_eval_dataset (any strategy), or a finite tf.data.Dataset of
      input_pipeline.eval_dataset batches (one replica only). Rows with valid=False never count.
    log: called with where the evaluation runs, a progress line every 100 steps, and the total.
    strategy: the default strategy (one device) if None.

  Returns:
    {"label": [N] int32, "video_id": [N] str, and per output its view average: "probabilities"
    [N, C] for "logits", "<name>" [N, ...] otherwise}, for the N real videos: in file order
    (file by file, record by record) when the batches carry "position", else as read.
  """
  strategy = strategy or tf.distribute.get_strategy()
  distributed = _distribute(strategy, dataset)

  @tf.function(reduce_retracing=True)
  def count_valid(batch):  # valid rows of the step on all replicas of all hosts (same everywhere)
    counts = strategy.run(lambda inputs: tf.reduce_sum(tf.cast(inputs["valid"], tf.int32)),
                          args=(batch,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, counts, axis=None)

  @tf.function(reduce_retracing=True)
  def step(batch):
    def replica_step(inputs):
      outputs = average_views(model, inputs["video"])
      outputs.update({name: value for name, value in inputs.items() if name != "video"})
      outputs["valid"] = tf.cast(outputs["valid"], tf.int32)  # collectives gather no bools
      return outputs

    outputs = strategy.run(replica_step, args=(batch,))
    # [R·B, ...] on every host, replica by replica (the workers' replicas in task order).
    return {name: strategy.gather(value, axis=0) for name, value in outputs.items()}

  replicas = strategy.num_replicas_in_sync
  where = f"{replicas} replica(s) ({type(strategy).__name__})"
  parts, videos, start = {}, 0, time.monotonic()
  for index, batch in enumerate(distributed):
    if index == 0 and log:
      video = strategy.experimental_local_results(batch["video"])[0]  # [B, V, T, S, S, 3]
      log(f"evaluating {video.shape[1]} views per video on {where}, {video.shape[0]} videos per "
          "replica per step")
    if int(count_valid(batch)) == 0:  # every host's videos are done
      break
    outputs = {name: value.numpy() for name, value in step(batch).items()}
    valid = outputs.pop("valid").astype(bool)
    for name, value in outputs.items():
      parts.setdefault(name, []).append(value[valid])
    videos += int(valid.sum())
    if log and (index + 1) % 100 == 0:
      log(f"evaluated {videos} videos")
  if not videos:
    raise ValueError("the evaluation dataset is empty: no videos to evaluate")
  if log:
    log(f"evaluated {videos} videos on {where} in {time.monotonic() - start:.1f} s")
  return _assemble(parts)


def _assemble(parts: Dict[str, list]) -> Dict[str, np.ndarray]:
  """The valid rows of every step, concatenated, ids unpacked, in file order if positioned."""
  outputs = {name: np.concatenate(values) for name, values in parts.items()}
  outputs["video_id"] = unpack_video_ids(outputs["video_id"])
  position = outputs.pop("position", None)
  if position is not None:
    order = np.lexsort((position[:, 1], position[:, 0]))  # by file, then by record
    outputs = {name: value[order] for name, value in outputs.items()}
  return outputs


def top_k_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """[N] bool: whether labels[i] is among the k highest scores[i] (ties broken by class index).

  Args:
    scores: [N, C] probabilities or any scores.
    labels: [N] ints in [0, C).
  """
  k = min(k, scores.shape[1])
  # A stable sort of the negated scores: of equal scores, the lower class index ranks first.
  ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.any(ranked == labels[:, None], axis=1)


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[C, C] int64 counts: row = true class, column = predicted class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predicted), 1)
  return matrix


def classification_metrics(scores: np.ndarray, labels: np.ndarray,
                           label_names: Optional[Sequence[str]] = None) -> dict:
  """Top-1, top-5, mean per-class accuracy and per-class accuracies of per-video scores.

  Args:
    scores: [N, C] view-averaged probabilities (or kNN votes).
    labels: [N] ints in [0, C).
    label_names: C names for the per-class entries (default: the class indices).

  Returns:
    {"num_videos", "top1", "top5", "mean_class_accuracy", "per_class_accuracy" {name: accuracy
    or None for classes without videos}, "confusion_matrix" [C][C] lists}.
  """
  num_classes = scores.shape[1]
  labels = np.asarray(labels, np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
  names = list(label_names) if label_names is not None else [str(i) for i in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} label names for {num_classes} classes")
  matrix = confusion_matrix(np.argmax(scores, axis=1), labels, num_classes)
  counts = matrix.sum(axis=1)
  per_class = {name: (float(matrix[c, c] / counts[c]) if counts[c] else None)
               for c, name in enumerate(names)}
  present = [value for value in per_class.values() if value is not None]
  return {
      "num_videos": int(labels.size),
      "top1": float(np.mean(top_k_correct(scores, labels, 1))),
      "top5": float(np.mean(top_k_correct(scores, labels, 5))),
      "mean_class_accuracy": float(np.mean(present)) if present else 0.0,
      "per_class_accuracy": per_class,
      "confusion_matrix": matrix.tolist(),
  }


def find_label_map(label_map: str, file_pattern: str) -> Optional[str]:
  """`label_map` if set, else the label_map.txt beside the first shard of `file_pattern`."""
  if label_map:
    if not storage.exists(label_map):
      raise FileNotFoundError(f"evaluation.label_map={label_map!r} does not exist")
    return label_map
  files = storage.glob(file_pattern.split(",")[0].strip())
  if files:
    candidate = storage.join(storage.dirname(files[0]), schema.LABEL_MAP_FILE)
    if storage.exists(candidate):
      return candidate
  return None


def label_names(label_map_path: Optional[str], num_classes: int) -> list:
  """Names of the classes from a label map, checked against num_classes; indices without one."""
  if not label_map_path:
    return [str(i) for i in range(num_classes)]
  names = schema.read_label_map(label_map_path)
  if len(names) != num_classes:
    raise ValueError(f"{label_map_path} names {len(names)} classes but evaluation.num_classes is "
                     f"{num_classes}; set evaluation.num_classes={len(names)} or point "
                     "evaluation.label_map at the dataset's label map")
  return names


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], path: str,
                          title: str = "") -> None:
  """Writes a row-normalised confusion matrix as a PNG (atomically, on any file system)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot

  rows = matrix.sum(axis=1, keepdims=True)
  normalised = matrix / np.maximum(rows, 1)
  size = max(4.0, 0.35 * len(names) + 2.5)
  figure, axes = pyplot.subplots(figsize=(size, size))
  image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
  axes.set_xticks(range(len(names)), labels=names, rotation=90, fontsize=7)
  axes.set_yticks(range(len(names)), labels=names, fontsize=7)
  axes.set_xlabel("predicted")
  axes.set_ylabel("true")
  if len(names) <= 16:
    for (row, column), count in np.ndenumerate(matrix):
      if count:
        axes.text(column, row, str(count), ha="center", va="center", fontsize=7,
                  color="white" if normalised[row, column] > 0.5 else "black")
  axes.set_title(title, fontsize=9)
  figure.colorbar(image, ax=axes, fraction=0.046)
  figure.tight_layout()
  png = io.BytesIO()
  figure.savefig(png, format="png", dpi=110)
  pyplot.close(figure)
  storage.atomic_write_bytes(path, png.getvalue())


def write_report(workdir: str, metrics: dict, names: Sequence[str], max_plot_classes: int,
                 history: Optional[list] = None, file_name: str = METRICS_FILE) -> str:
  """Writes <workdir>/metrics.json (+ confusion_matrix.png up to `max_plot_classes` classes).

  Args:
    metrics: classification_metrics(...) plus anything else to record (step, protocol).
    history: earlier evaluations of the run ([{"step", "top1", "top5"}]), kept in the file.

  Returns:
    The path of the metrics file.
  """
  record = dict(metrics)
  if history is not None:
    record["history"] = history
  path = storage.join(workdir, file_name)
  storage.atomic_write_json(path, record)
  if len(names) <= max_plot_classes:
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), names,
                          storage.join(workdir, storage.splitext(file_name)[0].replace(
                              "metrics", "confusion_matrix") + ".png"),
                          title=f"top-1 {metrics['top1']:.1%} on {metrics['num_videos']} videos")
  return path


def read_history(workdir: str, file_name: str = METRICS_FILE) -> list:
  """The `history` of an earlier metrics file of the run (for resumed runs), else []."""
  path = storage.join(workdir, file_name)
  if not storage.exists(path):
    return []
  return storage.read_json(path).get("history", [])
