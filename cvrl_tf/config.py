"""The typed config tree of an experiment, how to load one, and the `key=value` override syntax.

An experiment is a Python file in experiments/ (or anywhere: pass its path) with a function
`get_config()` returning one of three trees: `ExperimentConfig` (CVRL pretraining),
`ClassificationExperimentConfig` (linear evaluation, fine-tuning, semi-supervised) or
`KnnExperimentConfig` (kNN on frozen features). Overrides address any leaf by its dotted path:

    python -m cvrl_tf.train --experiment=cvrl_k600 \
        --config=train.global_batch_size=256 --config=data.reader.file_pattern='/data/k600/train-*'

Values are parsed by the field's type: int, float, bool (true/false), str, tuples
(comma-separated: `model.stage_filters=8,16,32,64`), Optional (`none`). A key that does not exist
is an error that lists the valid ones.
"""

import contextlib
import dataclasses
import importlib.util
import json
import sys
import typing
from typing import Iterable, Literal, Optional, Tuple

from cvrl_tf import input_pipeline
from cvrl_tf import schedules
from cvrl_tf import storage

EXPERIMENTS_DIR = storage.join(storage.dirname(storage.dirname(storage.absolute(__file__))),
                               "experiments")


class ConfigError(ValueError):
  """A wrong experiment name, key or value; the message says what is valid."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The backbone (cvrl_tf.resnet3d.ResNet3D) and the projection head (cvrl_tf.heads)."""
  depth: int = 50      # 10, 18, 34: basic blocks; 50, 101, 152, 200: bottlenecks (resnet3d.BLOCKS)
  width_multiplier: float = 1.0
  stem_filters: Optional[int] = None                 # None: 64 × width_multiplier
  stage_filters: Optional[Tuple[int, ...]] = None    # None: (64, 128, 256, 512) × width
  stem_temporal_kernel: int = 5
  stem_temporal_stride: int = 2
  temporal_kernels: Tuple[int, ...] = (1, 1, 3, 3)
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  sync_batch_norm: bool = True
  # How each 3D conv is computed: "auto" (conv3d on GPU / TPU, the fastest measured fold on CPU)
  # or one implementation for every layer (convolutions.NETWORK_IMPLEMENTATIONS, which a test
  # keeps equal to this list). Checkpoints do not depend on it.
  conv_implementation: Literal["auto", "conv3d", "conv3d_patch_kernel_grad",
                               "stacked_time_conv2d"] = "auto"
  head_hidden_sizes: Tuple[int, ...] = (2048, 2048, 2048)
  head_output_size: int = 128
  head_bn_momentum: float = 0.997
  head_batch_norm: bool = True           # False: hidden layers Dense + bias -> ReLU (ρMoCo's)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """What pretraining optimises (cvrl_tf.objectives): CVRL's loss or one of the ρ-SSL study's.

  All four compare the data.num_clips (ρ) clips of each video; train.temperature is the softmax
  temperature of simclr, moco and swav.

  Attributes:
    name: simclr (CVRL / ρSimCLR: NT-Xent over every pair of clips, negatives from the global
      batch), moco (ρMoCo: the keys of a momentum encoder, negatives from a queue), byol (ρBYOL: a
      predictor regresses the momentum encoder's projections, no negatives) or swav (ρSwAV: each
      clip predicts the Sinkhorn codes of the others over learned prototypes).
    momentum: moco, byol: m0 of the momentum encoder's EMA, annealed by cosine to 1 at the end of
      train.epochs (the study: 0.994 MoCo, the default, and 0.996 BYOL: set it for BYOL, as
      rho_byol_k400 does).
    queue_size: moco: keys kept as negatives (the study: 65,536); at least ρ × global batch.
    predictor_hidden_sizes: byol: hidden widths of the predictor MLP on the projection (its output
      has model.head_output_size).
    num_prototypes: swav: prototypes (the study: 1,000).
    sinkhorn_epsilon, sinkhorn_iterations: swav: ε of exp(S/ε) and the normalisation rounds.
    freeze_prototypes_epochs: swav: the prototypes get no gradient for this many epochs.
  """
  name: Literal["simclr", "moco", "byol", "swav"] = "simclr"
  momentum: float = 0.994
  queue_size: int = 65536
  predictor_hidden_sizes: Tuple[int, ...] = (4096,)
  num_prototypes: int = 1000
  sinkhorn_epsilon: float = 0.05
  sinkhorn_iterations: int = 3
  freeze_prototypes_epochs: float = 1.0


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Learning rate = base_learning_rate × global_batch_size / reference_batch_size."""
  name: Literal["lars", "sgd"] = "lars"
  base_learning_rate: float = 0.32
  reference_batch_size: int = 1024
  momentum: float = 0.9
  trust_coefficient: float = 0.001       # LARS only
  weight_decay: float = 1e-6             # on conv and dense kernels only
  # The learning-rate schedule, a name in cvrl_tf.schedules.SCHEDULES. "warmup_cosine": linear
  # warm-up over warmup_epochs, then cosine decay to 0 at the end of train.epochs.
  schedule: str = "warmup_cosine"
  warmup_epochs: float = 5.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The training loop. Steps per epoch = num_train_examples // global_batch_size."""
  global_batch_size: int = 1024
  epochs: float = 800.0
  num_train_examples: int = 0            # videos in the training split (dataset_info.json)
  # Stop after this step (smoke tests, time-boxed jobs). The learning-rate schedule still spans
  # `epochs`, so a later run with a larger max_steps continues the same schedule.
  max_steps: Optional[int] = None
  temperature: float = 0.1
  steps_per_loop: int = 10               # steps per tf.function call
  log_every_steps: int = 10
  checkpoint_every_steps: int = 1000
  keep_checkpoints: int = 5
  # float32 compute on any device; mixed_bfloat16 on TPUs and Ampere-or-newer GPUs; mixed_float16
  # (with dynamic loss scaling: cvrl_tf/loss_scale.py) on GPUs without bfloat16 (V100, T4).
  # Variables stay float32 in each.
  mixed_precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
  # Each replica's batch in this many chunks, one chunk's activations in memory at a time: the
  # paper's batch on GPUs. Pretraining keeps every negative of the global batch (the gradient
  # cache, cvrl_tf/microbatch.py); classification sums the chunks' gradients. Training-mode BN
  # normalises each chunk with its own (synchronised) statistics.
  microbatches: int = 1
  # XLA-compile the whole replica step (forward, loss, backward, optimizer, objective state).
  # Equal to the uncompiled step to float tolerance, except that augment_in_step draws other
  # (equally distributed) augmentations: XLA's stateless RNG differs from TensorFlow's kernels.
  # Checked on CPU under the default strategy; TPUStrategy compiles every step regardless.
  jit_compile: bool = False
  strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
  tpu: str = ""                          # TPU name or address, for strategy tpu / auto
  # files: each host reads its own shards (scales). replicate: every host builds the same global
  # batches and keeps its replicas' rows, so results do not depend on the number of hosts (at
  # hosts × the decoding work): for reproducibility checks.
  input_sharding: Literal["files", "replicate"] = "files"
  seed: int = 0
  deterministic: bool = False            # tf.config.experimental.enable_op_determinism
  init_checkpoint: str = ""              # cvrl_tf or imported reference backbone checkpoint


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  name: str = ""
  data: input_pipeline.PretrainDataConfig = dataclasses.field(
      default_factory=input_pipeline.PretrainDataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

  @property
  def steps_per_epoch(self) -> float:
    """Not rounded: the reference release's schedule is in steps of epochs × N / batch."""
    return self.train.num_train_examples / self.train.global_batch_size

  @property
  def total_steps(self) -> int:
    """Steps of the schedule: epochs × examples / batch, rounded."""
    return schedules.epochs_to_steps(self.train.epochs, self.steps_per_epoch)

  @property
  def stop_step(self) -> int:
    """The step the run ends at: total_steps, or max_steps when that is earlier."""
    if self.train.max_steps is None:
      return self.total_steps
    return min(self.train.max_steps, self.total_steps)

  @property
  def warmup_steps(self) -> int:
    return min(self.total_steps,
               schedules.epochs_to_steps(self.optimizer.warmup_epochs, self.steps_per_epoch))

  @property
  def learning_rate(self) -> float:
    """The peak learning rate: base × global batch / reference batch (linear scaling)."""
    return schedules.scaled_learning_rate(self.train.global_batch_size,
                                          self.optimizer.base_learning_rate,
                                          self.optimizer.reference_batch_size)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
  """Labels, the evaluation schedule, semi-supervised subsets and kNN (cvrl_tf.evaluate, knn).

  Attributes:
    num_classes: logits of the classifier; labels must lie in [0, num_classes).
    label_map: label_map.txt of the dataset (names per-class accuracies, goes into exports);
      "": the label_map.txt beside the evaluation shards, when there is one.
    eval_every_steps: multi-view evaluation every this many steps during training (0: only at
      the end; the final evaluation always runs).
    confusion_matrix_max_classes: a confusion-matrix PNG is drawn for label sets up to this size.
    label_fraction: < 1 trains on a class-balanced subset of the labelled training videos
      (semi-supervised), chosen from `subset_seed` and written to <workdir>/label_subset.json.
    allow_random_backbone: evaluate a randomly initialised backbone when train.init_checkpoint is
      empty (a baseline). Off by default: a backbone that silently stayed random is the
      reference release's classic failure.
    knn_k, knn_temperature: neighbours and the temperature of their exp(similarity / τ) votes.
  """
  num_classes: int = 0
  label_map: str = ""
  eval_every_steps: int = 0
  confusion_matrix_max_classes: int = 64
  label_fraction: float = 1.0
  subset_seed: int = 0
  allow_random_backbone: bool = False
  knn_k: int = 200
  knn_temperature: float = 0.07


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """The classifier on the pooled feature (cvrl_tf.heads.LinearClassifier)."""
  normalize: bool = True                 # L2-normalise the feature first (linear evaluation)
  batch_norm: bool = False               # then standardise it (BN without scale / offset)
  dropout_rate: float = 0.0              # before the Dense (fine-tuning)
  label_smoothing: float = 0.0


@dataclasses.dataclass(frozen=True)
class ClassificationExperimentConfig:
  """Linear evaluation (frozen backbone) or fine-tuning (everything trains) on labelled clips.

  Steps per epoch = num_train_examples × evaluation.label_fraction // global_batch_size.
  """
  name: str = ""
  task: Literal["linear_eval", "finetune"] = "linear_eval"
  train_data: input_pipeline.ClassificationTrainDataConfig = dataclasses.field(
      default_factory=input_pipeline.ClassificationTrainDataConfig)
  eval_data: input_pipeline.EvalDataConfig = dataclasses.field(
      default_factory=input_pipeline.EvalDataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  classifier: ClassifierConfig = dataclasses.field(default_factory=ClassifierConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)

  @property
  def steps_per_epoch(self) -> float:
    return (self.train.num_train_examples * self.evaluation.label_fraction
            / self.train.global_batch_size)

  total_steps = ExperimentConfig.total_steps
  stop_step = ExperimentConfig.stop_step
  warmup_steps = ExperimentConfig.warmup_steps
  learning_rate = ExperimentConfig.learning_rate


@dataclasses.dataclass(frozen=True)
class KnnExperimentConfig:
  """kNN classification on frozen pooled features: no training, one pass over two splits.

  The memory bank is `bank_data` (the labelled training split), the queries `eval_data`; both
  are read as `num_clips × num_crops` views whose pooled features are averaged per video.
  """
  name: str = ""
  task: Literal["knn"] = "knn"
  bank_data: input_pipeline.EvalDataConfig = dataclasses.field(
      default_factory=input_pipeline.EvalDataConfig)
  eval_data: input_pipeline.EvalDataConfig = dataclasses.field(
      default_factory=input_pipeline.EvalDataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)


ANY_EXPERIMENT = (ExperimentConfig, ClassificationExperimentConfig, KnnExperimentConfig)


def _check_steps(config) -> None:
  """The checks shared by every experiment that trains."""
  train, opt = config.train, config.optimizer
  examples = config.steps_per_epoch * train.global_batch_size
  if examples < train.global_batch_size:
    raise ConfigError(
        f"train.num_train_examples={train.num_train_examples} gives no full batch of "
        f"{train.global_batch_size}: set it to the number of training videos "
        "(dataset_info.json, splits.train.videos)")
  if not train.epochs > 0:
    raise ConfigError(f"train.epochs must be > 0, got {train.epochs}")
  if train.max_steps is not None and train.max_steps < 1:
    raise ConfigError(f"train.max_steps must be >= 1 or none, got {train.max_steps}")
  for name in ("steps_per_loop", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    if getattr(train, name) < 1:
      raise ConfigError(f"train.{name} must be >= 1, got {getattr(train, name)}")
  if not opt.base_learning_rate > 0 or opt.reference_batch_size < 1:
    raise ConfigError(f"optimizer.base_learning_rate must be > 0 and reference_batch_size >= 1, "
                      f"got {opt.base_learning_rate} and {opt.reference_batch_size}")
  if opt.schedule not in schedules.SCHEDULES:
    raise ConfigError(f"optimizer.schedule={opt.schedule!r} is not a schedule cvrl_tf has; "
                      f"expected one of {', '.join(sorted(schedules.SCHEDULES))}")
  if opt.warmup_epochs < 0 or not 0 <= opt.momentum < 1 or opt.weight_decay < 0:
    raise ConfigError(f"need optimizer.warmup_epochs >= 0, 0 <= momentum < 1, weight_decay >= 0; "
                      f"got {opt.warmup_epochs}, {opt.momentum}, {opt.weight_decay}")


def _check_evaluation(config) -> None:
  evaluation = config.evaluation
  if evaluation.num_classes < 1:
    raise ConfigError(f"evaluation.num_classes must be >= 1 (the dataset's number of labels, "
                      f"dataset_info.json num_classes), got {evaluation.num_classes}")
  if not config.eval_data.reader.file_pattern:
    raise ConfigError("eval_data.reader.file_pattern is empty: set it to the evaluation shards, "
                      "e.g. --config=eval_data.reader.file_pattern=/data/k400/val-*.tfrecord")
  if evaluation.knn_k < 1 or evaluation.knn_temperature <= 0:
    raise ConfigError(f"need evaluation.knn_k >= 1 and knn_temperature > 0, got "
                      f"{evaluation.knn_k} and {evaluation.knn_temperature}")


def require_backbone(config) -> None:
  """Refuses to evaluate a backbone that nothing initialises (checked when a run starts, so
  that --print_config works without a checkpoint)."""
  if not config.train.init_checkpoint and not config.evaluation.allow_random_backbone:
    raise ConfigError(
        "train.init_checkpoint is empty: evaluating a randomly initialised backbone measures "
        "nothing. Pass --init_checkpoint=PATH (a cvrl_tf pretraining workdir's checkpoints/, an "
        "imported backbone, or a reference-release backbone checkpoint), or set "
        "evaluation.allow_random_backbone=true for a random-initialisation baseline")


def _validate_classification(config: ClassificationExperimentConfig):
  if config.train.global_batch_size < 1:
    raise ConfigError(f"train.global_batch_size must be >= 1, got {config.train.global_batch_size}")
  if not config.train_data.reader.file_pattern:
    raise ConfigError("train_data.reader.file_pattern is empty: set it to the labelled training "
                      "shards, e.g. --config=train_data.reader.file_pattern=/data/k400/train-*")
  fraction = config.evaluation.label_fraction
  if not 0 < fraction <= 1:
    raise ConfigError(f"evaluation.label_fraction must be in (0, 1], got {fraction}")
  every, segment = config.evaluation.eval_every_steps, config.train.checkpoint_every_steps
  if every < 0 or (every and segment > 0 and every % segment):
    raise ConfigError(f"evaluation.eval_every_steps={every} must be 0 (evaluate at the end only) "
                      f"or a multiple of train.checkpoint_every_steps={segment} (evaluation "
                      "runs after a checkpoint)")
  if not 0 <= config.classifier.dropout_rate < 1 or not 0 <= config.classifier.label_smoothing < 1:
    raise ConfigError("classifier.dropout_rate and classifier.label_smoothing must be in [0, 1)")
  _check_steps(config)
  _check_evaluation(config)
  return config


def _validate_knn(config: KnnExperimentConfig):
  if not config.bank_data.reader.file_pattern:
    raise ConfigError("bank_data.reader.file_pattern is empty: set it to the labelled training "
                      "shards that form the kNN memory bank")
  _check_evaluation(config)
  return config


def validate(config):
  """Checks the values no single field can check alone; returns `config`.

  Raises:
    ConfigError naming the key, the value and what is accepted.
  """
  if isinstance(config, ClassificationExperimentConfig):
    return _validate_classification(config)
  if isinstance(config, KnnExperimentConfig):
    return _validate_knn(config)
  train = config.train
  if train.global_batch_size < 2:
    raise ConfigError(f"train.global_batch_size must be >= 2 (negatives come from the batch), "
                      f"got {train.global_batch_size}")
  if not config.data.reader.file_pattern:
    raise ConfigError("data.reader.file_pattern is empty: set it to the training shards, e.g. "
                      "--config=data.reader.file_pattern=/data/k600/train-*.tfrecord")
  if train.temperature <= 0:
    raise ConfigError(f"train.temperature must be > 0, got {train.temperature}")
  _check_steps(config)
  _check_objective(config)
  return config


def _check_objective(config: ExperimentConfig) -> None:
  objective, clips = config.objective, config.data.num_clips
  if objective.name in ("moco", "byol") and not 0 <= objective.momentum < 1:
    raise ConfigError(f"objective.momentum must be in [0, 1) (m0 of the momentum encoder), got "
                      f"{objective.momentum}")
  keys = clips * config.train.global_batch_size
  if objective.name == "moco" and objective.queue_size < keys:
    raise ConfigError(
        f"objective.queue_size={objective.queue_size} is smaller than the keys one step adds "
        f"(data.num_clips × train.global_batch_size = {clips} × "
        f"{config.train.global_batch_size} = {keys}); use at least {keys}")
  if objective.name == "byol" and not all(n >= 1 for n in objective.predictor_hidden_sizes):
    raise ConfigError(f"objective.predictor_hidden_sizes must be positive, got "
                      f"{objective.predictor_hidden_sizes}")
  if objective.name == "swav" and (
      objective.num_prototypes < 2 or objective.sinkhorn_epsilon <= 0
      or objective.sinkhorn_iterations < 1 or objective.freeze_prototypes_epochs < 0):
    raise ConfigError(
        f"need objective.num_prototypes >= 2, sinkhorn_epsilon > 0, sinkhorn_iterations >= 1 "
        f"and freeze_prototypes_epochs >= 0; got {objective.num_prototypes}, "
        f"{objective.sinkhorn_epsilon}, {objective.sinkhorn_iterations}, "
        f"{objective.freeze_prototypes_epochs}")


# ---- overrides


def _all_keys(config, prefix="") -> list:
  keys = []
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value):
      keys += _all_keys(value, f"{prefix}{field.name}.")
    else:
      keys.append(f"{prefix}{field.name}")
  return keys


def _parse_scalar(text: str, kind, key: str):
  text = text.strip()
  if kind is bool:
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"{key}={text!r}: expected true or false")
  if kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      raise ConfigError(f"{key}={text!r}: expected {'an integer' if kind is int else 'a number'}")
  if kind is str:
    return text
  raise ConfigError(f"{key}: a field of type {kind} cannot be set with key=value")


def parse_value(text: str, annotation, key: str):
  """Parses `text` as a value of the type `annotation` (see the module docstring)."""
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if origin is typing.Union and type(None) in args:
    if text.strip().lower() in ("none", "null"):
      return None
    return parse_value(text, next(a for a in args if a is not type(None)), key)
  if origin is Literal:
    if text.strip() not in args:
      raise ConfigError(f"{key}={text!r}: expected one of {', '.join(map(str, args))}")
    return text.strip()
  if origin is tuple:
    element = args[0] if args else str
    return tuple(_parse_scalar(part, element, key) for part in text.split(",") if part.strip())
  return _parse_scalar(text, annotation, key)


def _replace(config, path: list, text: str, key: str):
  names = [f.name for f in dataclasses.fields(config)]
  if path[0] not in names:
    parent = key[:len(key) - len(".".join(path))]
    raise ConfigError(f"unknown config key {key!r}; valid keys under "
                      f"{parent.rstrip('.') or 'the root'}: {', '.join(_all_keys(config, parent))}")
  current = getattr(config, path[0])
  if len(path) == 1:
    if dataclasses.is_dataclass(current):
      raise ConfigError(f"{key!r} is a group; set one of {', '.join(_all_keys(current, key + '.'))}")
    hint = typing.get_type_hints(type(config))[path[0]]
    try:
      return dataclasses.replace(config, **{path[0]: parse_value(text, hint, key)})
    except (ValueError, TypeError) as e:  # the dataclass's own checks (e.g. a probability > 1)
      if isinstance(e, ConfigError):
        raise
      raise ConfigError(f"{key}={text!r}: {e}") from None
  if not dataclasses.is_dataclass(current):
    raise ConfigError(f"unknown config key {key!r}: {path[0]!r} has no sub-keys")
  return dataclasses.replace(config, **{path[0]: _replace(current, path[1:], text, key)})


def apply_overrides(config, overrides: Iterable[str]):
  """Returns `config` with each `dotted.key=value` applied in order."""
  for override in overrides:
    if "=" not in override:
      raise ConfigError(f"--config={override!r} is not of the form key=value")
    key, text = override.split("=", 1)
    config = _replace(config, key.strip().split("."), text, key.strip())
  return config


# ---- experiments


def available_experiments() -> list:
  return sorted(name[:-3] for name in storage.listdir(EXPERIMENTS_DIR)
                if name.endswith(".py") and not name.startswith("_"))


def _experiment_path(name_or_path: str) -> str:
  if name_or_path.endswith(".py") or "/" in name_or_path:
    if not storage.is_local(name_or_path):  # Python imports it: it must be on this machine
      raise ConfigError(f"experiment file {name_or_path!r} is not on a local disk; copy it here "
                        "(experiment files are Python modules)")
    if not storage.isfile(name_or_path):
      raise ConfigError(f"experiment file {name_or_path!r} does not exist")
    return name_or_path
  path = storage.join(EXPERIMENTS_DIR, name_or_path + ".py")
  if not storage.isfile(path):
    raise ConfigError(f"unknown experiment {name_or_path!r}; available: "
                      f"{', '.join(available_experiments())} (or a path to an experiment file)")
  return path


@contextlib.contextmanager
def _importable(directory: str):
  sys.path.insert(0, directory)
  try:
    yield
  finally:
    sys.path.remove(directory)


def load_experiment(name_or_path: str, overrides: Iterable[str] = ()):
  """Loads experiments/NAME.py (or a file path), applies overrides, validates."""
  path = _experiment_path(name_or_path)
  spec = importlib.util.spec_from_file_location(
      "cvrl_experiment_" + storage.splitext(storage.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  with _importable(storage.dirname(storage.absolute(path))):  # experiments import each other
    spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config() function")
  config = module.get_config()
  if not isinstance(config, ANY_EXPERIMENT):
    raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, not one of "
                      f"{', '.join(kind.__name__ for kind in ANY_EXPERIMENT)}")
  if not config.name:
    config = dataclasses.replace(config, name=storage.splitext(storage.basename(path))[0])
  return validate(apply_overrides(config, overrides))


def to_dict(config) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(config)))


def to_json(config) -> str:
  """The resolved config, plus the derived numbers a reader would otherwise compute."""
  data = to_dict(config)
  if isinstance(config, KnnExperimentConfig):  # nothing trains: no schedule to derive
    return json.dumps(data, indent=2) + "\n"
  data["derived"] = {"steps_per_epoch": config.steps_per_epoch, "total_steps": config.total_steps,
                     "warmup_steps": config.warmup_steps, "stop_step": config.stop_step,
                     "learning_rate": config.learning_rate}
  return json.dumps(data, indent=2) + "\n"


def _from_dict(kind, data: dict, where: str):
  hints = typing.get_type_hints(kind)
  names = {f.name for f in dataclasses.fields(kind)}
  unknown = sorted(set(data) - names)
  if unknown:
    raise ConfigError(f"{where}: unknown keys {unknown}; valid: {sorted(names)}")
  values = {}
  for name, value in data.items():
    hint = hints[name]
    if dataclasses.is_dataclass(hint):
      values[name] = _from_dict(hint, value, f"{where}.{name}" if where else name)
    elif isinstance(value, list):
      values[name] = tuple(value)
    else:
      values[name] = value
  return kind(**values)


def from_dict(data: dict):
  """The config of a to_json / config.json dict (its "derived" entry is ignored).

  The tree is chosen by "task": absent for pretraining, linear_eval / finetune, or knn.
  """
  data = {k: v for k, v in data.items() if k != "derived"}
  task = data.get("task")
  kind = {None: ExperimentConfig, "linear_eval": ClassificationExperimentConfig,
          "finetune": ClassificationExperimentConfig, "knn": KnnExperimentConfig}.get(task)
  if kind is None:
    raise ConfigError(f"unknown task {task!r}; expected linear_eval, finetune, knn or none")
  return validate(_from_dict(kind, data, ""))


def read_workdir_config(workdir: str):
  """The config a run wrote to <workdir>/config.json."""
  path = storage.join(workdir, "config.json")
  if not storage.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} the --workdir of a "
                            "cvrl_tf.train run?")
  return from_dict(storage.read_json(path))
