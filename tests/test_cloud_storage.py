"""The whole chain on a non-local file system: build -> pretrain -> linear eval -> kNN -> export ->
extract_features, with every input and output under ram:// (TensorFlow's in-memory file system:
it behaves like gs:// for tf.io.gfile and fails like it for open() / os.*), in one process (a
ram:// file system lives as long as its process). Nothing may reach the local disk: a stray
os.makedirs("ram://run") would leave a folder "./ram:" behind. And the training CLI with
--workdir=ram://... leaves no local folder either."""

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import tensorflow as tf

from conftest import deterministic_run_env, local_folders_named_like_urls, write_video
from cvrl_tf import config as cfg
from cvrl_tf import export
from cvrl_tf import extract_features
from cvrl_tf import runtime
from cvrl_tf import storage
from cvrl_tf import train
from dataset_tools import annotations
from dataset_tools import builder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("bright", "dark")
SPLITS = {"train": 4, "val": 2}              # videos per class
CLIP = ["data.num_frames=4", "data.stride=1", "data.crop_size=16"]


def clip_frames(label: int, index: int) -> list:
  """16 frames of 32x32 whose brightness says the class and whose texture moves."""
  rng = np.random.default_rng(100 * label + index)
  base = 190 if label == 0 else 60
  texture = rng.integers(-40, 40, (32, 64, 3))
  return [np.clip(base + texture[:, t:t + 32], 0, 255).astype(np.uint8) for t in range(16)]


def make_videos(local: str, remote: str) -> None:
  """Class folders of real H.264 videos, made locally (PyAV writes files) and moved to `remote`."""
  for split, per_class in SPLITS.items():
    for label, name in enumerate(CLASSES):
      for i in range(per_class):
        path = os.path.join(local, split, name, f"{split}_{name}_{i}.mp4")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_video(path, clip_frames(label, i + 10 * (split == "val")))
        storage.makedirs(storage.join(remote, split, name))  # ram:// lists only made folders
        storage.copy(path, storage.join(remote, split, name, f"{split}_{name}_{i}.mp4"))


def run_experiment(experiment: str, workdir: str, overrides) -> None:
  config = cfg.load_experiment(experiment, overrides)
  status = train.run_experiment(config, workdir, tf.distribute.get_strategy(),
                                lambda line: None)
  assert status == 0


@pytest.mark.slow
def test_the_whole_chain_on_a_non_local_file_system(tmp_path, monkeypatch):
  root = f"ram://chain_{uuid.uuid4().hex[:8]}"
  make_videos(str(tmp_path / "made_locally"), storage.join(root, "videos"))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  runtime.set_precision("float32")

  # 1. build: class folders on ram:// -> shards on ram://, decoded in this process.
  entries = (annotations.read_class_dirs(storage.join(root, "videos", "train"), "train")
             + annotations.read_class_dirs(storage.join(root, "videos", "val"), "val"))
  data = storage.join(root, "tfrecords")
  report = builder.build(entries, data, builder.BuildSettings(fps=25, short_side=32),
                         num_shards=2, num_workers=0, timeout_s=None, label_map=None,
                         overwrite=False, progress=False)
  assert report.failures_this_run == 0
  assert storage.read_text(storage.join(data, "label_map.txt")) == "bright\ndark\n"
  train_files = storage.join(data, "train-*.tfrecord")
  val_files = storage.join(data, "val-*.tfrecord")

  # 2. pretrain, 3. linear eval, 4. kNN: workdirs, checkpoints and data all on ram://.
  small = ["train.global_batch_size=4", "train.num_train_examples=8", "train.max_steps=2",
           "train.steps_per_loop=1", "train.log_every_steps=1", "train.checkpoint_every_steps=2",
           "train.deterministic=false"]
  pretrain_dir = storage.join(root, "runs", "pretrain")
  run_experiment("demo", pretrain_dir, [f"data.reader.file_pattern={train_files}", *CLIP, *small])
  assert storage.exists(storage.join(pretrain_dir, "checkpoints", "ckpt-2.index"))
  assert cfg.read_workdir_config(pretrain_dir).train.max_steps == 2

  views = ["eval_data.num_frames=4", "eval_data.stride=1", "eval_data.crop_size=16",
           "eval_data.short_side=16", "eval_data.num_clips=2", "eval_data.num_crops=1",
           "evaluation.num_classes=2", f"eval_data.reader.file_pattern={val_files}",
           f"train.init_checkpoint={storage.join(pretrain_dir, 'checkpoints')}"]
  linear_dir = storage.join(root, "runs", "linear")
  run_experiment("demo_linear_eval", linear_dir, [
      f"train_data.reader.file_pattern={train_files}", "train_data.num_frames=4",
      "train_data.stride=1", "train_data.crop_size=16", *views, *small])
  metrics = storage.read_json(storage.join(linear_dir, "metrics.json"))
  assert metrics["num_videos"] == 4 and metrics["step"] == 2
  assert set(metrics["per_class_accuracy"]) == set(CLASSES)   # names from the ram:// label map
  assert storage.exists(storage.join(linear_dir, "confusion_matrix.png"))

  knn_dir = storage.join(root, "runs", "knn")
  run_experiment("demo_knn", knn_dir, [
      f"bank_data.reader.file_pattern={train_files}", "bank_data.num_frames=4",
      "bank_data.stride=1", "bank_data.crop_size=16", "bank_data.short_side=16",
      "bank_data.num_clips=1", "bank_data.num_crops=1", *views])
  knn = storage.read_json(storage.join(knn_dir, "knn_metrics.json"))
  assert (knn["num_videos"], knn["bank_videos"]) == (4, 8)

  # 5. export the linear classifier to ram://, 6. features of the validation videos to ram://.
  config, prefix = export.resolve_run(workdir=linear_dir)
  export_dir = export.export(config, prefix, storage.join(root, "export"), log=lambda line: None)
  assert storage.exists(storage.join(export_dir, "saved_model.pb"))
  features = extract_features.extract_features(export_dir, val_files)
  output = storage.join(root, "features", "val.npz")
  extract_features.write_npz(output, features)
  with storage.open_file(output, "rb") as f:
    saved = dict(np.load(f))
  assert sorted(saved["video_id"]) == sorted(f"{name}/val_{name}_{i}.mp4" for name in CLASSES
                                             for i in range(2))
  np.testing.assert_allclose(saved["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
  # The export's view-averaged probabilities score the videos as the run's own evaluation did.
  top1 = np.mean(np.argmax(saved["probabilities"], axis=1) == saved["label"])
  assert top1 == pytest.approx(metrics["top1"])

  assert os.listdir(cwd) == []
  assert local_folders_named_like_urls(str(tmp_path), REPO) == []


def test_training_cli_on_a_ram_workdir_leaves_no_local_folder(tmp_path):
  # ram:// dies with the process: the point is only that nothing lands on the local disk.
  data = tmp_path / "data"
  entries = annotations.read_class_dirs(_videos(tmp_path), "train")
  builder.build(entries, str(data), builder.BuildSettings(fps=25, short_side=32), num_shards=1,
                num_workers=0, timeout_s=None, label_map=None, overwrite=False, progress=False)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  command = [sys.executable, "-m", "cvrl_tf.train", "--experiment=demo",
             f"--workdir=ram://cli_{uuid.uuid4().hex[:8]}/pretrain",
             f"--config=data.reader.file_pattern={data / 'train-*.tfrecord'}",
             *(f"--config={o}" for o in CLIP), "--config=train.global_batch_size=4",
             "--config=train.num_train_examples=4", "--config=train.max_steps=1",
             "--config=train.steps_per_loop=1", "--config=train.log_every_steps=1"]
  # The demo is deterministic: with oneDNN off already, the entry point does not re-execute.
  result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600,
                          env=deterministic_run_env())
  assert result.returncode == 0, result.stdout + result.stderr
  assert "saved checkpoint at step 1" in result.stdout
  assert os.listdir(cwd) == []
  assert local_folders_named_like_urls(str(tmp_path), REPO) == []


def _videos(tmp_path) -> str:
  folder = tmp_path / "videos"
  for label, name in enumerate(CLASSES):
    for i in range(2):
      path = folder / name / f"{name}_{i}.mp4"
      os.makedirs(path.parent, exist_ok=True)
      write_video(str(path), clip_frames(label, i))
  return str(folder)
