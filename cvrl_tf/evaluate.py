"""Multi-view evaluation: per-video predictions averaged over views, metrics and their files.

The paper's protocol (SPEC.md §2): each test video is read as num_clips clips evenly spaced in time
× num_crops crops (30 views); the softmax probabilities of the views are averaged, and the video is
scored by top-1 / top-5 of that average. `predict` runs a model over `input_pipeline.eval_dataset`
batches, `classification_metrics` scores the result, `write_report` writes metrics.json and, for
small label sets, a confusion-matrix PNG.

Evaluation runs on the calling host's default device, outside the training strategy: on a cluster
only the chief evaluates (the others wait at their next collective).
"""

import json
import os
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from cvrl_tf import schema
from cvrl_tf import storage

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"


def average_view_probabilities(logits: tf.Tensor) -> tf.Tensor:
  """Softmax per view, then the mean over views.

  Args:
    logits: [B, V, C].

  Returns:
    [B, C] float32; each row sums to 1.
  """
  return tf.reduce_mean(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), axis=1)


def view_function(model: Callable[[tf.Tensor], Dict[str, tf.Tensor]]) -> Callable:
  """Wraps `model` ([N, T, S, S, 3] clips -> dict of [N, ...] outputs) for [B, V, ...] videos.

  Returns:
    A tf.function: {"video": [B, V, T, S, S, 3]} -> the model's outputs averaged over V per video
    ("logits" become averaged softmax "probabilities"; other outputs are averaged as they are).
  """

  @tf.function(reduce_retracing=True)
  def run(video):
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

  return run


def predict(model: Callable[[tf.Tensor], Dict[str, tf.Tensor]], dataset: tf.data.Dataset,
            log: Optional[Callable[[str], None]] = None) -> Dict[str, np.ndarray]:
  """Runs `model` over every view of every video of `dataset` (one pass).

  Args:
    model: [N, T, S, S, 3] -> {"logits": [N, C], and/or other [N, ...] outputs}.
    dataset: batches of input_pipeline.eval_dataset ({"video": [B, V, ...], "label", "video_id"}).
    log: called with a progress line every 100 batches.

  Returns:
    {"label": [N] int32, "video_id": [N] str, and per output its view average: "probabilities"
    [N, C] for "logits", "<name>" [N, ...] otherwise}.
  """
  run = view_function(model)
  parts = {}
  for index, batch in enumerate(dataset):
    outputs = {name: value.numpy() for name, value in run(batch["video"]).items()}
    outputs["label"] = batch["label"].numpy()
    outputs["video_id"] = np.array([v.decode("utf-8", "replace") for v in batch["video_id"].numpy()])
    for name, value in outputs.items():
      parts.setdefault(name, []).append(value)
    if log and (index + 1) % 100 == 0:
      log(f"evaluated {sum(len(p) for p in parts['label'])} videos")
  if not parts:
    raise ValueError("the evaluation dataset is empty: no videos to evaluate")
  return {name: np.concatenate(values) for name, values in parts.items()}


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
    if not tf.io.gfile.exists(label_map):
      raise FileNotFoundError(f"evaluation.label_map={label_map!r} does not exist")
    return label_map
  files = sorted(tf.io.gfile.glob(file_pattern.split(",")[0].strip()))
  if files:
    candidate = os.path.join(os.path.dirname(files[0]), schema.LABEL_MAP_FILE)
    if tf.io.gfile.exists(candidate):
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
  """Writes a row-normalised confusion matrix as a PNG (atomically)."""
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
  temporary = f"{path}.tmp-{os.getpid()}.png"
  figure.savefig(temporary, dpi=110)
  pyplot.close(figure)
  os.replace(temporary, path)


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
  path = os.path.join(workdir, file_name)
  storage.atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
  if len(names) <= max_plot_classes:
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), names,
                          os.path.join(workdir, os.path.splitext(file_name)[0].replace(
                              "metrics", "confusion_matrix") + ".png"),
                          title=f"top-1 {metrics['top1']:.1%} on {metrics['num_videos']} videos")
  return path


def read_history(workdir: str, file_name: str = METRICS_FILE) -> list:
  """The `history` of an earlier metrics file of the run (for resumed runs), else []."""
  path = os.path.join(workdir, file_name)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return json.load(f).get("history", [])
