"""Pretraining end to end: python -m cvrl_tf.train on tiny TFRecords, in subprocesses."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import free_ports
from cvrl_tf import schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPERIMENT = '''
"""A tiny pretraining experiment for tests."""
from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline


def get_config():
  return cfg.ExperimentConfig(
      data=input_pipeline.PretrainDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern={pattern!r}, shuffle_buffer_size=16,
                                             cycle_length=2),
          num_frames=4, stride=2, crop_size=32, use_xla=False),
      model=cfg.ModelConfig(depth=18, stem_filters=4, stage_filters=(4, 8, 8, 8),
                            sync_batch_norm=True, head_hidden_sizes=(16,), head_output_size=8),
      optimizer=cfg.OptimizerConfig(name="lars", base_learning_rate=0.32 * 32,
                                    warmup_epochs=1),
      train=cfg.TrainConfig(global_batch_size=8, epochs=3, num_train_examples=16,
                            steps_per_loop=2, log_every_steps=2, checkpoint_every_steps=3,
                            seed=1, deterministic=True))
'''


def _jpeg(value, rng):
  frame = np.clip(value + rng.normal(0, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
  return tf.io.encode_jpeg(frame, quality=90).numpy()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
  """Two shards of 16 small videos, and an experiment file that trains on them."""
  root = tmp_path_factory.mktemp("train")
  rng = np.random.default_rng(0)
  for shard in range(2):
    with tf.io.TFRecordWriter(str(root / f"train-{shard:05d}-of-00002.tfrecord")) as writer:
      for i in range(8):
        base = rng.uniform(40, 200)
        frames = [_jpeg(base + 3 * t, rng) for t in range(20)]
        writer.write(schema.serialize_video(
            frames, video_id=f"v{shard}{i}", filename=f"v{shard}{i}.mp4", fps=25.0, height=40,
            width=48, start_us=0, end_us=800_000))
  path = root / "tiny.py"
  path.write_text(EXPERIMENT.format(pattern=str(root / "train-*.tfrecord")))
  return str(path)


def _train(experiment, workdir, *overrides, check=True, **kwargs):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  args = [sys.executable, "-m", "cvrl_tf.train", f"--experiment={experiment}",
          f"--workdir={workdir}", *[f"--config={o}" for o in overrides]]
  result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
                          **kwargs)
  if check:
    assert result.returncode == 0, result.stdout + result.stderr
  return result


def _variables(workdir):
  prefix = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(prefix)
          if name.startswith(("backbone/", "head/"))}


def _losses(stdout):
  return [float(line.split("loss ")[1].split()[0]) for line in stdout.splitlines()
          if line.startswith("step ")]


def test_print_config_shows_the_paper_recipe():
  result = subprocess.run([sys.executable, "-m", "cvrl_tf.train", "--experiment=cvrl_k600",
                           "--print_config"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  import json
  config = json.loads(result.stdout)
  assert config["train"]["global_batch_size"] == 1024
  assert config["derived"]["learning_rate"] == pytest.approx(0.32)
  assert config["train"]["epochs"] == 800 and config["optimizer"]["warmup_epochs"] == 5
  assert config["optimizer"]["name"] == "lars" and config["optimizer"]["weight_decay"] == 1e-6
  assert config["train"]["temperature"] == 0.1
  assert (config["data"]["num_frames"], config["data"]["stride"],
          config["data"]["crop_size"]) == (16, 2, 224)
  assert config["model"]["depth"] == 50 and config["model"]["sync_batch_norm"] is True
  assert config["model"]["head_hidden_sizes"] == [2048, 2048, 2048]
  assert config["model"]["head_output_size"] == 128
  assert config["derived"]["total_steps"] == 285950          # 800 × 366016 / 1024, rounded
  assert config["derived"]["warmup_steps"] == 1787


@pytest.fixture(scope="module")
def four_steps(experiment, tmp_path_factory):
  """A run of 4 steps (checkpoint at 3 and 4); tests copy its workdir before touching it."""
  workdir = str(tmp_path_factory.mktemp("four") / "run")
  return workdir, _train(experiment, workdir, "train.max_steps=4")


def _copy(workdir, tmp_path):
  import shutil
  target = str(tmp_path / "copy")
  shutil.copytree(workdir, target)
  # The manager's state file holds absolute paths: point it at the copy.
  state = os.path.join(target, "checkpoints", "checkpoint")
  with open(state) as f:
    text = f.read().replace(os.path.join(workdir, "checkpoints"),
                            os.path.join(target, "checkpoints"))
  with open(state, "w") as f:
    f.write(text)
  return target


def test_runs_checkpoints_logs_and_resumes(experiment, four_steps, tmp_path):
  source, first = four_steps
  assert "started from random initialisation" in first.stdout
  assert [line.split()[1] for line in first.stdout.splitlines()
          if line.startswith("step ")] == ["2/4", "4/4"]
  assert os.path.exists(os.path.join(source, "config.json"))
  assert glob.glob(os.path.join(source, "summaries", "train", "events.out.tfevents.*"))
  assert tf.train.latest_checkpoint(os.path.join(source, "checkpoints")).endswith("ckpt-4")
  workdir = _copy(source, tmp_path)
  changed = _train(experiment, workdir, "train.global_batch_size=4", check=False)
  assert changed.returncode == 2
  assert "holds a run with another config (train.global_batch_size: 8 -> 4)" in changed.stderr
  second = _train(experiment, workdir, "train.max_steps=6")
  assert "resumed from" in second.stdout and "at step 4" in second.stdout
  assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith("ckpt-6")


def test_resume_after_sigkill_ends_with_the_same_weights(experiment, tmp_path):
  reference = str(tmp_path / "reference")
  _train(experiment, reference)                     # 6 steps, checkpoints at 3 and 6
  killed = str(tmp_path / "killed")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  process = subprocess.Popen(
      [sys.executable, "-m", "cvrl_tf.train", f"--experiment={experiment}",
       f"--workdir={killed}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL, start_new_session=True)
  # A checkpoint counts once the manager's state file names it (written after the data files).
  state = os.path.join(killed, "checkpoints", "checkpoint")
  deadline = time.monotonic() + 300
  while (time.monotonic() < deadline and process.poll() is None
         and not (os.path.exists(state) and "ckpt-3" in open(state).read())):
    time.sleep(0.01)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  assert not os.path.exists(os.path.join(killed, "checkpoints", "ckpt-6.index")), (
      "the kill should land before the end")
  resumed = _train(experiment, killed)
  assert "resumed from" in resumed.stdout
  expected, got = _variables(reference), _variables(killed)
  assert sorted(expected) == sorted(got)
  for name in expected:
    np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_loss_falls_on_a_learnable_task(experiment, tmp_path):
  result = _train(experiment, str(tmp_path / "learn"), "train.epochs=20",
                  "train.log_every_steps=10", "train.steps_per_loop=10",
                  "train.checkpoint_every_steps=100")
  losses = _losses(result.stdout)
  assert len(losses) == 4
  # log(2N - 1) = log(15) per direction at chance: 5.42 for the sum of both.
  assert losses[0] > 4.5
  assert losses[-1] < losses[0] - 0.5, losses


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(experiment, tmp_path):
  # Step 1 sees the random initialisation (finite loss) and takes a 1e30 step; a step soon after
  # is NaN (when exactly depends on the warm-up's first tiny learning rates).
  workdir = str(tmp_path / "nan")
  result = _train(experiment, workdir, "train.max_steps=4", "optimizer.name=sgd",
                  "optimizer.base_learning_rate=1e30", "train.checkpoint_every_steps=1",
                  "train.steps_per_loop=1", "train.log_every_steps=1", check=False)
  assert result.returncode == 1, result.stdout + result.stderr
  import re
  (bad,) = re.findall(r"the loss became NaN or infinite at step (\d+);", result.stderr)
  bad = int(bad)
  # Steps before `bad` logged a finite loss, and with a checkpoint every step the last one kept
  # is the step before.
  assert bad >= 2 and len(_losses(result.stdout)) == bad - 1
  assert all(np.isfinite(_losses(result.stdout)))
  assert "last good checkpoint was saved: " in result.stderr and f"ckpt-{bad - 1}" in result.stderr
  assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith(f"ckpt-{bad - 1}")


def test_config_errors_name_the_key_and_the_choices(experiment, tmp_path):
  unknown = _train(experiment, str(tmp_path / "x"), "train.batch_size=4", check=False)
  assert unknown.returncode == 2
  assert "unknown config key 'train.batch_size'" in unknown.stderr
  assert "train.global_batch_size" in unknown.stderr
  bad = _train(experiment, str(tmp_path / "x"), "optimizer.name=adam", check=False)
  assert bad.returncode == 2 and "expected one of lars, sgd" in bad.stderr
  missing = subprocess.run([sys.executable, "-m", "cvrl_tf.train", "--experiment=nope",
                            "--print_config"], capture_output=True, text=True, cwd=REPO,
                           timeout=120)
  assert missing.returncode == 2 and "available: " in missing.stderr
  assert "cvrl_k600" in missing.stderr


def test_init_checkpoint_that_does_not_match_fails_loudly(experiment, tmp_path):
  result = _train(experiment, str(tmp_path / "init"),
                  f"train.init_checkpoint={tmp_path / 'nothing_here'}", check=False)
  assert result.returncode == 1
  assert "nothing_here" in result.stderr


def test_init_checkpoint_from_a_pretraining_run(experiment, four_steps, tmp_path):
  prefix = tf.train.latest_checkpoint(os.path.join(four_steps[0], "checkpoints"))
  # In mixed_bfloat16 too: the checkpoint's float32 variables load into the bf16-compute model.
  result = _train(experiment, str(tmp_path / "target"), "train.max_steps=2",
                  f"train.init_checkpoint={prefix}", "train.mixed_precision=mixed_bfloat16")
  assert "restored" in result.stdout and "backbone variables" in result.stdout
  (loss,) = _losses(result.stdout)
  assert np.isfinite(loss) and 1.0 < loss < 20.0


MIRRORED_SCRIPT = '''
import json, sys, tempfile
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from cvrl_tf import config as cfg, pretrain
results = {}
for name in ("one", "two"):
  keras.utils.set_random_seed(1)
  config = cfg.load_experiment(sys.argv[1], ["train.max_steps=1"])
  strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if name == "two"
              else tf.distribute.OneDeviceStrategy("/cpu:0"))
  trainer = pretrain.Trainer(config, tempfile.mkdtemp(), strategy, log=lambda _: None)
  values = trainer._loop(iter(trainer.dataset(0)), tf.constant(1)).numpy()
  results[name] = {"values": values.tolist(),
                   "weights": [v.numpy().tolist() for v in trainer.model.trainable_variables]}
print(json.dumps(results))
'''


def test_two_replicas_train_like_one_replica_on_the_whole_batch(experiment):
  # Two logical CPU devices make a real MirroredStrategy: per-replica batches of 4 against one
  # replica with the global batch of 8. The data, SyncBN statistics, gathered negatives and the
  # summed gradients must make the step the same.
  import json
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, experiment], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  runs = json.loads(result.stdout.strip().splitlines()[-1])
  one, two = np.array(runs["one"]["values"]), np.array(runs["two"]["values"])
  # [loss, regularization, contrast accuracy, contrast entropy, gradient norm]
  np.testing.assert_allclose(two[:4], one[:4], rtol=1e-5, atol=1e-6)
  # The norm sums ~10^4 squared gradients of order 1: float32 summation order alone moves it by
  # ~1e-5 relative (measured 1.5e-5).
  np.testing.assert_allclose(two[4], one[4], rtol=5e-5)
  for a, b in zip(runs["one"]["weights"], runs["two"]["weights"]):
    np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_workers_on_localhost_match_the_single_process_run(experiment, tmp_path):
  # A real MultiWorkerMirroredStrategy: two processes, TF_CONFIG, collectives over 127.0.0.1.
  # With input_sharding=replicate both hosts see the single-process global batches.
  import json
  # A gentle learning rate: at the tiny experiment's own (0.08) the loss swings by 30% a step,
  # which turns float32 rounding differences into visible loss differences within 4 steps.
  overrides = ["train.max_steps=4", "train.steps_per_loop=1", "train.log_every_steps=1",
               "train.input_sharding=replicate", "train.checkpoint_every_steps=2",
               "optimizer.base_learning_rate=1.28"]
  single = _train(experiment, str(tmp_path / "single"), *overrides)
  ports = free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
  workers = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                  "index": index}}))
    workers.append(subprocess.Popen(
        [sys.executable, "-m", "cvrl_tf.train", f"--experiment={experiment}",
         f"--workdir={tmp_path / 'multi'}", *[f"--config={o}" for o in overrides]],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = []
  try:
    for worker in workers:
      stdout, stderr = worker.communicate(timeout=600)
      outputs.append((worker.returncode, stdout, stderr))
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
  for code, stdout, stderr in outputs:
    assert code == 0, stdout + stderr[-3000:]
  chief = outputs[0][1]
  assert "on 2 replica(s) (CollectiveAllReduceStrategy)" in chief  # MultiWorkerMirrored
  assert len(_losses(chief)) == 4
  # Printed to 4 decimals. The first step agrees to the printed digit; after it, float32
  # differences (reductions over 2 replicas instead of 1; kernels chosen by shape, per-replica
  # batch 4 against 8) grow through this loss's large swings, to ~1e-4 relative by step 4
  # (measured 1.2e-4 with oneDNN on; this deterministic experiment runs with it off).
  np.testing.assert_allclose(_losses(chief)[0], _losses(single.stdout)[0], atol=1.5e-4)
  np.testing.assert_allclose(_losses(chief), _losses(single.stdout), rtol=5e-4)
  assert tf.train.latest_checkpoint(str(tmp_path / "multi" / "checkpoints")).endswith("ckpt-4")
  assert not os.path.exists(tmp_path / "multi" / "workers")   # scratch copies stay out
