"""Checks before the first step: everything a run will need later, checked in seconds.

A linear evaluation that trains for hours and then finds no evaluation files, or a label map that
names 400 classes for a 600-way classifier, has wasted the hours. `check_run` reads, before
anything is built or written:

  1. the label map: an explicit evaluation.label_map exists, the one in use names exactly
     evaluation.num_classes classes, and the training split's label map (beside its shards) is
     the evaluation split's (else class indices would mean different classes);
  2. every data group's files: the pattern matches files, and the first record of a sample of
     them parses, has frames that decode as JPEG, and (for labelled data) a label in
     [0, evaluation.num_classes); a labelled group of up to 256 MB has every label checked;
  3. train.init_checkpoint, for a run that is not resuming: it loads into the configured backbone;
  4. last, the workdir: it can be created and written (a probe file, removed again).

A failure raises PreflightError naming the config key, the input and what is accepted, before the
workdir is created: a wrong input leaves no trace. Of a large group only a sample of records is
read (a full pass over Kinetics' training split is hours); its other labels are guaranteed by the
label map for records this library built (indices into label_map.txt) and checked again, naming
the video, when the pipeline reads them.
"""

from typing import Callable, List, Optional, Sequence, Tuple

import tensorflow as tf

from cvrl_tf import config as cfg
from cvrl_tf import evaluate
from cvrl_tf import input_pipeline
from cvrl_tf import schema
from cvrl_tf import storage

# Files whose first record is read: enough to catch a wrong folder or format, few enough that a
# pattern over 1,000 GCS shards of 4 MB records is read in seconds.
SAMPLED_FILES = 8
# A labelled group up to this size has every label read (seconds, even from GCS); a larger one
# only its sample (Kinetics' validation split is tens of GB).
FULL_LABEL_SCAN_BYTES = 256 * 2**20


class PreflightError(ValueError):
  """An input the run will need is missing or wrong."""


def data_groups(config) -> List[Tuple[str, str, bool]]:
  """(config key of the reader, file pattern, labelled) of every data group the run reads."""
  if isinstance(config, cfg.ClassificationExperimentConfig):
    return [("train_data", config.train_data.reader.file_pattern, True),
            ("eval_data", config.eval_data.reader.file_pattern, True)]
  if isinstance(config, cfg.KnnExperimentConfig):
    return [("bank_data", config.bank_data.reader.file_pattern, True),
            ("eval_data", config.eval_data.reader.file_pattern, True)]
  return [("data", config.data.reader.file_pattern, False)]


def spread(items: Sequence, count: int) -> list:
  """Up to `count` items evenly spread over `items`, first and last included."""
  if len(items) <= count:
    return list(items)
  if count == 1:
    return [items[0]]
  return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def first_records(files: Sequence[str]) -> list:
  """(file, parsed first record) of each file; a file with no record gives None."""
  results = []
  for path in files:
    dataset = tf.data.TFRecordDataset([path]).take(1)
    records = [schema.parse_video(serialized) for serialized in dataset]
    results.append((path, records[0] if records else None))
  return results


def check_records(key: str, file_pattern: str, num_classes: Optional[int]) -> str:
  """Checks a data group; `num_classes` None for unlabelled data. Returns what it checked."""
  where = f"{key}.reader.file_pattern={file_pattern!r}"
  try:
    files = input_pipeline.list_files(file_pattern)
  except FileNotFoundError as e:
    raise PreflightError(f"{key}: {e}") from None
  for path, record in _read_first_records(where, spread(files, SAMPLED_FILES)):
    if record is None:
      raise PreflightError(f"{path} ({where}) holds no records; expected video TFRecords "
                           "written by dataset_tools/build_tfrecords.py")
    try:
      tf.io.decode_jpeg(record["frames"][0])
    except tf.errors.InvalidArgumentError:
      raise PreflightError(f"the first video of {path} ({where}) has a frame that is not a JPEG; "
                           f"expected '{schema.IMAGE_KEY}' to hold JPEG frames") from None
    if num_classes is None:
      continue
    label = int(record["label"])
    video = record["video_id"].numpy().decode("utf-8", "replace")
    if label == schema.NO_LABEL:
      raise PreflightError(f"video {video!r} in {path} ({where}) has no label "
                           f"('{schema.LABEL_INDEX_KEY}'); {key} must be labelled")
    if not 0 <= label < num_classes:
      raise PreflightError(f"video {video!r} in {path} ({where}) has label {label}, outside "
                           f"[0, evaluation.num_classes={num_classes}); set "
                           "evaluation.num_classes to the dataset's number of classes")
  if num_classes is not None and sum(storage.size(f) for f in files) <= FULL_LABEL_SCAN_BYTES:
    check_all_labels(where, file_pattern, num_classes)
    return f"{key}: {len(files)} files, every label"
  return f"{key}: {len(files)} files"


def check_all_labels(where: str, file_pattern: str, num_classes: int) -> None:
  """Reads every record's label (not its frames' pixels) and checks it is in [0, num_classes)."""
  for video, label in input_pipeline.read_video_labels(file_pattern):
    if not 0 <= label < num_classes:
      detail = "has no label" if label == schema.NO_LABEL else f"has label {label}"
      raise PreflightError(f"video {video!r} ({where}) {detail}, outside [0, "
                           f"evaluation.num_classes={num_classes}); labelled data must carry "
                           f"'{schema.LABEL_INDEX_KEY}' in that range")


def _read_first_records(where: str, files: Sequence[str]):
  try:
    return first_records(files)
  except tf.errors.OpError as e:  # DataLossError (not a TFRecord), InvalidArgument (not ours)
    message = e.message.strip().splitlines()[0][:300]
    raise PreflightError(f"cannot read the video records of {where}: {message}; expected "
                         "TFRecords of tf.train.SequenceExample videos "
                         "(dataset_tools/build_tfrecords.py)") from None


def check_label_map(config) -> str:
  """Finds and checks the label map of a labelled run; returns what it found."""
  evaluation = config.evaluation
  eval_pattern = config.eval_data.reader.file_pattern
  try:
    path = evaluate.find_label_map(evaluation.label_map, eval_pattern)
    evaluate.label_names(path, evaluation.num_classes)
  except (FileNotFoundError, ValueError) as e:
    raise PreflightError(str(e)) from None
  train_key = "train_data" if isinstance(config, cfg.ClassificationExperimentConfig) else "bank_data"
  train_map = evaluate.find_label_map("", getattr(config, train_key).reader.file_pattern)
  if path and train_map and not storage.same_path(path, train_map):
    if schema.read_label_map(train_map) != schema.read_label_map(path):
      raise PreflightError(
          f"the label map of {train_key} ({train_map}) differs from the one used for evaluation "
          f"({path}): class indices would mean different classes; build both splits in one "
          "dataset_tools/build_tfrecords.py run, or set evaluation.label_map to the one they share")
  if not path:
    return "label map: none found (per-class accuracies are named by class index)"
  return f"label map: {path} ({evaluation.num_classes} classes)"


def check_init_checkpoint(config, num_frames: int, crop_size: int) -> str:
  """Loads train.init_checkpoint into a throw-away backbone of the configured architecture."""
  # The model: imported only when there is a checkpoint to check.
  from cvrl_tf import backbone_checkpoint
  from cvrl_tf import networks
  from cvrl_tf import pretrain

  path = config.train.init_checkpoint
  backbone = networks.build_backbone(config.model, num_frames, crop_size)
  try:
    return pretrain.restore_initial_backbone(backbone, path)
  except (backbone_checkpoint.CheckpointMismatchError, FileNotFoundError, ValueError,
          tf.errors.OpError) as e:
    message = getattr(e, "message", None) or str(e)
    raise PreflightError(f"train.init_checkpoint={path!r}: {message.strip()[:600]}") from None


def _backbone_input(config) -> Tuple[int, int]:
  data = config.train_data if isinstance(config, cfg.ClassificationExperimentConfig) else (
      config.eval_data if isinstance(config, cfg.KnnExperimentConfig) else config.data)
  return data.num_frames, data.crop_size


def resuming(workdir: str) -> bool:
  """Whether `workdir` holds a checkpoint of the run (then init_checkpoint is not used)."""
  return bool(tf.train.latest_checkpoint(storage.join(workdir, "checkpoints")))


def check_run(config, workdir: str, log: Callable[[str], None] = print) -> None:
  """Runs every check (module docstring) in order; raises PreflightError at the first failure.

  Raises:
    PreflightError naming the config key, the input and what is accepted.
    cfg.ConfigError when a run without init_checkpoint may not use a random backbone.
  """
  labelled = not isinstance(config, cfg.ExperimentConfig)
  num_classes = config.evaluation.num_classes if labelled else None
  if labelled:  # first: a label map of another size explains out-of-range labels best
    cfg.require_backbone(config)
    log(f"checked {check_label_map(config)}")
  for key, pattern, is_labelled in data_groups(config):
    log(f"checked {check_records(key, pattern, num_classes if is_labelled else None)}")
  if config.train.init_checkpoint and not resuming(workdir):
    log(f"checked train.init_checkpoint: {check_init_checkpoint(config, *_backbone_input(config))}")
  try:
    storage.check_writable(workdir)
  except PermissionError as e:
    raise PreflightError(f"--workdir: {e}") from None
