"""Pure TF ops on videos: CVRL's temporal sampling and its spatial and colour augmentations.

Temporal sampling gives CVRL's pair of clips (`sample_clip_pair_indices`) and, for ρ-SSL, ρ >= 2
clips of a video (`sample_rho_clip_indices`: CVRL's Δ sampling generalised, or the study's uniform
sampling within a maximum span).

Videos are `[T, H, W, C]` tensors (stored frames first). Every random op is *stateless*: it takes
`seed`, an int32 tensor of shape [2], and returns the same result for the same seed eagerly,
inside `tf.function` and inside `tf.data` (see `split_seed`). Each op draws its randomness once per
clip when `temporally_consistent=True` (CVRL's temporally consistent spatial augmentation) and once
per frame when False (the paper's ablation).

Float images are in [0, 1]. The recipe and its defaults are SPEC §2; `AugmentationConfig` holds
every probability and strength, and `augment_view` applies the whole colour/blur/solarize chain to one
cropped view. `augment_clips` is the same chain vectorised over a batch `[B, T, H, W, C]`, for
running the augmentations inside the training step on an accelerator. `augment_view_host` is the
same chain again in OpenCV / NumPy, for the host pipeline: it runs in the `tf.numpy_function` that
resizes and flips (`decode_and_augment_windows`), on random numbers drawn in TF
(`draw_view_colors`), and gives `augment_view`'s values to float rounding.
"""

import dataclasses
import functools
from typing import NamedTuple, Tuple

import cv2
import numpy as np
import tensorflow as tf

from cvrl_tf import host_buffers

# OpenCV runs every function in the calling thread: tf.data already resizes many clips at once
# (one `tf.numpy_function` per clip on each of its map threads), and OpenCV's own pool on top
# would put more busy threads than cores on the host, waiting for each other.
cv2.setNumThreads(0)


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
  """Every knob of the CVRL augmentation recipe (SPEC §2); defaults are the paper's.

  Attributes:
    area_range: random resized crop, fraction of the frame area covered by the box.
    aspect_ratio_range: random resized crop, width / height of the box.
    flip_probability: horizontal flip.
    color_jitter_probability: whether the colour jitter (all four ops, random order) runs.
    brightness: multiplicative brightness factor drawn from U(1 - b, 1 + b) (floored at 0).
    contrast: contrast factor drawn from U(1 - c, 1 + c).
    saturation: saturation factor drawn from U(1 - s, 1 + s).
    hue: hue shift drawn from U(-h, h), in turns (1 = 360°).
    grayscale_probability: convert to grey (kept as 3 channels).
    blur_probability_view_1, blur_probability_view_2: Gaussian blur, asymmetric (BYOL-style).
    blur_kernel_fraction: the blur kernel side is this fraction of the crop size (23 taps at 224).
    blur_sigma_range: σ ~ U(lo, hi), in output pixels.
    solarize_probability_view_1, solarize_probability_view_2: solarize (view 2 only by default).
    solarize_threshold: pixels at or above it are inverted.
    temporally_consistent: one draw per clip for every op (True), or one per frame (False).
  """
  area_range: Tuple[float, float] = (0.3, 1.0)
  aspect_ratio_range: Tuple[float, float] = (0.5, 2.0)
  flip_probability: float = 0.5
  color_jitter_probability: float = 0.8
  brightness: float = 0.8
  contrast: float = 0.8
  saturation: float = 0.8
  hue: float = 0.2
  grayscale_probability: float = 0.2
  blur_probability_view_1: float = 1.0
  blur_probability_view_2: float = 0.1
  blur_kernel_fraction: float = 0.1
  blur_sigma_range: Tuple[float, float] = (0.1, 2.0)
  solarize_probability_view_1: float = 0.0
  solarize_probability_view_2: float = 0.2
  solarize_threshold: float = 0.5
  temporally_consistent: bool = True

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.name.endswith("probability") or "_probability_" in field.name:
        if not 0.0 <= value <= 1.0:
          raise ValueError(f"AugmentationConfig.{field.name} must be in [0, 1], got {value!r}")
      elif field.name.endswith("_range"):
        if len(value) != 2 or not 0.0 < value[0] <= value[1]:
          raise ValueError(
              f"AugmentationConfig.{field.name} must be (low, high) with 0 < low <= high, "
              f"got {value!r}")
    for name in ("brightness", "contrast", "saturation", "blur_kernel_fraction"):
      if getattr(self, name) < 0:
        raise ValueError(f"AugmentationConfig.{name} must be >= 0, got {getattr(self, name)!r}")
    if not 0.0 <= self.hue <= 0.5:
      raise ValueError(f"AugmentationConfig.hue must be in [0, 0.5] turns, got {self.hue!r}")
    if self.area_range[1] > 1.0:
      raise ValueError(f"AugmentationConfig.area_range must lie in (0, 1], got {self.area_range!r}")

  def blur_probability(self, view: int) -> float:
    return _per_view(self.blur_probability_view_1, self.blur_probability_view_2, view)

  def solarize_probability(self, view: int) -> float:
    return _per_view(self.solarize_probability_view_1, self.solarize_probability_view_2, view)


def recipe_view(clip: int) -> int:
  """Which of the recipe's two views (1 or 2) clip `clip` (1-based, any ρ) takes.

  The blur and solarize probabilities are asymmetric (BYOL-style, one value per view); with ρ
  clips they alternate: odd clips take view 1's, even clips view 2's (so ρ = 2 is CVRL's pair).
  """
  if not isinstance(clip, int) or clip < 1:
    raise ValueError(f"clip must be an int >= 1 (1-based), got {clip!r}")
  return 2 - clip % 2


def _per_view(value_1, value_2, view):
  if view not in (1, 2):
    raise ValueError(f"view must be 1 or 2, got {view!r}")
  return value_1 if view == 1 else value_2


# Seeds.


def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
  """[2] seed -> [num, 2] independent seeds (stateless; same answer eagerly and in graphs)."""
  return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num)


def _uniform(seed, shape, minval=0.0, maxval=1.0):
  return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


def _bernoulli(seed, shape, probability):
  return tf.random.stateless_uniform(shape, seed) < probability


def _uniform_int(seed, shape, count):
  """Integers uniform in [0, count) for a tensor `count` >= 1 (count may vary at run time)."""
  u = tf.random.stateless_uniform(shape, seed, dtype=tf.float64)
  count = tf.cast(count, tf.float64)
  return tf.cast(tf.minimum(tf.floor(u * count), count - 1), tf.int32)


def _draws(temporally_consistent: bool, video: tf.Tensor) -> tf.Tensor:
  """How many draws an op makes: 1 per clip, or one per frame (as a shape [n])."""
  return tf.constant([1]) if temporally_consistent else tf.shape(video)[:1]


# Temporal sampling.


def clip_span(num_frames: int, stride: int) -> int:
  """Stored frames covered by a clip: 16 frames at stride 2 span 31."""
  return (num_frames - 1) * stride + 1


def delta_probabilities(num_starts: int, exponent: float):
  """P(Δ = k), k = 0 .. num_starts - 1, of `sample_delta` (for tests and plots; NumPy-free).

  The continuous density on [0, M] is (e + 1)/M · (1 − Δ/M)^e; Δ is its floor, so
  P(Δ = k) = (1 − k/M)^(e+1) − (1 − (k+1)/M)^(e+1).
  """
  m = float(num_starts)
  return [(1 - k / m) ** (exponent + 1) - (1 - (k + 1) / m) ** (exponent + 1)
          for k in range(num_starts)]


def sample_delta(seed: tf.Tensor, num_starts: tf.Tensor, exponent: float,
                 shape=()) -> tf.Tensor:
  """Gap between two clip starts, from CVRL's decreasing density (SPEC §2).

  Draws from p(Δ) ∝ (1 − Δ/M)^exponent on [0, M] by inverting its CDF, and floors: exponent 1 is
  the paper's linear decrease, 0 is uniform. One independent draw per element of `shape`.

  Args:
    seed: [2] int seed.
    num_starts: M >= 1, the number of valid clip starts (stored frames − span + 1).
    exponent: >= 0.
    shape: () for one gap (the pair sampler), [ρ − 1] for the gaps of the ρ-clip sampler.

  Returns:
    int32 of `shape`, in [0, M − 1].
  """
  if exponent < 0:
    raise ValueError(f"delta exponent must be >= 0 (0 = uniform, 1 = linear), got {exponent!r}")
  u = tf.random.stateless_uniform(shape, seed, dtype=tf.float64)
  m = tf.cast(num_starts, tf.float64)
  # Inverse CDF of F(Δ) = 1 − (1 − Δ/M)^(e+1).
  delta = m * (1.0 - tf.pow(1.0 - u, 1.0 / (exponent + 1.0)))
  return tf.cast(tf.minimum(tf.floor(delta), m - 1.0), tf.int32)


def _clip_indices(starts: tf.Tensor, num_stored: tf.Tensor, num_frames: int, stride: int):
  # [N, T]; the modulo loops videos shorter than a clip and is a no-op otherwise.
  offsets = tf.range(num_frames, dtype=tf.int32) * stride
  return tf.math.floormod(starts[:, None] + offsets[None, :], num_stored)


def sample_clip_pair_indices(num_stored_frames: tf.Tensor, seed: tf.Tensor, num_frames: int = 16,
                             stride: int = 2, delta_exponent: float = 1.0,
                             temporal_augmentation: bool = True):
  """Frame indices of CVRL's two clips of one video. One draw per video.

  Kept as the reference that `sample_rho_clip_indices` (ρ = 2, "cvrl") reproduces bit for bit.
  The first start is uniform among the starts that leave room for the gap, the second is Δ later,
  and the two clips are returned in random order. A video too short for one clip (fewer stored
  frames than the span) gets two independent uniform starts and loops.

  Args:
    num_stored_frames: int scalar L >= 1.
    seed: [2] int seed.
    num_frames, stride: the clip is frames start, start + stride, ... (num_frames of them).
    delta_exponent: exponent of the Δ density (1 linear, 0 uniform).
    temporal_augmentation: False makes both clips start at the same frame (Δ = 0, also for
      looped short videos): the paper's ablation without temporal augmentation.

  Returns:
    (indices_1, indices_2), each [num_frames] int32 in [0, L).
  """
  num_stored = tf.cast(num_stored_frames, tf.int32)
  num_starts = num_stored - clip_span(num_frames, stride) + 1
  seeds = split_seed(seed, 4)
  long_enough = num_starts >= 1
  safe_starts = tf.maximum(num_starts, 1)
  delta = sample_delta(seeds[0], safe_starts, delta_exponent) if temporal_augmentation else 0
  first = _uniform_int(seeds[1], [], safe_starts - delta)
  looped = _uniform_int(seeds[2], [2], num_stored)
  if not temporal_augmentation:
    looped = tf.stack([looped[0], looped[0]])
  starts = tf.where(long_enough, tf.stack([first, first + delta]), looped)
  swap = _bernoulli(seeds[3], [], 0.5)
  starts = tf.where(swap, tf.reverse(starts, [0]), starts)
  indices = _clip_indices(starts, num_stored, num_frames, stride)
  return indices[0], indices[1]


TEMPORAL_SAMPLINGS = ("cvrl", "uniform")


def seconds_to_frames(max_span_seconds: float, fps: tf.Tensor) -> tf.Tensor:
  """W = floor(max_span_seconds × fps): the largest gap, in stored frames, between two clip starts.

  Stored frame i shows time i / fps (schema), so starts W frames apart are at most
  `max_span_seconds` apart. A product within 1e-6 of an integer counts as that integer, so that
  float rounding (0.29 × 100 = 28.999…) does not lose a frame.

  Args:
    max_span_seconds: >= 0.
    fps: float scalar > 0, the stored frame rate (`video/fps`).

  Returns:
    int32 scalar >= 0.
  """
  if max_span_seconds < 0:
    raise ValueError(f"max_span_seconds must be >= 0 (0 = one start for all clips), "
                     f"got {max_span_seconds!r}")
  frames = tf.floor(float(max_span_seconds) * tf.cast(fps, tf.float64) + 1e-6)
  return tf.cast(tf.clip_by_value(frames, 0.0, 2.0**31 - 1), tf.int32)


def sample_cvrl_clip_starts(num_stored_frames: tf.Tensor, seed: tf.Tensor, num_clips: int,
                            num_frames: int = 16, stride: int = 2, delta_exponent: float = 1.0,
                            temporal_augmentation: bool = True) -> tf.Tensor:
  """Starts of ρ clips by CVRL's Δ sampling, generalised to ρ >= 2. One draw per video.

  With M = L − span + 1 valid starts (L stored frames, span = `clip_span`):
  1) ρ − 1 gaps Δ_2 .. Δ_ρ are drawn i.i.d. from `sample_delta`'s density
     p(Δ) ∝ (1 − Δ/M)^delta_exponent on [0, M − 1];
  2) the first start s_1 is uniform in [0, M − max_k Δ_k), the starts that leave room for the
     largest gap, and clip k starts at s_1 + Δ_k: every clip's gap is measured from the first
     clip, not from its predecessor;
  3) the ρ starts are returned in random order: at ρ = 2 a fair coin swaps the pair, exactly as
     `sample_clip_pair_indices` does (same seed split, same draws, so the same clips bit for bit);
     at ρ > 2 a uniformly random permutation.
  A video shorter than one span (M < 1) gets ρ independent starts uniform in [0, L), and its clips
  loop. `temporal_augmentation=False` sets every Δ to 0 (and gives looped videos one start for
  all clips): all ρ clips are the same frames, the paper's ablation.

  Args:
    num_stored_frames: int scalar L >= 1.
    seed: [2] int seed.
    num_clips: ρ >= 2 (a Python int).
    num_frames, stride: the clip is frames start, start + stride, ... (num_frames of them).
    delta_exponent: exponent of the Δ density (1 linear, 0 uniform).
    temporal_augmentation: False gives all clips one start.

  Returns:
    [ρ] int32 starts in [0, L).
  """
  num_stored = tf.cast(num_stored_frames, tf.int32)
  num_starts = num_stored - clip_span(num_frames, stride) + 1
  # The same four seeds, in the same roles, as sample_clip_pair_indices.
  seeds = split_seed(seed, 4)
  long_enough = num_starts >= 1
  safe_starts = tf.maximum(num_starts, 1)
  if not temporal_augmentation:
    deltas = tf.zeros([num_clips - 1], tf.int32)
  elif num_clips == 2:
    deltas = sample_delta(seeds[0], safe_starts, delta_exponent)[None]  # [1], the pair's one draw
  else:
    deltas = sample_delta(seeds[0], safe_starts, delta_exponent, shape=[num_clips - 1])
  first = _uniform_int(seeds[1], [], safe_starts - tf.reduce_max(deltas))
  looped = _uniform_int(seeds[2], [num_clips], num_stored)
  if not temporal_augmentation:
    looped = tf.fill([num_clips], looped[0])
  starts = tf.where(long_enough, tf.concat([first[None], first + deltas], axis=0), looped)
  if num_clips == 2:
    swap = _bernoulli(seeds[3], [], 0.5)
    return tf.where(swap, tf.reverse(starts, [0]), starts)
  order = tf.argsort(tf.random.stateless_uniform([num_clips], seeds[3]), stable=True)
  return tf.gather(starts, order)


def sample_uniform_clip_starts(num_stored_frames: tf.Tensor, seed: tf.Tensor, num_clips: int,
                               num_frames: int = 16, stride: int = 2,
                               max_span_frames: tf.Tensor = None) -> tf.Tensor:
  """Starts of ρ clips uniform within a maximum span (the ρ-SSL study's sampling). One draw.

  With M valid starts (L − span + 1; for a video shorter than one span, M = L and the clips loop)
  and W = `max_span_frames` (None: the whole video, W = M − 1):
  1) a window of w = min(W + 1, M) consecutive valid starts is placed uniformly: its first start o
     is uniform in [0, M − w];
  2) each of the ρ starts is uniform in [o, o + w), independently of the others.
  So no two starts are more than W frames apart; W = 0 gives one start for all clips, and W = None
  gives ρ independent starts uniform over the whole video. The clips are exchangeable, so no
  shuffle is needed. For a finite W each start's marginal is not uniform over [0, M): starts near
  the ends lie in fewer windows (P(s) = #{o : o <= s < o + w} / ((M − w + 1) · w)).

  Args:
    num_stored_frames: int scalar L >= 1.
    seed: [2] int seed.
    num_clips: ρ >= 2 (a Python int).
    num_frames, stride: the clip is frames start, start + stride, ... (num_frames of them).
    max_span_frames: int scalar W >= 0 (see `seconds_to_frames`), or None for the whole video.

  Returns:
    [ρ] int32 starts in [0, L).
  """
  num_stored = tf.cast(num_stored_frames, tf.int32)
  num_starts = num_stored - clip_span(num_frames, stride) + 1
  # A short video starts anywhere and loops, like the other samplers.
  num_starts = tf.where(num_starts >= 1, num_starts, num_stored)
  width = num_starts
  if max_span_frames is not None:
    width = tf.minimum(tf.cast(max_span_frames, tf.int32) + 1, num_starts)
  seeds = split_seed(seed, 2)
  offset = _uniform_int(seeds[0], [], num_starts - width + 1)
  return offset + _uniform_int(seeds[1], [num_clips], width)


def sample_rho_clip_indices(num_stored_frames: tf.Tensor, fps: tf.Tensor, seed: tf.Tensor,
                            num_clips: int = 2, num_frames: int = 16, stride: int = 2,
                            temporal_sampling: str = "cvrl", delta_exponent: float = 1.0,
                            temporal_augmentation: bool = True,
                            max_span_seconds: float = None) -> tf.Tensor:
  """Frame indices of ρ clips of one video (ρ-SSL). One draw per video.

  "cvrl": `sample_cvrl_clip_starts` (CVRL's Δ sampling, each further clip at a sampled gap from the
  first; at ρ = 2 the same clips as `sample_clip_pair_indices` for the same seed, bit for bit).
  "uniform": `sample_uniform_clip_starts` with W = `seconds_to_frames(max_span_seconds, fps)`
  (None: the whole video); `temporal_augmentation=False` there means W = 0.
  Clips of videos shorter than one span loop.

  Args:
    num_stored_frames: int scalar L >= 1.
    fps: float scalar > 0, the stored frame rate; only read by "uniform" with a max_span_seconds
      (may be None otherwise).
    seed: [2] int seed.
    num_clips: ρ >= 2.
    num_frames, stride: the clip is frames start, start + stride, ... (num_frames of them).
    temporal_sampling: "cvrl" or "uniform".
    delta_exponent: "cvrl" only: exponent of the Δ density (1 linear, 0 uniform).
    temporal_augmentation: False gives all clips one start.
    max_span_seconds: "uniform" only: the largest time between two clip starts (0 = one start);
      None = the whole video.

  Returns:
    [ρ, num_frames] int32 in [0, L); row k is clip k + 1.
  """
  if not isinstance(num_clips, int) or num_clips < 2:
    raise ValueError(f"num_clips (ρ) must be an int >= 2, got {num_clips!r}")
  num_stored = tf.cast(num_stored_frames, tf.int32)
  if temporal_sampling == "cvrl":
    starts = sample_cvrl_clip_starts(num_stored, seed, num_clips, num_frames, stride,
                                     delta_exponent, temporal_augmentation)
  elif temporal_sampling == "uniform":
    if not temporal_augmentation:
      span = 0
    elif max_span_seconds is None:
      span = None
    elif fps is None:
      raise ValueError("uniform temporal sampling with max_span_seconds="
                       f"{max_span_seconds!r} needs the video's fps, got None")
    else:
      span = seconds_to_frames(max_span_seconds, fps)
    starts = sample_uniform_clip_starts(num_stored, seed, num_clips, num_frames, stride, span)
  else:
    raise ValueError(f"temporal_sampling must be one of {TEMPORAL_SAMPLINGS}, "
                     f"got {temporal_sampling!r}")
  return _clip_indices(starts, num_stored, num_frames, stride)


def sample_clip_pair(video: tf.Tensor, seed: tf.Tensor, num_frames: int = 16, stride: int = 2,
                     delta_exponent: float = 1.0):
  """Two clips of `video` [L, ...] (any per-frame payload: JPEG strings or pixels).

  Returns:
    (clip_1, clip_2), each [num_frames, ...]; see `sample_clip_pair_indices`.
  """
  indices_1, indices_2 = sample_clip_pair_indices(
      tf.shape(video)[0], seed, num_frames, stride, delta_exponent)
  return tf.gather(video, indices_1), tf.gather(video, indices_2)


def sample_clip_indices(num_stored_frames: tf.Tensor, seed: tf.Tensor, num_frames: int,
                        stride: int) -> tf.Tensor:
  """Indices [num_frames] of one clip with a uniform start (looping short videos). One draw."""
  num_stored = tf.cast(num_stored_frames, tf.int32)
  num_starts = num_stored - clip_span(num_frames, stride) + 1
  # A short video starts anywhere and loops, like the pair sampler.
  start = _uniform_int(seed, [1], tf.where(num_starts >= 1, num_starts, num_stored))
  return _clip_indices(start, num_stored, num_frames, stride)[0]


def linspace_clip_indices(num_stored_frames: tf.Tensor, num_clips: int, num_frames: int,
                          stride: int) -> tf.Tensor:
  """Indices [num_clips, num_frames] of evenly spaced clips (multi-view evaluation).

  Clip i starts at floor(i · (M − 1) / (num_clips − 1)) with M the number of valid starts: the
  first clip starts at frame 0 and the last ends on the last stored frame. A single clip is the
  centred one. Videos shorter than a clip start every clip at 0 and loop.
  """
  num_stored = tf.cast(num_stored_frames, tf.int32)
  last_start = tf.maximum(num_stored - clip_span(num_frames, stride), 0)
  if num_clips == 1:
    starts = tf.reshape(last_start // 2, [1])
  else:
    starts = tf.range(num_clips, dtype=tf.int32) * last_start // (num_clips - 1)
  return _clip_indices(starts, num_stored, num_frames, stride)


# Spatial ops.


def sample_crop_boxes(image_size: tf.Tensor, seed: tf.Tensor, num_boxes: tf.Tensor,
                      area_range=(0.3, 1.0), aspect_ratio_range=(0.5, 2.0)) -> tf.Tensor:
  """Random resized crop boxes, drawn like `tf.image.sample_distorted_bounding_box`.

  Same sampler as the reference release (min_object_covered 0.1, 100 attempts, whole frame as the
  fallback), made stateless.

  Args:
    image_size: [2] int (height, width) of the frames.
    seed: [2] int seed.
    num_boxes: 1 for a clip-wide box, T for one per frame.

  Returns:
    [num_boxes, 4] int32 (offset_y, offset_x, height, width).
  """
  shape = tf.concat([tf.cast(image_size, tf.int32), [3]], axis=0)
  whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])

  def one_box(box_seed):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=whole, seed=box_seed, min_object_covered=0.1,
        aspect_ratio_range=aspect_ratio_range, area_range=area_range, max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    return tf.concat([begin[:2], size[:2]], axis=0)

  if isinstance(num_boxes, int) and num_boxes == 1:
    # A static [1, 4] shape tells `crop_and_resize` to crop the clip as one tensor.
    return one_box(seed)[None]
  return tf.map_fn(one_box, split_seed(seed, num_boxes), fn_output_signature=tf.int32)


def crop_and_resize(video: tf.Tensor, boxes: tf.Tensor, size: int) -> tf.Tensor:
  """Crops each frame with its box and resizes bilinearly to size × size.

  Args:
    video: [T, H, W, C] any real dtype.
    boxes: [1, 4] (one box for the clip) or [T, 4] (one per frame), as from `sample_crop_boxes`.
    size: output side.

  Returns:
    [T, size, size, C] float32 (values in the input's units).
  """
  if boxes.shape[0] == 1:
    y, x, h, w = tf.unstack(boxes[0])
    return tf.image.resize(video[:, y:y + h, x:x + w], [size, size])
  return tf.map_fn(
      lambda args: tf.image.resize(
          args[0][args[1][0]:args[1][0] + args[1][2], args[1][1]:args[1][1] + args[1][3]],
          [size, size]),
      (video, boxes), fn_output_signature=tf.float32)


def random_resized_crop(video: tf.Tensor, seed: tf.Tensor, size: int, area_range=(0.3, 1.0),
                        aspect_ratio_range=(0.5, 2.0), temporally_consistent: bool = True):
  """Random box (area and aspect ranges) resized to size × size. One box per clip (or per frame).

  Args:
    video: [T, H, W, C] decoded frames.

  Returns:
    [T, size, size, C] float32.
  """
  num_boxes = 1 if temporally_consistent else tf.shape(video)[0]
  boxes = sample_crop_boxes(tf.shape(video)[1:3], seed, num_boxes, area_range, aspect_ratio_range)
  return crop_and_resize(video, boxes, size)


def decode_and_resize_windows(jpegs: tf.Tensor, boxes: tf.Tensor, num_frames: int,
                              size: int) -> tf.Tensor:
  """Decodes only the crop window of each JPEG frame and resizes it bilinearly to size × size.

  TensorFlow ops only (a graph that tf.data service can run, or XLA-free consumers); the training
  pipelines use `decode_resize_and_flip_windows` unless told otherwise (5× faster resize).
  `tf.image.decode_and_crop_jpeg` skips what lies outside the window and never builds the full
  frame; `tf.image.resize` (TF's C++ kernel, half-pixel bilinear) then runs once on the stack of
  equal windows. Frames are decoded by `num_frames` unrolled ops so tf.data's threads decode them
  in parallel. No padded canvas: padding every window to a fixed size cost as much as the decode.

  Args:
    jpegs: [num_frames] tf.string, all frames of one size.
    boxes: [1, 4] (one box for the clip) or [num_frames, 4] (offset_y, offset_x, height, width).
    num_frames: static T.
    size: output side.

  Returns:
    [T, size, size, 3] float32 in [0, 255].
  """
  windows = _decode_windows(jpegs, boxes, num_frames)
  if boxes.shape[0] == 1:  # one box, so equal window sizes: one resize of the [T, h, w, 3] stack
    return tf.image.resize(tf.stack(windows), [size, size])
  return tf.stack([tf.image.resize(window, [size, size]) for window in windows])


def _decode_windows(jpegs: tf.Tensor, boxes: tf.Tensor, num_frames: int) -> list:
  """T × [h_t, w_t, 3] uint8: each frame's crop window, by `num_frames` unrolled decodes.

  boxes: [1, 4] (one box for the clip) or [num_frames, 4] (offset_y, offset_x, height, width).
  """
  shared = boxes.shape[0] == 1
  return [tf.image.decode_and_crop_jpeg(jpegs[t], boxes[0] if shared else boxes[t], channels=3)
          for t in range(num_frames)]


# The host pipeline's clips and views: aligned, so that TensorFlow adopts them without a copy, and
# made from buffers TensorFlow has released (no fresh pages per view): host_buffers.
_BUFFERS = host_buffers.BufferPool()


def resize_and_flip_frames(size: int, flip: np.ndarray, *frames: np.ndarray) -> np.ndarray:
  """OpenCV's bilinear resize of each frame to size × size, mirrored where `flip` says (NumPy).

  `cv2.INTER_LINEAR` samples at half-pixel centres like `tf.image.resize` and computes in 11-bit
  fixed point straight to uint8: within 1 grey level of `tf.round(tf.image.resize(...))` (mean
  0.13). It does not smooth before downsampling, like TF's kernel with antialias=False. The flip
  mirrors the resized frame (an exact mirror, done in place).

  Args:
    size: output side.
    flip: [n] bool, n = 1 (the clip) or T (per frame).
    *frames: T arrays [h_t, w_t, 3] uint8 (sizes may differ from frame to frame).

  Returns:
    [T, size, size, 3] uint8.
  """
  flip = np.broadcast_to(flip, [len(frames)])
  out = _BUFFERS.take((len(frames), size, size, 3), np.uint8)
  for t, frame in enumerate(frames):
    cv2.resize(frame, (size, size), dst=out[t], interpolation=cv2.INTER_LINEAR)
    if flip[t]:
      cv2.flip(out[t], 1, dst=out[t])
  return out


# The colour chain on the host: `augment_view_with`'s values for a temporally consistent view,
# computed in OpenCV / NumPy inside the `tf.numpy_function` that resizes and flips. The draws stay
# in TensorFlow (`draw_view_colors`, the same seeds as the XLA chain); only the pixels move.


class ColorDraws(NamedTuple):
  """The random numbers of one temporally consistent view's colour chain (tensors or NumPy).

  Attributes:
    jitter: bool scalar, whether the colour jitter runs.
    factors: [4] float32: brightness, contrast and saturation factors, hue shift in turns.
    order: [4] int32: the jitter's ops in the order they run (0 brightness, 1 contrast,
      2 saturation, 3 hue).
    grayscale, blur, solarize: bool scalars, whether each op runs.
    sigma: float32 scalar, the blur's σ.
  """
  jitter: tf.Tensor
  factors: tf.Tensor
  order: tf.Tensor
  grayscale: tf.Tensor
  blur: tf.Tensor
  sigma: tf.Tensor
  solarize: tf.Tensor


def draw_view_colors(seed: tf.Tensor, config: AugmentationConfig, blur_probability,
                     solarize_probability) -> ColorDraws:
  """What `augment_view_with` draws for a temporally consistent view with the same arguments.

  The same `split_seed` tree as `augment_view_with` → `random_color_jitter` → `color_jitter`,
  `random_grayscale`, `random_gaussian_blur` and `random_solarize`, so the same numbers (tested)
  when both run alike: XLA's stateless random numbers differ from TF's kernels', so draw under
  XLA to match the XLA-compiled chain, with TF's kernels to match the plain one.

  Args:
    seed: [2] int seed.
    config: the recipe.
    blur_probability, solarize_probability: the view's (floats or scalar tensors).

  Returns:
    `ColorDraws` of tensors.
  """
  seeds = split_seed(seed, 4)  # jitter, grayscale, blur, solarize
  jitter_seeds = split_seed(seeds[0], 2)  # coin, then color_jitter's
  factor_seeds = split_seed(jitter_seeds[1], 2)  # factors, order
  factors = _jitter_factors(factor_seeds[0], 1, config.brightness, config.contrast,
                            config.saturation, config.hue)
  blur_seeds = split_seed(seeds[2], 2)  # coin, σ
  return ColorDraws(
      jitter=_bernoulli(jitter_seeds[0], [1], config.color_jitter_probability)[0],
      factors=tf.concat(factors, axis=0),
      order=_random_order(factor_seeds[1], 1)[0],
      grayscale=_bernoulli(seeds[1], [1], config.grayscale_probability)[0],
      blur=_bernoulli(blur_seeds[0], [1], blur_probability)[0],
      sigma=_uniform(blur_seeds[1], [1], *config.blur_sigma_range)[0],
      solarize=_bernoulli(seeds[3], [1], solarize_probability)[0])


# `tf.image.rgb_to_grayscale`'s weights, as a 1 × 3 `cv2.transform` matrix.
_GREY_WEIGHTS = np.array([[0.2989, 0.5870, 0.1140]], np.float32)


def _truncate_at_one(image):
  cv2.threshold(image, 1.0, 1.0, cv2.THRESH_TRUNC, dst=image)


def _adjust_brightness_host(brightness):
  factor = np.float32(brightness)

  def adjust(frame):
    np.multiply(frame, factor, out=frame)
    if brightness > 1.0:  # x · b <= 1 otherwise, and b >= 0
      _truncate_at_one(frame)
    return frame
  return adjust


def _adjust_contrast_host(contrast, mean):
  # (x − mean) · c + mean = c · x + (1 − c) · mean per channel: one 3 × 4 affine map.
  matrix = np.concatenate([contrast * np.eye(3), ((1.0 - contrast) * mean)[:, None]], axis=1)
  matrix = matrix.astype(np.float32)

  def adjust(frame):
    cv2.transform(frame, matrix, dst=frame)
    if contrast > 1.0:  # else c · x + (1 − c) · mean is a sum of products of values >= 0
      cv2.threshold(frame, 0.0, 0.0, cv2.THRESH_TOZERO, dst=frame)  # x > 0 ? x : 0
    _truncate_at_one(frame)
    return frame
  return adjust


@functools.lru_cache(maxsize=8)
def _saturation_bound(shape):
  """A read-only HSV frame of `shape` [S, S, 3] holding (∞, 1, ∞): clips S at 1 in one `cv2.min`
  (NumPy's minimum on the strided S channel costs 3×; `cv2.min` with a scalar builds this frame
  on every call)."""
  bound = np.full(shape, np.inf, np.float32)
  bound[..., 1] = 1.0
  bound.flags.writeable = False
  return bound


def _saturate_and_rotate_hue_host(saturation, hue):
  """`adjust_saturation` (factor or None) and `adjust_hue` (turns or None), one HSV round trip.

  Saturation changes only S and hue only H, so one round trip serves both (in either order).
  OpenCV's float HSV has H in degrees and wraps H >= 360 but not H < 0, hence the shift taken
  modulo one turn.
  """
  shift = None if hue is None else np.float32(hue % 1.0 * 360.0)
  # With a saturation (here: with the hue, or above 1 — `_desaturate_host` takes it alone below 1):
  # one 3 × 4 `cv2.transform` on HSV, (H, S, V) -> (H + shift, k · S, V), the same roundings as
  # NumPy's strided ops on S and H, and `cv2.min` for the clip: ~130 against ~200 µs per 224²
  # frame for both with the clip. The hue alone: one strided NumPy sum is the cheaper.
  matrix = None
  if saturation is not None:
    matrix = np.diag([1.0, saturation, 1.0, 0.0])[:3].astype(np.float32)
    matrix[0, 3] = 0.0 if shift is None else shift

  def adjust(frame):
    cv2.cvtColor(frame, cv2.COLOR_RGB2HSV, dst=frame)
    if matrix is not None:
      cv2.transform(frame, matrix, dst=frame)
      if saturation > 1.0:  # S <= 1, so S · k <= 1 otherwise
        cv2.min(frame, _saturation_bound(frame.shape), dst=frame)
    else:
      h = frame[..., 0]
      np.add(h, shift, out=h)
    cv2.cvtColor(frame, cv2.COLOR_HSV2RGB, dst=frame)
    return frame
  return adjust


def _desaturate_host(saturation):
  """`adjust_saturation` for a factor k <= 1 in closed form (as `adjust_saturation`): every
  channel x -> V − k · (V − x), V = max(r, g, b) per pixel; no HSV round trip.

  For k <= 1 the factor is never clipped (k' = min(k, V / (V − m)) = k), and the result stays in
  [0, V]: no clip either. Split, two maxima, V on 3 channels, subtract and scale-add cost 40% less
  than the round trip with NumPy's strided S product (~120 against ~200 µs per 224² frame).
  """
  factor = -float(np.float32(saturation))
  buffers = []

  def adjust(frame):
    if not buffers:  # [S, S] planes r, g, b, V, and V on 3 channels, once per view
      buffers.extend(np.empty(frame.shape[:2], np.float32) for _ in range(4))
      buffers.append(np.empty_like(frame))
    *planes, value, values = buffers
    cv2.split(frame, planes)
    cv2.max(planes[0], planes[1], dst=value)
    cv2.max(value, planes[2], dst=value)
    cv2.cvtColor(value, cv2.COLOR_GRAY2RGB, dst=values)
    cv2.subtract(values, frame, dst=frame)  # V − x >= 0
    cv2.scaleAdd(frame, factor, values, dst=frame)  # V − k · (V − x)
    return frame
  return adjust


def _jitter_ops_host(order, factors, mean=None):
  """`color_jitter`'s ops in `order` (0 brightness, 1 contrast, 2 saturation, 3 hue) as frame ->
  frame functions; contrast needs the clip's channel `mean` [3] at that point of the chain."""
  brightness, contrast, saturation, hue = (float(f) for f in factors)
  ops, k = [], 0
  while k < len(order):
    if order[k] == 0:
      ops.append(_adjust_brightness_host(brightness))
    elif order[k] == 1:
      ops.append(_adjust_contrast_host(contrast, mean))
    elif order[k] == 2 and saturation <= 1.0 and not (k + 1 < len(order) and order[k + 1] == 3):
      ops.append(_desaturate_host(saturation))
    else:
      # Saturation and hue next to each other share one HSV round trip (half of the orders).
      both = k + 1 < len(order) and order[k + 1] >= 2
      ops.append(_saturate_and_rotate_hue_host(saturation if both or order[k] == 2 else None,
                                               hue if both or order[k] == 3 else None))
      k += both
    k += 1
  return ops


def _blur_host(sigma, kernel_size):
  """`gaussian_blur` of one frame [S, S] or [S, S, 3], in place: the same taps, zero padding."""
  sigma = np.float32(sigma)
  # `blur_radius`: 4σ rounded up to even, at most kernel_size // 2.
  radius = min(2 * int(np.ceil(np.float32(2.0) * sigma)), kernel_size // 2)
  x = np.arange(-radius, radius + 1, dtype=np.float32)
  taps = np.exp(-np.square(x) / (np.float32(2.0) * np.square(sigma)))
  taps /= taps.sum()

  def blur(frame):
    cv2.sepFilter2D(frame, -1, taps, taps, dst=frame, borderType=cv2.BORDER_CONSTANT)
    _truncate_at_one(frame)  # the taps may sum to 1 + ε; blurred values stay >= 0
    return frame
  return blur


def _solarize_host(threshold, scratch):
  # scratch: a buffer of at least one frame's values, for 1 − x.
  def solarize(frame):
    inverted = scratch[:frame.size].reshape(frame.shape)
    np.subtract(np.float32(1.0), frame, out=inverted)
    if threshold == 0.5:  # x below 0.5, 1 − x at or above: the smaller of the two
      return np.minimum(frame, inverted, out=frame)
    np.copyto(frame, inverted, where=frame >= threshold)
    return frame
  return solarize


def augment_view_host(clip: np.ndarray, draws: ColorDraws, kernel_size: int,
                      solarize_threshold: float = 0.5) -> np.ndarray:
  """`augment_view_with` on a temporally consistent view with the given draws (OpenCV / NumPy).

  The same values as the XLA chain on `clip / 255` for the same draws, to float rounding (tested:
  max |Δ| < 1e-5): uint8 → [0, 1]; the jitter in its order (brightness, contrast with the mean
  over the clip, saturation and hue through OpenCV's float HSV; clipped after each); grayscale;
  the Gaussian blur with zero padding; solarize; values in [0, 1]. OpenCV runs single-threaded
  here (`cv2.setNumThreads(0)` above), so the result is deterministic.

  The chain takes one frame at a time through all its ops while the frame is in cache: op by op
  over the whole clip, each pass waits on memory and the chain costs 2.5× more. Only the contrast
  needs the whole clip (its mean), so a chain with contrast makes two sweeps over the frames.

  Args:
    clip: [T, S, S, 3] uint8, the resized and flipped crop.
    draws: `ColorDraws` as NumPy values (from `draw_view_colors`).
    kernel_size: the blur's `blur_kernel_size` for S.
    solarize_threshold: pixels at or above it are inverted.

  Returns:
    [T, S, S, 3] float32 in [0, 1].
  """
  num_frames, size = clip.shape[:2]
  view = _BUFFERS.take(clip.shape, np.float32)
  order = [int(op) for op in draws.order] if draws.jitter else []
  split = order.index(1) if 1 in order else len(order)  # the contrast's step
  tail = []
  if draws.grayscale:
    # One plane [S, S] from here: blur and solarize then cost a third.
    plane = np.empty((size, size), np.float32)
    tail.append(lambda frame: cv2.transform(frame, _GREY_WEIGHTS, dst=plane))
  if draws.blur:
    tail.append(_blur_host(draws.sigma, kernel_size))
  if draws.solarize:
    tail.append(_solarize_host(solarize_threshold, np.empty(size * size * 3, np.float32)))
  # 1) uint8 → [0, 1] (TF's cast and scale, bit for bit) and the jitter up to the contrast.
  first = _jitter_ops_host(order[:split], draws.factors)
  if split == len(order):
    first += tail
  sums = np.zeros(3)
  scale = np.float32(1.0 / 255.0)
  for t in range(num_frames):
    # TF's cast then scale: a cast and an in-place float product cost ~35% less than NumPy's mixed
    # uint8 × float32 multiply (its casting loop), for the same values.
    frame = view[t]
    np.copyto(frame, clip[t])
    np.multiply(frame, scale, out=frame)
    for op in first:
      frame = op(frame)
    if split < len(order):
      sums += cv2.sumElems(frame)[:3]
    elif frame.ndim == 2:
      cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB, dst=view[t])
  if split == len(order):
    return view
  # 2) The contrast with the clip's mean, the rest of the jitter, grayscale, blur, solarize.
  second = _jitter_ops_host(order[split:], draws.factors, sums / (num_frames * size * size))
  second += tail
  for t in range(num_frames):
    frame = view[t]
    for op in second:
      frame = op(frame)
    if frame.ndim == 2:
      cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB, dst=view[t])
  return view

def decode_resize_and_flip_windows(jpegs: tf.Tensor, boxes: tf.Tensor, flip: tf.Tensor,
                                   num_frames: int, size: int) -> tf.Tensor:
  """Decodes the crop window of each JPEG frame, resizes it to size × size and mirrors it (host).

  The decode is `tf.image.decode_and_crop_jpeg` (only the window, `num_frames` unrolled ops that
  tf.data's threads run in parallel); the resize and the flip are OpenCV's in one
  `tf.numpy_function` per clip (`resize_and_flip_frames`): 5× faster than `tf.image.resize` on the
  host, and uint8 out, so no round and cast (benchmarks/RESULTS.md). The graph holds a Python
  function: it runs in this process only (not in tf.data service workers, not in a SavedModel);
  `decode_and_resize_windows` is the TensorFlow-only equivalent.

  Args:
    jpegs: [num_frames] tf.string, all frames of one size.
    boxes: [1, 4] (one box for the clip) or [num_frames, 4] (offset_y, offset_x, height, width).
    flip: [1] or [num_frames] bool, mirror horizontally.
    num_frames: static T.
    size: output side.

  Returns:
    [T, size, size, 3] uint8 with its static shape.
  """
  # Passed apart, not stacked: per-frame boxes give unequal sizes.
  windows = _decode_windows(jpegs, boxes, num_frames)
  clip = tf.numpy_function(lambda *args: resize_and_flip_frames(size, *args), [flip, *windows],
                           tf.uint8, stateful=False)
  clip.set_shape([num_frames, size, size, 3])
  return clip


def decode_and_augment_windows(jpegs: tf.Tensor, boxes: tf.Tensor, flip: tf.Tensor,
                               draws: ColorDraws, num_frames: int, size: int, kernel_size: int,
                               solarize_threshold: float = 0.5) -> tf.Tensor:
  """`decode_resize_and_flip_windows`, then the colour chain on the host: the whole view.

  One `tf.numpy_function` per view runs OpenCV's resize and flip and `augment_view_host` with
  `draws` (from `draw_view_colors`): the values of the XLA chain to float rounding, for ~40% of
  its CPU time. Temporally consistent views only (one draw per clip).

  Args:
    jpegs: [num_frames] tf.string, all frames of one size.
    boxes: [1, 4] (offset_y, offset_x, height, width), one box for the clip.
    flip: [1] bool, mirror horizontally.
    draws: `ColorDraws` of tensors.
    num_frames: static T.
    size: output side.
    kernel_size: the blur's `blur_kernel_size(size, ...)`.
    solarize_threshold: pixels at or above it are inverted.

  Returns:
    [T, size, size, 3] float32 in [0, 1] with its static shape.
  """
  windows = _decode_windows(jpegs, boxes, num_frames)
  num_draws = len(ColorDraws._fields)

  def resize_flip_and_augment(flip, *args):
    clip = resize_and_flip_frames(size, flip, *args[num_draws:])
    return augment_view_host(clip, ColorDraws(*args[:num_draws]), kernel_size, solarize_threshold)

  view = tf.numpy_function(resize_flip_and_augment, [flip, *draws, *windows], tf.float32,
                           stateful=False)
  view.set_shape([num_frames, size, size, 3])
  return view


def decode_jpeg_windows(jpegs: tf.Tensor, boxes: tf.Tensor, num_frames: int,
                        padded_size: tf.Tensor) -> tf.Tensor:
  """Decodes only the crop window of each JPEG frame, top-left aligned in a zero canvas.

  The pipeline no longer uses it (`decode_and_resize_windows` is 2× faster on the host: the canvas
  copy cost as much as the decode); kept with `resize_windows` for XLA-only consumers.

  `tf.image.decode_and_crop_jpeg` skips what lies outside the window and never builds the full
  frame. Frames are decoded by `num_frames` unrolled ops so tf.data's threads decode them in
  parallel. The canvas has a fixed size per dataset so that `resize_windows` compiles once.

  Args:
    jpegs: [num_frames] tf.string, all frames of one size.
    boxes: [1, 4] or [num_frames, 4] (offset_y, offset_x, height, width).
    num_frames: static T.
    padded_size: [2] canvas (height, width), at least the largest window.

  Returns:
    [T, padded_h, padded_w, 3] uint8.
  """
  def canvas(window):
    pad = padded_size - tf.shape(window)[:2]
    return tf.pad(window, [[0, pad[0]], [0, pad[1]], [0, 0]])

  if boxes.shape[0] == 1:
    windows = tf.stack([
        tf.image.decode_and_crop_jpeg(jpegs[t], boxes[0], channels=3) for t in range(num_frames)])
    pad = padded_size - tf.shape(windows)[1:3]
    return tf.pad(windows, [[0, 0], [0, pad[0]], [0, pad[1]], [0, 0]])
  return tf.stack([canvas(tf.image.decode_and_crop_jpeg(jpegs[t], boxes[t], channels=3))
                   for t in range(num_frames)])


def _bilinear_taps(in_sizes, out_size):
  # TF's half-pixel bilinear sampling (tf.image.resize, antialias=False), per window: [n, S].
  scale = tf.cast(in_sizes, tf.float32)[:, None] / out_size
  x = (tf.range(out_size, dtype=tf.float32)[None, :] + 0.5) * scale - 0.5
  x_floor = tf.floor(x)
  last = in_sizes[:, None] - 1
  lower = tf.maximum(tf.cast(x_floor, tf.int32), 0)
  upper = tf.minimum(tf.cast(tf.math.ceil(x), tf.int32), last)
  return lower, upper, x - x_floor


def resize_windows(canvas: tf.Tensor, window_sizes: tf.Tensor, size: int,
                   flip: tf.Tensor) -> tf.Tensor:
  """Bilinear resize of each frame's top-left window to size × size, optionally mirrored.

  Same sampling as `tf.image.resize(window, [size, size])` (bilinear, half-pixel centres), written
  as row and column gathers so that XLA can fuse it with the colour ops that follow; the flip is
  free (reversed column taps).

  Args:
    canvas: [T, H, W, C] (uint8 or float), the window at the top left of each frame.
    window_sizes: [n, 2] int32 (height, width), n = 1 (shared) or T.
    size: output side.
    flip: [n] bool, mirror horizontally.

  Returns:
    [T, size, size, C] float32 in the input's units.
  """
  num_frames = tf.shape(canvas)[0]
  canvas = tf.cast(canvas, tf.float32)
  window_sizes = tf.broadcast_to(window_sizes, [num_frames, 2])
  flip = tf.broadcast_to(tf.reshape(flip, [-1]), [num_frames])
  top, bottom, y_lerp = _bilinear_taps(window_sizes[:, 0], size)
  left, right, x_lerp = _bilinear_taps(window_sizes[:, 1], size)
  flip_cols = flip[:, None]
  left, right, x_lerp = (tf.where(flip_cols, tf.reverse(v, [1]), v) for v in (left, right, x_lerp))
  top_rows = tf.gather(canvas, top, axis=1, batch_dims=1)  # [T, S, W, C]
  bottom_rows = tf.gather(canvas, bottom, axis=1, batch_dims=1)
  x_lerp = x_lerp[:, None, :, None]

  def along_x(rows):
    lefts = tf.gather(rows, left, axis=2, batch_dims=1)  # [T, S, S, C]
    rights = tf.gather(rows, right, axis=2, batch_dims=1)
    return lefts + (rights - lefts) * x_lerp

  top_rows, bottom_rows = along_x(top_rows), along_x(bottom_rows)
  return top_rows + (bottom_rows - top_rows) * y_lerp[:, :, None, None]


def random_flip_left_right(video: tf.Tensor, seed: tf.Tensor, probability: float = 0.5,
                           temporally_consistent: bool = True) -> tf.Tensor:
  """Horizontal flip of [T, H, W, C] with `probability`. One coin per clip (or per frame)."""
  flip = _bernoulli(seed, _draws(temporally_consistent, video), probability)
  return tf.where(flip[:, None, None, None], tf.reverse(video, axis=[2]), video)


# Colour ops. Inputs are float [..., H, W, 3] in [0, 1]; factors broadcast against the leading axes,
# so the same code serves one draw per clip ([1, 1, 1, 1]), per frame ([T, 1, 1, 1]) and per clip of
# a batch ([B, 1, 1, 1, 1]).


def adjust_brightness(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Multiplicative brightness (SimCLR v2 style), clipped to [0, 1]."""
  return tf.clip_by_value(images * factor, 0.0, 1.0)


def channel_mean(images: tf.Tensor, mean_axes) -> tf.Tensor:
  """Per-channel mean of `images` [..., H, W, C] over `mean_axes` (kept as size-1 axes).

  When the axes are a trailing run ending at W (a clip [T, H, W, C] over [0, 1, 2], a batch
  [B, T, H, W, C] over [1, 2, 3]), it sums rows of W·C contiguous values first, then folds W: XLA on
  CPU vectorises that 5× better than one reduction whose innermost kept axis has only C = 3 values.
  """
  rank = len(images.shape)
  mean_axes = sorted(a % rank for a in mean_axes)
  width, channels = images.shape[-2], images.shape[-1]
  first = mean_axes[0] if mean_axes else rank
  if (mean_axes != list(range(first, rank - 1)) or first == rank - 1 or width is None
      or channels is None):
    return tf.reduce_mean(images, axis=mean_axes, keepdims=True)
  lead = tf.shape(images)[:first]
  rows = tf.reshape(images, tf.concat([lead, [-1, width * channels]], 0))  # [..., rows, W·C]
  per_column = tf.reduce_mean(rows, axis=-2)  # [..., W·C]
  mean = tf.reduce_mean(tf.reshape(per_column, tf.concat([lead, [width, channels]], 0)), axis=-2)
  return tf.reshape(mean, tf.concat([lead, tf.ones([rank - 1 - first], tf.int32), [channels]], 0))


def adjust_contrast(images: tf.Tensor, factor: tf.Tensor, mean_axes) -> tf.Tensor:
  """(x − mean) · factor + mean per channel, the mean taken over `mean_axes`; clipped to [0, 1]."""
  mean = channel_mean(images, mean_axes)
  return tf.clip_by_value((images - mean) * factor + mean, 0.0, 1.0)


def _per_pixel(factor: tf.Tensor, dtype) -> tf.Tensor:
  # A scalar, or a factor broadcastable to images[..., :1], made broadcastable to one plane.
  factor = tf.convert_to_tensor(factor, dtype)
  return factor[..., 0] if factor.shape.rank else factor


def adjust_saturation(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """`tf.image.adjust_saturation` in closed form, without the HSV round trip.

  With V = max(r, g, b) and m = min: HSV → RGB gives each channel as V − V·S·f(H), so scaling S by
  k (clipped at 1) maps every channel x to V − k'·(V − x) with k' = min(k, V / (V − m)): hue and
  value stay, and no per-pixel hue is computed. Equal to the TF op up to float rounding (~1e-6);
  under XLA on CPU it costs 3.7 ms instead of 6.5 per 16 × 224 × 224 clip.

  Args:
    images: [..., 3] float in [0, 1].
    factor: scalar or broadcastable to images[..., :1].

  Returns:
    [..., 3] float in [0, 1].
  """
  r, g, b = tf.unstack(images, axis=-1)
  factor = _per_pixel(factor, images.dtype)
  value = tf.maximum(tf.maximum(r, g), b)
  chroma = value - tf.minimum(tf.minimum(r, g), b)
  # Grey pixels (chroma 0) keep their value whatever k' is.
  scale = tf.minimum(factor, value / tf.maximum(chroma, 1e-12))
  return tf.stack([value - scale * (value - c) for c in (r, g, b)], axis=-1)


def adjust_saturation_and_hue(images: tf.Tensor, saturation_factor: tf.Tensor,
                              hue_delta: tf.Tensor) -> tf.Tensor:
  """`tf.image.adjust_saturation` then `adjust_hue` with broadcastable factors, one HSV round trip.

  Matches the TF ops: S ← clip(S · factor, 0, 1), H ← (H + delta) mod 1; clipped to [0, 1].
  """
  hsv = tf.image.rgb_to_hsv(images)
  h, s, v = tf.unstack(hsv, axis=-1)
  s = tf.clip_by_value(s * saturation_factor[..., 0], 0.0, 1.0)
  h = tf.math.floormod(h + hue_delta[..., 0], 1.0)
  return tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1)), 0.0, 1.0)


def to_grayscale(images: tf.Tensor) -> tf.Tensor:
  """ITU-R 601 luma (as `tf.image.rgb_to_grayscale`), repeated on 3 channels."""
  gray = tf.image.rgb_to_grayscale(images)
  return tf.concat([gray, gray, gray], axis=-1)


def _jitter_factors(seed, n, brightness, contrast, saturation, hue):
  seeds = split_seed(seed, 4)
  # Brightness is floored at 0 like the reference release (a factor below 0 would invert).
  return (_uniform(seeds[0], [n], max(1.0 - brightness, 0.0), 1.0 + brightness),
          _uniform(seeds[1], [n], 1.0 - contrast, 1.0 + contrast),
          _uniform(seeds[2], [n], 1.0 - saturation, 1.0 + saturation),
          _uniform(seeds[3], [n], -hue, hue))


def _random_order(seed, n):
  # [n, 4]: a random permutation of the four jitter ops for each draw.
  return tf.argsort(tf.random.stateless_uniform([n, 4], seed), axis=-1, stable=True)


def color_jitter(video: tf.Tensor, seed: tf.Tensor, brightness: float = 0.8,
                 contrast: float = 0.8, saturation: float = 0.8, hue: float = 0.2,
                 temporally_consistent: bool = True) -> tf.Tensor:
  """Brightness, contrast, saturation and hue in random order, clipped after each (SimCLR style).

  One set of factors and one order per clip (or per frame). The contrast mean is taken over the
  whole clip, as the reference release does (it jitters the clip as one tall image).

  Args:
    video: [T, H, W, 3] float in [0, 1].

  Returns:
    [T, H, W, 3] float in [0, 1].
  """
  if not temporally_consistent:
    return _color_jitter_masked(video, seed, brightness, contrast, saturation, hue)
  seeds = split_seed(seed, 2)
  b, c, s, h = _jitter_factors(seeds[0], 1, brightness, contrast, saturation, hue)
  order = _random_order(seeds[1], 1)[0]
  branches = [
      lambda x: adjust_brightness(x, b[0]),
      lambda x: adjust_contrast(x, c[0], mean_axes=[0, 1, 2]),
      lambda x: tf.clip_by_value(adjust_saturation(x, s[0]), 0.0, 1.0),
      lambda x: tf.clip_by_value(tf.image.adjust_hue(x, h[0]), 0.0, 1.0),
  ]
  for step in range(4):
    # A tf.switch_case runs only the chosen op: 4 ops instead of the 16 a vectorised select needs.
    video = tf.switch_case(order[step], [lambda fn=fn, x=video: fn(x) for fn in branches])
  return video


def _color_jitter_masked(images, seed, brightness, contrast, saturation, hue):
  """Vectorised colour jitter: one draw (factors and order) per index of the leading axis.

  `images` is [N, ..., H, W, 3]: a video drawn per frame ([T, H, W, 3]) or a batch of clips drawn
  per clip ([B, T, H, W, 3]); the contrast mean is over everything but N and the channels. At step
  k every draw applies only its k-th op, the others get identity factors (1, 1, 1, 0), so no
  per-draw control flow is needed. Saturation and hue share one HSV round trip since one of the two
  is always the identity.
  """
  n = tf.shape(images)[0]
  seeds = split_seed(seed, 2)
  b, c, s, h = _jitter_factors(seeds[0], n, brightness, contrast, saturation, hue)
  order = _random_order(seeds[1], n)  # [N, 4]
  rank = len(images.shape)
  shape = [-1] + [1] * (rank - 1)
  mean_axes = list(range(1, rank - 1))
  for step in range(4):
    op = order[:, step]
    pick = lambda values, index, identity: tf.reshape(
        tf.where(op == index, values, identity), shape)
    images = adjust_brightness(images, pick(b, 0, 1.0))
    images = adjust_contrast(images, pick(c, 1, 1.0), mean_axes)
    images = adjust_saturation_and_hue(images, pick(s, 2, 1.0), pick(h, 3, 0.0))
  return images


def random_color_jitter(video: tf.Tensor, seed: tf.Tensor, probability: float = 0.8,
                        brightness: float = 0.8, contrast: float = 0.8, saturation: float = 0.8,
                        hue: float = 0.2, temporally_consistent: bool = True) -> tf.Tensor:
  """`color_jitter` with `probability`. One coin and one set of factors per clip (or frame)."""
  seeds = split_seed(seed, 2)
  apply = _bernoulli(seeds[0], _draws(temporally_consistent, video), probability)
  if temporally_consistent:
    return tf.cond(
        apply[0],
        lambda: color_jitter(video, seeds[1], brightness, contrast, saturation, hue),
        lambda: video)
  jittered = color_jitter(video, seeds[1], brightness, contrast, saturation, hue,
                          temporally_consistent=False)
  return tf.where(apply[:, None, None, None], jittered, video)


def random_grayscale(video: tf.Tensor, seed: tf.Tensor, probability: float = 0.2,
                     temporally_consistent: bool = True) -> tf.Tensor:
  """Grayscale with `probability`. One coin per clip (or per frame)."""
  apply = _bernoulli(seed, _draws(temporally_consistent, video), probability)
  if temporally_consistent:
    return tf.cond(apply[0], lambda: to_grayscale(video), lambda: video)
  return tf.where(apply[:, None, None, None], to_grayscale(video), video)


def blur_kernel_size(crop_size: int, fraction: float = 0.1) -> int:
  """Odd kernel side: 10% of the crop, rounded up to odd as the reference does (224 -> 23)."""
  return 2 * int(crop_size * fraction / 2) + 1


def blur_radius(sigma_max, kernel_size: int):
  """Taps kept on each side: 4σ rounded up to even, at most kernel_size // 2.

  Beyond 4σ the Gaussian's weights sum to < 7e-5 of the total, far below one 8-bit step;
  dropping them takes the blur from 23 taps to 11 on average over σ ~ U(0.1, 2), halving its cost.
  Rounding to even radii leaves a handful of static kernel lengths, which XLA needs.
  """
  radius = 2 * tf.cast(tf.math.ceil(2.0 * tf.cast(sigma_max, tf.float32)), tf.int32)
  return tf.clip_by_value(radius, 0, kernel_size // 2)


def _blur_along(images, weights, radius, axis):
  # Zero padding ("SAME"), then a weighted sum of 2r + 1 shifted slices: XLA fuses it into one
  # vectorised loop; a depthwise convolution with 3 channels is several times slower on CPU.
  size = tf.shape(images)[axis]
  paddings = [[0, 0]] * 4
  paddings[axis] = [radius, radius]
  padded = tf.pad(images, paddings)
  out = None
  for tap in range(2 * radius + 1):
    begin = [0, 0, 0, 0]
    begin[axis] = tap
    sizes = [-1, -1, -1, -1]
    sizes[axis] = size
    term = weights[tap] * tf.slice(padded, begin, sizes)
    out = term if out is None else out + term
  return out


def gaussian_blur(images: tf.Tensor, sigmas: tf.Tensor, kernel_size: int) -> tf.Tensor:
  """Separable Gaussian blur with zero ("SAME") padding, like the reference release.

  The kernel is the reference's (kernel_size taps, normalised) truncated at `blur_radius` of the
  largest σ and renormalised.

  Args:
    images: [N, H, W, C] float.
    sigmas: [1] (one σ for all) or [N] (one per image).
    kernel_size: odd int, see `blur_kernel_size`.

  Returns:
    [N, H, W, C] float32.
  """
  images = tf.cast(images, tf.float32)
  sigmas = tf.cast(tf.reshape(sigmas, [-1]), tf.float32)
  full_radius = kernel_size // 2
  radii = sorted({min(r, full_radius) for r in range(0, full_radius + 2, 2)})

  def blur_with(radius):
    def blur():
      x = tf.cast(tf.range(-radius, radius + 1), tf.float32)[:, None]
      kernels = tf.exp(-tf.square(x) / (2.0 * tf.square(sigmas[None, :])))
      kernels /= tf.reduce_sum(kernels, axis=0, keepdims=True)
      weights = tf.reshape(kernels, [2 * radius + 1, -1, 1, 1, 1])  # [taps, N or 1, 1, 1, 1]
      return _blur_along(_blur_along(images, weights, radius, axis=2), weights, radius, axis=1)
    return blur

  needed = blur_radius(tf.reduce_max(sigmas), kernel_size)
  branch = tf.reduce_sum(tf.cast(tf.constant(radii) < needed, tf.int32))
  return tf.switch_case(branch, [blur_with(r) for r in radii])


def random_gaussian_blur(video: tf.Tensor, seed: tf.Tensor, probability: float,
                         kernel_size: int, sigma_range=(0.1, 2.0),
                         temporally_consistent: bool = True) -> tf.Tensor:
  """Gaussian blur with `probability`, σ ~ U(sigma_range). One coin and σ per clip (or frame).

  Args:
    video: [T, H, W, C] float.
  """
  seeds = split_seed(seed, 2)
  n = _draws(temporally_consistent, video)
  apply = _bernoulli(seeds[0], n, probability)
  sigmas = _uniform(seeds[1], n, sigma_range[0], sigma_range[1])
  if temporally_consistent:
    return tf.cond(apply[0], lambda: gaussian_blur(video, sigmas, kernel_size), lambda: video)
  return tf.where(apply[:, None, None, None], gaussian_blur(video, sigmas, kernel_size), video)


def solarize(images: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
  """x below the threshold, 1 − x at or above it (images in [0, 1])."""
  return tf.where(images < threshold, images, 1.0 - images)


def random_solarize(video: tf.Tensor, seed: tf.Tensor, probability: float = 0.2,
                    threshold: float = 0.5, temporally_consistent: bool = True) -> tf.Tensor:
  """Solarize with `probability`. One coin per clip (or per frame)."""
  apply = _bernoulli(seed, _draws(temporally_consistent, video), probability)
  if temporally_consistent:
    return tf.cond(apply[0], lambda: solarize(video, threshold), lambda: video)
  return tf.where(apply[:, None, None, None], solarize(video, threshold), video)


def augment_view(video: tf.Tensor, seed: tf.Tensor, config: AugmentationConfig,
                 view: int) -> tf.Tensor:
  """The colour part of the recipe on one cropped, flipped view: jitter, grey, blur, solarize.

  Args:
    video: [T, S, S, 3] float in [0, 1] (cropped to the final size: the colour ops run after the
      resize, on the fewest pixels).
    seed: [2] int seed.
    config: the recipe.
    view: 1 or 2 (blur and solarize probabilities differ per view).

  Returns:
    [T, S, S, 3] float32 in [0, 1].
  """
  return augment_view_with(video, seed, config, config.blur_probability(view),
                           config.solarize_probability(view))


def augment_view_with(video: tf.Tensor, seed: tf.Tensor, config: AugmentationConfig,
                      blur_probability, solarize_probability) -> tf.Tensor:
  """`augment_view` with the per-view probabilities given (floats or scalar tensors).

  With tensors, one compiled function serves both views.
  """
  consistent = config.temporally_consistent
  seeds = split_seed(seed, 4)
  video = random_color_jitter(video, seeds[0], config.color_jitter_probability,
                              config.brightness, config.contrast, config.saturation, config.hue,
                              consistent)
  video = random_grayscale(video, seeds[1], config.grayscale_probability, consistent)
  kernel_size = blur_kernel_size(int(video.shape[-2]), config.blur_kernel_fraction)
  video = random_gaussian_blur(video, seeds[2], blur_probability, kernel_size,
                               config.blur_sigma_range, consistent)
  video = random_solarize(video, seeds[3], solarize_probability, config.solarize_threshold,
                          consistent)
  return tf.clip_by_value(video, 0.0, 1.0)


def augment_clips(clips: tf.Tensor, seed: tf.Tensor, config: AugmentationConfig,
                  view: int) -> tf.Tensor:
  """`augment_view` on a batch, vectorised: for the training step on an accelerator.

  Every op is elementwise or a depthwise convolution with per-draw factors, so XLA fuses it and no
  per-example control flow remains. Draws are per clip (or per frame when
  `config.temporally_consistent` is False). Distribution-equivalent to `augment_view`, but not the
  same random numbers for a given seed.

  Args:
    clips: [B, T, S, S, 3] uint8 (as the pipeline yields with `augment_in_step=True`) or float in
      [0, 1].
    seed: [2] int seed; give each step (and replica) its own, e.g. fold in the step number.
    config: the recipe.
    view: 1 or 2.

  Returns:
    [B, T, S, S, 3] float32 in [0, 1].
  """
  if clips.dtype == tf.uint8:
    clips = tf.cast(clips, tf.float32) / 255.0
  clips = tf.cast(clips, tf.float32)
  shape = tf.shape(clips)
  b, t = shape[0], shape[1]
  consistent = config.temporally_consistent
  lead = b if consistent else b * t
  # [draws, ...] with one independent draw per leading index.
  draws = clips if consistent else tf.reshape(clips, tf.concat([[b * t, 1], shape[2:]], 0))
  seeds = split_seed(seed, 9)
  apply = _bernoulli(seeds[0], [lead], config.color_jitter_probability)
  jittered = _color_jitter_masked(draws, seeds[1], config.brightness, config.contrast,
                                  config.saturation, config.hue)
  mask = lambda m: tf.reshape(m, [lead, 1, 1, 1, 1])
  draws = tf.where(mask(apply), jittered, draws)
  gray = _bernoulli(seeds[2], [lead], config.grayscale_probability)
  draws = tf.where(mask(gray), to_grayscale(draws), draws)
  blur = _bernoulli(seeds[3], [lead], config.blur_probability(view))
  sigmas = _uniform(seeds[4], [lead], *config.blur_sigma_range)
  # Blur per frame with each frame's clip σ: [B·T, S, S, 3].
  frames = tf.reshape(draws, tf.concat([[-1], shape[2:]], 0))
  frame_sigmas = tf.repeat(sigmas, t) if consistent else sigmas
  kernel_size = blur_kernel_size(int(clips.shape[-2]), config.blur_kernel_fraction)
  blurred = tf.reshape(gaussian_blur(frames, frame_sigmas, kernel_size), tf.shape(draws))
  draws = tf.where(mask(blur), blurred, draws)
  solar = _bernoulli(seeds[5], [lead], config.solarize_probability(view))
  draws = tf.where(mask(solar), solarize(draws, config.solarize_threshold), draws)
  return tf.clip_by_value(tf.reshape(draws, shape), 0.0, 1.0)
