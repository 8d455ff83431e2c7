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

from conftest import deterministic_run_env
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
      model=cfg.ModelConfig(depth=10, stem_filters=4, stage_filters=(4, 8, 8, 8),
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


def _train(experiment, workdir, *overrides, check=True, reexec=False, **kwargs):
  """`python -m cvrl_tf.train` on `experiment`; reexec: leave oneDNN to the entry point, which
  then re-executes itself to run the deterministic experiment with oneDNN off."""
  env = deterministic_run_env()
  if reexec:
    del env["TF_ENABLE_ONEDNN_OPTS"]
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


def _state(workdir):
  """Every variable of the run's latest checkpoint: model, optimizer, objective state."""
  prefix = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(prefix)
          if not name.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"))}


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
  # The entry point's own way to a deterministic run (re-executing with oneDNN off) is this
  # run's; the others set oneDNN off themselves (one TensorFlow import each instead of two).
  return workdir, _train(experiment, workdir, "train.max_steps=4", reexec=True)


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


# The ρ-SSL objectives keep state beside the weights. MoCo has every kind: a momentum network
# (BYOL's target is the same class), a queue written through merge_call (16 keys a step into 32
# slots: it wraps around before the kill), and checkpointed objects beside the backbone and head
# (BYOL's predictor and SwAV's prototypes are checkpointed layers like the head). The interrupted
# runs below are MoCo's: what resumes MoCo exactly resumes SimCLR, whose state is a subset.
OBJECTIVES = {"simclr": [],
              "moco": ["objective.name=moco", "objective.queue_size=32", "objective.momentum=0.9"]}


@pytest.fixture(scope="module")
def six_steps(experiment, tmp_path_factory):
  """The workdir of an uninterrupted MoCo run of the whole tiny experiment: 6 steps, checkpoints
  at 3 and 6 (the reference of the interrupted runs)."""
  workdir = str(tmp_path_factory.mktemp("six") / "reference")
  _train(experiment, workdir, *OBJECTIVES["moco"])
  return workdir


def test_resume_after_sigkill_ends_with_the_same_state(experiment, six_steps, tmp_path):
  overrides = OBJECTIVES["moco"]
  reference = six_steps
  killed = str(tmp_path / "killed")
  env = deterministic_run_env()
  process = subprocess.Popen(
      [sys.executable, "-m", "cvrl_tf.train", f"--experiment={experiment}",
       f"--workdir={killed}", *[f"--config={o}" for o in overrides]], cwd=REPO, env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
  resumed = _train(experiment, killed, *overrides)
  assert "resumed from" in resumed.stdout
  expected, got = _state(reference), _state(killed)
  assert sorted(expected) == sorted(got)
  held = ("momentum_backbone/", "momentum_head/", "queue/", "queue_pointer/")
  assert all(any(name.startswith(prefix) for name in got) for prefix in held), sorted(got)
  for name in expected:
    np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
  _assert_online_network_loads(killed)


def _assert_online_network_loads(workdir):
  """Export (and --init_checkpoint, the same strict backbone loader) read the online backbone and
  head of any objective's run, not its momentum copy or other state."""
  from cvrl_tf import config as cfg
  from cvrl_tf import export
  config = cfg.read_workdir_config(workdir)
  prefix = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  modules = export.build_modules(config)
  export.restore_modules(modules, prefix)
  # The same objects read through the checkpoint's object graph.
  online, momentum = export.build_modules(config), export.build_modules(config)
  tf.train.Checkpoint(backbone=online["backbone"], head=online["head"]).read(
      prefix).expect_partial()
  loaded = modules["backbone"].weights + modules["head"].weights
  for got, expected in zip(loaded, online["backbone"].weights + online["head"].weights):
    np.testing.assert_array_equal(got.numpy(), expected.numpy(), err_msg=got.path)
  tf.train.Checkpoint(momentum_backbone=momentum["backbone"]).read(prefix).expect_partial()
  assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(modules["backbone"].weights, momentum["backbone"].weights))


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
  # The command's contract once (exit status 2, the message on stderr, nothing written), then
  # the messages of cvrl_tf.config, which the command prints as they are.
  from cvrl_tf import config as cfg
  unknown = _train(experiment, str(tmp_path / "x"), "train.batch_size=4", check=False)
  assert unknown.returncode == 2
  assert "unknown config key 'train.batch_size'" in unknown.stderr
  assert "train.global_batch_size" in unknown.stderr
  assert not os.path.exists(tmp_path / "x")
  with pytest.raises(cfg.ConfigError, match="expected one of lars, sgd"):
    cfg.load_experiment(experiment, ["optimizer.name=adam"])
  with pytest.raises(cfg.ConfigError, match="available: .*cvrl_k600"):
    cfg.load_experiment("nope", [])


def test_init_checkpoint_that_does_not_match_fails_loudly(experiment, tmp_path):
  result = _train(experiment, str(tmp_path / "init"),
                  f"train.init_checkpoint={tmp_path / 'nothing_here'}", check=False)
  # Caught by the checks before training (cvrl_tf.preflight): a bad input, exit code 2.
  assert result.returncode == 2, result.stderr[-3000:]
  assert "nothing_here" in result.stderr
  assert not os.path.exists(tmp_path / "init")


def test_init_checkpoint_from_a_pretraining_run(experiment, four_steps, tmp_path):
  prefix = tf.train.latest_checkpoint(os.path.join(four_steps[0], "checkpoints"))
  # In mixed_bfloat16 too: the checkpoint's float32 variables load into the bf16-compute model.
  result = _train(experiment, str(tmp_path / "target"), "train.max_steps=2",
                  f"train.init_checkpoint={prefix}", "train.mixed_precision=mixed_bfloat16")
  assert "restored" in result.stdout and "backbone variables" in result.stdout
  (loss,) = _losses(result.stdout)
  assert np.isfinite(loss) and 1.0 < loss < 20.0


# ---- resuming, preemption and multi-host safety


def _tiny_data(experiment, **reader):
  """The tiny experiment's pretraining data. augment_in_step: views only cropped and flipped, the
  same pipeline at a tenth of the tracing time of the colour chain."""
  from cvrl_tf import input_pipeline
  pattern = os.path.join(os.path.dirname(experiment), "train-*.tfrecord")
  return input_pipeline.PretrainDataConfig(
      reader=input_pipeline.ReaderConfig(file_pattern=pattern, shuffle_buffer_size=16,
                                         cycle_length=2, seed=5, **reader),
      num_frames=4, stride=2, crop_size=32, use_xla=False, augment_in_step=True)


def _assert_same_batches(got, expected):
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    assert sorted(a) == sorted(b)
    for key in a:
      np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


@pytest.mark.parametrize("skip_corrupt", [False, True])
def test_skip_batches_is_skip_without_decoding(experiment, skip_corrupt):
  # A run resumed inside a data segment passes over the batches its steps consumed; the rest of
  # the stream (records and their seeds) must be the uninterrupted one's.
  from cvrl_tf import input_pipeline
  data = _tiny_data(experiment, per_replica_batch_size=3, deterministic=True,
                    skip_corrupt=skip_corrupt)
  expected = list(input_pipeline.pretrain_dataset(data).skip(3).take(2).as_numpy_iterator())
  got = list(input_pipeline.pretrain_dataset(data, skip_batches=3).take(2)
             .as_numpy_iterator())
  _assert_same_batches(got, expected)
  labelled = input_pipeline.ClassificationTrainDataConfig(
      reader=data.reader, num_frames=4, stride=2, crop_size=32, use_xla=False)
  expected = list(input_pipeline.classification_train_dataset(labelled).skip(2).take(2)
                  .as_numpy_iterator())
  got = list(input_pipeline.classification_train_dataset(labelled, skip_batches=2).take(2)
             .as_numpy_iterator())
  _assert_same_batches(got, expected)


def _determinism_of_parallel_ops(dataset) -> list:
  """The `deterministic` attribute of every parallel interleave / map of a tf.data graph."""
  graph = tf.compat.v1.GraphDef()
  graph.ParseFromString(dataset._as_serialized_graph().numpy())
  nodes = list(graph.node) + [node for function in graph.library.function
                              for node in function.node_def]
  return [node.attr["deterministic"].s.decode() for node in nodes
          if node.op.startswith(("ParallelInterleaveDataset", "ParallelMapDataset"))]


def test_replicated_input_is_order_stable_and_split_by_rows(experiment):
  # input_sharding=replicate: every host builds the same global batches and keeps its rows.
  # With deterministic=false a sloppy interleave or map would let hosts reorder records.
  from cvrl_tf import input_pipeline
  from cvrl_tf import pretrain
  data = _tiny_data(experiment, per_replica_batch_size=2, deterministic=False)

  def host(index, hosts, skip_steps=0):  # 4 replicas in all: global batch 8
    context = tf.distribute.InputContext(num_input_pipelines=hosts, input_pipeline_id=index,
                                         num_replicas_in_sync=4)
    return pretrain.replicated_rows(data, context, skip_steps)

  # 1) The files-sharded pipeline of this run is sloppy; the replicated one is not.
  assert "false" in _determinism_of_parallel_ops(input_pipeline.pretrain_dataset(data))
  hosts = [host(0, 2), host(1, 2)]
  modes = _determinism_of_parallel_ops(hosts[0])
  assert modes and "false" not in modes, modes
  assert hosts[0].options().deterministic is True
  # 2) One host's 4 replica batches of a step are the two hosts' 2 + 2.
  single = list(host(0, 1).take(8).as_numpy_iterator())                 # 2 steps
  split = [list(rows.take(4).as_numpy_iterator()) for rows in hosts]
  _assert_same_batches(split[0][:2] + split[1][:2] + split[0][2:] + split[1][2:], single)
  # 3) Skipping a step passes over one global batch.
  _assert_same_batches(list(host(1, 2, skip_steps=1).take(2).as_numpy_iterator()),
                       split[1][2:])


def test_workers_that_restored_different_steps_are_named():
  from cvrl_tf import loop
  loop.check_same_step(4, (4, 4), "gs://b/run/checkpoints", "gs://b/run/checkpoints/ckpt-4")
  with pytest.raises(loop.WorkersDisagreeError) as error:
    loop.check_same_step(0, (0, 4), "/local/run/checkpoints", None)
  message = str(error.value)
  assert "workers restored different steps (0 and 4)" in message
  assert "this worker found no checkpoint in '/local/run/checkpoints' (step 0)" in message
  assert "not shared" in message or "shared storage" in message


@pytest.mark.parametrize("name, moved", [
    ("cvrl_k600", ["data.reader.file_pattern"]),
    ("cvrl_k600_linear_eval", ["train_data.reader.file_pattern",
                               "eval_data.reader.file_pattern", "evaluation.label_map"]),
    ("cvrl_k600_knn", ["bank_data.reader.file_pattern", "eval_data.reader.file_pattern",
                       "evaluation.label_map"]),
])
def test_a_run_resumes_after_its_data_moved(name, moved):
  # The workdir is on a non-local file system: config.json is read through tf.io.gfile.
  from cvrl_tf import config as cfg
  from cvrl_tf import storage
  from cvrl_tf import train
  workdir = f"ram://resumable/{name}"
  storage.atomic_write_text(storage.join(workdir, "config.json"),
                            cfg.to_json(cfg.load_experiment(name, [])))
  overrides = [f"{key}=gs://new-bucket/{key}" for key in moved]
  train.check_resumable(workdir, cfg.to_json(cfg.load_experiment(name, overrides)))
  changed = cfg.to_json(cfg.load_experiment(name, overrides + ["train.global_batch_size=512"]))
  with pytest.raises(ValueError, match=r"\(train.global_batch_size: 1024 -> 512\)"):
    train.check_resumable(workdir, changed)
  train.check_resumable("ram://resumable/new_run", changed)   # no config.json: a new run


def test_every_data_group_may_move_on_resume():
  import dataclasses
  from cvrl_tf import config as cfg
  from cvrl_tf import train
  groups = {field.name for kind in cfg.ANY_EXPERIMENT for field in dataclasses.fields(kind)
            if field.default_factory is not dataclasses.MISSING
            and hasattr(field.default_factory(), "reader")}
  assert groups == {"data", "train_data", "eval_data", "bank_data"}
  for group in groups:
    assert f"{group}.reader.file_pattern" in train.RESUMABLE_CHANGES


def test_sigterm_saves_mid_segment_and_the_restarted_run_ends_with_the_same_weights(
    experiment, six_steps, tmp_path):
  # Sent once the checkpoint at step 3 is saved, the SIGTERM stops the run after its next call,
  # at step 4: inside the data segment [3, 6), so the restarted run must pick up that segment's
  # pipeline where the stopped run left it. On a loaded machine the signal can land before the
  # check that follows the step-3 save: the run then stops at 3, a segment boundary, and must
  # still resume exactly. (steps_per_loop is not a free choice here: one step per call instead
  # of two moves a BN statistic by an ulp.) MoCo, as six_steps is.
  overrides = OBJECTIVES["moco"]
  reference = six_steps
  stopped = str(tmp_path / "stopped")
  env = deterministic_run_env()
  with open(tmp_path / "stderr.txt", "w") as stderr:
    process = subprocess.Popen(
        [sys.executable, "-m", "cvrl_tf.train", f"--experiment={experiment}",
         f"--workdir={stopped}", *[f"--config={o}" for o in overrides]],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
      lines = []
      for line in process.stdout:
        lines.append(line)
        if line.startswith("saved checkpoint at step 3"):
          process.send_signal(signal.SIGTERM)   # what GKE, Slurm and a TPU VM's shutdown send
          break
      stdout, _ = process.communicate(timeout=300)
    finally:
      if process.poll() is None:
        process.kill()
  stdout = "".join(lines) + stdout
  assert process.returncode == 143, stdout + (tmp_path / "stderr.txt").read_text()[-3000:]
  import re
  (step,) = re.findall(r"preempted: stopped on request \(SIGTERM\) at step (\d+); saved ",
                       stdout)
  step = int(step)
  assert step in (3, 4), stdout
  assert f"saved checkpoint at step {step}" in stdout
  assert tf.train.latest_checkpoint(os.path.join(stopped, "checkpoints")).endswith(f"ckpt-{step}")
  resumed = _train(experiment, stopped, *overrides)
  assert f"at step {step}" in resumed.stdout and "step 6/6" in resumed.stdout
  expected, got = _variables(reference), _variables(stopped)
  assert sorted(expected) == sorted(got)
  for name in expected:
    np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
