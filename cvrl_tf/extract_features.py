r"""Batch feature extraction with an export's serve_examples signature: TFRecords -> one .npz.

  python -m cvrl_tf.extract_features --saved_model=/exports/k400_linear_eval \
      --tfrecords='/data/k400/val-*.tfrecord' --output=val_features.npz

Runs the SavedModel of `python -m cvrl_tf.export` (loaded with TensorFlow alone) over every
record of the shards, in file order: the signature decodes each video, reads it as the export's
num_clips × num_crops views (assets/export_info.json) and averages them. The .npz holds one row
per video:

  features       [N, C] float32   pooled backbone features, averaged over the views
  video_id       [N] str
  label          [N] int32        clip/label/index; -1 for unlabelled records
  projection     [N, D] float32   pretraining exports: the projection head's output, averaged
  probabilities  [N, K] float32   classifier exports: softmax averaged over the views
  label_names    [K] str          when the export holds a label map

Read it with `np.load(path)` (no pickle needed). Every path may be on any file system TensorFlow
reads (local, gs://, ram://); the .npz is written to a temporary name and renamed into place.
"""

import os

if __name__ == "__main__":  # before TensorFlow is imported; importing the module changes nothing
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import io
import sys
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from cvrl_tf import input_pipeline
from cvrl_tf import schema
from cvrl_tf import storage

SIGNATURE = "serve_examples"


def load_signature(saved_model: str):
  """The serve_examples function of an export, or an error saying what `saved_model` lacks."""
  if not tf.saved_model.contains_saved_model(saved_model):
    raise FileNotFoundError(f"--saved_model={saved_model!r} holds no SavedModel (no "
                            "saved_model.pb): expected the --export_dir of cvrl_tf.export")
  loaded = tf.saved_model.load(saved_model)
  if SIGNATURE not in loaded.signatures:
    raise ValueError(f"{saved_model} has no {SIGNATURE!r} signature (it has "
                     f"{sorted(loaded.signatures)}): expected an export of cvrl_tf.export")
  return loaded.signatures[SIGNATURE]


def label_names(saved_model: str) -> Optional[list]:
  """The export's class names (assets/label_map.txt), or None."""
  path = storage.join(saved_model, "assets", schema.LABEL_MAP_FILE)
  return schema.read_label_map(path) if storage.exists(path) else None


def extract_features(saved_model: str, file_pattern: str, batch_size: int = 8,
                     log: Optional[Callable[[str], None]] = None) -> dict:
  """Per-video outputs of serve_examples over every record of `file_pattern`, in file order.

  Args:
    saved_model: an export directory.
    file_pattern: glob of TFRecord shards (several joined with commas).
    batch_size: records per signature call (each video's views are one batch inside).
    log: called with a progress line every 100 videos.

  Returns:
    {"features": [N, C], "video_id": [N] str, "label": [N] int32, and "projection" [N, D] or
    "probabilities" [N, K], and "label_names" [K] when the export has them}.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  signature = load_signature(saved_model)
  files = input_pipeline.list_files(file_pattern)
  dataset = tf.data.TFRecordDataset(files).batch(batch_size).prefetch(1)
  parts, count, start = {}, 0, time.monotonic()
  for batch in dataset:
    for name, value in signature(examples=batch).items():
      parts.setdefault(name, []).append(value.numpy())
    count += int(batch.shape[0])
    if log and count // 100 > (count - int(batch.shape[0])) // 100:
      log(f"{count} videos ({count / (time.monotonic() - start):.1f}/s)")
  if not count:
    raise ValueError(f"the shards of {file_pattern!r} hold no records")
  arrays = {name: np.concatenate(values) for name, values in parts.items()}
  arrays["video_id"] = np.array([v.decode("utf-8", "replace") for v in arrays["video_id"]])
  names = label_names(saved_model)
  if names is not None:
    arrays["label_names"] = np.array(names)
  return arrays


def write_npz(path: str, arrays: dict, overwrite: bool = False) -> None:
  """Writes `arrays` to `path` as .npz, atomically; an existing file needs `overwrite`."""
  if storage.exists(path) and not overwrite:
    raise FileExistsError(f"--output={path!r} already exists; pass --overwrite to replace it")
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  storage.atomic_write_bytes(path, buffer.getvalue())


def _define_flags() -> None:
  # Defined by the script only: importing this module must not claim flag names.
  from absl import flags
  flags.DEFINE_string("saved_model", None, "An export of cvrl_tf.export (its --export_dir).")
  flags.DEFINE_string("tfrecords", None, "Glob of TFRecord shards (comma-separated globs too).")
  flags.DEFINE_string("output", None, "The .npz to write.")
  flags.DEFINE_integer("batch_size", 8, "Videos per signature call.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")


def main(argv) -> int:
  from absl import app
  from absl import flags
  flags_ = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in ("saved_model", "tfrecords", "output"):
    if not getattr(flags_, name):
      raise app.UsageError(f"--{name} is required")
  log = lambda line: print(line, flush=True)
  try:
    if storage.exists(flags_.output) and not flags_.overwrite:  # before the work, not after
      raise FileExistsError(f"--output={flags_.output!r} already exists; pass --overwrite to "
                            "replace it")
    arrays = extract_features(flags_.saved_model, flags_.tfrecords, flags_.batch_size, log)
    write_npz(flags_.output, arrays, flags_.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  except tf.errors.InvalidArgumentError as error:  # a bad record: the message names the video
    print(f"error: {error.message.strip()[:2000]}", file=sys.stderr)
    return 1
  shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in sorted(arrays.items()))
  log(f"wrote {len(arrays['video_id'])} videos to {flags_.output}: {shapes}")
  return 0


if __name__ == "__main__":
  from cvrl_tf import cli
  _define_flags()
  cli.run(main)
