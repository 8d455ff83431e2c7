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


# ρ clips per video (ρ-SSL).


def _rho_starts(draws, seed, num_stored, **kwargs):
  """[draws, ρ] clip starts (first index of each clip) of `sample_rho_clip_indices`."""
  seeds = tf.random.experimental.stateless_split(tf.constant(seed, tf.int64), draws)
  fps = kwargs.pop("fps", None)
  return tf.function(lambda s: tf.map_fn(
      lambda one: video_ops.sample_rho_clip_indices(num_stored, fps, one, **kwargs)[:, 0], s,
      fn_output_signature=tf.int32))(seeds).numpy()


@pytest.mark.parametrize("exponent, temporal_augmentation", [(1.0, True), (0.0, True),
                                                              (2.0, True), (1.0, False)])
def test_rho_2_cvrl_is_the_pair_sampler_bit_for_bit(exponent, temporal_augmentation):
  # Lengths below, at and above one span (8 frames at stride 3 span 22), 60 seeds each.
  seeds = tf.random.experimental.stateless_split(tf.constant([3, 4], tf.int64), 60)
  kwargs = dict(num_frames=8, stride=3, delta_exponent=exponent,
                temporal_augmentation=temporal_augmentation)
  pair = tf.function(lambda n, s: tf.map_fn(
      lambda one: tf.stack(video_ops.sample_clip_pair_indices(n, one, **kwargs)), s,
      fn_output_signature=tf.int32))
  rho = tf.function(lambda n, s: tf.map_fn(
      lambda one: video_ops.sample_rho_clip_indices(n, None, one, 2, **kwargs), s,
      fn_output_signature=tf.int32))
  for length in (1, 7, 21, 22, 23, 40, 100, 1000):
    expected = pair(tf.constant(length), seeds).numpy()  # [60, 2, 8]
    np.testing.assert_array_equal(rho(tf.constant(length), seeds).numpy(), expected)
  # And eagerly, as the pipeline's map would trace it.
  for i in range(5):
    np.testing.assert_array_equal(
        video_ops.sample_rho_clip_indices(50, None, _seed(i), 2, **kwargs),
        tf.stack(video_ops.sample_clip_pair_indices(50, _seed(i), **kwargs)))


def test_rho_4_cvrl_gaps_from_the_first_clip_follow_the_density():
  # 4 frames at stride 2 (span 7) of a 26-frame video: M = 20 valid starts.
  draws, m = 3000, 20
  starts = _rho_starts(draws, [8, 9], 26, num_clips=4, num_frames=4, stride=2)  # [draws, 4]
  assert starts.min() >= 0 and starts.max() <= m - 1  # the first start leaves room for every gap
  ordered = np.sort(starts, axis=1)
  # The first clip starts earliest (Δ >= 0): the others' offsets from it are the 3 i.i.d. gaps.
  gaps = (ordered[:, 1:] - ordered[:, :1]).ravel()
  probabilities = np.array(video_ops.delta_probabilities(m, 1.0))
  _, p_value = scipy.stats.chisquare(np.bincount(gaps, minlength=m), probabilities * gaps.size)
  assert p_value > 1e-3
  # The mean gap against its closed form Σ k P(Δ = k) (≈ M/3 for the linear density).
  mean = np.sum(np.arange(m) * probabilities)
  assert abs(gaps.mean() - mean) < 4 * np.sqrt(np.sum((np.arange(m) - mean) ** 2 * probabilities)
                                               / gaps.size)
  # Random order: the first clip (the unique earliest start) is equally often at each position.
  unique = (ordered[:, 0] < ordered[:, 1])
  positions = np.argmin(starts[unique], axis=1)
  counts = np.bincount(positions, minlength=4)
  _, p_value = scipy.stats.chisquare(counts)
  assert p_value > 1e-3, counts


def test_rho_3_cvrl_joint_distribution_is_exactly_the_documented_one():
  # M = 4 (a 10-frame video, 4 frames at stride 2): enumerate Δ_2, Δ_3, the first start and the
  # 3! orders, and compare the 64 ordered start triples' frequencies with their probabilities.
  m, draws = 4, 6000
  p_delta = video_ops.delta_probabilities(m, 1.0)
  expected = np.zeros([m] * 3)
  for d2 in range(m):
    for d3 in range(m):
      room = m - max(d2, d3)
      for first in range(room):
        starts = (first, first + d2, first + d3)
        for order in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
          expected[tuple(starts[k] for k in order)] += p_delta[d2] * p_delta[d3] / room / 6
  assert abs(expected.sum() - 1) < 1e-12
  starts = _rho_starts(draws, [10, 11], 10, num_clips=3, num_frames=4, stride=2)
  counts = np.zeros([m] * 3)
  np.add.at(counts, tuple(starts.T), 1)
  assert counts[expected == 0].sum() == 0  # e.g. (0, 3, 3) from Δ = 3 never with first start 1
  keep = expected > 0
  _, p_value = scipy.stats.chisquare(counts[keep], expected[keep] * draws)
  assert p_value > 1e-3


def test_rho_cvrl_short_videos_loop_and_no_temporal_augmentation_shares_the_start():
  for i in range(10):
    # 8 frames at stride 2 span 15 > 10 stored frames: independent starts, looped clips.
    indices = video_ops.sample_rho_clip_indices(10, None, _seed(i), 3, 8, 2).numpy()
    assert indices.shape == (3, 8) and indices.dtype == np.int32
    assert all(_progression(row, 2, 10) for row in indices)
  starts = _rho_starts(400, [1, 1], 10, num_clips=3, num_frames=8, stride=2)
  _, p_value = scipy.stats.chisquare(np.bincount(starts.ravel(), minlength=10))
  assert p_value > 1e-3  # uniform over all 10 frames
  assert np.mean(starts[:, 0] == starts[:, 1]) < 0.2  # independent (1/10 expected)
  for length in (100, 10):
    starts = _rho_starts(100, [2, 2], length, num_clips=4, num_frames=8, stride=2,
                         temporal_augmentation=False)
    assert (starts == starts[:, :1]).all()
    assert len(set(starts[:, 0])) > 5  # the shared start is still random


def _window_probabilities(num_starts, width, num_clips):
  """Exact P(ordered starts) of the uniform sampler: window offset o, then starts in [o, o + w)."""
  expected = np.zeros([num_starts] * num_clips)
  for offset in range(num_starts - width + 1):
    window = np.zeros(num_starts)
    window[offset:offset + width] = 1.0 / width
    joint = window
    for _ in range(num_clips - 1):
      joint = np.multiply.outer(joint, window)
    expected += joint / (num_starts - width + 1)
  return expected


def test_uniform_joint_distribution_within_the_span_is_exact():
  # 25 fps and 0.1 s: W = floor(2.5) = 2 frames; M = 8 valid starts (14 frames, span 7).
  draws, m = 4000, 8
  starts = _rho_starts(draws, [12, 13], 14, num_clips=2, num_frames=4, stride=2,
                       temporal_sampling="uniform", max_span_seconds=0.1, fps=tf.constant(25.0))
  expected = _window_probabilities(m, 3, 2)
  counts = np.zeros([m, m])
  np.add.at(counts, tuple(starts.T), 1)
  assert np.abs(starts[:, 0] - starts[:, 1]).max() == 2  # never more than W apart, W is reached
  assert counts[expected == 0].sum() == 0
  _, p_value = scipy.stats.chisquare(counts[expected > 0], expected[expected > 0] * draws)
  assert p_value > 1e-3
  # Hand-computed: the 6 windows [o, o + 3), o = 0..5; start 0 lies in one, start 3 in three.
  np.testing.assert_allclose(expected.sum(axis=1)[[0, 1, 3]], [1 / 18, 2 / 18, 3 / 18])


def test_uniform_rho_4_starts_stay_within_the_span_with_trapezoid_marginals():
  # 29.97 fps (float32) × 0.1 s = 2.997: W = 2. 50 frames, 4 × 1 clips: M = 47.
  draws, m = 3000, 47
  starts = _rho_starts(draws, [14, 15], 50, num_clips=4, num_frames=4, stride=1,
                       temporal_sampling="uniform", max_span_seconds=0.1,
                       fps=tf.constant(29.97, tf.float32))
  spread = starts.max(axis=1) - starts.min(axis=1)
  assert spread.max() == 2 and starts.min() == 0 and starts.max() == m - 1
  marginal = _window_probabilities(m, 3, 1)
  for clip in range(4):  # every clip has the same (trapezoid) marginal
    _, p_value = scipy.stats.chisquare(np.bincount(starts[:, clip], minlength=m), marginal * draws)
    assert p_value > 1e-3
  np.testing.assert_equal(video_ops.seconds_to_frames(0.29, 100.0).numpy(), 29)  # not 28
  np.testing.assert_equal(video_ops.seconds_to_frames(2.0, tf.constant(29.97)).numpy(), 59)
  np.testing.assert_equal(video_ops.seconds_to_frames(0.0, 30.0).numpy(), 0)


def test_uniform_zero_span_is_one_start_and_none_is_the_whole_video():
  draws, m = 3000, 6  # 12 frames, 4 × 2 clips: 6 valid starts
  same = _rho_starts(draws, [16, 17], 12, num_clips=3, num_frames=4, stride=2,
                     temporal_sampling="uniform", max_span_seconds=0.0, fps=tf.constant(25.0))
  assert (same == same[:, :1]).all()
  _, p_value = scipy.stats.chisquare(np.bincount(same[:, 0], minlength=m))
  assert p_value > 1e-3  # the one start is uniform over the video
  # None needs no frame rate: ρ independent starts, uniform over every valid start.
  free = _rho_starts(draws, [18, 19], 12, num_clips=2, num_frames=4, stride=2,
                     temporal_sampling="uniform")
  counts = np.zeros([m, m])
  np.add.at(counts, tuple(free.T), 1)
  _, p_value = scipy.stats.chisquare(counts.ravel())
  assert p_value > 1e-3
  np.testing.assert_allclose(_window_probabilities(m, m, 2), np.full([m, m], 1 / m**2))
  # temporal_augmentation=False is a zero span.
  fixed = _rho_starts(50, [20, 21], 12, num_clips=3, num_frames=4, stride=2,
                      temporal_sampling="uniform", temporal_augmentation=False)
  assert (fixed == fixed[:, :1]).all()


def test_uniform_short_video_loops():
  # 8 frames at stride 2 span 15 > 10 stored frames: starts anywhere in the 10, within W = 2.
  starts = _rho_starts(300, [22, 23], 10, num_clips=3, num_frames=8, stride=2,
                       temporal_sampling="uniform", max_span_seconds=0.1, fps=tf.constant(20.0))
  assert starts.min() == 0 and starts.max() == 9
  assert (starts.max(axis=1) - starts.min(axis=1)).max() == 2
  indices = video_ops.sample_rho_clip_indices(10, tf.constant(20.0), SEED, 3, 8, 2, "uniform",
                                              max_span_seconds=0.1).numpy()
  assert all(_progression(row, 2, 10) and row.max() < 10 for row in indices)


def test_rho_sampling_errors_name_the_bad_value():
  with pytest.raises(ValueError, match="num_clips.*>= 2, got 1"):
    video_ops.sample_rho_clip_indices(50, None, SEED, num_clips=1)
  with pytest.raises(ValueError, match="temporal_sampling must be one of.*'gaussian'"):
    video_ops.sample_rho_clip_indices(50, None, SEED, temporal_sampling="gaussian")
  with pytest.raises(ValueError, match="needs the video's fps"):
    video_ops.sample_rho_clip_indices(50, None, SEED, temporal_sampling="uniform",
                                      max_span_seconds=1.0)
  with pytest.raises(ValueError, match="max_span_seconds must be >= 0.*-1"):
    video_ops.seconds_to_frames(-1.0, 25.0)


def test_recipe_view_alternates_odd_and_even_clips():
  assert [video_ops.recipe_view(k) for k in range(1, 6)] == [1, 2, 1, 2, 1]
  config = AugmentationConfig()
  assert [config.blur_probability(video_ops.recipe_view(k)) for k in (1, 2, 3, 4)] == \
      [1.0, 0.1, 1.0, 0.1]
  with pytest.raises(ValueError, match="clip must be an int >= 1.*got 0"):
    video_ops.recipe_view(0)


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


def _textured_jpegs(num_frames, height=72, width=96):
  """[T] JPEG strings of textured frames (gradients, edges, noise): resizes and flips show."""
  rng = np.random.default_rng(5)
  yy, xx = np.mgrid[0:height, 0:width]
  frames = []
  for t in range(num_frames):
    frame = np.stack([2.5 * xx + 10 * t, 3 * yy, 128 + 100 * np.sin((xx + 2 * yy) / 7.0)], -1)
    frame += rng.normal(0, 12, frame.shape)
    frame[height // 3:height // 2, width // 4:width // 2] = [250, 20, 60]  # a hard-edged box
    frames.append(tf.io.encode_jpeg(np.clip(frame, 0, 255).astype(np.uint8), quality=90))
  return tf.stack(frames)


def _tf_windows(jpegs, boxes, size):
  # TF's resize of each decoded window, rounded to uint8: [T, size, size, 3] int.
  windows = [tf.image.decode_and_crop_jpeg(jpegs[t], boxes[min(t, len(boxes) - 1)], channels=3)
             for t in range(len(jpegs))]
  return np.stack([tf.round(tf.image.resize(w, [size, size])).numpy() for w in windows]).astype(int)


# (height, width) of the crop windows of 72 × 96 frames, resized to 48²: down in both directions,
# down in one and up in the other, up in both, a thin strip, and the output size itself.
WINDOWS = [(72, 96), (60, 40), (20, 30), (70, 9), (48, 48)]


@pytest.mark.parametrize("window", WINDOWS, ids=[f"{h}x{w}" for h, w in WINDOWS])
def test_opencv_resize_is_tf_resize_within_one_grey_level(window):
  jpegs = _textured_jpegs(3)
  height, width = window
  boxes = tf.constant([[72 - height, (96 - width) // 2, height, width]])
  got = video_ops.decode_resize_and_flip_windows(jpegs, boxes, tf.constant([False]), 3, 48)
  assert got.dtype == tf.uint8 and got.shape == (3, 48, 48, 3)
  expected = _tf_windows(jpegs, boxes.numpy(), 48)
  difference = np.abs(got.numpy().astype(int) - expected)
  assert difference.max() <= 1 and difference.mean() < 0.3, (difference.max(), difference.mean())
  if window == (48, 48):  # no resampling: both give the decoded window itself
    np.testing.assert_array_equal(got.numpy(), expected)
  # The TF-only path agrees as well: it is the same TF resize, unrounded.
  tf_path = video_ops.decode_and_resize_windows(jpegs, boxes, 3, 48).numpy()
  np.testing.assert_array_equal(np.round(tf_path).astype(int), expected)


def test_opencv_resize_per_frame_boxes_and_flips_are_exact_mirrors():
  # One box and one coin per frame: four window sizes in one clip, frames 0 and 2 mirrored.
  jpegs = _textured_jpegs(4)
  boxes = tf.constant([[0, 0, 72, 96], [5, 30, 60, 40], [40, 60, 20, 30], [1, 80, 70, 9]])
  flip = tf.constant([True, False, True, False])
  plain = video_ops.decode_resize_and_flip_windows(jpegs, boxes, tf.zeros([4], tf.bool), 4, 48)
  flipped = video_ops.decode_resize_and_flip_windows(jpegs, boxes, flip, 4, 48).numpy()
  plain = plain.numpy()
  for t in range(4):
    mirror = plain[t, :, ::-1] if flip.numpy()[t] else plain[t]
    np.testing.assert_array_equal(flipped[t], mirror)
  assert not np.array_equal(flipped[0], plain[0])  # the frames are not symmetric
  difference = np.abs(plain.astype(int) - _tf_windows(jpegs, boxes.numpy(), 48))
  assert difference.max() <= 1 and difference.mean() < 0.3
  # One coin for the clip mirrors every frame.
  all_flipped = video_ops.decode_resize_and_flip_windows(jpegs, boxes, tf.constant([True]), 4, 48)
  np.testing.assert_array_equal(all_flipped.numpy(), plain[:, :, ::-1])


def test_opencv_resize_has_its_static_shape_and_same_values_in_graphs_and_tf_data():
  jpegs = _textured_jpegs(3)
  boxes = tf.constant([[4, 10, 50, 70]])
  flip = tf.constant([True])
  eager = video_ops.decode_resize_and_flip_windows(jpegs, boxes, flip, 3, 32).numpy()
  shapes = []

  def op(jpegs, boxes, flip):
    clip = video_ops.decode_resize_and_flip_windows(jpegs, boxes, flip, 3, 32)
    shapes.append(clip.shape)  # traced: the numpy_function's output shape is set, not unknown
    return clip

  in_graph = tf.function(op)(jpegs, boxes, flip).numpy()
  dataset = tf.data.Dataset.from_tensors((jpegs, boxes, flip)).map(op)
  assert dataset.element_spec.shape == (3, 32, 32, 3)
  assert shapes and all(shape == (3, 32, 32, 3) for shape in shapes)
  for got in (in_graph, next(iter(dataset)).numpy()):
    np.testing.assert_array_equal(got, eager)


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


# The colour chain on the host (OpenCV / NumPy) against the XLA chain.

# Every coin often both ways; blur taps up to radius 8 at 32² (kernel 17): all of the radii
# 2, 4, 6, 8 that σ ~ U(0.1, 2) picks.
COIN_TOSS = AugmentationConfig(color_jitter_probability=0.9, grayscale_probability=0.3,
                               blur_probability_view_1=0.6, blur_probability_view_2=0.4,
                               solarize_probability_view_1=0.5, solarize_probability_view_2=0.5,
                               blur_kernel_fraction=0.5)


def _natural_clip(num_frames=4, size=32):
  """[T, S, S, 3] uint8: smooth colour gradients, a saturated hard-edged box, grey, black and white
  bands, mild noise; the scene drifts a pixel per frame."""
  rng = np.random.default_rng(11)
  yy, xx = np.mgrid[0:size, 0:size] / size
  frames = []
  for t in range(num_frames):
    u = xx + t / size
    frame = np.stack([255 * u, 200 * yy + 30, 128 + 100 * np.sin(6 * (u + yy))], -1)
    frame[size // 4:size // 2, size // 4 + t:size // 2 + t] = [250, 20, 100]
    frame[:3] = 128  # grey: no hue, S = 0
    frame[-3:] = 255  # white
    frame[:, :2] = 0  # black
    frames.append(frame + rng.normal(0, 2, frame.shape))
  return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _host_and_tf_views(clip, config, seeds):
  """(host views, TF chain's views, NumPy draws) of `seeds`' views (alternately views 1 and 2).

  Plain TF (one graph over all seeds, no XLA), draws included: tests/test_input_pipeline.py
  compares the pipeline's host views with its XLA chain, drawn with XLA's own random numbers.
  """
  views = np.arange(len(seeds)) % 2 + 1
  blur = tf.constant([config.blur_probability(int(v)) for v in views])
  solar = tf.constant([config.solarize_probability(int(v)) for v in views])

  @tf.function
  def chain_and_draws(clip, seeds):
    def one(args):
      seed, blur_probability, solarize_probability = args
      # As input_pipeline's view function: uint8 -> [0, 1], then the chain.
      view = video_ops.augment_view_with(tf.cast(clip, tf.float32) * (1.0 / 255.0), seed,
                                         config, blur_probability, solarize_probability)
      return view, video_ops.draw_view_colors(seed, config, blur_probability,
                                              solarize_probability)
    return tf.map_fn(one, (seeds, blur, solar), fn_output_signature=(
        tf.float32, video_ops.ColorDraws(tf.bool, tf.float32, tf.int32, tf.bool, tf.bool,
                                         tf.float32, tf.bool)))

  expected, drawn = chain_and_draws(tf.constant(clip), tf.constant(seeds, tf.int64))
  drawn = [v.numpy() for v in drawn]
  draws = [video_ops.ColorDraws(*[v[i] for v in drawn]) for i in range(len(seeds))]
  kernel_size = video_ops.blur_kernel_size(clip.shape[2], config.blur_kernel_fraction)
  got = [video_ops.augment_view_host(clip, d, kernel_size, config.solarize_threshold)
         for d in draws]
  return np.stack(got), expected.numpy(), draws


def test_host_colour_chain_is_the_tf_chain_for_many_draws():
  clip = _natural_clip()
  got, expected, draws = _host_and_tf_views(clip, COIN_TOSS, [[i, 3] for i in range(160)])
  assert got.dtype == np.float32 and got.shape == (160, 4, 32, 32, 3)
  assert got.min() >= 0 and got.max() <= 1
  worst = np.abs(got - expected).max(axis=(1, 2, 3, 4))
  assert worst.max() <= 1e-5, (worst.argmax(), worst.max(), draws[worst.argmax()])
  # The draws covered the chain: every order of the jitter (each of the 24 several times), every
  # coin both ways, factors on both sides of 1, and all four blur radii.
  jittered = [d for d in draws if d.jitter]
  orders = [tuple(d.order) for d in jittered]
  assert len(set(orders)) == 24 and min(orders.count(o) for o in set(orders)) >= 2
  for coin in ("jitter", "grayscale", "blur", "solarize"):
    assert 0 < sum(bool(getattr(d, coin)) for d in draws) < len(draws), coin
  factors = np.stack([d.factors for d in jittered])
  assert (factors[:, :3].min(axis=0) < 1).all() and (factors[:, :3].max(axis=0) > 1).all()
  assert factors[:, 3].min() < 0 < factors[:, 3].max()
  radii = {min(2 * int(np.ceil(2 * d.sigma)), 8) for d in draws if d.blur}
  assert radii == {2, 4, 6, 8}
  # The chain changed the views: the comparison is not of two identities.
  assert (np.abs(got - clip / 255.0).max(axis=(1, 2, 3, 4)) > 0.05).mean() > 0.9


def test_host_clips_and_views_are_aligned_for_tensorflow():
  # Aligned, TF adopts them without a copy (tests/test_host_buffers.py).
  clip = np.zeros((3, 20, 30, 3), np.uint8)
  resized = video_ops.resize_and_flip_frames(224, np.array([True]), *clip)
  draws = video_ops.ColorDraws(False, np.ones(4, np.float32), np.arange(4), False, False,
                               np.float32(1.0), False)
  view = video_ops.augment_view_host(resized, draws, 23)
  for array in (resized, view):
    assert array.ctypes.data % 64 == 0 and array.flags.c_contiguous
  assert view.ctypes.data != resized.ctypes.data  # both alive: two buffers
  np.testing.assert_array_equal(view, 0.0)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_host_solarize_is_solarize(threshold):
  x = np.concatenate([np.linspace(0, 1, 101), [threshold, 0.5]]).astype(np.float32)
  x = np.tile(x[:, None, None], (1, 2, 3))  # [103, 2, 3], values at and around the threshold
  expected = video_ops.solarize(tf.constant(x), threshold).numpy()
  got = video_ops._solarize_host(threshold, np.empty(x.size, np.float32))(x.copy())
  np.testing.assert_array_equal(got, expected)


def test_draw_view_colors_are_the_chain_ops_own_draws():
  # The split tree of augment_view_with -> random_color_jitter -> color_jitter, random_grayscale,
  # random_gaussian_blur, random_solarize, with each op's own sampler.
  config = AugmentationConfig()
  split = video_ops.split_seed
  for i in range(20):
    seed = tf.constant([i, 4], tf.int64)
    seeds = split(seed, 4)
    jitter = split(seeds[0], 2)
    factor_seeds = split(jitter[1], 2)
    blur = split(seeds[2], 2)
    expected = (video_ops._bernoulli(jitter[0], [1], 0.8)[0],
                tf.concat(video_ops._jitter_factors(factor_seeds[0], 1, 0.8, 0.8, 0.8, 0.2), 0),
                video_ops._random_order(factor_seeds[1], 1)[0],
                video_ops._bernoulli(seeds[1], [1], 0.2)[0],
                video_ops._bernoulli(blur[0], [1], 0.1)[0],
                video_ops._uniform(blur[1], [1], 0.1, 2.0)[0],
                video_ops._bernoulli(seeds[3], [1], 0.2)[0])
    got = video_ops.draw_view_colors(seed, config, config.blur_probability(2),
                                     config.solarize_probability(2))
    for value, reference in zip(got, expected):
      np.testing.assert_array_equal(value.numpy(), reference.numpy())


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
    "rho_clips": lambda v, s: tf.gather(
        v, video_ops.sample_rho_clip_indices(tf.shape(v)[0], None, s, 3, 2, 1)),
    "rho_clips_uniform": lambda v, s: tf.gather(v, video_ops.sample_rho_clip_indices(
        tf.shape(v)[0], tf.constant(10.0), s, 3, 2, 1, "uniform", max_span_seconds=0.1)),
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
