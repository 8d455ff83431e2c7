"""The config tree: experiments, overrides, validation, derived numbers."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from cvrl_tf import config as cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_named_experiment_loads():
  names = cfg.available_experiments()
  assert {"cvrl_k400", "cvrl_k600", "cvrl_k400_200ep", "cvrl_k600_200ep",
          "cvrl_k600_reference_sgd", "demo"} <= set(names)
  assert {"cvrl_k400_linear_eval", "cvrl_k600_linear_eval", "ucf101_finetune", "hmdb51_finetune",
          "cvrl_k400_semi_1pct", "cvrl_k400_semi_10pct", "demo_linear_eval", "cvrl_k400_knn",
          "cvrl_k600_knn", "demo_knn"} <= set(names)
  for name in names:
    config = cfg.load_experiment(name)
    assert config.name == name
    assert isinstance(config, cfg.KnnExperimentConfig) or config.total_steps > 0
    # config.json round trip: what a run writes rebuilds the same config.
    assert cfg.from_dict(json.loads(cfg.to_json(config))) == config



def test_accelerator_experiments_augment_in_the_step_and_demos_on_the_host():
  # Kinetics-scale pretraining is for accelerators: uint8 infeed, colour ops in the replica step.
  # The demos run on CPUs, where the host pipeline augments (issue 15, item 5).
  pretraining = [name for name in cfg.available_experiments()
                 if isinstance(cfg.load_experiment(name), cfg.ExperimentConfig)]
  for name in pretraining:
    expected = not name.startswith("demo")
    assert cfg.load_experiment(name).data.augment_in_step is expected, name
  assert {"cvrl_k400", "cvrl_k600", "rho_moco_k400", "rho_byol_k400_rho4"} <= set(pretraining)
  assert not cfg.load_experiment("cvrl_k400", ["data.augment_in_step=false"]).data.augment_in_step

def test_linear_eval_prints_the_spec_values():
  result = subprocess.run([sys.executable, "-m", "cvrl_tf.train",
                           "--experiment=cvrl_k600_linear_eval", "--print_config"],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr
  printed = json.loads(result.stdout)
  assert printed["task"] == "linear_eval"
  assert printed["model"]["depth"] == 50 and printed["model"]["width_multiplier"] == 1.0
  assert printed["classifier"] == {"normalize": True, "batch_norm": False, "dropout_rate": 0.0,
                                  "label_smoothing": 0.0}
  optimizer = printed["optimizer"]
  assert (optimizer["name"], optimizer["momentum"], optimizer["weight_decay"]) == ("sgd", 0.9, 0.0)
  assert (optimizer["base_learning_rate"], optimizer["reference_batch_size"]) == (32.0, 1024)
  assert (optimizer["schedule"], optimizer["warmup_epochs"]) == ("warmup_cosine", 5)
  assert printed["train"]["epochs"] == 100 and printed["train"]["global_batch_size"] == 1024
  train = printed["train_data"]
  assert (train["num_frames"], train["stride"], train["crop_size"]) == (32, 2, 224)
  assert train["area_range"] == [0.3, 1.0] and train["aspect_ratio_range"] == [0.5, 2.0]
  assert train["flip_probability"] == 0.5
  test = printed["eval_data"]
  assert (test["num_frames"], test["stride"], test["num_clips"], test["num_crops"],
          test["short_side"], test["crop_size"]) == (32, 2, 10, 3, 256, 256)
  assert printed["evaluation"]["num_classes"] == 600
  derived = printed["derived"]
  assert derived["learning_rate"] == 32.0
  assert derived["total_steps"] == round(100 * 366016 / 1024)
  assert derived["warmup_steps"] > 0


def test_evaluation_configs_are_checked():
  with pytest.raises(cfg.ConfigError, match="label_fraction must be in"):
    cfg.load_experiment("cvrl_k400_semi_1pct", ["evaluation.label_fraction=1.5"])
  with pytest.raises(cfg.ConfigError, match="multiple of train.checkpoint_every_steps"):
    cfg.load_experiment("demo_linear_eval", ["evaluation.eval_every_steps=30"])
  with pytest.raises(cfg.ConfigError, match="evaluation.num_classes must be >= 1"):
    cfg.load_experiment("demo_knn", ["evaluation.num_classes=0"])
  with pytest.raises(cfg.ConfigError, match="init_checkpoint is empty"):
    cfg.require_backbone(cfg.load_experiment("cvrl_k600_linear_eval"))
  cfg.require_backbone(cfg.load_experiment("cvrl_k600_linear_eval",
                                           ["evaluation.allow_random_backbone=true"]))
  semi = cfg.load_experiment("cvrl_k400_semi_1pct")
  assert semi.steps_per_epoch == pytest.approx(0.01 * 215570 / 64)
  assert semi.learning_rate == pytest.approx(0.2)


def test_kinetics_arithmetic():
  k600 = cfg.load_experiment("cvrl_k600")
  assert k600.steps_per_epoch == pytest.approx(366016 / 1024)
  assert k600.total_steps == 285950 and k600.warmup_steps == 1787
  assert cfg.load_experiment("cvrl_k600_200ep").total_steps == 71488   # the reference YAML
  k400 = cfg.load_experiment("cvrl_k400")
  assert k400.total_steps == round(800 * 215570 / 1024)
  sgd = cfg.load_experiment("cvrl_k600_reference_sgd")
  assert sgd.optimizer.name == "sgd" and sgd.optimizer.momentum == 0.9
  half = cfg.load_experiment("cvrl_k600", ["train.global_batch_size=512"])
  assert half.learning_rate == pytest.approx(0.16)       # linear scaling
  # max_steps ends the run early; the schedule still spans the epochs.
  short = cfg.load_experiment("cvrl_k600", ["train.max_steps=1000"])
  assert (short.stop_step, short.total_steps, short.warmup_steps) == (1000, 285950, 1787)


def test_overrides_parse_by_type():
  config = cfg.load_experiment("cvrl_k600", [
      "train.global_batch_size=256", "train.deterministic=true", "model.stage_filters=8,16,32,64",
      "train.max_steps=none", "data.augmentation.hue=0.1", "train.mixed_precision=mixed_bfloat16",
      "data.reader.file_pattern=/x/train-*"])
  assert config.train.global_batch_size == 256 and config.train.deterministic is True
  assert config.model.stage_filters == (8, 16, 32, 64) and config.train.max_steps is None
  assert config.data.augmentation.hue == 0.1
  assert config.train.mixed_precision == "mixed_bfloat16"
  assert config.data.reader.file_pattern == "/x/train-*"


@pytest.mark.parametrize("override,message", [
    ("train.batch_size=4", "unknown config key 'train.batch_size'; valid keys under train: "
                           "train.global_batch_size"),
    ("nope=1", "unknown config key 'nope'; valid keys under the root: name, data.reader"),
    ("train=3", "'train' is a group; set one of train.global_batch_size"),
    ("train.epochs=many", "train.epochs='many': expected a number"),
    ("train.deterministic=maybe", "expected true or false"),
    ("optimizer.name=adam", "expected one of lars, sgd"),
    ("train.global_batch_size", "is not of the form key=value"),
    ("train.global_batch_size=1", "must be >= 2"),
    ("data.reader.file_pattern=", "data.reader.file_pattern is empty"),
    ("train.num_train_examples=10", "gives no full batch"),
    ("train.max_steps=0", "train.max_steps must be >= 1 or none"),
    ("optimizer.base_learning_rate=0", "optimizer.base_learning_rate must be > 0"),
    ("optimizer.warmup_epochs=-1", "need optimizer.warmup_epochs >= 0"),
    ("optimizer.schedule=cosine", "optimizer.schedule='cosine' is not a schedule cvrl_tf has; "
                                  "expected one of warmup_cosine"),
    ("data.augmentation.grayscale_probability=2", "data.augmentation.grayscale_probability='2'"),
])
def test_bad_overrides_say_what_is_valid(override, message):
  with pytest.raises(cfg.ConfigError) as error:
    cfg.load_experiment("cvrl_k600", [override])
  assert message in str(error.value)


def test_unknown_experiment_lists_the_available_ones(tmp_path):
  with pytest.raises(cfg.ConfigError, match="unknown experiment 'k9000'; available: .*cvrl_k600"):
    cfg.load_experiment("k9000")
  with pytest.raises(cfg.ConfigError, match="does not exist"):
    cfg.load_experiment(str(tmp_path / "missing.py"))
  (tmp_path / "empty.py").write_text("x = 1\n")
  with pytest.raises(cfg.ConfigError, match="has no get_config"):
    cfg.load_experiment(str(tmp_path / "empty.py"))


def test_to_json_round_trips_the_values():
  import json
  config = cfg.load_experiment("demo")
  data = json.loads(cfg.to_json(config))
  assert data["train"]["global_batch_size"] == config.train.global_batch_size
  assert data["derived"]["total_steps"] == config.total_steps
  assert data["model"]["stage_filters"] == list(config.model.stage_filters)
  assert dataclasses.is_dataclass(config.data.augmentation)


def test_the_recipe_names_its_schedule(tmp_path):
  config = cfg.load_experiment("cvrl_k600")
  assert config.optimizer.schedule == "warmup_cosine"
  assert json.loads(cfg.to_json(config))["optimizer"]["schedule"] == "warmup_cosine"
  # An experiment file's value is checked as an override's is.
  (tmp_path / "step.py").write_text(
      "from cvrl_tf import config as cfg\n"
      "from cvrl_tf import input_pipeline\n"
      "def get_config():\n"
      "  return cfg.ExperimentConfig(\n"
      "      data=input_pipeline.PretrainDataConfig(\n"
      "          reader=input_pipeline.ReaderConfig(file_pattern='/data/train-*')),\n"
      "      optimizer=cfg.OptimizerConfig(schedule='step'),\n"
      "      train=cfg.TrainConfig(num_train_examples=2048))\n")
  with pytest.raises(cfg.ConfigError, match="optimizer.schedule='step' is not a schedule cvrl_tf "
                     "has; expected one of warmup_cosine"):
    cfg.load_experiment(str(tmp_path / "step.py"))


def test_a_run_from_before_the_schedule_key_still_resumes(tmp_path):
  from cvrl_tf import train
  config = cfg.load_experiment("demo")
  old = json.loads(cfg.to_json(config))
  del old["optimizer"]["schedule"]            # config.json as cvrl_tf wrote it before the key
  (tmp_path / "config.json").write_text(json.dumps(old))
  train.check_resumable(str(tmp_path), cfg.to_json(config))   # the same recipe: resumes
  changed = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer,
                                                                      warmup_epochs=1.0))
  with pytest.raises(ValueError, match=r"optimizer.warmup_epochs: 5 -> 1.0"):
    train.check_resumable(str(tmp_path), cfg.to_json(changed))
