"""The on-disk contract: one `tf.train.SequenceExample` per video, JPEG frames, and the files beside the shards.

The dataset builder writes with `serialize_video` and the input pipeline reads with
`parse_video`; both import the keys from here so they cannot drift. The layout is the one the
reference release (TF Model Garden `video_ssl`) and DMVR-based readers expect:

  feature_lists  image/encoded          one JPEG per stored frame (frames lie on a constant
                                        `video/fps` grid: stored frame i shows time i / fps)
  context        clip/label/index       int64, index into label_map.txt (labelled videos only)
                 clip/label/text        bytes, the label as written in the annotations
                 video/filename         bytes, source file relative to the video root
                 clip/start/timestamp   int64 µs, clip start in the source video (Kinetics: time_start)
                 clip/end/timestamp     int64 µs, clip end in the source video
                 video/id               bytes, YouTube id or relative path: unique within a split
                 video/fps              float, the stored frame rate
                 video/num_frames       int64, len(image/encoded)
                 image/height, image/width  int64, stored frame size after rotation and resizing
                 image/format           bytes, b"jpeg"
"""

from typing import Optional, Sequence

import tensorflow as tf

from cvrl_tf import storage

IMAGE_KEY = "image/encoded"
LABEL_INDEX_KEY = "clip/label/index"
LABEL_TEXT_KEY = "clip/label/text"
FILENAME_KEY = "video/filename"
START_TIMESTAMP_KEY = "clip/start/timestamp"
END_TIMESTAMP_KEY = "clip/end/timestamp"
VIDEO_ID_KEY = "video/id"
FPS_KEY = "video/fps"
NUM_FRAMES_KEY = "video/num_frames"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
FORMAT_KEY = "image/format"

FORMAT_NAME = "cvrl_tf.video_tfrecord.v1"
LABEL_MAP_FILE = "label_map.txt"
DATASET_INFO_FILE = "dataset_info.json"
FAILURES_FILE = "failures.csv"
NO_LABEL = -1


def shard_name(split: str, index: int, num_shards: int) -> str:
  """`train-00003-of-00016.tfrecord`."""
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_pattern(split: str) -> str:
  """Glob that matches every shard of `split`."""
  return f"{split}-?????-of-?????.tfrecord"


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _int64(values: Sequence[int]) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _float(values: Sequence[float]) -> tf.train.Feature:
  return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def serialize_video(
    jpeg_frames: Sequence[bytes],
    *,
    video_id: str,
    filename: str,
    fps: float,
    height: int,
    width: int,
    start_us: int,
    end_us: int,
    label_index: Optional[int] = None,
    label_text: Optional[str] = None,
) -> bytes:
  """One video as a serialized SequenceExample.

  Args:
    jpeg_frames: [T] encoded JPEG frames on the `fps` grid.
    video_id: unique id within the split (YouTube id or relative path).
    filename: the source file, relative to the video root.
    fps, height, width: stored frame rate and frame size.
    start_us, end_us: the clip's span in its source video, in microseconds.
    label_index, label_text: both or neither (unlabelled test videos).

  Returns:
    The serialized `tf.train.SequenceExample`.
  """
  if not jpeg_frames:
    raise ValueError(f"video {video_id!r} has no frames; a stored video needs at least one")
  if (label_index is None) != (label_text is None):
    raise ValueError(
        f"video {video_id!r}: give both label_index and label_text or neither, got "
        f"label_index={label_index!r}, label_text={label_text!r}")
  context = {
      FILENAME_KEY: _bytes([filename.encode()]),
      VIDEO_ID_KEY: _bytes([video_id.encode()]),
      START_TIMESTAMP_KEY: _int64([start_us]),
      END_TIMESTAMP_KEY: _int64([end_us]),
      FPS_KEY: _float([fps]),
      NUM_FRAMES_KEY: _int64([len(jpeg_frames)]),
      HEIGHT_KEY: _int64([height]),
      WIDTH_KEY: _int64([width]),
      FORMAT_KEY: _bytes([b"jpeg"]),
  }
  if label_index is not None:
    context[LABEL_INDEX_KEY] = _int64([label_index])
    context[LABEL_TEXT_KEY] = _bytes([label_text.encode()])
  example = tf.train.SequenceExample(context=tf.train.Features(feature=context))
  # Appending in place copies each JPEG once; building Feature objects first copies it twice
  # (measured: 14 vs 24 ms for 200 frames of 27 KB).
  frames = example.feature_lists.feature_list[IMAGE_KEY].feature
  for jpeg in jpeg_frames:
    frames.add().bytes_list.value.append(jpeg)
  # Deterministic: map fields (context, feature_lists) in key order, so equal inputs give equal
  # bytes in every process and the builder's shards are reproducible.
  return example.SerializeToString(deterministic=True)


# Only `image/encoded` is required: the reference release's own records carry nothing but the
# frames and `clip/label/index`, and must read unchanged.
_CONTEXT_SPEC = {
    LABEL_INDEX_KEY: tf.io.VarLenFeature(tf.int64),
    LABEL_TEXT_KEY: tf.io.VarLenFeature(tf.string),
    VIDEO_ID_KEY: tf.io.VarLenFeature(tf.string),
    FILENAME_KEY: tf.io.VarLenFeature(tf.string),
}
_SEQUENCE_SPEC = {IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)}


def _first_or(sparse: tf.sparse.SparseTensor, default) -> tf.Tensor:
  dense = tf.sparse.to_dense(sparse, default_value=default)
  return tf.concat([dense, [default]], axis=0)[0]


def parse_video(serialized: tf.Tensor) -> dict:
  """Parses one serialized SequenceExample (ours or the reference release's).

  Args:
    serialized: scalar tf.string.

  Returns:
    {"frames": [T] tf.string JPEGs, "label": int64 scalar (NO_LABEL when absent),
     "label_text": string, "video_id": string (falls back to video/filename, else "")}.

  Raises:
    tf.errors.InvalidArgumentError naming `image/encoded` when a record has no frames.
  """
  context, sequence = tf.io.parse_single_sequence_example(
      serialized, context_features=_CONTEXT_SPEC, sequence_features=_SEQUENCE_SPEC)
  frames = sequence[IMAGE_KEY]
  tf.debugging.assert_positive(
      tf.size(frames),
      message=f"a video record has no frames under the feature list '{IMAGE_KEY}'")
  video_id = _first_or(context[VIDEO_ID_KEY], "")
  filename = _first_or(context[FILENAME_KEY], "")
  return {
      "frames": frames,
      "label": _first_or(context[LABEL_INDEX_KEY], tf.constant(NO_LABEL, tf.int64)),
      "label_text": _first_or(context[LABEL_TEXT_KEY], ""),
      "video_id": tf.where(tf.strings.length(video_id) > 0, video_id, filename),
  }


def build_label_map(labels) -> list:
  """Sorted unique labels: the same indices whatever order or split the labels came from."""
  return sorted(set(labels))


def format_label_map(label_map: Sequence[str]) -> str:
  """label_map.txt: one label per line, line number = index."""
  for label in label_map:
    if not label or "\n" in label or "\r" in label or label != label.strip():
      raise ValueError(
          f"label {label!r} cannot be stored in {LABEL_MAP_FILE}: labels must be non-empty, "
          "on one line, without leading or trailing spaces")
  return "".join(f"{label}\n" for label in label_map)


def read_label_map(path: str) -> list:
  """Reads label_map.txt written by `format_label_map` (blank lines are refused, not skipped)."""
  # "\n" only: str.splitlines() also splits on \x0b, \x85, \u2028..., which may sit in a label.
  lines = storage.read_bytes(path).decode("utf-8").split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  lines = [line[:-1] if line.endswith("\r") else line for line in lines]
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      raise ValueError(f"{path}:{number}: empty line in a label map; expected one label per line")
  if len(set(lines)) != len(lines):
    duplicate = next(label for label in lines if lines.count(label) > 1)
    raise ValueError(f"{path}: label {duplicate!r} appears more than once")
  return lines


def read_dataset_info(directory: str) -> dict:
  """Reads `dataset_info.json` of a built dataset, with an error that says how to make one."""
  path = storage.join(directory, DATASET_INFO_FILE)
  if not storage.exists(path):
    raise FileNotFoundError(
        f"{path} does not exist: {directory!r} is not a dataset built by "
        "dataset_tools/build_tfrecords.py")
  return storage.read_json(path)
