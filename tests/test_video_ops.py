"""Exact-value tests of cvrl_tf.video_ops: tf.range "videos", the Δ density, consistency, tf.data."""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from cvrl_tf import video_ops
from cvrl_tf.video_ops import AugmentationConfig

SEED = tf.constant([7, 11], tf.int32)


def _seed(i):
  return tf.constant([i, 1234], tf.int32)


def _progression(indices, stride, num_stored):
  """True when `indices` is start, start + stride, ... modulo num_stored."""
  indices = np.asarray(indices)
  expected = (indices[0] + stride * np.arange(len(indices))) % num_stored
  return np.array_equal(indices, expected)


# Temporal sampling.


def test_clip_pair_on_range_video_is_two_strided_runs_delta_apart():
  video = tf.range(100)  # frame i holds the value i
  gaps, orders = [], []
  for i in range(40):
    clip_1, clip_2 = video_ops.sample_clip_pair(video, _seed(i), num_frames=16, stride=2)
    clip_1, clip_2 = clip_1.numpy(), clip_2.numpy()
    for clip in (clip_1, clip_2):
      assert clip.shape == (16,)
      np.testing.assert_array_equal(clip, clip[0] + 2 * np.arange(16))
      # A clip spans 31 stored frames: the last valid start is 100 - 31 = 69.
      assert 0 <= clip[0] <= 69
    gaps.append(abs(int(clip_2[0]) - int(clip_1[0])))
    orders.append(clip_2[0] > clip_1[0])
  assert max(gaps) <= 69
  assert 0 < sum(orders) < 40  # the later clip comes first sometimes: the order is random


def test_clip_pair_of_video_exactly_one_span_long_is_the_whole_video_twice():
  clip_1, clip_2 = video_ops.sample_clip_pair(tf.range(31), SEED, num_frames=16, stride=2)
  np.testing.assert_array_equal(clip_1, np.arange(0, 31, 2))
  np.testing.assert_array_equal(clip_2, np.arange(0, 31, 2))


def test_short_video_loops():
  for i in range(20):
    indices_1, indices_2 = video_ops.sample_clip_pair_indices(10, _seed(i), num_frames=8, stride=2)
    for indices in (indices_1.numpy(), indices_2.numpy()):
      assert _progression(indices, 2, 10) and indices.min() >= 0 and indices.max() < 10
  # Start 7 of a 10-frame video, 8 frames at stride 2: 7, 9, 1, 3, 5, 7, 9, 1.
  indices = video_ops._clip_indices(tf.constant([7]), tf.constant(10), 8, 2)[0]
  np.testing.assert_array_equal(indices, [7, 9, 1, 3, 5, 7, 9, 1])


def test_without_temporal_augmentation_both_clips_share_their_start():
  starts = set()
  for i in range(30):
    for length in (100, 10):  # long enough, and looped
      indices_1, indices_2 = video_ops.sample_clip_pair_indices(
          length, _seed(i), num_frames=8, stride=2, temporal_augmentation=False)
      np.testing.assert_array_equal(indices_1, indices_2)
      starts.add((length, int(indices_1[0])))
  assert len(starts) > 20  # the start itself is still random


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_delta_follows_its_density(exponent):
  num_starts, draws = 20, 20000
  seeds = tf.random.experimental.stateless_split(tf.constant([5, 6], tf.int64), draws)
  sample = tf.function(lambda s: tf.map_fn(
      lambda seed: video_ops.sample_delta(seed, num_starts, exponent), s,
      fn_output_signature=tf.int32))
  deltas = sample(seeds).numpy()
  counts = np.bincount(deltas, minlength=num_starts)
  assert len(counts) == num_starts
  expected = np.array(video_ops.delta_probabilities(num_starts, exponent)) * draws
  assert abs(expected.sum() - draws) < 1e-6
  _, p_value = scipy.stats.chisquare(counts, expected)
  assert p_value > 1e-3, (counts, expected)


def test_delta_probabilities_linear_case_is_the_paper_density():
  # (2/M)(1 - Δ/M) integrated over [k, k + 1].
  m = 10
  expected = [(2 / m) * (1 - (k + 0.5) / m) for k in range(m)]
  np.testing.assert_allclose(video_ops.delta_probabilities(m, 1.0), expected, atol=1e-12)


def test_gap_between_sampled_clips_follows_the_density():
  # 16 x 2 clips of a 50-frame video: M = 20 valid starts.
  draws = 6000
  seeds = tf.random.experimental.stateless_split(tf.constant([1, 2], tf.int64), draws)
  pairs = tf.function(lambda s: tf.map_fn(
      lambda seed: tf.stack(video_ops.sample_clip_pair_indices(50, seed, 16, 2))[:, 0], s,
      fn_output_signature=tf.int32))(seeds).numpy()
  counts = np.bincount(np.abs(pairs[:, 0] - pairs[:, 1]), minlength=20)
  _, p_value = scipy.stats.chisquare(counts, np.array(video_ops.delta_probabilities(20, 1.0)) * draws)
  assert p_value > 1e-3
  distinct = pairs[pairs[:, 0] != pairs[:, 1]]
  assert 0.45 < np.mean(distinct[:, 0] < distinct[:, 1]) < 0.55  # random order


def test_single_clip_indices():
  for i in range(20):
    indices = video_ops.sample_clip_indices(40, _seed(i), num_frames=8, stride=3).numpy()
    assert _progression(indices, 3, 40) and 0 <= indices[0] <= 40 - 22


def test_linspace_clip_indices_exact():
  indices = video_ops.linspace_clip_indices(100, num_clips=4, num_frames=4, stride=2).numpy()
  # span 7, last start 93: starts 0, 31, 62, 93.
  np.testing.assert_array_equal(indices[:, 0], [0, 31, 62, 93])
  np.testing.assert_array_equal(indices[3], [93, 95, 97, 99])
  centre = video_ops.linspace_clip_indices(100, num_clips=1, num_frames=4, stride=2).numpy()
  np.testing.assert_array_equal(centre, [[46, 48, 50, 52]])
  short = video_ops.linspace_clip_indices(5, num_clips=2, num_frames=4, stride=2).numpy()
  np.testing.assert_array_equal(short, [[0, 2, 4, 1], [0, 2, 4, 1]])


# Spatial ops.


def test_crop_boxes_respect_area_and_aspect_ranges():
  boxes = video_ops.sample_crop_boxes(tf.constant([120, 160]), SEED, 64).numpy()
  y, x, h, w = boxes.T
  assert (y >= 0).all() and (x >= 0).all() and (y + h <= 120).all() and (x + w <= 160).all()
  area = h * w / (120 * 160)
  assert (area >= 0.29).all() and (area <= 1.0).all()
  aspect = w / h
  assert (aspect >= 0.45).all() and (aspect <= 2.1).all()
  assert len({tuple(b) for b in boxes}) > 32  # per-frame boxes differ


def test_resize_windows_matches_tf_image_resize_and_flip():
  rng = np.random.default_rng(0)
  canvas = rng.integers(0, 256, size=(3, 40, 48, 3)).astype(np.uint8)
  for height, width in ((40, 48), (17, 29), (40, 10)):
    expected = tf.image.resize(canvas[:, :height, :width], [24, 24]).numpy()
    got = video_ops.resize_windows(canvas, tf.constant([[height, width]]), 24,
                                   tf.constant([False])).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3)
    flipped = video_ops.resize_windows(canvas, tf.constant([[height, width]]), 24,
                                       tf.constant([True])).numpy()
    np.testing.assert_allclose(flipped, expected[:, :, ::-1], atol=1e-3)


def test_decode_jpeg_windows_equals_crop_of_full_decode():
  rng = np.random.default_rng(1)
  frames = [tf.io.encode_jpeg(rng.integers(0, 256, (32, 48, 3)).astype(np.uint8)) for _ in range(2)]
  boxes = tf.constant([[3, 5, 20, 30]])
  canvas = video_ops.decode_jpeg_windows(tf.stack(frames), boxes, 2, tf.constant([64, 64])).numpy()
  assert canvas.shape == (2, 64, 64, 3)
  for t in range(2):
    full = tf.io.decode_jpeg(frames[t]).numpy()
    np.testing.assert_array_equal(canvas[t, :20, :30], full[3:23, 5:35])
  assert (canvas[:, 20:] == 0).all() and (canvas[:, :, 30:] == 0).all()


# Colour ops against their definitions.


def test_saturation_and_hue_match_tf_image():
  x = tf.random.stateless_uniform([2, 8, 8, 3], SEED)
  np.testing.assert_allclose(
      video_ops.adjust_saturation_and_hue(x, tf.constant([1.5])[:, None, None, None], tf.zeros([1, 1, 1, 1])),
      tf.clip_by_value(tf.image.adjust_saturation(x, 1.5), 0, 1), atol=1e-5)
  np.testing.assert_allclose(
      video_ops.adjust_saturation_and_hue(x, tf.ones([1, 1, 1, 1]), tf.constant([0.3])[:, None, None, None]),
      tf.clip_by_value(tf.image.adjust_hue(x, 0.3), 0, 1), atol=1e-5)


@pytest.mark.parametrize("factor", [0.0, 0.2, 1.0, 1.5, 1.8])
def test_closed_form_saturation_matches_tf_image(factor):
  # Includes grey, black, white and fully saturated pixels, where S is 0 or clips at 1.
  x = tf.concat([tf.random.stateless_uniform([2, 8, 8, 3], SEED),
                 tf.constant([[[[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.3],
                                [0.9, 0.1, 0.9], [0.2, 0.25, 0.2], [1e-7, 0.0, 0.0],
                                [0.6, 0.4, 0.5]]] * 8] * 2)], axis=2)
  expected = tf.image.adjust_saturation(x, factor)
  np.testing.assert_allclose(video_ops.adjust_saturation(x, factor), expected, atol=2e-6)
  compiled = tf.function(video_ops.adjust_saturation, jit_compile=True)
  np.testing.assert_allclose(compiled(x, tf.constant(factor)), expected, atol=2e-6)
  # A broadcast factor per leading index, as in the vectorised jitter.
  per_image = tf.constant([factor, 1.0])[:, None, None, None]
  np.testing.assert_allclose(video_ops.adjust_saturation(x, per_image)[1], x[1], atol=2e-6)


@pytest.mark.parametrize("shape, axes", [((3, 5, 7, 3), [0, 1, 2]), ((2, 3, 5, 7, 3), [1, 2, 3]),
                                         ((2, 3, 5, 7, 3), [2, 3]), ((3, 5, 7, 3), [1]),
                                         ((3, 5, 7, 3), [0, 2])])
def test_channel_mean_equals_reduce_mean(shape, axes):
  x = tf.random.stateless_uniform(shape, SEED)
  expected = tf.reduce_mean(x, axis=axes, keepdims=True)
  got = video_ops.channel_mean(x, axes)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(tf.function(video_ops.channel_mean, jit_compile=True)(x, axes),
                             expected, rtol=1e-6)


def test_solarize_and_grayscale_values():
  x = tf.constant([[[[0.2, 0.5, 0.9]]]])
  np.testing.assert_allclose(video_ops.solarize(x), [[[[0.2, 0.5, 0.1]]]], atol=1e-7)
  gray = 0.2989 * 0.2 + 0.587 * 0.5 + 0.114 * 0.9
  np.testing.assert_allclose(video_ops.to_grayscale(x), [[[[gray] * 3]]], atol=1e-4)


def _reference_blur(images, sigma, kernel_size):
  # The reference release's full kernel with zero padding, in NumPy.
  radius = kernel_size // 2
  taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
  taps /= taps.sum()
  padded = np.pad(images, [(0, 0), (radius, radius), (radius, radius), (0, 0)])
  h, w = images.shape[1:3]
  rows = sum(taps[k] * padded[:, :, k:k + w] for k in range(2 * radius + 1))
  return sum(taps[k] * rows[:, k:k + h] for k in range(2 * radius + 1))


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.3, 2.0])
def test_gaussian_blur_matches_full_reference_kernel(sigma):
  x = tf.random.stateless_uniform([2, 30, 30, 3], SEED)
  expected = _reference_blur(x.numpy().astype(np.float64), sigma, 23)
  got = video_ops.gaussian_blur(x, tf.constant([sigma]), 23).numpy()
  np.testing.assert_allclose(got, expected, atol=2e-4)
  assert video_ops.blur_kernel_size(224) == 23


def test_gaussian_blur_per_image_sigmas():
  x = tf.random.stateless_uniform([2, 20, 20, 3], SEED)
  got = video_ops.gaussian_blur(x, tf.constant([0.5, 1.8]), 23).numpy()
  for i, sigma in enumerate((0.5, 1.8)):
    np.testing.assert_allclose(got[i], _reference_blur(x.numpy()[i:i + 1], sigma, 23)[0], atol=2e-4)


# Temporal consistency.

ALWAYS = AugmentationConfig(color_jitter_probability=1.0, grayscale_probability=0.0,
                            blur_probability_view_2=1.0, solarize_probability_view_2=0.5)


def _still_video(frames=6, size=16):
  frame = tf.random.stateless_uniform([1, size, size, 3], SEED)
  return tf.tile(frame, [frames, 1, 1, 1])


def _all_frames_equal(video):
  video = np.asarray(video)
  return all(np.array_equal(video[0], video[t]) for t in range(1, len(video)))


@pytest.mark.parametrize("op", [
    lambda v, s, c: video_ops.random_resized_crop(v, s, 12, temporally_consistent=c),
    lambda v, s, c: video_ops.random_flip_left_right(v, s, temporally_consistent=c),
    lambda v, s, c: video_ops.random_color_jitter(v, s, 1.0, temporally_consistent=c),
    lambda v, s, c: video_ops.random_grayscale(v, s, 0.5, temporally_consistent=c),
    lambda v, s, c: video_ops.random_gaussian_blur(v, s, 1.0, 5, temporally_consistent=c),
    lambda v, s, c: video_ops.random_solarize(v, s, 0.5, temporally_consistent=c),
    lambda v, s, c: video_ops.augment_view(
        v, s, AugmentationConfig(**{**ALWAYS.__dict__, "temporally_consistent": c}), 2),
], ids=["crop", "flip", "jitter", "grayscale", "blur", "solarize", "augment_view"])
def test_identical_frames_stay_identical_only_when_consistent(op):
  video = _still_video()
  assert all(_all_frames_equal(op(video, _seed(i), True)) for i in range(3))
  # Per frame, at least one of a few seeds makes frames differ.
  assert not all(_all_frames_equal(op(video, _seed(i), False)) for i in range(3))


@pytest.mark.parametrize("consistent", [True, False])
def test_augment_clips_consistency(consistent):
  config = AugmentationConfig(**{**ALWAYS.__dict__, "temporally_consistent": consistent})
  clips = tf.stack([_still_video(4, 12), _still_video(4, 12) * 0.5])
  out = video_ops.augment_clips(tf.cast(clips * 255, tf.uint8), SEED, config, view=2).numpy()
  assert out.shape == (2, 4, 12, 12, 3) and out.min() >= 0 and out.max() <= 1
  equal = [_all_frames_equal(out[b]) for b in range(2)]
  assert all(equal) if consistent else not all(equal)


def test_augment_clips_compiles_with_xla():
  clips = tf.cast(tf.stack([_still_video(2, 8)] * 2) * 255, tf.uint8)
  fn = tf.function(lambda c, s: video_ops.augment_clips(c, s, AugmentationConfig(), 1),
                   jit_compile=True)
  out = fn(clips, SEED).numpy()
  assert out.shape == (2, 2, 8, 8, 3) and np.isfinite(out).all()


# Same seed, same result: eagerly and inside tf.data.

OPS = {
    "clip_pair": lambda v, s: tf.stack(video_ops.sample_clip_pair(v, s, 2, 2)),
    "crop": lambda v, s: video_ops.random_resized_crop(v, s, 10),
    "crop_per_frame": lambda v, s: video_ops.random_resized_crop(v, s, 10,
                                                                 temporally_consistent=False),
    "flip": lambda v, s: video_ops.random_flip_left_right(v, s),
    "jitter": lambda v, s: video_ops.random_color_jitter(v, s, 1.0),
    "jitter_per_frame": lambda v, s: video_ops.random_color_jitter(v, s, 1.0,
                                                                   temporally_consistent=False),
    "grayscale": lambda v, s: video_ops.random_grayscale(v, s, 0.5),
    "blur": lambda v, s: video_ops.random_gaussian_blur(v, s, 1.0, 5),
    "solarize": lambda v, s: video_ops.random_solarize(v, s, 0.5),
    "augment_view": lambda v, s: video_ops.augment_view(v, s, ALWAYS, 2),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_gives_same_result_eagerly_and_in_tf_data(name):
  op = OPS[name]
  video = tf.random.stateless_uniform([4, 14, 14, 3], SEED)
  for i in range(2):
    eager = op(video, _seed(i)).numpy()
    dataset = tf.data.Dataset.from_tensors((video, _seed(i))).map(op)
    in_data = next(iter(dataset)).numpy()
    np.testing.assert_allclose(in_data, eager, atol=1e-6)
  # A different seed gives a different result (the op is really random).
  assert not np.allclose(op(video, _seed(0)).numpy(), op(video, _seed(1)).numpy()) or name in (
      "grayscale", "solarize", "flip")


def test_config_validation_echoes_bad_values():
  with pytest.raises(ValueError, match="blur_probability_view_2.*1.5"):
    AugmentationConfig(blur_probability_view_2=1.5)
  with pytest.raises(ValueError, match="area_range"):
    AugmentationConfig(area_range=(0.5, 0.2))
  with pytest.raises(ValueError, match="view must be 1 or 2"):
    AugmentationConfig().blur_probability(3)
