"""tf.data pipelines: CVRL pretraining pairs (ρ clips for ρ-SSL), classification training clips,
multi-view evaluation.

Records are read with `schema.parse_video`, so ours and the reference release's (only
`image/encoded` and `clip/label/index`) both work. Each pipeline is built for one
`tf.distribute.InputContext` (one per host with `strategy.distribute_datasets_from_function`): the
host reads its own share of the files and batches `per_replica_batch_size` examples; the global batch
is that times `num_replicas_in_sync` (`global_batch_size`).

Where the speed comes from (benchmarks/input_pipeline.py measures it against the reference release;
per-view costs are CPU time for a 16 × 224 × 224 view on this machine kind):
1) the crop box is drawn from the JPEG header before decoding, and `decode_and_crop_jpeg` decodes
   only that window (the box is shared by all frames of a view), 16 unrolled decodes in parallel;
2) OpenCV resizes the 16 windows and mirrors them in one `tf.numpy_function` per view, straight to
   uint8 (`opencv_resize`; 5× faster than TF's bilinear kernel, within 1 grey level of it), with
   no padded canvas (padding every window to a fixed size cost as much as the decode);
3) everything after the resize — colour jitter, grayscale, blur, solarize — runs in that same
   Python function, in OpenCV / NumPy one frame at a time (`opencv_color`,
   `video_ops.augment_view_host`: ~26 CPU ms per pair against ~70 in XLA); only its random numbers
   are drawn in TF (`video_ops.draw_view_colors`, under XLA with `use_xla`), so the views are the
   XLA chain's to float rounding. Without `opencv_color` (or `opencv_resize`), with
   `temporally_consistent=False` and for `augment_in_step`'s uint8, the colour chain is one
   XLA-compiled function of the fixed-shape [T, S, S, 3] clip (`use_xla`), traced and compiled
   once per pipeline and shared by all views; either way the colour ops run after the resize, on
   the fewest pixels;
4) in XLA the colour jitter runs only the chosen op at each of its four steps (`tf.switch_case`);
   saturation is a closed form on RGB instead of TF's HSV round trip and the contrast mean a
   two-stage reduction (jitter 12.8 ms instead of 16.4 when applied); the separable Gaussian blur
   keeps the taps within 4σ (11 instead of 23 on average), in XLA and in OpenCV alike;
5) with `augment_in_step=True` the host stops after crop + resize + flip and yields uint8 (4× fewer
   bytes); the training step then calls `augment_pretrain_batch` (vectorised over the batch,
   XLA-friendly) on the accelerator.

The OpenCV resize makes the training pipelines' graphs call Python: they run in the process that
builds them (as `strategy.distribute_datasets_from_function` does on every host, TPU VMs
included) but cannot be shipped to tf.data service workers. `opencv_resize=False` gives a graph of
TensorFlow ops only (TF's resize, the flip in XLA). The evaluation pipeline, which the exported
SavedModel's signature shares, is TensorFlow only.

Let an iterator over an OpenCV pipeline go (`del`, or a function's local) before the interpreter
exits. One still alive then (a module-level `it = iter(dataset)`) is destroyed during
finalisation, when tf.data's workers can no longer take the GIL to finish a call in flight: the
process can hang at exit (measured: 1 of 3 such scripts; none with `opencv_resize=False`).
cvrl_tf's entry points hold their iterators in function scope.

Randomness: every example gets its own stateless seed, folded from the pipeline seed and the
example's position in the stream, so with `deterministic=True` and a `seed` the stream is
reproducible run to run.
"""

import dataclasses
import functools
import random
from typing import Literal, Optional, Sequence, Tuple

import tensorflow as tf

from cvrl_tf import schema
from cvrl_tf import video_ops
from cvrl_tf.video_ops import AugmentationConfig

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class ReaderConfig:
  """How records are found, shuffled and read (shared by the three pipelines).

  Attributes:
    file_pattern: glob of TFRecord shards; several globs may be joined with commas.
    per_replica_batch_size: examples per replica per step (global = this × replicas).
    shuffle_buffer_size: videos held for shuffling (training pipelines only).
    cycle_length: files read at once by the interleave.
    seed: base seed; None draws one at random when the pipeline is built.
    deterministic: reproducible order and augmentations for a given seed (slower: no sloppy
      interleave or map).
    skip_corrupt: drop records that fail (missing `image/encoded`, undecodable frame) and count
      them, instead of raising.
  """
  file_pattern: str = ""
  per_replica_batch_size: int = 8
  shuffle_buffer_size: int = 256
  cycle_length: int = 8
  seed: Optional[int] = None
  deterministic: bool = False
  skip_corrupt: bool = False

  def __post_init__(self):
    for name in ("per_replica_batch_size", "shuffle_buffer_size", "cycle_length"):
      if getattr(self, name) < 1:
        raise ValueError(f"ReaderConfig.{name} must be >= 1, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class PretrainDataConfig:
  """CVRL pretraining pairs, or ρ clips per video for ρ-SSL (SPEC §2 defaults).

  Attributes:
    reader: files, batch, shuffling, seed.
    num_frames, stride: each clip is num_frames stored frames `stride` apart (16 × 2 spans 31).
    crop_size: output side of the random resized crop.
    num_clips: ρ >= 2 clips per video, yielded as "view_1" .. "view_ρ", each with its own
      (temporally consistent) spatial and colour augmentation. 2 is CVRL's pair.
    temporal_sampling: how the ρ clip starts are drawn (`video_ops.sample_rho_clip_indices`):
      "cvrl" = CVRL's Δ sampling, each further clip at a gap from the first drawn from the
        decreasing density below (ρ = 2: exactly the pairs of `sample_clip_pair_indices`);
      "uniform" = the ρ-SSL study's: every start uniform within a window of max_span_seconds.
    delta_exponent: "cvrl" only: exponent of the decreasing density of the gap between the clip
      starts (1 = linear, 0 = uniform).
    temporal_augmentation: False takes all clips from the same start (Δ = 0, or a zero span for
      "uniform"): the paper's ablation without temporal augmentation. The spatial augmentation
      still differs per view.
    max_span_seconds: "uniform" only (ignored by "cvrl", so that `key=value` overrides, applied
      one at a time, may switch the sampling in any order): no two clip starts are more than this
      many seconds apart (floor(seconds × `video/fps`) stored frames); 0 = one start for all
      clips; None = anywhere in the whole video (no frame rate needed). A value needs `video/fps`
      in the records (the reference release's records lack it: such a record fails, named).
    augmentation: the spatial and colour recipe. Its blur and solarize probabilities are given for
      view 1 and view 2; with ρ clips odd views take view 1's and even views view 2's
      (`video_ops.recipe_view`).
    augment_in_step: yield uint8 views that are only cropped and flipped; the training step then
      calls `augment_pretrain_batch` (for hosts whose CPUs cannot keep up with the accelerator).
    use_xla: compile the per-view colour chain with XLA on the host (~4× faster on that part than
      plain TF ops, which False runs). The same recipe but not the same views for a seed: XLA's
      stateless random numbers differ from TF's kernels'. With opencv_color it decides how the
      host chain's numbers are drawn, so that switch keeps the views.
    opencv_resize: resize and flip the crop windows with OpenCV in one `tf.numpy_function` per
      view (5× faster than `tf.image.resize` on the host, uint8 out, within 1 grey level of it);
      False: TensorFlow ops only (TF's resize, the flip in XLA), e.g. for tf.data service,
      whose workers cannot run the Python function.
    opencv_color: with opencv_resize, run the colour chain (jitter, grayscale, blur, solarize)
      in OpenCV / NumPy in that same Python function, on random numbers drawn in TensorFlow as
      the compiled chain draws them: the same views to float rounding (max |Δ| ~4e-6) for ~40%
      of the chain's CPU (benchmarks/RESULTS.md). Ignored (the chain stays in TF / XLA) without
      opencv_resize, with augment_in_step, and for per-frame draws (temporally_consistent=False).
  """
  reader: ReaderConfig = dataclasses.field(default_factory=ReaderConfig)
  num_frames: int = 16
  stride: int = 2
  crop_size: int = 224
  num_clips: int = 2
  temporal_sampling: Literal["cvrl", "uniform"] = "cvrl"
  delta_exponent: float = 1.0
  temporal_augmentation: bool = True
  max_span_seconds: Optional[float] = None
  augmentation: AugmentationConfig = dataclasses.field(default_factory=AugmentationConfig)
  augment_in_step: bool = False
  use_xla: bool = True
  opencv_resize: bool = True
  opencv_color: bool = True

  def __post_init__(self):
    _check_clip("PretrainDataConfig", self.num_frames, self.stride, self.crop_size)
    if isinstance(self.num_clips, bool) or not isinstance(self.num_clips, int) \
        or self.num_clips < 2:
      raise ValueError(
          f"PretrainDataConfig.num_clips (ρ, clips per video) must be an int >= 2, got "
          f"{self.num_clips!r}")
    if self.temporal_sampling not in video_ops.TEMPORAL_SAMPLINGS:
      raise ValueError(
          f"PretrainDataConfig.temporal_sampling must be one of "
          f"{', '.join(map(repr, video_ops.TEMPORAL_SAMPLINGS))}, got {self.temporal_sampling!r}")
    if self.delta_exponent < 0:
      raise ValueError(
          f"PretrainDataConfig.delta_exponent must be >= 0, got {self.delta_exponent!r}")
    if self.max_span_seconds is not None:
      if isinstance(self.max_span_seconds, bool) \
          or not isinstance(self.max_span_seconds, (int, float)) \
          or not 0 <= self.max_span_seconds < float("inf"):
        raise ValueError(
            f"PretrainDataConfig.max_span_seconds must be None (the whole video) or a finite "
            f"number of seconds >= 0, got {self.max_span_seconds!r}")

  @property
  def view_names(self) -> list:
    """["view_1", ..., "view_ρ"]: the keys of every pretraining example and batch."""
    return view_names(self.num_clips)


def view_names(num_clips: int) -> list:
  """["view_1", ..., "view_ρ"] for ρ = num_clips."""
  return [f"view_{k}" for k in range(1, num_clips + 1)]


@dataclasses.dataclass(frozen=True)
class ClassificationTrainDataConfig:
  """Labelled training clips for linear evaluation / fine-tuning: one random clip, crop + flip."""
  reader: ReaderConfig = dataclasses.field(default_factory=ReaderConfig)
  num_frames: int = 32
  stride: int = 2
  crop_size: int = 224
  area_range: Tuple[float, float] = (0.3, 1.0)
  aspect_ratio_range: Tuple[float, float] = (0.5, 2.0)
  flip_probability: float = 0.5
  use_xla: bool = True
  opencv_resize: bool = True  # as PretrainDataConfig.opencv_resize

  def __post_init__(self):
    _check_clip("ClassificationTrainDataConfig", self.num_frames, self.stride, self.crop_size)


@dataclasses.dataclass(frozen=True)
class EvalDataConfig:
  """Multi-view evaluation: num_clips evenly spaced clips × num_crops crops along the long side.

  Attributes:
    short_side: frames are resized so that their short side is this.
    crop_size: side of the square crops (<= short_side).
    num_crops: 1 (centre) or 3 (start, centre and end of the long side).
  """
  reader: ReaderConfig = dataclasses.field(
      default_factory=lambda: ReaderConfig(per_replica_batch_size=1))
  num_frames: int = 32
  stride: int = 2
  num_clips: int = 10
  num_crops: int = 3
  short_side: int = 256
  crop_size: int = 256

  def __post_init__(self):
    _check_clip("EvalDataConfig", self.num_frames, self.stride, self.crop_size)
    if self.num_crops not in (1, 3):
      raise ValueError(f"EvalDataConfig.num_crops must be 1 or 3, got {self.num_crops!r}")
    if self.num_clips < 1:
      raise ValueError(f"EvalDataConfig.num_clips must be >= 1, got {self.num_clips!r}")
    if self.crop_size > self.short_side:
      raise ValueError(
          f"EvalDataConfig.crop_size ({self.crop_size}) must be <= short_side "
          f"({self.short_side})")

  @property
  def num_views(self) -> int:
    return self.num_clips * self.num_crops


def _check_clip(owner, num_frames, stride, crop_size):
  for name, value in (("num_frames", num_frames), ("stride", stride), ("crop_size", crop_size)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


class CorruptRecordCounter:
  """Counts the records a `skip_corrupt=True` pipeline dropped.

  Create it outside any strategy scope (its counters are host variables) and pass it to the
  dataset functions. `dropped` is attempts minus successes: exact for records already through the
  pipeline, and it may count the few records being processed at the moment it is read.
  """

  def __init__(self):
    with tf.init_scope():
      self.attempted = tf.Variable(0, dtype=tf.int64, trainable=False, name="records_attempted")
      self.succeeded = tf.Variable(0, dtype=tf.int64, trainable=False, name="records_succeeded")

  @property
  def dropped(self) -> int:
    return int(self.attempted.numpy() - self.succeeded.numpy())


def global_batch_size(per_replica_batch_size: int,
                      input_context: Optional[tf.distribute.InputContext] = None) -> int:
  """per-replica batch × replicas in sync (1 without an input context)."""
  replicas = input_context.num_replicas_in_sync if input_context else 1
  return per_replica_batch_size * replicas


def list_files(file_pattern: str) -> list:
  """Sorted files matching a glob (or comma-separated globs); an error if there are none."""
  files = sorted({f for pattern in file_pattern.split(",") if pattern.strip()
                  for f in tf.io.gfile.glob(pattern.strip())})
  if not files:
    raise FileNotFoundError(
        f"no TFRecord files match {file_pattern!r}; expected a glob such as "
        f"'/data/k400/{schema.shard_pattern('train')}'")
  return files


def _base_seed(reader: ReaderConfig, input_context) -> int:
  seed = reader.seed if reader.seed is not None else random.SystemRandom().getrandbits(31)
  # Hosts must not draw the same augmentations for their (different) videos in lockstep.
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  return seed * 1009 + pipeline_id


def _read_records(reader: ReaderConfig, input_context, training: bool, seed: int):
  """Serialized records of this host's files: interleaved, and shuffled and repeated if training."""
  files = list_files(reader.file_pattern)
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  if num_pipelines > 1:
    if len(files) < num_pipelines:
      raise ValueError(
          f"{len(files)} TFRecord files for {num_pipelines} input pipelines: each host needs at "
          f"least one file of {reader.file_pattern!r}; write more shards")
    files = files[input_context.input_pipeline_id::num_pipelines]
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if training:
    dataset = dataset.shuffle(len(files), seed=seed).repeat()
  dataset = dataset.interleave(
      tf.data.TFRecordDataset, cycle_length=min(reader.cycle_length, len(files)), block_length=1,
      num_parallel_calls=AUTOTUNE, deterministic=reader.deterministic or not training)
  if training:
    dataset = dataset.shuffle(reader.shuffle_buffer_size, seed=seed + 1)
  return dataset


def _map_examples(dataset, process, reader: ReaderConfig, seed: int, counter, training: bool,
                  skip: int = 0):
  """Maps `process(serialized, seed)` with per-example seeds, counting / skipping failures;
  passes over the first `skip` examples."""
  seeds = tf.data.Dataset.counter(dtype=tf.int64).map(
      lambda i: tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), i))
  dataset = tf.data.Dataset.zip((dataset, seeds))
  if skip and not reader.skip_corrupt:
    # Before the map: no decoding, and each later record keeps its position's seed.
    dataset = dataset.skip(skip)

  def counted(serialized, example_seed):
    if counter is None:
      return process(serialized, example_seed)
    with tf.control_dependencies([counter.attempted.assign_add(1)]):
      serialized = tf.nest.map_structure(tf.identity, serialized)  # a record, or (record, ...)
    outputs = process(serialized, example_seed)
    with tf.control_dependencies(tf.nest.flatten(outputs)):
      done = counter.succeeded.assign_add(1)
    with tf.control_dependencies([done]):
      return tf.nest.map_structure(tf.identity, outputs)

  dataset = dataset.map(tf.autograph.experimental.do_not_convert(counted),
                        num_parallel_calls=AUTOTUNE,
                        deterministic=reader.deterministic or not training)
  if reader.skip_corrupt:
    dataset = dataset.ignore_errors(log_warning=True)
    if skip:  # dropped records shift the positions: skip decoded examples
      dataset = dataset.skip(skip)
  return dataset


def _finish(dataset, reader: ReaderConfig, training: bool):
  # Training batches all have the per-replica size; evaluation keeps its last, smaller batch.
  dataset = dataset.batch(reader.per_replica_batch_size, drop_remainder=training)
  options = tf.data.Options()
  options.deterministic = reader.deterministic or not training
  options.experimental_optimization.map_parallelization = True
  return dataset.with_options(options).prefetch(AUTOTUNE)


def _check_jpegs(jpegs: tf.Tensor, video_id: tf.Tensor) -> tf.Tensor:
  """Fails with a message naming the video when a frame to decode is not JPEG data."""
  is_jpeg = tf.equal(tf.strings.substr(jpegs, 0, 3), b"\xff\xd8\xff")
  check = tf.debugging.Assert(
      tf.reduce_all(is_jpeg),
      ["undecodable frame: an 'image/encoded' entry is not JPEG data (no FFD8FF start marker) "
       "in video", video_id])
  with tf.control_dependencies([check]):
    return tf.identity(jpegs)


def check_label(label: tf.Tensor, video_id: tf.Tensor, num_classes: Optional[int]) -> tf.Tensor:
  """int32 `label`, failing with a message naming the video when it is not in [0, num_classes).

  A label index beyond the classifier's logits would silently give NaN losses on accelerators
  (and an unlabelled record, NO_LABEL, a wrong target); no check when num_classes is None.
  """
  label = tf.cast(label, tf.int32)
  if num_classes is None:
    return label
  check = tf.debugging.Assert(
      tf.logical_and(label >= 0, label < num_classes),
      [f"label out of range: 'clip/label/index' must be in [0, {num_classes}) "
       "(evaluation.num_classes); got", label, "in video", video_id,
       "(-1 means the record has no label)"])
  with tf.control_dependencies([check]):
    return tf.identity(label)


def read_video_labels(file_pattern: str) -> list:
  """[(video_id, label)] of every record of the shards, in file order, without decoding frames."""
  spec = {schema.VIDEO_ID_KEY: tf.io.VarLenFeature(tf.string),
          schema.FILENAME_KEY: tf.io.VarLenFeature(tf.string),
          schema.LABEL_INDEX_KEY: tf.io.VarLenFeature(tf.int64)}

  def parse(serialized):
    context, _ = tf.io.parse_single_sequence_example(serialized, context_features=spec)
    video_id = tf.sparse.to_dense(context[schema.VIDEO_ID_KEY], default_value="")
    filename = tf.sparse.to_dense(context[schema.FILENAME_KEY], default_value="")
    label = tf.sparse.to_dense(context[schema.LABEL_INDEX_KEY], default_value=schema.NO_LABEL)
    video_id = tf.concat([video_id, filename, [""]], axis=0)[0]
    return video_id, tf.concat([label, [schema.NO_LABEL]], axis=0)[0]

  dataset = tf.data.TFRecordDataset(list_files(file_pattern), num_parallel_reads=AUTOTUNE)
  dataset = dataset.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True).batch(4096)
  return [(video_id.decode(), int(label)) for ids, labels in dataset.as_numpy_iterator()
          for video_id, label in zip(ids, labels)]


def _keep_videos(dataset: tf.data.Dataset, video_ids: Sequence[str]) -> tf.data.Dataset:
  """The records whose video id (or filename) is in `video_ids`; parsed from the context only."""
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(list(video_ids), tf.string),
                                          tf.ones([len(video_ids)], tf.int32)), default_value=0)
  spec = {schema.VIDEO_ID_KEY: tf.io.VarLenFeature(tf.string),
          schema.FILENAME_KEY: tf.io.VarLenFeature(tf.string)}

  def keep(serialized):
    context, _ = tf.io.parse_single_sequence_example(serialized, context_features=spec)
    names = tf.concat([tf.sparse.to_dense(context[schema.VIDEO_ID_KEY], default_value=""),
                       tf.sparse.to_dense(context[schema.FILENAME_KEY], default_value=""),
                       [""]], axis=0)
    return table.lookup(names[0]) > 0

  return dataset.filter(keep)


def _frame_size(jpegs: tf.Tensor) -> tf.Tensor:
  # [2] (height, width) from the first JPEG header: all frames of a record share one size.
  return tf.image.extract_jpeg_shape(jpegs[0])[:2]


def _view_function(augmentation: Optional[AugmentationConfig], output: str, use_xla: bool):
  """(clip, flip, seed, view) -> one view; compiled by XLA on the host if use_xla.

  `clip` is the resized crop, [T, S, S, 3]: uint8 already flipped (OpenCV's resize; flip None) or
  float32 in [0, 255] (TF's resize; flipped here). A fixed shape, so the program compiles once per
  pipeline. XLA fuses the flip and the colour chain into a few passes over the clip; TF runs each
  op as its own pass over memory and is several times slower on this part. The view's blur and
  solarize probabilities are arguments, so all views share one compiled program.
  """
  def make_view(clip, flip, seed, blur_probability, solarize_probability):
    if flip is not None:
      # flip: [n] with n = 1 (per clip) or T (per frame).
      flip = tf.reshape(flip, [-1, 1, 1, 1])
      clip = tf.where(flip, tf.reverse(clip, axis=[2]), clip)
    if output == "uint8":
      return tf.cast(tf.round(tf.clip_by_value(clip, 0.0, 255.0)), tf.uint8)
    clip = tf.cast(clip, tf.float32) * (1.0 / 255.0)
    if output == "unit":
      return clip
    return video_ops.augment_view_with(clip, seed, augmentation, blur_probability,
                                       solarize_probability)

  compiled = tf.function(make_view, jit_compile=True) if use_xla else make_view

  def view_function(clip, flip, seed, view=1):
    if output == "uint8" and clip.dtype == tf.uint8 and flip is None:
      return clip  # OpenCV's resized and flipped crop is the view: no program to run.
    probabilities = ((augmentation.blur_probability(view), augmentation.solarize_probability(view))
                     if augmentation else (0.0, 0.0))
    return compiled(clip, flip, seed, *[tf.constant(p) for p in probabilities])

  return view_function


class _HostColorView:
  """The view maker of a pipeline whose colour chain runs on the host (`_pretrain_view_function`
  returns it only for temporally consistent views with opencv_resize and opencv_color).

  `from_windows` decodes, resizes, flips and augments a view in one `tf.numpy_function`
  (`video_ops.decode_and_augment_windows`); its random numbers are drawn in TF by
  `video_ops.draw_view_colors`, compiled by XLA when the XLA chain would be (use_xla): XLA's
  stateless random numbers differ from TF's kernels', and so both chains give one view for one
  seed.
  """

  def __init__(self, augmentation: AugmentationConfig, use_xla: bool):
    self.augmentation = augmentation
    draw = lambda seed, blur_probability, solarize_probability: video_ops.draw_view_colors(
        seed, augmentation, blur_probability, solarize_probability)
    self.draw = tf.function(draw, jit_compile=True, autograph=False) if use_xla else draw

  def from_windows(self, jpegs, boxes, flip, seed, view, num_frames, crop_size):
    """[T, S, S, 3] float32 in [0, 1]: the whole view from one box and one flip coin."""
    aug = self.augmentation
    draws = self.draw(seed, tf.constant(aug.blur_probability(view)),
                      tf.constant(aug.solarize_probability(view)))
    kernel_size = video_ops.blur_kernel_size(crop_size, aug.blur_kernel_fraction)
    return video_ops.decode_and_augment_windows(
        jpegs, boxes, flip, video_ops.ColorDraws(*draws), num_frames, crop_size, kernel_size,
        aug.solarize_threshold)


def _crop_view(jpegs, seed, num_frames, crop_size, area_range, aspect_ratio_range,
               flip_probability, temporally_consistent, make_view, view=1, opencv_resize=True):
  """Decodes, resizes and flips the crop window of each frame, then augments with make_view.

  With opencv_resize, OpenCV resizes and flips (uint8), and a `_HostColorView` also runs the
  colour chain there; otherwise TF resizes and make_view flips. The box, flip and colour draws are
  the same either way.
  """
  seeds = video_ops.split_seed(seed, 3)
  size = _frame_size(jpegs)
  num_boxes = 1 if temporally_consistent else num_frames
  boxes = video_ops.sample_crop_boxes(size, seeds[0], num_boxes, area_range, aspect_ratio_range)
  flip = tf.random.stateless_uniform([num_boxes], seeds[1]) < flip_probability
  if isinstance(make_view, _HostColorView):
    return make_view.from_windows(jpegs, boxes, flip, seeds[2], view, num_frames, crop_size)
  if opencv_resize:
    clip = video_ops.decode_resize_and_flip_windows(jpegs, boxes, flip, num_frames, crop_size)
    return make_view(clip, None, seeds[2], view)
  clip = video_ops.decode_and_resize_windows(jpegs, boxes, num_frames, crop_size)
  return make_view(clip, flip, seeds[2], view)


def read_fps(serialized: tf.Tensor, video_id: tf.Tensor) -> tf.Tensor:
  """float32 scalar `video/fps` of one record, failing with a message naming the video when it is
  missing or not positive (the reference release's records have no frame rate)."""
  context, _ = tf.io.parse_single_sequence_example(
      serialized, context_features={schema.FPS_KEY: tf.io.VarLenFeature(tf.float32)})
  fps = tf.concat([tf.sparse.to_dense(context[schema.FPS_KEY]), [0.0]], axis=0)[0]
  check = tf.debugging.Assert(
      fps > 0,
      [f"data.max_span_seconds needs the frame rate: '{schema.FPS_KEY}' must be > 0 (records "
       "written by the reference release have none; rebuild them with dataset_tools or set "
       "max_span_seconds=None); got", fps, "in video", video_id])
  with tf.control_dependencies([check]):
    return tf.identity(fps)


def make_pretrain_example(serialized: tf.Tensor, seed: tf.Tensor, config: PretrainDataConfig,
                          view_function=None) -> dict:
  """One record -> {"view_1", ..., "view_ρ"}: [T, S, S, 3] float32 in [0, 1] (uint8 if
  augment_in_step), ρ = config.num_clips.

  Clip k (row k − 1 of `video_ops.sample_rho_clip_indices`) becomes view k with its own seed: its
  own crop, flip and colour draws, each shared by all its frames when the augmentation is
  temporally consistent. Blur and solarize use view 1's probabilities for odd k and view 2's for
  even k. At ρ = 2 with "cvrl" sampling the seeds, clips and pixels are exactly those of CVRL's pair
  path (`sample_clip_pair_indices`, one seed split in three).

  Args:
    serialized: scalar tf.string, one SequenceExample.
    seed: [2] int seed of this example.
    config: the pretraining data config.
    view_function: from `_pretrain_view_function` (built from config if None; pass one to share
      its compiled program across calls).
  """
  if view_function is None:
    view_function = _pretrain_view_function(config)
  video = schema.parse_video(serialized)
  frames = video["frames"]
  aug = config.augmentation
  # seeds[0] for the clip starts, seeds[k] for view k (ρ = 2: the pair path's split in three).
  seeds = video_ops.split_seed(seed, config.num_clips + 1)
  fps = None
  # Only a span in seconds needs the rate (without temporal augmentation the span is 0).
  if (config.temporal_sampling == "uniform" and config.max_span_seconds is not None
      and config.temporal_augmentation):
    fps = read_fps(serialized, video["video_id"])
  indices = video_ops.sample_rho_clip_indices(  # [ρ, T]
      tf.shape(frames)[0], fps, seeds[0], config.num_clips, config.num_frames, config.stride,
      config.temporal_sampling, config.delta_exponent, config.temporal_augmentation,
      config.max_span_seconds)
  views = {}
  for view, name in enumerate(config.view_names, start=1):
    jpegs = _check_jpegs(tf.gather(frames, indices[view - 1]), video["video_id"])
    clip = _crop_view(jpegs, seeds[view], config.num_frames, config.crop_size, aug.area_range,
                      aug.aspect_ratio_range, aug.flip_probability, aug.temporally_consistent,
                      view_function, video_ops.recipe_view(view), config.opencv_resize)
    views[name] = tf.ensure_shape(
        clip, [config.num_frames, config.crop_size, config.crop_size, 3])
  return views


def _pretrain_view_function(config: PretrainDataConfig):
  if (config.opencv_color and config.opencv_resize and not config.augment_in_step
      and config.augmentation.temporally_consistent):
    return _HostColorView(config.augmentation, config.use_xla)
  output = "uint8" if config.augment_in_step else "augment"
  return _view_function(config.augmentation, output, config.use_xla)


def augment_pretrain_batch(features: dict, seed: tf.Tensor,
                           augmentation: AugmentationConfig) -> dict:
  """The colour / blur / solarize half of the recipe, for the training step (augment_in_step).

  Call it inside the (compiled) training step on what a pipeline built with
  `augment_in_step=True` yields:

      features = augment_pretrain_batch(features, tf.stack([step, replica_id]), config.augmentation)

  View k gets its own seed (split from `seed` in ρ, so ρ = 2 draws what the pair version drew)
  and view 1's blur and solarize probabilities for odd k, view 2's for even k.

  Args:
    features: {"view_1", ..., "view_ρ"}: [B, T, S, S, 3] uint8 (ρ >= 1; no other keys).
    seed: [2] int seed; make it differ per step and per replica.
    augmentation: the recipe (per-view blur and solarize probabilities).

  Returns:
    {"view_1", ..., "view_ρ"}: [B, T, S, S, 3] float32 in [0, 1].
  """
  names = view_names(len(features))
  if sorted(features) != sorted(names):
    raise ValueError(
        f"augment_pretrain_batch takes the views 'view_1' .. 'view_ρ' of a pretraining batch, "
        f"got keys {sorted(features)}")
  seeds = video_ops.split_seed(seed, len(names))
  return {name: video_ops.augment_clips(features[name], seeds[k], augmentation,
                                        view=video_ops.recipe_view(k + 1))
          for k, name in enumerate(names)}


def make_classification_train_example(serialized: tf.Tensor, seed: tf.Tensor,
                                      config: ClassificationTrainDataConfig,
                                      view_function=None,
                                      num_classes: Optional[int] = None) -> dict:
  """One record -> {"video": [T, S, S, 3] float32 in [0, 1], "label": int32 scalar}.

  With `num_classes`, a label outside [0, num_classes) fails naming the video.
  """
  if view_function is None:
    view_function = _view_function(None, "unit", config.use_xla)
  video = schema.parse_video(serialized)
  frames = video["frames"]
  seeds = video_ops.split_seed(seed, 2)
  indices = video_ops.sample_clip_indices(tf.shape(frames)[0], seeds[0], config.num_frames,
                                          config.stride)
  jpegs = _check_jpegs(tf.gather(frames, indices), video["video_id"])
  clip = _crop_view(jpegs, seeds[1], config.num_frames, config.crop_size, config.area_range,
                    config.aspect_ratio_range, config.flip_probability, True, view_function,
                    opencv_resize=config.opencv_resize)
  clip = tf.ensure_shape(clip, [config.num_frames, config.crop_size, config.crop_size, 3])
  return {"video": clip, "label": check_label(video["label"], video["video_id"], num_classes)}


def resize_short_side(frames: tf.Tensor, short_side: int) -> tf.Tensor:
  """Bilinear resize so that min(H, W) == short_side (the long side floors, like the reference).

  Args:
    frames: [N, H, W, C] uint8.

  Returns:
    [N, H', W', C] uint8.
  """
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  new_height = tf.maximum(short_side, height * short_side // width)
  new_width = tf.maximum(short_side, width * short_side // height)
  resized = tf.image.resize(frames, [new_height, new_width])
  return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def three_crop_offsets(height: tf.Tensor, width: tf.Tensor, crop_size: int,
                       num_crops: int) -> tf.Tensor:
  """[num_crops, 2] (y, x) of the eval crops: start, centre and end of the long side.

  The short side is centred; one crop is the centre crop.
  """
  long_is_width = width >= height
  long_side = tf.where(long_is_width, width, height)
  short_side = tf.where(long_is_width, height, width)
  along = tf.stack([0, (long_side - crop_size) // 2, long_side - crop_size])
  if num_crops == 1:
    along = along[1:2]
  across = tf.fill(tf.shape(along), (short_side - crop_size) // 2)
  return tf.where(long_is_width, tf.stack([across, along], axis=1),
                  tf.stack([along, across], axis=1))


def make_eval_example(serialized: tf.Tensor, config: EvalDataConfig,
                      num_classes: Optional[int] = None) -> dict:
  """One record -> {"video": [V, T, S, S, 3] float32 in [0, 1], "label": int32 scalar,
  "video_id": string scalar}.

  With `num_classes`, a label outside [0, num_classes) fails naming the video.

  View v = clip * num_crops + crop: clip i of `linspace_clip_indices`, crop j of
  `three_crop_offsets`. Average predictions over the V axis to score the video.
  """
  video = schema.parse_video(serialized)
  frames = video["frames"]
  indices = video_ops.linspace_clip_indices(tf.shape(frames)[0], config.num_clips,
                                            config.num_frames, config.stride)  # [N, T]
  # Clips may overlap (short videos): decode each stored frame once.
  unique, position = tf.unique(tf.reshape(indices, [-1]))
  jpegs = _check_jpegs(tf.gather(frames, unique), video["video_id"])
  decoded = tf.map_fn(lambda jpeg: tf.image.decode_jpeg(jpeg, channels=3), jpegs,
                      fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  resized = resize_short_side(decoded, config.short_side)
  clips = tf.gather(resized, position)  # [N * T, H', W', 3]
  offsets = three_crop_offsets(tf.shape(resized)[1], tf.shape(resized)[2], config.crop_size,
                               config.num_crops)
  size = config.crop_size
  crops = tf.stack([clips[:, offsets[j, 0]:offsets[j, 0] + size, offsets[j, 1]:offsets[j, 1] + size]
                    for j in range(config.num_crops)], axis=1)  # [N * T, K, S, S, 3]
  crops = tf.reshape(crops, [config.num_clips, config.num_frames, config.num_crops, size, size, 3])
  views = tf.reshape(tf.transpose(crops, [0, 2, 1, 3, 4, 5]),
                     [config.num_views, config.num_frames, size, size, 3])
  return {"video": tf.cast(views, tf.float32) * (1.0 / 255.0),
          "label": check_label(video["label"], video["video_id"], num_classes),
          "video_id": video["video_id"]}


def _without_reader(config):
  # The data config minus what only the reading depends on (a key for the example's function).
  return dataclasses.replace(config, reader=ReaderConfig())


@functools.lru_cache(maxsize=8)
def _pretrain_example_function(config: PretrainDataConfig):
  """`make_pretrain_example` for `config` (reader ignored) as one traced function, cached.

  A training run builds a new pipeline for every data segment (every checkpoint); without the
  cache each build traced the example's graph again and compiled a new XLA view function (~2 s
  of CPU per build for the tests' tiny experiment, more at 224²) while the accelerators waited.
  The map now calls the cached function. The config is a frozen dataclass: equal configs share
  the function.
  """
  view_function = _pretrain_view_function(config)
  return tf.function(
      lambda serialized, seed: make_pretrain_example(serialized, seed, config, view_function),
      input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int64)],
      autograph=False)


def pretrain_dataset(config: PretrainDataConfig,
                     input_context: Optional[tf.distribute.InputContext] = None,
                     counter: Optional[CorruptRecordCounter] = None,
                     skip_batches: int = 0) -> tf.data.Dataset:
  """Endless CVRL (ρ-SSL) pretraining batches for one input pipeline.

  Args:
    skip_batches: batches to pass over, the same as `.skip(skip_batches)` on the result but
      without decoding them (a run resumed inside a data segment; exact with deterministic).

  Returns:
    Dataset of {"view_1", ..., "view_ρ"} (ρ = config.num_clips): [B, T, S, S, 3] float32 in
    [0, 1] (uint8, cropped and flipped only, with `augment_in_step`), B = per_replica_batch_size.
  """
  seed = _base_seed(config.reader, input_context)
  records = _read_records(config.reader, input_context, training=True, seed=seed)
  examples = _map_examples(records, _pretrain_example_function(_without_reader(config)),
                           config.reader, seed, counter, training=True,
                           skip=skip_batches * config.reader.per_replica_batch_size)
  return _finish(examples, config.reader, training=True)


@functools.lru_cache(maxsize=8)
def _classification_example_function(config: ClassificationTrainDataConfig,
                                     num_classes: Optional[int]):
  """`make_classification_train_example` as one traced function, cached like
  `_pretrain_example_function`."""
  view_function = _view_function(None, "unit", config.use_xla)
  return tf.function(
      lambda serialized, seed: make_classification_train_example(
          serialized, seed, config, view_function, num_classes),
      input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int64)],
      autograph=False)


def classification_train_dataset(config: ClassificationTrainDataConfig,
                                 input_context: Optional[tf.distribute.InputContext] = None,
                                 counter: Optional[CorruptRecordCounter] = None,
                                 num_classes: Optional[int] = None,
                                 video_ids: Optional[Sequence[str]] = None,
                                 skip_batches: int = 0):
  """Endless labelled training batches: {"video": [B, T, S, S, 3] float32, "label": [B] int32}.

  Args:
    num_classes: when given, labels outside [0, num_classes) fail naming the video.
    video_ids: when given, only these videos (a semi-supervised subset, see read_video_labels).
    skip_batches: as in `pretrain_dataset`.
  """
  seed = _base_seed(config.reader, input_context)
  records = _read_records(config.reader, input_context, training=True, seed=seed)
  if video_ids is not None:
    records = _keep_videos(records, video_ids)
  examples = _map_examples(
      records, _classification_example_function(_without_reader(config), num_classes),
      config.reader, seed, counter, training=True,
      skip=skip_batches * config.reader.per_replica_batch_size)
  return _finish(examples, config.reader, training=True)


def _eval_records(reader: ReaderConfig, input_context) -> tf.data.Dataset:
  """(serialized record, [2] int32 position) of this input pipeline's share of the split.

  The position is (file index in the sorted file list, record index in the file): it orders the
  gathered results the same way whatever the number of hosts and replicas. Every video is read by
  exactly one pipeline: with at least as many files as pipelines, pipeline i reads files i,
  i + n, i + 2n, ... (uneven shares are fine, evaluation pads); with fewer files, every pipeline
  reads every record in the same deterministic order and keeps every n-th (each host then reads
  all the bytes, but decodes only its share).
  """
  files = list_files(reader.file_pattern)
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  by_file = len(files) >= num_pipelines
  file_indices = list(range(len(files)))
  if by_file:
    file_indices = file_indices[pipeline_id::num_pipelines]
  paths = tf.constant(files)

  def read_file(file_index):
    records = tf.data.TFRecordDataset(tf.gather(paths, file_index)).enumerate()
    return records.map(lambda index, serialized: (
        serialized, tf.stack([file_index, tf.cast(index, tf.int32)])))

  dataset = tf.data.Dataset.from_tensor_slices(tf.constant(file_indices, tf.int32)).interleave(
      read_file, cycle_length=min(reader.cycle_length, len(file_indices)), block_length=1,
      num_parallel_calls=AUTOTUNE, deterministic=True)
  if not by_file:
    dataset = dataset.shard(num_pipelines, pipeline_id)
  return dataset


def _eval_examples(config: EvalDataConfig, input_context, counter, num_classes) -> tf.data.Dataset:
  """This pipeline's videos: make_eval_example(...) + "position" [2] int32, in a fixed order."""
  def process(record, _):
    serialized, position = record
    return dict(make_eval_example(serialized, config, num_classes), position=position)

  # Evaluation draws no random numbers: the per-example seeds _map_examples zips in go unused.
  return _map_examples(_eval_records(config.reader, input_context), process, config.reader,
                       seed=0, counter=counter, training=False)


def eval_dataset(config: EvalDataConfig,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 counter: Optional[CorruptRecordCounter] = None,
                 num_classes: Optional[int] = None) -> tf.data.Dataset:
  """One pass over this host's videos, each as num_clips × num_crops views.

  Runs as it is on one device; under a strategy use `padded_eval_dataset`.

  Returns:
    Dataset of {"video": [B, V, T, S, S, 3] float32 in [0, 1], "label": [B] int32,
    "video_id": [B] string, "position": [B, 2] int32 (file index, record index in the file)}
    with V = num_clips * num_crops laid out clip-major (see `make_eval_example`); the last batch
    may be smaller.
  """
  examples = _eval_examples(config, input_context, counter, num_classes)
  return _finish(examples, config.reader, training=False)


def padding_eval_example(config: EvalDataConfig) -> dict:
  """The row that fills evaluation batches after the last video: zeros, valid=False."""
  return {"video": tf.zeros([config.num_views, config.num_frames, config.crop_size,
                             config.crop_size, 3]),
          "label": tf.constant(0, tf.int32), "video_id": tf.constant(""),
          "position": tf.constant([-1, -1], tf.int32), "valid": tf.constant(False)}


def padded_eval_dataset(config: EvalDataConfig,
                        input_context: Optional[tf.distribute.InputContext] = None,
                        counter: Optional[CorruptRecordCounter] = None,
                        num_classes: Optional[int] = None) -> tf.data.Dataset:
  """Endless full batches for evaluation under a strategy: this host's videos, then padding.

  Every replica of every host must take the same number of steps (MultiWorkerMirrored's calls
  are collective) though hosts hold different numbers of videos, and accelerators want one batch
  shape. So after its last video each pipeline yields `padding_eval_example` rows (valid=False)
  forever; evaluate.predict stops at the first step in which no replica has a valid row.

  Returns:
    Dataset of eval_dataset's batches, all of per_replica_batch_size rows, with "valid": [B] bool.
  """
  examples = _eval_examples(config, input_context, counter, num_classes)
  examples = examples.map(lambda example: dict(example, valid=tf.constant(True)))
  # Made lazily per row: a constant [V, T, S, S, 3] (0.75 GB at 30 × 32 × 256²) would sit in the
  # graph.
  padding = tf.data.Dataset.from_tensors(0).repeat().map(lambda _: padding_eval_example(config))
  dataset = examples.concatenate(padding).batch(config.reader.per_replica_batch_size,
                                                drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  return dataset.with_options(options).prefetch(AUTOTUNE)
