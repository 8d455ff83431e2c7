"""Tests of cvrl_tf.input_pipeline on tiny TFRecords whose frames encode their own index."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import input_pipeline as ip
from cvrl_tf import schema
from cvrl_tf import video_ops
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


# ρ clips per video.

# Every op on, view 2's blur and solarize differing from view 1's: what alternation must keep.
BUSY = AugmentationConfig(color_jitter_probability=1.0, grayscale_probability=0.3,
                          blur_probability_view_1=1.0, blur_probability_view_2=0.0,
                          solarize_probability_view_1=0.0, solarize_probability_view_2=1.0)


def _pair_path_example(serialized, seed, config, view_function):
  """make_pretrain_example as it was before ρ clips (the pair path), kept verbatim as the
  reference that ρ = 2 must reproduce bit for bit."""
  video = schema.parse_video(serialized)
  frames = video["frames"]
  aug = config.augmentation
  seeds = video_ops.split_seed(seed, 3)
  indices_1, indices_2 = video_ops.sample_clip_pair_indices(
      tf.shape(frames)[0], seeds[0], config.num_frames, config.stride, config.delta_exponent,
      config.temporal_augmentation)
  views = {}
  for view, indices, view_seed in ((1, indices_1, seeds[1]), (2, indices_2, seeds[2])):
    jpegs = ip._check_jpegs(tf.gather(frames, indices), video["video_id"])
    clip = ip._crop_view(jpegs, view_seed, config.num_frames, config.crop_size, aug.area_range,
                         aug.aspect_ratio_range, aug.flip_probability, aug.temporally_consistent,
                         view_function, view)
    views[f"view_{view}"] = tf.ensure_shape(
        clip, [config.num_frames, config.crop_size, config.crop_size, 3])
  return views


def _pair_path_dataset(config):
  # pretrain_dataset's own steps with the pair path's example function.
  seed = ip._base_seed(config.reader, None)
  records = ip._read_records(config.reader, None, training=True, seed=seed)
  view_function = ip._pretrain_view_function(config)
  examples = ip._map_examples(
      records, lambda s, k: _pair_path_example(s, k, config, view_function), config.reader, seed,
      None, training=True)
  return ip._finish(examples, config.reader, training=True)


def _example_views(record, seed, config, view_function=None):
  example = ip.make_pretrain_example(record, tf.constant(seed, tf.int64), config, view_function)
  return {key: value.numpy() for key, value in example.items()}


def _uint8_frame_indices(views):
  # [B, T, S, S, 3] uint8 (augment_in_step: cropped and flipped only) -> [B, T] frame indices.
  return np.stack([_frame_indices(clip / 255.0) for clip in np.asarray(views)])


def test_rho_2_pipeline_is_the_pair_path_bit_for_bit(records):
  # The whole pipeline (seeds per position, deterministic order) against its pair-path twin.
  # augment_in_step keeps the graphs small (fast); the colour chain is compared just below.
  config = ip.PretrainDataConfig(reader=_reader(records, seed=9, deterministic=True),
                                 num_frames=3, stride=4, crop_size=12, augmentation=BUSY,
                                 augment_in_step=True, use_xla=False)
  assert config.num_clips == 2 and config.temporal_sampling == "cvrl"
  new = [b for b in ip.pretrain_dataset(config).take(3)]
  old = [b for b in _pair_path_dataset(config).take(3)]
  for got, expected in zip(new, old):
    assert set(got) == set(expected) == {"view_1", "view_2"}
    for key in expected:
      np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy())
  assert not np.array_equal(new[0]["view_1"].numpy(), new[0]["view_2"].numpy())
  # Example by example with the full recipe (every colour op on, per-view blur and solarize),
  # a looped short video, and without temporal augmentation.
  colour = dataclasses.replace(config, augment_in_step=False)
  short = tf.constant(_video(_index_frames(7)))
  serialized = next(iter(tf.data.TFRecordDataset(tf.io.gfile.glob(records)[:1])))
  for variant in (colour, dataclasses.replace(colour, temporal_augmentation=False)):
    view_function = ip._pretrain_view_function(variant)
    for i, record in enumerate((serialized, short, serialized)):
      got = _example_views(record, [i, 31], variant, view_function)
      expected = _pair_path_example(record, tf.constant([i, 31], tf.int64), variant,
                                    view_function)
      assert set(got) == {"view_1", "view_2"}
      for key in expected:
        np.testing.assert_array_equal(got[key], expected[key].numpy())
      assert not np.array_equal(got["view_1"], got["view_2"])


def test_rho_3_pipeline_yields_three_strided_views(records):
  config = ip.PretrainDataConfig(reader=_reader(records, seed=4), num_frames=4, stride=3,
                                 crop_size=12, num_clips=3, augmentation=IDENTITY,
                                 augment_in_step=True, use_xla=False)
  assert config.view_names == ["view_1", "view_2", "view_3"]
  all_starts = []
  for batch in ip.pretrain_dataset(config).take(3):
    assert set(batch) == {"view_1", "view_2", "view_3"}
    starts = []
    for key in config.view_names:
      assert batch[key].shape == (2, 4, 12, 12, 3) and batch[key].dtype == tf.uint8
      indices = _uint8_frame_indices(batch[key])  # [B, T]
      np.testing.assert_array_equal(indices, indices[:, :1] + 3 * np.arange(4))
      starts.append(indices[:, 0])
    all_starts.append(np.stack(starts, axis=1))  # [B, 3]
  all_starts = np.concatenate(all_starts)
  # 30 frames, span 10: M = 21 valid starts.
  assert all_starts.min() >= 0 and all_starts.max() <= 20
  assert (all_starts[:, 0] != all_starts[:, 1]).any()  # clips differ in time
  # The colour pipeline gives float views of the same clips (same seed, same starts).
  example = _example_views(tf.constant(_video(_index_frames(30))), [1, 2],
                           dataclasses.replace(config, augment_in_step=False))
  cropped = _example_views(tf.constant(_video(_index_frames(30))), [1, 2], config)
  for key in config.view_names:
    assert example[key].dtype == np.float32 and example[key].shape == (4, 12, 12, 3)
    np.testing.assert_array_equal(_frame_indices(example[key]),
                                  _uint8_frame_indices(cropped[key][None])[0])


def test_rho_views_alternate_the_blur_and_solarize_probabilities():
  # Solarize view 2 always (threshold 0 inverts every pixel), view 1 never: with ρ = 4, views 2
  # and 4 come out inverted, views 1 and 3 as stored.
  recipe = dataclasses.replace(IDENTITY, solarize_probability_view_2=1.0, solarize_threshold=0.0)
  config = ip.PretrainDataConfig(num_frames=2, stride=2, crop_size=8, num_clips=4,
                                 augmentation=recipe, use_xla=False)
  record = tf.constant(_video(_index_frames(30)))
  for seed in ([0, 1], [5, 1]):
    views = _example_views(record, seed, config)
    for view, key in enumerate(config.view_names, start=1):
      clip = 1.0 - views[key] if view % 2 == 0 else views[key]
      indices = _frame_indices(clip)
      np.testing.assert_array_equal(indices, indices[0] + 2 * np.arange(2))


def test_uniform_sampling_reads_fps_and_keeps_clips_within_the_span(records, tmp_path):
  # fps 25 × 0.2 s = 5 stored frames between the earliest and the latest start, at most.
  config = ip.PretrainDataConfig(
      reader=_reader(records, seed=8, per_replica_batch_size=8), num_frames=2, stride=1,
      crop_size=8, num_clips=4, temporal_sampling="uniform", max_span_seconds=0.2,
      augmentation=IDENTITY, augment_in_step=True, use_xla=False)
  spreads = []
  for batch in ip.pretrain_dataset(config).take(4):
    starts = np.stack([_uint8_frame_indices(batch[key])[:, 0] for key in config.view_names],
                      axis=1)  # [B, 4]
    spreads += list(starts.max(axis=1) - starts.min(axis=1))
  assert max(spreads) <= 5 and max(spreads) >= 3
  record = tf.constant(_video(_index_frames(30)))
  same = dataclasses.replace(config, max_span_seconds=0.0)
  for seed in ([0, 1], [1, 1], [2, 1]):
    views = _example_views(record, seed, same)
    starts = [_uint8_frame_indices(views[key][None])[0, 0] for key in same.view_names]
    assert len(set(starts)) == 1
  # The reference release's records have no fps: a span cannot be converted, and says so.
  reference = tf.constant(_reference_format(_index_frames(12), label=7))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="video/fps.*must be > 0.*max_span_seconds=None"):
    _example_views(reference, [0, 1], config)
  # Without a span the frame rate is not read.
  whole = dataclasses.replace(config, max_span_seconds=None)
  assert _example_views(reference, [0, 1], whole)["view_4"].shape == (2, 8, 8, 3)


def _textured_frames(num_frames):
  # Frames with a horizontal ramp, edges and noise, so that a flip or another box shows.
  rng = np.random.default_rng(2)
  xx = np.arange(WIDTH)[None, :, None]
  frames = []
  for i in range(num_frames):
    frame = 5 * xx + 3 * i + rng.normal(0, 10, (HEIGHT, WIDTH, 3))
    frame[8:20, 5:15] = [240, 30, 90]
    frames.append(_jpeg(np.clip(frame, 0, 255)))
  return frames


@pytest.mark.parametrize("consistent", [True, False], ids=["per_clip", "per_frame"])
def test_opencv_and_tf_resize_draw_the_same_boxes_and_flips(consistent):
  # opencv_resize=False is the pipeline before OpenCV: TF's resize, the flip in XLA (here in TF).
  # Same seed, same boxes and coins: the views differ by OpenCV's rounding only (<= 1 grey level).
  record = tf.constant(_video(_textured_frames(30)))
  recipe = AugmentationConfig(temporally_consistent=consistent)
  opencv = ip.PretrainDataConfig(num_frames=4, stride=2, crop_size=16, augmentation=recipe,
                                 augment_in_step=True, use_xla=False)
  plain = dataclasses.replace(opencv, opencv_resize=False)
  unflipped = dataclasses.replace(opencv, augmentation=dataclasses.replace(
      recipe, flip_probability=0.0))
  mirrored = 0
  for i in range(6):
    got, expected = _example_views(record, [i, 7], opencv), _example_views(record, [i, 7], plain)
    never = _example_views(record, [i, 7], unflipped)
    for key in ("view_1", "view_2"):
      assert got[key].dtype == expected[key].dtype == np.uint8
      difference = np.abs(got[key].astype(int) - expected[key])
      assert difference.max() <= 1 and difference.mean() < 0.3, (i, key, difference.max())
      mirrored += sum(not np.array_equal(a, b) for a, b in zip(got[key], never[key]))
  assert 0 < mirrored < 6 * 2 * 4  # frames of views 1 and 2: the coins came up both ways
  # The host colour path: the same draws on inputs 1 grey level apart (uint8 against float).
  colour = dataclasses.replace(opencv, augment_in_step=False)
  got = _example_views(record, [3, 7], colour)
  expected = _example_views(record, [3, 7], dataclasses.replace(colour, opencv_resize=False))
  for key in ("view_1", "view_2"):
    assert got[key].dtype == np.float32
    assert np.abs(got[key] - expected[key]).mean() < 2 / 255


def test_opencv_colour_gives_the_compiled_chain_views():
  # opencv_color on (the default) and off: the same boxes, flips and colour draws (drawn under XLA,
  # as the compiled chain draws them: XLA's random numbers are not TF's kernels'), so views equal
  # to float rounding. tests/test_video_ops.py compares the chains over many draws without XLA.
  record = tf.constant(_video(_textured_frames(30)))
  host = ip.PretrainDataConfig(num_frames=4, stride=2, crop_size=32, augmentation=BUSY)
  assert host.use_xla and host.opencv_color and host.opencv_resize
  chain = dataclasses.replace(host, opencv_color=False)
  host_views, chain_views = ip._pretrain_view_function(host), ip._pretrain_view_function(chain)
  assert isinstance(host_views, ip._HostColorView)
  for i in range(4):
    got = _example_views(record, [i, 7], host, host_views)
    expected = _example_views(record, [i, 7], chain, chain_views)
    for key in ("view_1", "view_2"):
      assert got[key].dtype == np.float32 and got[key].shape == (4, 32, 32, 3)
      np.testing.assert_allclose(got[key], expected[key], atol=1e-5, rtol=0)
    assert not np.allclose(got["view_1"], got["view_2"], atol=0.05)
  # The chain stays in TF where the host cannot run it or must not.
  for change in ({"opencv_resize": False}, {"augment_in_step": True},
                 {"augmentation": dataclasses.replace(BUSY, temporally_consistent=False)}):
    assert not isinstance(ip._pretrain_view_function(dataclasses.replace(host, **change)),
                          ip._HostColorView)


def test_classification_clips_opencv_and_tf_resize_agree(records):
  record = tf.constant(_video(_textured_frames(30)))
  opencv = ip.ClassificationTrainDataConfig(num_frames=4, stride=2, crop_size=16, use_xla=False)
  plain = dataclasses.replace(opencv, opencv_resize=False)
  for i in range(4):
    seed = tf.constant([i, 5], tf.int64)
    got = ip.make_classification_train_example(record, seed, opencv)["video"].numpy()
    expected = ip.make_classification_train_example(record, seed, plain)["video"].numpy()
    assert got.dtype == np.float32 and 0 <= got.min() and got.max() <= 1
    np.testing.assert_allclose(got, expected, atol=1 / 255 + 1e-6)


def _op_types(function, *specs) -> set:
  """Op types in the traced graph of `function` and in every function it calls."""
  graph = tf.function(function).get_concrete_function(*specs).graph.as_graph_def()
  nodes = list(graph.node) + [node for f in graph.library.function for node in f.node_def]
  return {node.op for node in nodes}


PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def test_only_the_training_pipelines_call_python():
  # The exported SavedModel's examples signature runs make_eval_example and must load with
  # TensorFlow alone; opencv_resize=False gives a training graph that tf.data service can run.
  record = tf.TensorSpec([], tf.string)
  seed = tf.TensorSpec([2], tf.int64)
  evaluation = ip.EvalDataConfig(num_frames=2, stride=2, num_clips=2, num_crops=3, short_side=16,
                                 crop_size=16)
  assert not _op_types(lambda r: ip.make_eval_example(r, evaluation), record) & PYTHON_OPS
  pretrain = ip.PretrainDataConfig(num_frames=2, stride=2, crop_size=8, num_clips=3,
                                   use_xla=False)
  example = lambda config: lambda r, s: ip.make_pretrain_example(r, s, config)
  assert _op_types(example(pretrain), record, seed) & PYTHON_OPS == {"PyFuncStateless"}
  tf_only = dataclasses.replace(pretrain, opencv_resize=False)
  assert not _op_types(example(tf_only), record, seed) & PYTHON_OPS
  labelled = ip.ClassificationTrainDataConfig(num_frames=2, stride=2, crop_size=8, use_xla=False,
                                              opencv_resize=False)
  assert not _op_types(lambda r, s: ip.make_classification_train_example(r, s, labelled),
                       record, seed) & PYTHON_OPS


def test_augment_pretrain_batch_rho_views_each_with_its_own_seed():
  rng = np.random.default_rng(3)
  features = {f"view_{k}": tf.constant(rng.integers(0, 256, (2, 2, 8, 8, 3)), tf.uint8)
              for k in (1, 2, 3)}
  seed = tf.constant([4, 0])
  out = ip.augment_pretrain_batch(features, seed, BUSY)
  seeds = video_ops.split_seed(seed, 3)
  for k, view in ((1, 1), (2, 2), (3, 1)):
    expected = video_ops.augment_clips(features[f"view_{k}"], seeds[k - 1], BUSY, view=view)
    np.testing.assert_array_equal(out[f"view_{k}"].numpy(), expected.numpy())
  # ρ = 2: exactly the pair version's two calls.
  pair = {key: features[key] for key in ("view_1", "view_2")}
  out = ip.augment_pretrain_batch(pair, seed, BUSY)
  seeds = video_ops.split_seed(seed, 2)
  np.testing.assert_array_equal(out["view_1"], video_ops.augment_clips(pair["view_1"], seeds[0],
                                                                      BUSY, view=1))
  np.testing.assert_array_equal(out["view_2"], video_ops.augment_clips(pair["view_2"], seeds[1],
                                                                      BUSY, view=2))
  with pytest.raises(ValueError, match="view_1' .. 'view_ρ'.*'view_3'"):
    ip.augment_pretrain_batch({"view_1": pair["view_1"], "view_3": pair["view_2"]}, seed, BUSY)


def test_pretrain_config_validation_names_the_bad_value():
  with pytest.raises(ValueError, match="num_clips.*>= 2, got 1"):
    ip.PretrainDataConfig(num_clips=1)
  with pytest.raises(ValueError, match="temporal_sampling must be one of 'cvrl', 'uniform', "
                                       "got 'random'"):
    ip.PretrainDataConfig(temporal_sampling="random")
  with pytest.raises(ValueError, match="max_span_seconds must be None.*got -0.5"):
    ip.PretrainDataConfig(temporal_sampling="uniform", max_span_seconds=-0.5)
  # Ignored by "cvrl" (overrides may switch the sampling in either order).
  assert ip.PretrainDataConfig(max_span_seconds=2.0).max_span_seconds == 2.0


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
