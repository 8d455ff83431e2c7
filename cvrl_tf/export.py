r"""SavedModel feature extractors that load with TensorFlow alone: `python -m cvrl_tf.export`.

  python -m cvrl_tf.export --workdir=demo_out/pretrain --export_dir=demo_out/export
  python -m cvrl_tf.export --experiment=cvrl_k600_linear_eval --checkpoint=/ckpt/le/checkpoints \
      --export_dir=/exports/k600_linear_eval
  python -m cvrl_tf.export --workdir=gs://bucket/k600 --export_dir=gs://bucket/exports/k600

This module owns the SavedModel contract. An export holds the backbone of a run's latest (or the
given) checkpoint, plus the projection head of a pretraining run or the classifier of a
linear-evaluation / fine-tuning run. Its signatures:

  serving_default  video float32 [B, T, H, W, 3], RGB in [0, 1]
                   -> features [B, C] (pooled res5); projection [B, D] (pretraining) or
                      logits, probabilities [B, K] (classifiers)
  serve_uint8      video uint8 [B, T, H, W, 3], RGB 0..255 (divided by 255 inside) -> the same
  serve_examples   examples string [B]: serialized SequenceExamples (cvrl_tf.schema's TFRecords)
                   -> per video, the mean over num_clips × num_crops views (cvrl_tf.evaluate's
                      protocol: softmax averaged): features [B, C]; projection [B, D] or
                      probabilities [B, K]; video_id [B] string; label [B] int32 (-1: none)

T, H and W are free: ResNet3D is fully convolutional and pools globally. The signatures declare
these shapes (`[None, None, None, None, 3]`, `[None]` for serve_examples), so `saved_model_cli
show --all`, TF Serving's model metadata and Keras see them. They run in inference mode (BN
moving statistics, no dropout) and in float32, whatever precision the run trained in.
Through a signature, a wrong rank, channel count or value range fails with a message naming the
signature and what it accepts (TensorFlow checks only the dtype of a signature's input, so a
rank-4 video reaches our check); a wrong dtype fails at TensorFlow's own argument check
("expected a float tensor but is a uint8 tensor": frames in 0..255 go to serve_uint8). The
restored functions (`loaded.serve(video)`, `loaded(video)`, `loaded.call_training(video)`) match
a call against the declared shape first, so there a wrong rank or channel count gets
TensorFlow's message, which names it: "Binding inputs to tf.function failed due to `Can not cast
TensorSpec(shape=(4, 32, 32, 3), ...) to TensorSpec(shape=(None, None, None, None, 3), ...)`", or
for `loaded(video)` "Could not find matching concrete function ... Expected ...
TensorSpec(shape=(None, None, None, None, 3), ...)".

The views of serve_examples are a classification run's eval_data. A pretraining run has none, so
they come from its data: num_frames and stride, short_side = crop_size = data.crop_size, and
10 clips × 3 crops (the paper's protocol); num_clips / num_crops override them.

For fine-tuning, every variable keeps its training-time `trainable` (BN moving statistics are not
trainable), and the export follows the Reusable SavedModel convention TF Hub-style wrappers call:
`__call__(video, training=False)`, `variables`, `trainable_variables`, `regularization_losses`.
`call_training(video)` is the training-mode forward (BN normalises with batch statistics and
updates its moving averages; dropout is on), for keras.layers.TFSMLayer's call_training_endpoint.

Assets (SavedModel assets/ folder): config.json (the run's resolved config), export_info.json
(source checkpoint, step, signatures, the views of serve_examples) and, for classifiers whose
dataset has one, label_map.txt.

Workdirs, checkpoints, label maps and the export itself may be on any file system TensorFlow
reads (local, gs://, ram://): everything goes through cvrl_tf.storage.
"""

import os

if __name__ == "__main__":  # before TensorFlow is imported; importing the module changes nothing
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib
import dataclasses
import re
import sys
from typing import Callable, Optional

import keras
import tensorflow as tf

from cvrl_tf import backbone_checkpoint
from cvrl_tf import config as cfg
from cvrl_tf import evaluate
from cvrl_tf import heads
from cvrl_tf import input_pipeline
from cvrl_tf import networks
from cvrl_tf import schema
from cvrl_tf import storage

FORMAT = "cvrl_tf.saved_model.v1"
CONFIG_ASSET = "config.json"
INFO_ASSET = "export_info.json"
LABEL_MAP_ASSET = schema.LABEL_MAP_FILE
# Views of serve_examples for a pretraining run, which has no evaluation protocol of its own.
PRETRAIN_NUM_CLIPS = 10
PRETRAIN_NUM_CROPS = 3
# Float videos must lie in [0, 1]; the check allows this much either side (resampling and
# augmentations overshoot a little), which still catches 0..255 frames and mean/std-normalised ones.
RANGE_MARGIN = 0.5
VIDEO_SHAPE = "[batch, time, height, width, 3]"
# What the signatures declare, so that saved_model_cli, TF Serving's metadata and Keras see the
# shapes. A call through a signature does not check them (only the dtype): a wrong rank or
# channel count reaches _video_check and its message. A restored function (`loaded.serve`,
# `loaded(video)`, `loaded.call_training`) does check them, and refuses with TensorFlow's message.
SPECS = {
    "serving_default": tf.TensorSpec([None, None, None, None, 3], tf.float32, name="video"),
    "serve_uint8": tf.TensorSpec([None, None, None, None, 3], tf.uint8, name="video"),
    "serve_examples": tf.TensorSpec([None], tf.string, name="examples"),
}
_VIDEO = SPECS["serving_default"]


class ExportError(ValueError):
  """A run that cannot be exported, or an export directory that must not be replaced."""


@contextlib.contextmanager
def _float32_policy():
  """Builds layers in float32 whatever the global Keras policy (a mixed_bfloat16 run's)."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("float32")
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


# ---- which run, which checkpoint


def find_checkpoint(path: str) -> str:
  """The checkpoint prefix of `path` (local, gs://, ...): a prefix (DIR/ckpt-N), or a directory
  holding checkpoints (backbone_checkpoint.latest_checkpoint: the newest, also in a moved workdir).

  Raises:
    FileNotFoundError naming `path` and what is accepted.
  """
  # The prefix test first: ram:// calls any leading part of a file name a directory.
  if storage.exists(path + ".index"):
    return path
  if storage.isdir(path):
    latest = backbone_checkpoint.latest_checkpoint(path)
    if latest:
      return latest
    raise FileNotFoundError(
        f"no checkpoint in {path!r} (no ckpt-N.index): expected the checkpoints/ folder of a "
        "cvrl_tf.train run, or a checkpoint prefix such as .../checkpoints/ckpt-1000")
  hint = " (pass the prefix, without .index)" if path.endswith(".index") else ""
  raise FileNotFoundError(f"no checkpoint at {path!r}: {path + '.index'!r} does not exist{hint}; "
                          "expected a checkpoint prefix or a folder of checkpoints")


def resolve_run(workdir: Optional[str] = None, experiment: Optional[str] = None,
                overrides=(), checkpoint: Optional[str] = None):
  """The config and checkpoint prefix to export.

  Args:
    workdir: a cvrl_tf.train workdir: its config.json, and its latest checkpoint unless
      `checkpoint` is given.
    experiment: instead of `workdir`, a named experiment (or file) with `overrides`; needs
      `checkpoint`.
    checkpoint: a checkpoint prefix or a folder of checkpoints.

  Returns:
    (config, checkpoint prefix).
  """
  if bool(workdir) == bool(experiment):
    raise ExportError("give either --workdir=DIR (a training run) or --experiment=NAME with "
                      "--checkpoint=PATH, not both and not neither")
  if workdir:
    if overrides:
      raise ExportError("--config overrides go with --experiment; a workdir's config is the one "
                        "its checkpoints were trained with")
    if not storage.isdir(workdir):
      raise FileNotFoundError(f"--workdir={workdir!r} is not a directory: expected the "
                              "--workdir of a cvrl_tf.train run")
    config = cfg.read_workdir_config(workdir)
    _check_exportable(config)
    return config, find_checkpoint(checkpoint or storage.join(workdir, "checkpoints"))
  if not checkpoint:
    raise ExportError(f"--experiment={experiment} needs --checkpoint=PATH (a checkpoint prefix "
                      "or a folder of checkpoints)")
  config = cfg.load_experiment(experiment, overrides)
  _check_exportable(config)
  return config, find_checkpoint(checkpoint)


def _check_exportable(config) -> None:
  if isinstance(config, cfg.KnnExperimentConfig):
    raise ExportError(
        f"experiment {config.name!r} is a kNN evaluation: it trains nothing and writes no "
        "checkpoints. Export the pretraining run whose backbone it evaluated (--workdir=<that "
        "run's workdir>)")


def examples_views(config, num_clips: Optional[int] = None,
                   num_crops: Optional[int] = None) -> input_pipeline.EvalDataConfig:
  """The views serve_examples reads: eval_data (classifiers) or derived from data (pretraining).

  Returns:
    An EvalDataConfig; `num_clips` / `num_crops` replace its values when given.
  """
  if isinstance(config, cfg.ClassificationExperimentConfig):
    views = config.eval_data
  else:
    data = config.data
    views = input_pipeline.EvalDataConfig(
        num_frames=data.num_frames, stride=data.stride, num_clips=PRETRAIN_NUM_CLIPS,
        num_crops=PRETRAIN_NUM_CROPS, short_side=data.crop_size, crop_size=data.crop_size)
  changes = {k: v for k, v in (("num_clips", num_clips), ("num_crops", num_crops)) if v is not None}
  return dataclasses.replace(views, **changes)


# ---- the model


def build_modules(config) -> dict:
  """The run's layers, built in float32 with plain BN: {"backbone", "head" | "classifier"}.

  Synchronized BN only differs in training under a multi-replica strategy; the exported graph
  gets no cross-replica ops. The variables are those of the training checkpoint.
  """
  model = dataclasses.replace(config.model, sync_batch_norm=False)
  with _float32_policy():
    if isinstance(config, cfg.ClassificationExperimentConfig):
      data = config.train_data
      backbone = networks.build_backbone(model, data.num_frames, data.crop_size)
      classifier = heads.LinearClassifier(
          config.evaluation.num_classes, normalize=config.classifier.normalize,
          batch_norm=config.classifier.batch_norm,
          dropout_rate=config.classifier.dropout_rate)
      classifier.build((None, backbone.output_channels))
      return {"backbone": backbone, "classifier": classifier}
    built = networks.build_model(model, config.data.num_frames, config.data.crop_size)
    return {"backbone": built.backbone, "head": built.head}


def restore_modules(modules: dict, prefix: str) -> None:
  """Loads every variable of `modules` from a training checkpoint, or fails naming it.

  The backbone goes through resnet3d's strict loader (every key and shape checked, nothing left
  over); the head or classifier through tf.train.Checkpoint, which must match all of its
  variables. The optimizer's slots in the checkpoint are not exported.
  """
  backbone_checkpoint.restore_backbone_checkpoint(modules["backbone"], prefix)
  others = {name: layer for name, layer in modules.items() if name != "backbone"}
  try:
    status = tf.train.Checkpoint(**others).restore(prefix)
    status.expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError) as error:
    names = " and ".join(others)
    raise backbone_checkpoint.CheckpointMismatchError(
        f"{prefix!r} does not hold every variable of the {names} this config builds "
        f"({str(error)[:400]}); was it written by another experiment? A pretraining checkpoint "
        "holds backbone + head, a linear-eval or fine-tuning one backbone + classifier") from None


def checkpoint_step(prefix: str) -> Optional[int]:
  """The optimizer step a training checkpoint was saved at (its ckpt-N name otherwise)."""
  reader = backbone_checkpoint.checkpoint_reader(prefix)
  key = "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE"
  if reader.has_tensor(key):
    return int(reader.get_tensor(key))
  match = re.search(r"-(\d+)$", prefix)
  return int(match.group(1)) if match else None


def _runtime_rank(x: tf.Tensor) -> tf.Tensor:
  """The rank of the tensor actually fed as `x`.

  Not tf.rank(x) or tf.size(tf.shape(x)): those are answered from the declared rank (by Python
  when tracing, by grappler's constant folding when the SavedModel runs), so they would say 5
  for a rank-4 tensor fed to a signature that declares rank 5. Counting the entries of the
  run-time shape is not folded.
  """
  return tf.reduce_sum(tf.cast(tf.shape(x) >= 0, tf.int32))


def _video_check(video: tf.Tensor, signature: str, dtype: str) -> tf.Tensor:
  """`video` (any rank, whatever its spec declares) as [B, T, H, W, 3], failing with what is
  accepted otherwise."""
  shape = tf.shape(video)
  # A 0 in front keeps the last entry defined for a scalar (shape []).
  channels = tf.concat([[0], shape], axis=0)[-1]
  ok = tf.logical_and(tf.logical_and(tf.equal(_runtime_rank(video), 5), tf.equal(channels, 3)),
                      tf.reduce_all(shape[1:4] >= 1))
  check = tf.debugging.Assert(
      ok, [f"{signature}: `video` must be {dtype} {VIDEO_SHAPE} (RGB, channels last, time, "
           "height and width >= 1); got shape", shape], summarize=16)
  with tf.control_dependencies([check]):
    return tf.ensure_shape(tf.identity(video), [None, None, None, None, 3])


def _range_check(video: tf.Tensor, signature: str) -> tf.Tensor:
  low, high = tf.reduce_min(video), tf.reduce_max(video)
  check = tf.debugging.Assert(
      tf.logical_and(low >= -RANGE_MARGIN, high <= 1.0 + RANGE_MARGIN),
      [f"{signature}: `video` values must lie in [0, 1] (RGB / 255); got values from", low, "to",
       high, "- frames in 0..255 go to the serve_uint8 signature as uint8"])
  with tf.control_dependencies([check]):
    return tf.identity(video)


class FeatureExtractor(tf.__internal__.tracking.AutoTrackable):
  """The exported object: the layers, the signature functions, the assets.

  An AutoTrackable rather than a tf.Module (as in Keras's own ExportArchive): tf.Module computes
  `variables` and `trainable_variables` as properties, which a SavedModel does not keep, and the
  Reusable SavedModel convention needs them as saved attributes.

  Args:
    modules: build_modules(...) with the weights restored.
    views: the EvalDataConfig of serve_examples.
    assets: {attribute name: file path} copied into the SavedModel's assets/.
  """

  def __init__(self, modules: dict, views: input_pipeline.EvalDataConfig, assets: dict):
    self.backbone = modules["backbone"]
    self.head = modules.get("head")
    self.classifier = modules.get("classifier")
    self._views = views
    layers = [layer for layer in (self.backbone, self.head, self.classifier) if layer is not None]
    self.variables = [v for layer in layers for v in layer.variables]
    self.trainable_variables = [v for layer in layers for v in layer.trainable_variables]
    self.regularization_losses = []  # weight decay lives in the optimizer (LARS) or the recipe
    for name, path in assets.items():
      setattr(self, name, tf.saved_model.Asset(path))
    # The network is traced once per mode, and every entry point calls one of these two concrete
    # functions: a tf.function called inside another's trace would be traced again there (and
    # again when saving), each time adding a copy of the network to the SavedModel.
    trace = lambda forward: tf.function(forward, autograph=False).get_concrete_function(_VIDEO)
    self._inference = trace(lambda video: self._forward(video, training=False))
    self._training = trace(lambda video: self._forward(video, training=True))

  def _forward(self, video: tf.Tensor, training: bool) -> dict:
    """[B, T, H, W, 3] float32 in [0, 1] -> {"features", "projection" | "logits",
    "probabilities"}."""
    pooled = self.backbone(video, training=training)["pooled"]                  # [B, C]
    outputs = {"features": pooled}
    if self.head is not None:
      outputs["projection"] = self.head(pooled, training=training)             # [B, D]
    if self.classifier is not None:
      logits = self.classifier(pooled, training=training)                       # [B, K]
      outputs["logits"] = logits
      outputs["probabilities"] = tf.nn.softmax(logits, axis=-1)
    return outputs

  def _one_video(self, serialized: tf.Tensor) -> dict:
    """One record -> its outputs averaged over its views, as evaluate.predict averages them."""
    example = input_pipeline.make_eval_example(serialized, self._views)  # video [V, T, S, S, 3]
    # Without "probabilities": view_function makes them by averaging the views' softmax.
    view_outputs = lambda clips: {k: v for k, v in self._inference(clips).items()
                                  if k != "probabilities"}
    averaged = evaluate.view_function(view_outputs)(example["video"][None])
    outputs = {name: value[0] for name, value in averaged.items()}
    outputs.update(video_id=example["video_id"], label=example["label"])
    return outputs

  @tf.function(input_signature=[SPECS["serving_default"]], autograph=False)
  def serve(self, video):
    """serving_default: float32 [B, T, H, W, 3] in [0, 1] -> features, projection | logits..."""
    video = _range_check(_video_check(video, "serving_default", "float32"), "serving_default")
    return self._inference(video)

  @tf.function(input_signature=[SPECS["serve_uint8"]], autograph=False)
  def serve_uint8(self, video):
    """uint8 [B, T, H, W, 3] in 0..255 -> what serving_default gives for video / 255."""
    video = _video_check(video, "serve_uint8", "uint8")
    # The same expression as input_pipeline.make_eval_example: equal frames give equal floats.
    return self._inference(tf.cast(video, tf.float32) * (1.0 / 255.0))

  @tf.function(input_signature=[SPECS["serve_examples"]], autograph=False)
  def serve_examples(self, examples):
    """[B] serialized SequenceExamples -> per video: view-averaged outputs, video_id, label."""
    shape = tf.shape(examples)
    check = tf.debugging.Assert(
        tf.equal(_runtime_rank(examples), 1),
        ["serve_examples: `examples` must be a [batch] string tensor of serialized "
         "tf.train.SequenceExample records (cvrl_tf TFRecords); got shape", shape])
    with tf.control_dependencies([check]):
      examples = tf.ensure_shape(tf.identity(examples), [None])
    signature = {"features": tf.TensorSpec([self.backbone.output_channels], tf.float32),
                 "video_id": tf.TensorSpec([], tf.string), "label": tf.TensorSpec([], tf.int32)}
    if self.head is not None:
      signature["projection"] = tf.TensorSpec([self.head.output_size], tf.float32)
    if self.classifier is not None:
      signature["probabilities"] = tf.TensorSpec([self.classifier.num_classes], tf.float32)
    # One video at a time: its views are one batch (30 × 32 × 256² floats are 750 MB at the
    # paper's settings), and results do not depend on how many videos a call holds.
    return tf.map_fn(self._one_video, examples, fn_output_signature=signature,
                     parallel_iterations=1)

  @tf.function(autograph=False)
  def __call__(self, video, training=False):
    """The Reusable SavedModel call: float32 [B, T, H, W, 3] -> the outputs, in either mode."""
    video = _range_check(_video_check(video, "__call__", "float32"), "__call__")
    return self._training(video) if training else self._inference(video)

  @tf.function(input_signature=[_VIDEO], autograph=False)
  def call_training(self, video):
    """Training mode (BN batch statistics, moving averages updated; dropout on)."""
    video = _range_check(_video_check(video, "call_training", "float32"), "call_training")
    return self._training(video)

  def signatures(self) -> dict:
    """The serving signatures, traced with the shapes they declare (SPECS)."""
    # Traced once per mode: the Reusable SavedModel convention's `training` argument.
    for training in (False, True):
      self.__call__.get_concrete_function(_VIDEO, training=training)
    return {"serving_default": self.serve.get_concrete_function(),
            "serve_uint8": self.serve_uint8.get_concrete_function(),
            "serve_examples": self.serve_examples.get_concrete_function()}


# ---- writing


def _check_target(export_dir: str, overwrite: bool) -> None:
  try:
    contents = storage.directory_contents(export_dir)
  except NotADirectoryError:
    raise ExportError(f"--export_dir={export_dir!r} exists and is not a directory") from None
  if contents and not overwrite:
    raise ExportError(
        f"--export_dir={export_dir!r} already exists and is not empty (it holds {contents}); "
        "pass --overwrite to replace it, or choose another directory")


def write_saved_model(extractor: FeatureExtractor, export_dir: str, overwrite: bool = False) -> str:
  """Saves `extractor` into a temporary sibling of `export_dir`, then renames it into place.

  On a local disk a reader sees no export, the old one or the whole new one. On an object store
  (gs://) the files are copied into place one by one, saved_model.pb among them: a reader there
  should wait for the command to finish. An existing non-empty `export_dir` is replaced only with
  `overwrite`.

  Returns:
    The export directory, absolute when local.
  """
  export_dir = storage.absolute(export_dir)
  _check_target(export_dir, overwrite)
  # A sibling, so the rename stays on one file system.
  temporary = storage.temporary_directory_for(export_dir)
  try:
    tf.saved_model.save(extractor, temporary, signatures=extractor.signatures())
    _check_target(export_dir, overwrite)  # again: another process may have written meanwhile
    storage.replace_directory(temporary, export_dir)
  except BaseException:
    storage.remove(temporary)
    raise
  return export_dir


def _label_map_for(config, label_map: Optional[str], log) -> Optional[str]:
  """The label map of a classifier export (checked against num_classes), or None."""
  if not isinstance(config, cfg.ClassificationExperimentConfig):
    if label_map:
      raise ExportError("--label_map applies to linear-eval and fine-tuning exports; a "
                        "pretraining run has no classes")
    return None
  path = label_map or evaluate.find_label_map(config.evaluation.label_map,
                                              config.eval_data.reader.file_pattern)
  if not path:
    log(f"note: no label map found (evaluation.label_map is empty and none lies beside "
        f"{config.eval_data.reader.file_pattern!r}); the export's classes are numbered only. "
        "Pass --label_map=PATH to include one")
    return None
  evaluate.label_names(path, config.evaluation.num_classes)  # the count must match the logits
  return path


def export_info(config, prefix: str, views: input_pipeline.EvalDataConfig, modules: dict,
                label_map: Optional[str]) -> dict:
  """What export_info.json records: where the weights came from and how to call the export."""
  task = getattr(config, "task", "pretrain")
  outputs = ["features"] + (["projection"] if "head" in modules else ["logits", "probabilities"])
  return {
      "format": FORMAT,
      "experiment": config.name,
      "task": task,
      "checkpoint": storage.absolute(prefix),
      "step": checkpoint_step(prefix),
      "feature_size": modules["backbone"].output_channels,
      "projection_size": modules["head"].output_size if "head" in modules else None,
      "num_classes": config.evaluation.num_classes if "classifier" in modules else None,
      "label_map": LABEL_MAP_ASSET if label_map else None,
      "signatures": {
          "serving_default": {"inputs": {"video": f"float32 {VIDEO_SHAPE} in [0, 1]"},
                              "outputs": outputs},
          "serve_uint8": {"inputs": {"video": f"uint8 {VIDEO_SHAPE}"}, "outputs": outputs},
          "serve_examples": {"inputs": {"examples": "string [batch] serialized SequenceExamples"},
                             "outputs": [o for o in outputs if o != "logits"]
                             + ["video_id", "label"]},
      },
      "examples_views": {"num_frames": views.num_frames, "stride": views.stride,
                         "num_clips": views.num_clips, "num_crops": views.num_crops,
                         "short_side": views.short_side, "crop_size": views.crop_size},
      "training_endpoint": "call_training",
  }


def export(config, checkpoint: str, export_dir: str, *, overwrite: bool = False,
           num_clips: Optional[int] = None, num_crops: Optional[int] = None,
           label_map: Optional[str] = None, log: Callable[[str], None] = print) -> str:
  """Exports the run `config` with the weights of `checkpoint` to `export_dir`.

  Args:
    config: an ExperimentConfig or ClassificationExperimentConfig (a kNN config is refused).
    checkpoint: a checkpoint prefix or a folder of checkpoints (the latest is taken).
    export_dir: the SavedModel directory; an existing non-empty one needs `overwrite`.
    num_clips, num_crops: views of serve_examples (default: see examples_views).
    label_map: classifiers: label_map.txt to include (default: the dataset's, when found).
    log: progress lines.

  Returns:
    The export directory, absolute when local.
  """
  _check_exportable(config)
  _check_target(export_dir, overwrite)  # before minutes of work, not after
  prefix = find_checkpoint(checkpoint)
  views = examples_views(config, num_clips, num_crops)
  label_map = _label_map_for(config, label_map, log)
  modules = build_modules(config)
  restore_modules(modules, prefix)
  log(f"restored {', '.join(modules)} from {prefix}")
  # Assets are staged in a private local folder: tf.saved_model.save copies each into the
  # export's assets/ (on any file system) and the SavedModel records only their names.
  with storage.local_scratch("cvrl_export_assets_") as staging:
    assets = {"config_file": storage.join(staging, CONFIG_ASSET),
              "info_file": storage.join(staging, INFO_ASSET)}
    storage.atomic_write_text(assets["config_file"], cfg.to_json(config))
    storage.atomic_write_json(assets["info_file"],
                              export_info(config, prefix, views, modules, label_map))
    if label_map:  # may be on gs://: gfile copies across file systems
      assets["label_map_file"] = storage.join(staging, LABEL_MAP_ASSET)
      storage.copy(label_map, assets["label_map_file"])
    extractor = FeatureExtractor(modules, views, assets)
    path = write_saved_model(extractor, export_dir, overwrite)
  assets = ", ".join(storage.listdir(storage.join(path, "assets")))
  log(f"exported to {path}: signatures serving_default (float32 video), serve_uint8, "
      f"serve_examples ({views.num_clips} clips x {views.num_crops} crops of {views.num_frames} "
      f"frames at {views.crop_size}); assets {assets}")
  return path


# ---- the command line


def _define_flags() -> None:
  # Defined by the script only: importing this module must not claim flag names.
  from absl import flags
  flags.DEFINE_string("workdir", None, "A cvrl_tf.train workdir: its config.json and latest "
                      "checkpoint are exported.")
  flags.DEFINE_string("experiment", None, "Instead of --workdir: an experiment name or file "
                      "(with --checkpoint and --config overrides).")
  flags.DEFINE_multi_string("config", [], "With --experiment: dotted.key=value (repeatable).")
  flags.DEFINE_string("checkpoint", None, "A checkpoint prefix (DIR/ckpt-N) or a folder of "
                      "checkpoints (the latest); default with --workdir: WORKDIR/checkpoints.")
  flags.DEFINE_string("export_dir", None, "Where to write the SavedModel.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing export in --export_dir.")
  flags.DEFINE_integer("num_clips", None, "Clips per video of serve_examples (default: the "
                       "run's eval_data, 10 for pretraining runs).")
  flags.DEFINE_integer("num_crops", None, "Crops per clip of serve_examples, 1 or 3 (default: "
                       "the run's eval_data, 3 for pretraining runs).")
  flags.DEFINE_string("label_map", None, "Classifiers: label_map.txt to include (default: the "
                      "one beside the evaluation shards).")


def main(argv) -> int:
  from absl import app
  from absl import flags
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # TF's INFO lines on saving bury the result
  flags_ = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags_.export_dir:
    raise app.UsageError("--export_dir is required (where to write the SavedModel)")
  try:
    config, prefix = resolve_run(flags_.workdir, flags_.experiment, flags_.config,
                                 flags_.checkpoint)
    export(config, prefix, flags_.export_dir, overwrite=flags_.overwrite,
           num_clips=flags_.num_clips, num_crops=flags_.num_crops, label_map=flags_.label_map,
           log=lambda line: print(line, flush=True))
  except (ExportError, cfg.ConfigError, backbone_checkpoint.CheckpointMismatchError,
          FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  from cvrl_tf import cli
  _define_flags()
  cli.run(main)
