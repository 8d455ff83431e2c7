"""Linear evaluation, semi-supervised fine-tuning and kNN end to end: the demo experiments on
tiny labelled TFRecords, through `python -m cvrl_tf.train`, in subprocesses."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import deterministic_run_env
from cvrl_tf import backbone_checkpoint
from cvrl_tf import config as cfg
from cvrl_tf import heads
from cvrl_tf import input_pipeline
from cvrl_tf import networks
from cvrl_tf import schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 8


def _jpeg(value, rng):
  frame = np.clip(value + rng.normal(0, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
  return tf.io.encode_jpeg(frame, quality=90).numpy()


def _write_split(root, split, per_class, rng):
  for shard in range(2):
    name = root / schema.shard_name(split, shard, 2)
    with tf.io.TFRecordWriter(str(name)) as writer:
      for label in range(CLASSES):
        for i in range(shard, per_class, 2):
          base = 30 + 25 * label
          frames = [_jpeg(base + 2 * t, rng) for t in range(20)]
          vid = f"{split}_{label}_{i}"
          writer.write(schema.serialize_video(
              frames, video_id=vid, filename=vid + ".mp4", fps=25.0, height=40, width=48,
              start_us=0, end_us=800_000, label_index=label, label_text=f"class {label}"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """32 training and 16 validation videos of 8 classes, with a label map; tiny frames."""
  root = tmp_path_factory.mktemp("labelled")
  rng = np.random.default_rng(0)
  _write_split(root, "train", 4, rng)
  _write_split(root, "val", 2, rng)
  (root / schema.LABEL_MAP_FILE).write_text(
      schema.format_label_map([f"class {i}" for i in range(CLASSES)]))
  return {"train": str(root / "train-*.tfrecord"), "val": str(root / "val-*.tfrecord"),
          "root": root}


def _run(experiment, workdir, *args, check=True):
  env = deterministic_run_env()
  # The demo's network with one block a stage (ResNet-10): the runs' tracing time halves.
  command = [sys.executable, "-m", "cvrl_tf.train", f"--experiment={experiment}",
             f"--workdir={workdir}", "--config=model.depth=10", *args]
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)
  if check:
    assert result.returncode == 0, result.stdout + result.stderr
  return result


def _refused(experiment, workdir, *overrides, capsys):
  """(exit code, stderr) of `train.run_experiment` in this process, for runs its checks refuse
  before anything runs: what `python -m cvrl_tf.train` returns and prints then (the command
  itself is checked once, in test_evaluation_refuses_a_backbone_that_did_not_load), without a
  TensorFlow import per case."""
  from cvrl_tf import train
  capsys.readouterr()
  config = cfg.load_experiment(experiment, ["model.depth=10", *overrides])
  code = train.run_experiment(config, workdir, tf.distribute.get_strategy(), log=lambda _: None)
  return code, capsys.readouterr().err


def _eval_args(data, *extra):
  return [f"--config=train_data.reader.file_pattern={data['train']}",
          f"--config=eval_data.reader.file_pattern={data['val']}",
          "--config=train.max_steps=3", "--config=train.steps_per_loop=1",
          "--config=train.log_every_steps=1", "--config=eval_data.num_clips=2", *extra]


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
  """Two steps of the demo pretraining experiment on the tiny training split."""
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  _run("demo", workdir, f"--config=data.reader.file_pattern={data['train']}",
       "--config=train.num_train_examples=32", "--config=train.max_steps=2",
       "--config=train.steps_per_loop=1", "--config=train.log_every_steps=1")
  return workdir


def _backbone_values(workdir) -> dict:
  """{variable path: value} of the backbone in a run's latest checkpoint, loaded by our loader
  (key names alone would not do: a variable the optimizer also tracks is stored under the
  optimizer's shorter path)."""
  config = cfg.read_workdir_config(workdir)
  data = config.data if isinstance(config, cfg.ExperimentConfig) else config.train_data
  backbone = networks.build_backbone(config.model, data.num_frames, data.crop_size)
  backbone_checkpoint.restore_backbone_checkpoint(backbone, os.path.join(workdir, "checkpoints"))
  return {v.path: v.numpy() for v in backbone.variables}


def _classifier_kernel(workdir, step):
  classifier = heads.LinearClassifier(CLASSES)
  classifier.build((None, 128))
  path = os.path.join(workdir, "checkpoints", f"ckpt-{step}")
  tf.train.Checkpoint(classifier=classifier).read(path).expect_partial().assert_existing_objects_matched()
  return classifier.dense.kernel.numpy()


def test_linear_eval_of_the_demo_pretraining_end_to_end(data, pretrained, tmp_path):
  workdir = str(tmp_path / "linear")
  result = _run("demo_linear_eval", workdir,
                f"--init_checkpoint={os.path.join(pretrained, 'checkpoints')}",
                "--config=train.checkpoint_every_steps=1", "--config=evaluation.eval_every_steps=2",
                *_eval_args(data))
  assert "restored" in result.stdout and "backbone variables" in result.stdout
  metrics = json.loads(open(os.path.join(workdir, "metrics.json")).read())
  assert metrics["num_videos"] == 16 and metrics["views_per_video"] == 2 * 3
  matrix = np.array(metrics["confusion_matrix"])
  assert matrix.sum() == 16 and (matrix.sum(axis=1) == 2).all()
  assert metrics["top1"] == pytest.approx(np.trace(matrix) / 16)
  assert set(metrics["per_class_accuracy"]) == {f"class {i}" for i in range(CLASSES)}
  # A periodic evaluation at step 2, and the final one.
  assert metrics["step"] == 3 and [h["step"] for h in metrics["history"]] == [2, 3]
  assert "evaluation at step 2:" in result.stdout
  assert "evaluating 6 views per video on 1 replica(s)" in result.stdout   # under the strategy
  assert os.path.exists(os.path.join(workdir, "confusion_matrix.png"))
  # Frozen means frozen: after 3 steps at LR 1, every backbone variable, the BN moving
  # statistics included, equals the pretraining checkpoint's; the classifier did move.
  before, after = _backbone_values(pretrained), _backbone_values(workdir)
  assert before.keys() == after.keys() and any("moving_mean" in k for k in after)
  for name in before:
    np.testing.assert_array_equal(after[name], before[name], err_msg=name)
  assert np.abs(_classifier_kernel(workdir, 3) - _classifier_kernel(workdir, 2)).max() > 1e-3


def test_semi_supervised_subset_is_balanced_and_disjoint_from_validation(data, pretrained,
                                                                         tmp_path):
  workdir = str(tmp_path / "semi")
  _run("demo_linear_eval", workdir,
       f"--init_checkpoint={os.path.join(pretrained, 'checkpoints')}",
       "--config=task=finetune", "--config=evaluation.label_fraction=0.5",
       "--config=evaluation.subset_seed=3", "--config=train.global_batch_size=8",
       *_eval_args(data))
  subset = json.loads(open(os.path.join(workdir, "label_subset.json")).read())
  assert subset["num_videos"] == 16 and subset["of_videos"] == 32
  assert subset["per_class"] == {str(c): 2 for c in range(CLASSES)}
  train_ids = {v for v, _ in input_pipeline.read_video_labels(data["train"])}
  val_ids = {v for v, _ in input_pipeline.read_video_labels(data["val"])}
  assert set(subset["videos"]) <= train_ids and not set(subset["videos"]) & val_ids
  # Fine-tuning trains the backbone too.
  before, after = _backbone_values(pretrained), _backbone_values(workdir)
  assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_knn_of_the_demo_pretraining(data, pretrained, tmp_path):
  workdir = str(tmp_path / "knn")
  result = _run("demo_knn", workdir,
                f"--init_checkpoint={os.path.join(pretrained, 'checkpoints')}",
                f"--config=bank_data.reader.file_pattern={data['train']}",
                f"--config=eval_data.reader.file_pattern={data['val']}",
                "--config=bank_data.num_clips=1", "--config=eval_data.num_clips=1")
  metrics = json.loads(open(os.path.join(workdir, "knn_metrics.json")).read())
  assert metrics["bank_videos"] == 32 and metrics["k"] == 32 and metrics["num_videos"] == 16
  assert metrics["top1"] == pytest.approx(np.trace(np.array(metrics["confusion_matrix"])) / 16)
  assert "kNN (k=32" in result.stdout


def test_evaluation_refuses_a_backbone_that_did_not_load(data, pretrained, tmp_path, capsys):
  # No checkpoint at all: refused unless the random baseline is asked for explicitly.
  # All refused by the checks before training (cvrl_tf.preflight): exit 2, no workdir made.
  result = _run("demo_linear_eval", str(tmp_path / "none"), *_eval_args(data), check=False)
  assert result.returncode == 2 and "train.init_checkpoint is empty" in result.stderr
  eval_overrides = [arg.removeprefix("--config=") for arg in _eval_args(data)]
  # A checkpoint of another architecture: the error names it and the first mismatch.
  code, stderr = _refused(
      "demo_linear_eval", str(tmp_path / "wide"),
      f"train.init_checkpoint={os.path.join(pretrained, 'checkpoints')}",
      "model.stage_filters=16,32,64,256", *eval_overrides, capsys=capsys)
  assert code == 2
  assert "matches this backbone neither" in stderr and pretrained in stderr
  # A path that is not there.
  code, stderr = _refused("demo_knn", str(tmp_path / "missing"),
                          "train.init_checkpoint=/no/such/ckpt",
                          f"bank_data.reader.file_pattern={data['train']}",
                          f"eval_data.reader.file_pattern={data['val']}", capsys=capsys)
  assert code == 2 and "/no/such/ckpt" in stderr
  assert not any((tmp_path / name).exists() for name in ("none", "wide", "missing"))


def test_labels_outside_the_classifier_fail_naming_the_video(data, tmp_path, capsys):
  args = ["evaluation.allow_random_backbone=true", "bank_data.num_clips=1",
          "eval_data.num_clips=1"]
  # A label map that disagrees with num_classes (8, the labels all in range): caught before
  # anything runs.
  six = tmp_path / "six_classes.txt"
  six.write_text(schema.format_label_map([f"class {i}" for i in range(6)]))
  code, stderr = _refused("demo_knn", str(tmp_path / "map"), *args,
                          f"evaluation.label_map={six}",
                          f"bank_data.reader.file_pattern={data['train']}",
                          f"eval_data.reader.file_pattern={data['val']}", capsys=capsys)
  assert code == 2
  assert "names 6 classes but evaluation.num_classes is 8" in stderr
  args.append("evaluation.num_classes=4")
  # Without a label map, the first record whose label has no logit names its video (a small
  # split has every label read before anything runs).
  bare = tmp_path / "bare"
  bare.mkdir()
  for path in data["root"].glob("*.tfrecord"):
    shutil.copy(path, bare / path.name)
  code, stderr = _refused("demo_knn", str(tmp_path / "labels"), *args,
                          f"bank_data.reader.file_pattern={bare / 'train-*'}",
                          f"eval_data.reader.file_pattern={bare / 'val-*'}", capsys=capsys)
  assert code == 2
  assert "outside [0, evaluation.num_classes=4)" in stderr and "train_4_" in stderr
  assert not (tmp_path / "labels").exists() and not (tmp_path / "map").exists()
