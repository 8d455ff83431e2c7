"""Pretraining across replicas and workers: a real MirroredStrategy on two logical CPU devices and
MultiWorkerMirroredStrategy in two processes on 127.0.0.1 (test_train.py's tiny experiment; a file
of its own so that pytest-xdist runs it beside test_train.py)."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import deterministic_run_env
from conftest import free_ports
from conftest import python_c
from test_train import OBJECTIVES
from test_train import REPO
from test_train import _copy
from test_train import _losses
from test_train import _state
from test_train import _train
from test_train import experiment  # noqa: F401  (the fixture: tiny records and experiment)


LOOP_SCRIPT = """
import dataclasses, functools, json, sys, tempfile, threading
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
sys.path.insert(0, "tests")
from test_objectives import tiny_config, views
from cvrl_tf import pretrain

# strategy.reduce on CPUs (MirroredStrategy reduces to a CPU through ReductionToOneDevice; the
# replica steps' own all-reduces go through collectives), recorded while tracing: (inside a
# replica step, graph, shape).
reductions, inside, lock = [], [0], threading.Lock()
reduce_implementation = tf.distribute.ReductionToOneDevice.reduce_implementation
def spy(self, reduce_op, value, *args, **kwargs):
  shape = value.values[0].shape.as_list()
  reductions.append((inside[0] > 0, tf.compat.v1.get_default_graph().name, shape))
  return reduce_implementation(self, reduce_op, value, *args, **kwargs)
tf.distribute.ReductionToOneDevice.reduce_implementation = spy

def counted(step):
  \"\"\"`step`, marked as inside a replica step while any replica (thread) runs it.\"\"\"
  @tf.autograph.experimental.do_not_convert   # its source is not in a file; the step needs none
  def run(*args, **kwargs):
    with lock:
      inside[0] += 1
    try:
      return step(*args, **kwargs)
    finally:
      with lock:
        inside[0] -= 1
  return run

# train.steps_per_loop = 10. A gentle learning rate: the later steps compare the earlier ones'
# updates, and float32 differences of the gradients (2 replicas against 1) grow with the step.
config = tiny_config("simclr", num_clips=2, batch=8)
config = dataclasses.replace(config, optimizer=dataclasses.replace(
    config.optimizer, base_learning_rate=0.05))
batches = [views(config, seed) for seed in range(7)]
# The second call's third step (global batch 5) sees NaN clips on replica 1 only.
batches[5] = {k: tf.concat([v[:4], v[4:] * np.nan], axis=0) for k, v in batches[5].items()}

def make_trainer(strategy):
  keras.utils.set_random_seed(1)
  trainer = pretrain.Trainer(config, tempfile.mkdtemp(), strategy, log=lambda _: None)
  trainer.restore()
  dataset = tf.data.Dataset.from_tensor_slices(
      {k: tf.concat([b[k] for b in batches], axis=0) for k in batches[0]}).batch(8)
  return trainer, iter(strategy.experimental_distribute_dataset(dataset))

results = {"calls": [], "reference": []}
trainer, iterator = make_trainer(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
trainer._replica_steps = {flag: counted(step) for flag, step in trainer._replica_steps.items()}
for num_steps in (3, 4):
  values, finite_steps = trainer._loop(iterator, tf.constant(num_steps))
  results["calls"].append({"values": values.numpy().tolist(), "finite_steps": int(finite_steps),
                           "step": int(trainer.optimizer.iterations.numpy())})
  if num_steps == 3:
    results["weights"] = [v.numpy().tolist() for v in trainer.variables]
results["loop"] = list(reductions)

# The reference: one replica on the whole batch, each step on its own (nothing to reduce).
reference, iterator = make_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"))
@tf.function
def reference_step(iterator, with_gradient_norm):
  step = functools.partial(reference.replica_step, with_gradient_norm=with_gradient_norm)
  return tf.stack(reference.strategy.run(step, args=(next(iterator),)))
for num_steps in (3, 4):
  results["reference"].append(
      [reference_step(iterator, i == num_steps - 1).numpy().tolist() for i in range(num_steps)])
  if num_steps == 3:
    results["reference_weights"] = [v.numpy().tolist() for v in reference.variables]
print(json.dumps(results))
"""


def test_two_replicas_train_like_one_and_the_loop_reduces_once_per_call():
  # Two logical CPU devices make a real MirroredStrategy: per-replica batches of 4 against one
  # replica with the global batch of 8, step by step. SyncBN statistics, gathered negatives and
  # summed gradients must make the steps the same. Each replica keeps its values of every step
  # on its device; the loop sums them over the replicas once per call (one [steps_per_loop,
  # values] tensor), where it used to reduce every value of every step on its own: the same
  # means, last gradient norm and weights, and the exact first non-finite step when only one
  # replica's clips are NaN. (Real records split over replicas: test_train.py's
  # test_replicated_input_is_order_stable_and_split_by_rows.)
  import json
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([*python_c(LOOP_SCRIPT)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  runs = json.loads(result.stdout.strip().splitlines()[-1])
  # [loss, regularization, accuracy, entropy, spread, gradient norm]
  values = len(runs["reference"][0][0])
  assert values == 6
  # 1) One reduction per call outside the replica steps (traced once for both calls), of one
  #    [steps_per_loop, values] tensor, after the loop (not in the while body, where it would
  #    run every step).
  loop_outside = [(graph, shape) for inside, graph, shape in runs["loop"] if not inside]
  assert len(loop_outside) == 1, loop_outside
  ((graph, shape),) = loop_outside
  assert shape == [10, values] and "while" not in graph, loop_outside
  # 2) The first call's values: the means of 3 steps and the last step's norm. The norm sums
  #    ~10^4 squared gradients through SyncBN over a few 1×1 maps of res5: float32 summation
  #    order alone moves it by up to ~1e-3 relative; a share or gather error moves it by factors.
  first, second = runs["calls"]
  reference = np.array(runs["reference"][0])                                 # [3, values]
  np.testing.assert_allclose(first["values"][:-1], reference[:, :-1].mean(axis=0), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(first["values"][-1], reference[-1, -1], rtol=2e-3)
  assert first["finite_steps"] == 3 and first["step"] == 3
  # The variables after three steps of ~1e-2: the same float32 noise moves them by ~1e-4.
  for a, b in zip(runs["weights"], runs["reference_weights"]):
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-3, atol=3e-4)
  # 3) The second call: global batch 5, its third step, is the first non-finite one (step 6).
  reference = np.array(runs["reference"][1])                                 # [4, values]
  assert np.isfinite(reference[:2]).all() and not np.isfinite(reference[2, :-1].sum())
  assert second["finite_steps"] == 2 and second["step"] == 7


# The two-worker runs' recipe. A gentle learning rate: at the tiny experiment's own (0.08) the
# loss swings by 30% a step, which turns float32 rounding differences into visible loss
# differences within 4 steps. MoCo: everything SimCLR's step does across workers (gathered
# projections, SyncBN, summed gradients), and its keys are gathered from both workers into the
# queue, and the momentum network and queue are updated on each worker's copy.
WORKER_RUN = ["train.steps_per_loop=1", "train.log_every_steps=1",
              "train.input_sharding=replicate", "train.checkpoint_every_steps=2",
              "optimizer.base_learning_rate=1.28", *OBJECTIVES["moco"]]


@pytest.fixture(scope="module")
def single(experiment, tmp_path_factory):
  """The single-process run of WORKER_RUN to step 4 (checkpoints at 2 and 4): the reference of
  the two-worker run, and a run for workers to resume; tests copy it before touching it."""
  workdir = str(tmp_path_factory.mktemp("single") / "run")
  return workdir, _train(experiment, workdir, "train.max_steps=4", *WORKER_RUN)


@pytest.mark.slow
def test_two_workers_on_localhost_match_the_single_process_run(experiment, single, tmp_path):
  # A real MultiWorkerMirroredStrategy: two processes, TF_CONFIG, collectives over 127.0.0.1.
  # With input_sharding=replicate both hosts see the single-process global batches.
  overrides = ["train.max_steps=4", *WORKER_RUN]
  reference_workdir, reference = single
  workers = _start_workers(experiment, [str(tmp_path / "multi")] * 2, overrides, tmp_path)
  outputs = _wait(workers, timeout=600)
  for code, stdout, stderr in outputs:
    assert code == 0, stdout + stderr[-3000:]
  chief = outputs[0][1]
  assert "on 2 replica(s) (CollectiveAllReduceStrategy)" in chief  # MultiWorkerMirrored
  assert len(_losses(chief)) == 4
  # Printed to 4 decimals. The first step agrees to the printed digit; after it, float32
  # differences (reductions over 2 replicas instead of 1; kernels chosen by shape, per-replica
  # batch 4 against 8) grow through this loss's large swings, to ~1e-4 relative by step 4
  # (measured 1.2e-4 with oneDNN on; this deterministic experiment runs with it off).
  np.testing.assert_allclose(_losses(chief)[0], _losses(reference.stdout)[0], atol=1.5e-4)
  np.testing.assert_allclose(_losses(chief), _losses(reference.stdout), rtol=5e-4)
  assert tf.train.latest_checkpoint(str(tmp_path / "multi" / "checkpoints")).endswith("ckpt-4")
  # The queue holds both workers' keys in the single process's order (4 steps × 16 keys).
  expected, got = _state(reference_workdir), _state(str(tmp_path / "multi"))
  queue = [name for name in expected if name.startswith(("queue/", "queue_pointer/"))]
  assert len(queue) == 2
  assert [int(got[name]) for name in queue if name.startswith("queue_pointer/")] == [0]  # 64 % 32
  for name in queue:
    np.testing.assert_allclose(got[name], expected[name], rtol=2e-3, atol=2e-4, err_msg=name)
  assert not os.path.exists(tmp_path / "multi" / "workers")   # scratch copies stay out
  assert os.listdir(tmp_path / "tmp") == []   # and are deleted, folders included


def test_min_max_over_replicas_of_two_mirrored_replicas():
  script = '''
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cvrl_tf import runtime
for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
  min_max = runtime.min_max_over_replicas(strategy)
  print(min_max(7), min_max(0))
'''
  result = subprocess.run([*python_c(script)], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split("\n")[:2] == ["(7, 7) (0, 0)", "(7, 7) (0, 0)"]


class _NonChief:
  """Stands in for a MultiWorkerMirroredStrategy on worker 1 of 2 (for runtime.is_chief)."""

  class cluster_resolver:
    task_type, task_id = "worker", 1

    @staticmethod
    def cluster_spec():
      return tf.train.ClusterSpec({"worker": ["localhost:1", "localhost:2"]})


def test_a_non_chief_saves_into_scratch_that_is_removed_folder_included(tmp_path, monkeypatch):
  import tempfile
  from cvrl_tf import runtime
  scratch_root = tmp_path / "tmp"
  scratch_root.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
  checkpoint = tf.train.Checkpoint(v=tf.Variable(3.0))
  manager = tf.train.CheckpointManager(checkpoint, str(tmp_path / "run" / "checkpoints"),
                                       max_to_keep=2)
  runtime.save_checkpoint(manager, 5, _NonChief())
  assert not (tmp_path / "run").exists()        # the run's directory is the chief's
  assert list(scratch_root.iterdir()) == []     # the scratch copy is gone, folder included
  assert int(checkpoint.save_counter.numpy()) == 1   # saved as the chief does (collectively)
  runtime.save_checkpoint(manager, 5, tf.distribute.get_strategy())
  assert manager.latest_checkpoint.endswith("ckpt-5")


def _start_workers(experiment, workdirs, overrides, tmp_path):
  """Two MultiWorkerMirrored workers on 127.0.0.1; their scratch files go to tmp_path/tmp."""
  import json
  ports = free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
  (tmp_path / "tmp").mkdir(exist_ok=True)
  workers = []
  for index, workdir in enumerate(workdirs):
    env = deterministic_run_env(
        TMPDIR=str(tmp_path / "tmp"),
        TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
    # Into files, not pipes: a worker blocked on a full pipe that nobody reads yet (the test
    # waits for worker 0 first) stalls the collectives of both.
    logs = [open(tmp_path / f"worker{index}.{kind}", "w+") for kind in ("out", "err")]
    worker = subprocess.Popen(
        [sys.executable, "-m", "cvrl_tf.train", f"--experiment={experiment}",
         f"--workdir={workdir}", *[f"--config={o}" for o in overrides]],
        cwd=REPO, env=env, stdout=logs[0], stderr=logs[1], text=True)
    worker.logs = logs
    workers.append(worker)
  return workers


def _wait(workers, timeout):
  """[(exit code, stdout, stderr)] of each worker."""
  outputs = []
  deadline = time.monotonic() + timeout
  try:
    for worker in workers:
      worker.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
        worker.wait()
  for worker in workers:
    texts = []
    for log in worker.logs:
      log.seek(0)
      texts.append(log.read())
      log.close()
    outputs.append((worker.returncode, *texts))
  return outputs


@pytest.mark.slow
def test_workers_that_restore_different_steps_fail_instead_of_hanging(experiment, single,
                                                                      tmp_path):
  # Worker 0 sees the run's checkpoint at step 4; worker 1's workdir is another (empty) folder,
  # as when a workdir is a local path on each host.
  chief = _copy(single[0], tmp_path)
  workers = _start_workers(experiment, [chief, str(tmp_path / "elsewhere")],
                           ["train.max_steps=6", *WORKER_RUN], tmp_path)
  outputs = _wait(workers, timeout=300)
  for code, stdout, stderr in outputs:
    assert code == 1, stdout + stderr[-3000:]
    assert "error: workers restored different steps (0 and 4)" in stderr, stderr[-3000:]
  assert "this worker restored " in outputs[0][2] and "ckpt-4" in outputs[0][2]
  assert "this worker found no checkpoint" in outputs[1][2]
  assert tf.train.latest_checkpoint(os.path.join(chief, "checkpoints")).endswith("ckpt-4")
