"""The checks before training (cvrl_tf.preflight): each wrong input fails naming it, before the
workdir exists; a right one passes, on local disks and on ram:// (a stand-in for gs://)."""

import dataclasses
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import config as cfg
from cvrl_tf import preflight
from cvrl_tf import schema
from cvrl_tf import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JPEG = tf.io.encode_jpeg(np.full((8, 8, 3), 128, np.uint8)).numpy()


def write_records(path: str, labels, prefix: str = "v") -> str:
  """One shard of 2-frame videos with the given labels (None: unlabelled)."""
  with tf.io.TFRecordWriter(path) as writer:
    for i, label in enumerate(labels):
      writer.write(schema.serialize_video(
          [JPEG, JPEG], video_id=f"{prefix}{i}", filename=f"{prefix}{i}.mp4", fps=25.0, height=8,
          width=8, start_us=0, end_us=80_000, label_index=label,
          label_text=None if label is None else f"c{label}"))
  return path


def dataset(root: str, num_classes: int = 3, label_map: bool = True) -> dict:
  """train (2 shards) and val (1 shard) of labels 0..num_classes-1, with a label map."""
  storage.makedirs(root)
  labels = list(range(num_classes))
  for shard in range(2):
    write_records(storage.join(root, schema.shard_name("train", shard, 2)), labels, f"t{shard}_")
  write_records(storage.join(root, schema.shard_name("val", 0, 1)), labels, "val")
  if label_map:
    storage.atomic_write_text(storage.join(root, schema.LABEL_MAP_FILE),
                              schema.format_label_map([f"c{i}" for i in range(num_classes)]))
  return {"train": storage.join(root, "train-*.tfrecord"),
          "val": storage.join(root, "val-*.tfrecord")}


def linear_eval(files: dict, num_classes: int = 3, **train):
  config = cfg.load_experiment("demo_linear_eval", [
      f"train_data.reader.file_pattern={files['train']}",
      f"eval_data.reader.file_pattern={files['val']}",
      f"evaluation.num_classes={num_classes}", "evaluation.allow_random_backbone=true"])
  return dataclasses.replace(config, train=dataclasses.replace(config.train, **train))


def test_a_good_run_passes_and_the_workdir_is_made_last(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  root = f"ram://preflight_{uuid.uuid4().hex[:8]}"
  files = dataset(storage.join(root, "data"))
  lines = []
  preflight.check_run(linear_eval(files), storage.join(root, "run"), lines.append)
  assert lines == [
      f"checked label map: {storage.join(root, 'data', 'label_map.txt')} (3 classes)",
      "checked train_data: 2 files, every label", "checked eval_data: 1 files, every label"]
  assert storage.listdir(storage.join(root, "run")) == []
  assert os.listdir(tmp_path) == []


def test_missing_files_name_the_key_and_the_pattern(tmp_path):
  files = dataset(str(tmp_path / "data"))
  files["val"] = str(tmp_path / "data" / "test-*.tfrecord")
  with pytest.raises(preflight.PreflightError,
                     match=r"eval_data: no TFRecord files match .*test-\*\.tfrecord"):
    preflight.check_run(linear_eval(files), str(tmp_path / "run"), print)
  assert not (tmp_path / "run").exists()


def test_a_file_that_is_not_a_tfrecord_is_named(tmp_path):
  files = dataset(str(tmp_path / "data"))
  (tmp_path / "data" / "val-00000-of-00001.tfrecord").write_bytes(b"not a record, just bytes")
  with pytest.raises(preflight.PreflightError, match="cannot read the video records of eval_data"):
    preflight.check_run(linear_eval(files), str(tmp_path / "run"), print)
  assert not (tmp_path / "run").exists()


def test_labels_outside_the_classifier_fail_naming_the_video(tmp_path, monkeypatch):
  files = dataset(str(tmp_path / "data"), label_map=False)
  write_records(str(tmp_path / "data" / "val-00000-of-00001.tfrecord"), [0, 1, 7, 2], "val")
  # Small data: every label is read, the third video is found.
  with pytest.raises(preflight.PreflightError,
                     match=r"video 'val2' .*has label 7, outside \[0, evaluation.num_classes=3\)"):
    preflight.check_run(linear_eval(files), str(tmp_path / "run"), print)
  # Large data: only the first record of sampled files; an unlabelled one is named.
  monkeypatch.setattr(preflight, "FULL_LABEL_SCAN_BYTES", 0)
  write_records(str(tmp_path / "data" / "val-00000-of-00001.tfrecord"), [None, 1], "val")
  with pytest.raises(preflight.PreflightError, match="video 'val0' in .*has no label"):
    preflight.check_run(linear_eval(files), str(tmp_path / "run"), print)
  assert not (tmp_path / "run").exists()


def test_label_maps_must_agree_with_the_classifier_and_each_other(tmp_path):
  files = dataset(str(tmp_path / "data"))
  with pytest.raises(preflight.PreflightError, match="names 3 classes but evaluation.num_classes "
                                                     "is 5"):
    preflight.check_run(linear_eval(files, num_classes=5), str(tmp_path / "run"), print)
  other = tmp_path / "other"
  other.mkdir()
  files["val"] = write_records(str(other / "val-00000-of-00001.tfrecord"), [0, 1, 2])
  (other / "label_map.txt").write_text("c0\nc2\nc1\n")
  with pytest.raises(preflight.PreflightError, match="differs from the one used for evaluation"):
    preflight.check_run(linear_eval(files), str(tmp_path / "run"), print)
  config = linear_eval(files)
  config = dataclasses.replace(config, evaluation=dataclasses.replace(
      config.evaluation, label_map=str(tmp_path / "no_such_map.txt")))
  with pytest.raises(preflight.PreflightError, match="no_such_map.txt"):
    preflight.check_run(config, str(tmp_path / "run"), print)
  assert not (tmp_path / "run").exists()


def test_a_checkpoint_that_does_not_fit_fails_before_the_workdir_exists(tmp_path):
  files = dataset(str(tmp_path / "data"))
  with pytest.raises(preflight.PreflightError, match="train.init_checkpoint=.*no_such_checkpoint"):
    preflight.check_run(linear_eval(files, init_checkpoint=str(tmp_path / "no_such_checkpoint")),
                        str(tmp_path / "run"), print)
  assert not (tmp_path / "run").exists()


def test_an_unwritable_workdir_is_named(tmp_path):
  files = dataset(str(tmp_path / "data"))
  (tmp_path / "file").write_text("x")
  with pytest.raises(preflight.PreflightError, match="--workdir: cannot write to .*file/run"):
    preflight.check_run(linear_eval(files), str(tmp_path / "file" / "run"), print)


def test_spread_takes_first_last_and_evenly_between():
  assert preflight.spread(list(range(10)), 4) == [0, 3, 6, 9]
  assert preflight.spread([1, 2], 8) == [1, 2]
  assert preflight.spread([5, 6, 7], 1) == [5]


def test_the_cli_refuses_bad_eval_inputs_in_seconds_and_writes_nothing(tmp_path):
  files = dataset(str(tmp_path / "data"))
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "cvrl_tf.train", "--experiment=demo_linear_eval",
             f"--workdir={workdir}", "--config=evaluation.allow_random_backbone=true",
             f"--config=train_data.reader.file_pattern={files['train']}",
             f"--config=eval_data.reader.file_pattern={tmp_path / 'data' / 'test-*'}"]
  start = time.monotonic()
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  seconds = time.monotonic() - start
  assert result.returncode == 2, result.stdout + result.stderr
  assert "eval_data: no TFRecord files match" in result.stderr
  assert "step" not in result.stdout  # no training step ran
  assert not workdir.exists()
  assert seconds < 60, seconds  # the interpreter and TensorFlow's import are most of it
