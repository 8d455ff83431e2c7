"""Tests of cvrl_tf.input_pipeline on tiny TFRecords whose frames encode their own index."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import input_pipeline as ip
from cvrl_tf import schema
from cvrl_tf.video_ops import AugmentationConfig

HEIGHT, WIDTH = 32, 48
# No colour change, no flip, whole-frame crops: a view's pixel values are its frames' values.
IDENTITY = AugmentationConfig(area_range=(1.0, 1.0), aspect_ratio_range=(1.5, 1.5),
                              flip_probability=0.0, color_jitter_probability=0.0,
                              grayscale_probability=0.0, blur_probability_view_1=0.0,
                              blur_probability_view_2=0.0, solarize_probability_view_2=0.0)


def _jpeg(array):
  return tf.io.encode_jpeg(np.asarray(array, np.uint8), quality=100).numpy()


def _index_frames(num_frames):
  # Frame i is uniformly grey at 8 * i: decodes back to within ±2 of that value.
  return [_jpeg(np.full((HEIGHT, WIDTH, 3), 8 * i)) for i in range(num_frames)]


def _write(path, records):
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)


def _video(frames, label=1, video_id="v"):
  return schema.serialize_video(frames, video_id=video_id, filename=video_id + ".mp4", fps=25.0,
                                height=HEIGHT, width=WIDTH, start_us=0, end_us=10**6,
                                label_index=label, label_text=f"class {label}")


def _reference_format(frames, label):
  # The reference release's records: only the frames and clip/label/index.
  example = tf.train.SequenceExample(
      context=tf.train.Features(feature={schema.LABEL_INDEX_KEY: tf.train.Feature(
          int64_list=tf.train.Int64List(value=[label]))}),
      feature_lists=tf.train.FeatureLists(feature_list={schema.IMAGE_KEY: tf.train.FeatureList(
          feature=[tf.train.Feature(bytes_list=tf.train.BytesList(value=[f])) for f in frames])}))
  return example.SerializeToString()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  directory = tmp_path_factory.mktemp("records")
  for shard in range(2):
    _write(str(directory / schema.shard_name("train", shard, 2)),
           [_video(_index_frames(30), label=shard, video_id=f"v{shard}")])
  return str(directory / schema.shard_pattern("train"))


def _reader(pattern, **kwargs):
  return ip.ReaderConfig(file_pattern=pattern, **{"per_replica_batch_size": 2,
                                                  "shuffle_buffer_size": 4, **kwargs})


def _frame_indices(clip):
  # [T, H, W, 3] float in [0, 1] -> the index each frame encodes.
  values = np.asarray(clip).reshape(len(clip), -1)
  assert np.ptp(values, axis=1).max() < 4 / 255
  return np.round(values.mean(axis=1) * 255 / 8).astype(int)


def test_pretrain_pairs_sample_strided_clips(records):
  config = ip.PretrainDataConfig(reader=_reader(records, seed=1), num_frames=4, stride=3,
                                 crop_size=12, augmentation=IDENTITY, use_xla=False)
  batch = next(iter(ip.pretrain_dataset(config)))
  assert set(batch) == {"view_1", "view_2"}
  for key in ("view_1", "view_2"):
    assert batch[key].shape == (2, 4, 12, 12, 3) and batch[key].dtype == tf.float32
    for clip in batch[key].numpy():
      indices = _frame_indices(clip)
      np.testing.assert_array_equal(indices, indices[0] + 3 * np.arange(4))
      assert 0 <= indices[0] <= 30 - 10


def test_pretrain_default_recipe_with_xla(records):
  config = ip.PretrainDataConfig(reader=_reader(records, seed=2), num_frames=2, stride=2,
                                 crop_size=16)
  batch = next(iter(ip.pretrain_dataset(config)))
  for key in ("view_1", "view_2"):
    view = batch[key].numpy()
    assert view.shape == (2, 2, 16, 16, 3) and 0 <= view.min() and view.max() <= 1


def test_deterministic_mode_repeats_exactly(records):
  config = ip.PretrainDataConfig(reader=_reader(records, seed=5, deterministic=True),
                                 num_frames=2, stride=2, crop_size=8, use_xla=False)
  first = [b["view_2"].numpy() for b in ip.pretrain_dataset(config).take(2)]
  second = [b["view_2"].numpy() for b in ip.pretrain_dataset(config).take(2)]
  np.testing.assert_array_equal(first, second)
  other = dataclasses.replace(config, reader=dataclasses.replace(config.reader, seed=6))
  third = [b["view_2"].numpy() for b in ip.pretrain_dataset(other).take(2)]
  assert not np.array_equal(first, third)


def test_augment_in_step_yields_uint8_for_the_training_step(records):
  config = ip.PretrainDataConfig(reader=_reader(records, seed=3), num_frames=2, stride=2,
                                 crop_size=8, augment_in_step=True)
  batch = next(iter(ip.pretrain_dataset(config)))
  assert batch["view_1"].dtype == tf.uint8 and batch["view_1"].shape == (2, 2, 8, 8, 3)
  step = tf.function(lambda f, s: ip.augment_pretrain_batch(f, s, config.augmentation),
                     jit_compile=True)
  out = step(batch, tf.constant([4, 0]))
  for key in ("view_1", "view_2"):
    assert out[key].dtype == tf.float32 and out[key].shape == (2, 2, 8, 8, 3)
    assert 0 <= out[key].numpy().min() and out[key].numpy().max() <= 1


def test_input_context_shards_files_and_scales_the_batch(records):
  config = ip.ClassificationTrainDataConfig(reader=_reader(records, seed=1), num_frames=2,
                                            stride=2, crop_size=8, use_xla=False)
  labels = []
  for pipeline in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                         num_replicas_in_sync=4)
    assert ip.global_batch_size(2, context) == 8
    batch = next(iter(ip.classification_train_dataset(config, context)))
    assert batch["video"].shape == (2, 2, 8, 8, 3)
    labels.append(set(batch["label"].numpy().tolist()))
  # Each host reads only its own file: shard 0 holds label 0, shard 1 label 1.
  assert labels == [{0}, {1}]


def test_reference_format_record_reads(tmp_path):
  path = str(tmp_path / "reference.tfrecord")
  _write(path, [_reference_format(_index_frames(12), label=7)])
  train = ip.ClassificationTrainDataConfig(reader=_reader(path, per_replica_batch_size=1),
                                           num_frames=4, stride=2, crop_size=8, use_xla=False)
  batch = next(iter(ip.classification_train_dataset(train)))
  assert batch["label"].numpy().tolist() == [7]
  indices = _frame_indices(batch["video"].numpy()[0])
  np.testing.assert_array_equal(indices, indices[0] + 2 * np.arange(4))
  pretrain = ip.PretrainDataConfig(reader=_reader(path, per_replica_batch_size=1), num_frames=4,
                                   stride=2, crop_size=8, use_xla=False)
  assert next(iter(ip.pretrain_dataset(pretrain)))["view_1"].shape == (1, 4, 8, 8, 3)


def test_eval_views_exact_positions(tmp_path):
  # Frame t: column x has value 4 * x + t (x < 48, t < 40); short side already 32 = crop size.
  frames = [_jpeg(np.broadcast_to(4 * np.arange(WIDTH)[None, :, None] + t, (HEIGHT, WIDTH, 3)))
            for t in range(40)]
  path = str(tmp_path / "eval.tfrecord")
  _write(path, [_video(frames, label=3)])
  config = ip.EvalDataConfig(reader=_reader(path, per_replica_batch_size=1), num_frames=2,
                             stride=5, num_clips=3, num_crops=3, short_side=32, crop_size=32)
  batch = next(iter(ip.eval_dataset(config)))
  video = batch["video"].numpy()[0] * 255  # [V = 9, T = 2, 32, 32, 3]
  assert video.shape == (9, 2, 32, 32, 3) and batch["label"].numpy().tolist() == [3]
  # span 6, last start 34: clips start at 0, 17, 34; crops start at x = 0, 8, 16.
  for clip, start in enumerate((0, 17, 34)):
    for crop, x in enumerate((0, 8, 16)):
      for t in range(2):
        frame = video[clip * 3 + crop, t]
        expected = 4 * (x + np.arange(32)) + start + 5 * t
        np.testing.assert_allclose(frame[HEIGHT // 2, :, 0], expected, atol=3)
  offsets = ip.three_crop_offsets(tf.constant(256), tf.constant(340), 256, 3).numpy()
  np.testing.assert_array_equal(offsets, [[0, 0], [0, 42], [0, 84]])
  portrait = ip.three_crop_offsets(tf.constant(300), tf.constant(256), 224, 1).numpy()
  np.testing.assert_array_equal(portrait, [[38, 16]])


@pytest.fixture(scope="module")
def bad_records(tmp_path_factory):
  directory = tmp_path_factory.mktemp("bad")
  no_frames = tf.train.SequenceExample(context=tf.train.Features(feature={
      schema.LABEL_INDEX_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[0]))}))
  files = {
      "good": [_video(_index_frames(6), label=1, video_id="good")],
      "missing": [no_frames.SerializeToString()],
      "garbage": [_video([b"not a jpeg"] * 6, label=2, video_id="broken_video")],
  }
  paths = {}
  for name, recs in files.items():
    paths[name] = str(directory / f"{name}.tfrecord")
    _write(paths[name], recs)
  return paths


def _eval_config(pattern, skip_corrupt=False):
  return ip.EvalDataConfig(reader=_reader(pattern, per_replica_batch_size=1,
                                          skip_corrupt=skip_corrupt),
                           num_frames=2, stride=2, num_clips=1, num_crops=1, short_side=32,
                           crop_size=32)


@pytest.mark.parametrize("name, message", [
    ("missing", "image/encoded"), ("garbage", "not JPEG data.*broken_video")])
def test_bad_records_raise_a_clear_error(bad_records, name, message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    next(iter(ip.eval_dataset(_eval_config(bad_records[name]))))
  config = ip.PretrainDataConfig(reader=_reader(bad_records[name]), num_frames=2, stride=2,
                                 crop_size=8, use_xla=False)
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    next(iter(ip.pretrain_dataset(config)))


def test_skip_corrupt_drops_and_counts(bad_records):
  pattern = ",".join(bad_records[name] for name in ("good", "missing", "garbage"))
  counter = ip.CorruptRecordCounter()
  batches = list(ip.eval_dataset(_eval_config(pattern, skip_corrupt=True), counter=counter))
  assert [b["label"].numpy().tolist() for b in batches] == [[1]]
  assert counter.dropped == 2


def test_no_files_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
    ip.pretrain_dataset(ip.PretrainDataConfig(reader=_reader(str(tmp_path / "*.tfrecord"))))
  with pytest.raises(ValueError, match="num_crops must be 1 or 3, got 2"):
    ip.EvalDataConfig(num_crops=2)
