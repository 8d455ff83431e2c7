"""The TFRecord contract: round trip, and readability by the reference release's and DMVR's parsers."""

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import schema
from cvrl_tf import storage


def _jpegs(n, height=8, width=12):
  return [tf.io.encode_jpeg(tf.fill([height, width, 3], tf.constant(20 * i, tf.uint8)),
                            quality=95).numpy() for i in range(n)]


def _record(**overrides):
  kwargs = dict(video_id="-abcdefghij_000010_000020", filename="train/-abcdefghij_000010_000020.mp4",
                fps=25.0, height=8, width=12, start_us=10_000_000, end_us=20_000_000,
                label_index=3, label_text="tying knot (not on a tie)")
  kwargs.update(overrides)
  return schema.serialize_video(_jpegs(4), **kwargs)


def test_round_trip_pins_every_key():
  example = tf.train.SequenceExample.FromString(_record())
  context = example.context.feature
  assert sorted(context) == sorted([
      "clip/label/index", "clip/label/text", "video/filename", "clip/start/timestamp",
      "clip/end/timestamp", "video/id", "video/fps", "video/num_frames", "image/height",
      "image/width", "image/format"])
  assert context["clip/label/index"].int64_list.value == [3]
  assert context["clip/label/text"].bytes_list.value == [b"tying knot (not on a tie)"]
  assert context["video/filename"].bytes_list.value == [b"train/-abcdefghij_000010_000020.mp4"]
  assert context["clip/start/timestamp"].int64_list.value == [10_000_000]
  assert context["clip/end/timestamp"].int64_list.value == [20_000_000]
  assert context["video/fps"].float_list.value == [25.0]
  assert context["video/num_frames"].int64_list.value == [4]
  assert (context["image/height"].int64_list.value, context["image/width"].int64_list.value) == (
      [8], [12])
  frames = example.feature_lists.feature_list["image/encoded"].feature
  assert [f.bytes_list.value[0] for f in frames] == _jpegs(4)


def test_parse_video_reads_our_records():
  parsed = schema.parse_video(tf.constant(_record()))
  assert parsed["label"].numpy() == 3
  assert parsed["label_text"].numpy() == b"tying knot (not on a tie)"
  assert parsed["video_id"].numpy() == b"-abcdefghij_000010_000020"
  frames = tf.map_fn(lambda j: tf.io.decode_jpeg(j, channels=3), parsed["frames"],
                     fn_output_signature=tf.uint8)
  np.testing.assert_allclose(frames.numpy().mean(axis=(1, 2, 3)), [0, 20, 40, 60], atol=2)


def test_unlabelled_record_has_no_label_keys():
  example = tf.train.SequenceExample.FromString(_record(label_index=None, label_text=None))
  assert "clip/label/index" not in example.context.feature
  assert schema.parse_video(tf.constant(example.SerializeToString()))["label"].numpy() == -1


def test_serialization_is_deterministic():
  assert _record() == _record()


def test_reference_release_decoder_reads_our_records():
  # The reference release (Model Garden video_input.Decoder, used by video_ssl) parses exactly:
  context, sequence = tf.io.parse_single_sequence_example(
      _record(),
      context_features={"clip/label/index": tf.io.VarLenFeature(tf.int64)},
      sequence_features={"image/encoded": tf.io.FixedLenSequenceFeature((), tf.string)})
  assert tf.sparse.to_dense(context["clip/label/index"]).numpy().tolist() == [3]
  assert sequence["image/encoded"].shape == [4]
  image = tf.io.decode_image(sequence["image/encoded"][1], channels=3)
  assert abs(float(tf.reduce_mean(tf.cast(image, tf.float32))) - 20) < 2


def test_dmvr_style_parser_reads_our_records():
  # DMVR's Kinetics reader: FixedLen context keys plus the frames.
  context, sequence = tf.io.parse_single_sequence_example(
      _record(),
      context_features={
          "clip/label/index": tf.io.FixedLenFeature((), tf.int64),
          "clip/label/text": tf.io.FixedLenFeature((), tf.string),
          "video/filename": tf.io.FixedLenFeature((), tf.string),
          "clip/start/timestamp": tf.io.FixedLenFeature((), tf.int64),
          "clip/end/timestamp": tf.io.FixedLenFeature((), tf.int64)},
      sequence_features={"image/encoded": tf.io.FixedLenSequenceFeature((), tf.string)})
  assert context["clip/end/timestamp"].numpy() - context["clip/start/timestamp"].numpy() == 10**7
  assert sequence["image/encoded"].shape == [4]


def test_reference_format_record_parses():
  example = tf.train.SequenceExample()
  example.context.feature["clip/label/index"].int64_list.value.append(7)
  for jpeg in _jpegs(2):
    example.feature_lists.feature_list["image/encoded"].feature.add().bytes_list.value.append(jpeg)
  parsed = schema.parse_video(tf.constant(example.SerializeToString()))
  assert parsed["label"].numpy() == 7 and parsed["frames"].shape == [2]


def test_record_without_frames_is_refused():
  with pytest.raises(ValueError, match="has no frames"):
    schema.serialize_video([], video_id="v", filename="v.mp4", fps=25, height=1, width=1,
                           start_us=0, end_us=0)
  with pytest.raises(tf.errors.InvalidArgumentError, match="image/encoded"):
    schema.parse_video(tf.constant(tf.train.SequenceExample().SerializeToString()))


def test_label_map_format_and_errors(tmp_path):
  labels = schema.build_label_map(["b", "a (x)", "b", "c d"])
  assert labels == ["a (x)", "b", "c d"]
  path = tmp_path / "label_map.txt"
  path.write_text(schema.format_label_map(labels))
  assert schema.read_label_map(str(path)) == labels
  path.write_text("a\n\nb\n")
  with pytest.raises(ValueError, match="label_map.txt:2: empty line"):
    schema.read_label_map(str(path))
  path.write_text("a\nb\na\n")
  with pytest.raises(ValueError, match="'a' appears more than once"):
    schema.read_label_map(str(path))
  with pytest.raises(ValueError, match="cannot be stored"):
    schema.format_label_map(["two\nlines"])
  # Only "\n" ends a label: other Unicode line breaks are part of it.
  odd = ["a\x0bb", "c\u2028d", "e"]
  path.write_text(schema.format_label_map(odd), encoding="utf-8")
  assert schema.read_label_map(str(path)) == odd


def test_atomic_write_replaces_whole_file(tmp_path):
  path = tmp_path / "f.txt"
  storage.atomic_write_bytes(str(path), b"one")
  storage.atomic_write_bytes(str(path), b"two")
  assert path.read_bytes() == b"two"
  assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
