"""The ρ-SSL study's named experiments (experiments/rho_*.py, demo_rho_*.py): their recipe values."""

import json
import os
import subprocess
import sys

import pytest

from cvrl_tf import config as cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K400_TRAIN_VIDEOS = 215_570

# name: (objective, ρ, optimizer, lr at batch 512, weight decay, head hidden sizes, head output,
#        head BN)
STUDY = {
    "rho_simclr_k400": ("simclr", 2, "lars", 4.8, 1e-6, (2048, 2048), 128, True),
    "rho_simclr_k400_rho4": ("simclr", 4, "lars", 4.8, 1e-6, (2048, 2048), 128, True),
    # MoCo: the paper's 0.4 and 1e-4 for the code's loss summed over ρ query clips = 0.4·ρ and
    # 1e-4/ρ for our averaged one (experiments/_rho_ssl.py).
    "rho_moco_k400": ("moco", 2, "sgd", 0.8, 5e-5, (2048, 2048), 128, False),
    "rho_moco_k400_rho4": ("moco", 4, "sgd", 1.6, 2.5e-5, (2048, 2048), 128, False),
    "rho_byol_k400": ("byol", 2, "lars", 4.8, 1e-6, (4096,), 256, True),
    "rho_byol_k400_rho4": ("byol", 4, "lars", 9.6, 1e-6, (4096,), 256, True),  # the config's note
    "rho_swav_k400": ("swav", 2, "lars", 4.8, 1e-6, (2048, 2048), 128, True),
    "rho_swav_k400_rho4": ("swav", 4, "lars", 4.8, 1e-6, (2048, 2048), 128, True),
}


@pytest.mark.parametrize("name", sorted(STUDY))
def test_study_experiments_hold_the_papers_recipe(name):
  objective, rho, optimizer, lr, wd, hidden, output, head_bn = STUDY[name]
  config = cfg.load_experiment(name)
  assert (config.objective.name, config.data.num_clips) == (objective, rho)
  # Slow-R50, 8 × 8 clips at 224.
  model = config.model
  assert (model.depth, model.width_multiplier, model.stem_temporal_kernel,
          model.stem_temporal_stride, model.temporal_kernels) == (50, 1.0, 1, 1, (1, 1, 3, 3))
  assert model.sync_batch_norm is True
  assert (model.head_hidden_sizes, model.head_output_size, model.head_batch_norm) == (
      hidden, output, head_bn)
  data = config.data
  assert (data.num_frames, data.stride, data.crop_size) == (8, 8, 224)
  assert (data.temporal_sampling, data.max_span_seconds) == ("uniform", None)
  assert data.reader.file_pattern == "/data/kinetics400_tfrecords/train-*-of-*.tfrecord"
  # aug+.
  aug = data.augmentation
  assert (aug.area_range, aug.aspect_ratio_range, aug.flip_probability) == (
      (0.2, 0.766), (0.75, 4 / 3), 0.5)
  assert (aug.color_jitter_probability, aug.brightness, aug.contrast, aug.saturation,
          aug.hue) == (0.8, 0.6, 0.6, 0.6, 0.15)
  assert aug.grayscale_probability == 0.2
  assert (aug.blur_probability_view_1, aug.blur_probability_view_2, aug.blur_sigma_range) == (
      0.5, 0.5, (0.1, 2.0))
  assert (aug.solarize_probability_view_1, aug.solarize_probability_view_2) == (0.0, 0.0)
  # 200 epochs of 512 videos, 35 warm-up epochs, lr × batch / 512.
  train, opt = config.train, config.optimizer
  assert (train.epochs, train.global_batch_size, train.num_train_examples) == (
      200, 512, K400_TRAIN_VIDEOS)
  assert (opt.name, opt.momentum, opt.weight_decay) == (optimizer, 0.9, pytest.approx(wd))
  assert (opt.base_learning_rate, opt.reference_batch_size) == (pytest.approx(lr), 512)
  assert config.learning_rate == pytest.approx(lr)
  assert (opt.schedule, opt.warmup_epochs) == ("warmup_cosine", 35)
  assert config.total_steps == round(200 * K400_TRAIN_VIDEOS / 512) == 84207
  assert config.warmup_steps == round(35 * K400_TRAIN_VIDEOS / 512) == 14736
  assert train.temperature == 0.1
  if objective == "moco":
    assert (config.objective.momentum, config.objective.queue_size) == (0.994, 65536)
  if objective == "byol":
    assert (config.objective.momentum, config.objective.predictor_hidden_sizes) == (
        0.996, (4096,))
  if objective == "swav":
    o = config.objective
    assert (o.num_prototypes, o.sinkhorn_epsilon, o.sinkhorn_iterations,
            o.freeze_prototypes_epochs) == (1000, 0.05, 3, 1.0)


def test_linear_eval_is_the_studys_protocol():
  config = cfg.load_experiment("rho_k400_linear_eval")
  pretraining = cfg.load_experiment("rho_moco_k400").model
  names = ("depth", "width_multiplier", "stem_temporal_kernel", "stem_temporal_stride",
           "temporal_kernels")
  assert [getattr(config.model, n) for n in names] == [getattr(pretraining, n) for n in names]
  assert (config.task, config.classifier.normalize, config.classifier.batch_norm) == (
      "linear_eval", False, False)
  opt = config.optimizer
  assert (opt.name, opt.momentum, opt.weight_decay, opt.warmup_epochs) == ("sgd", 0.9, 0.0, 8)
  assert (opt.base_learning_rate, opt.reference_batch_size) == (4.0, 512)
  assert (config.train.epochs, config.train.global_batch_size) == (60, 512)
  assert config.learning_rate == 4.0
  assert config.total_steps == round(60 * K400_TRAIN_VIDEOS / 512)
  train, test = config.train_data, config.eval_data
  assert (train.num_frames, train.stride, train.crop_size) == (8, 8, 224)
  assert (train.area_range, train.aspect_ratio_range, train.flip_probability) == (
      (0.28, 0.57), (1.0, 1.0), 0.5)
  assert (test.num_frames, test.stride, test.num_clips, test.num_crops, test.short_side,
          test.crop_size) == (8, 8, 10, 3, 256, 256)
  assert config.evaluation.num_classes == 400


def test_demo_objectives_change_only_the_objective_recipe():
  demo = cfg.load_experiment("demo")
  for name in ("demo_rho_simclr", "demo_rho_moco", "demo_rho_byol", "demo_rho_swav"):
    config = cfg.load_experiment(name)
    # demo.py's data (Δ sampling, ρ = 2), backbone, schedule, seed and determinism.
    assert config.data == demo.data and config.data.temporal_sampling == "cvrl"
    assert (config.model.depth, config.model.stage_filters) == (18, (16, 32, 64, 128))
    assert (config.train.epochs, config.train.global_batch_size, config.train.seed,
            config.train.deterministic) == (40, 32, 0, True)
    assert config.optimizer.warmup_epochs == 5 and config.optimizer.reference_batch_size == 32
  simclr = cfg.load_experiment("demo_rho_simclr")
  assert simclr.objective.name == "simclr"
  assert simclr.learning_rate == pytest.approx(demo.learning_rate)   # demo.py's 0.85
  moco = cfg.load_experiment("demo_rho_moco")
  assert (moco.objective.name, moco.objective.momentum, moco.objective.queue_size) == (
      "moco", 0.99, 256)
  assert (moco.optimizer.name, moco.learning_rate, moco.optimizer.weight_decay) == (
      "sgd", pytest.approx(0.2), pytest.approx(5e-5))
  assert moco.model.head_batch_norm is False
  byol = cfg.load_experiment("demo_rho_byol")
  assert (byol.objective.name, byol.objective.momentum, byol.objective.predictor_hidden_sizes,
          byol.model.head_hidden_sizes) == ("byol", 0.99, (256,), (256,))
  assert byol.optimizer.name == "lars" and byol.learning_rate == pytest.approx(0.8485281374)
  swav = cfg.load_experiment("demo_rho_swav")
  assert (swav.objective.name, swav.objective.num_prototypes, swav.objective.sinkhorn_epsilon,
          swav.objective.sinkhorn_iterations, swav.objective.freeze_prototypes_epochs) == (
              "swav", 16, 0.05, 3, 1.0)
  # ρ = 4, as the benchmark runs them: the queue still holds a step's 4 × 32 keys.
  assert cfg.load_experiment("demo_rho_moco", ["data.num_clips=4"]).data.num_clips == 4


def test_print_config_shows_the_whole_moco_recipe():
  result = subprocess.run([sys.executable, "-m", "cvrl_tf.train", "--experiment=rho_moco_k400",
                           "--print_config"], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr
  printed = json.loads(result.stdout)
  assert set(printed) == {"name", "data", "model", "objective", "optimizer", "train", "derived"}
  assert printed["name"] == "rho_moco_k400"
  assert printed["objective"] == {
      "name": "moco", "momentum": 0.994, "queue_size": 65536, "predictor_hidden_sizes": [4096],
      "num_prototypes": 1000, "sinkhorn_epsilon": 0.05, "sinkhorn_iterations": 3,
      "freeze_prototypes_epochs": 1.0}
  assert printed["data"]["num_clips"] == 2 and printed["data"]["temporal_sampling"] == "uniform"
  assert printed["data"]["max_span_seconds"] is None
  assert printed["data"]["augmentation"]["hue"] == 0.15
  assert printed["model"]["head_batch_norm"] is False
  assert printed["model"]["head_hidden_sizes"] == [2048, 2048]
  assert printed["optimizer"]["name"] == "sgd" and printed["optimizer"]["weight_decay"] == 5e-5
  assert printed["derived"]["learning_rate"] == pytest.approx(0.8)
  assert printed["derived"]["total_steps"] == 84207
  assert printed["derived"]["warmup_steps"] == 14736


def test_a_wrong_objective_key_names_the_valid_ones():
  with pytest.raises(cfg.ConfigError, match="unknown config key 'objective.nme'") as error:
    cfg.load_experiment("rho_moco_k400", ["objective.nme=x"])
  for key in ("objective.name", "objective.momentum", "objective.queue_size",
              "objective.predictor_hidden_sizes", "objective.num_prototypes",
              "objective.sinkhorn_epsilon", "objective.sinkhorn_iterations",
              "objective.freeze_prototypes_epochs"):
    assert key in str(error.value)
  with pytest.raises(cfg.ConfigError, match="expected one of simclr, moco, byol, swav"):
    cfg.load_experiment("rho_moco_k400", ["objective.name=mocov3"])
