"""The config tree: experiments, overrides, validation, derived numbers."""

import dataclasses

import pytest

from cvrl_tf import config as cfg


def test_every_named_experiment_loads():
  names = cfg.available_experiments()
  assert {"cvrl_k400", "cvrl_k600", "cvrl_k400_200ep", "cvrl_k600_200ep",
          "cvrl_k600_reference_sgd", "demo"} <= set(names)
  for name in names:
    config = cfg.load_experiment(name)
    assert config.name == name and config.total_steps > 0


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
