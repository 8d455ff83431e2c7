"""The objectives' state and steps: the momentum schedule and EMA, MoCo's queue, SwAV's prototypes,
and one replica against two (MirroredStrategy on two logical CPUs) for every objective."""

import json
import math
import os
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import python_c
from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline
from cvrl_tf import pretrain
from cvrl_tf.objectives import moco
from cvrl_tf.objectives import momentum
from cvrl_tf.objectives import swav

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(objective: str, num_clips: int = 2, batch: int = 8, **objective_fields):
  """A few-thousand-parameter pretraining run on 4 × 16² clips; 4 steps an epoch."""
  fields = dict(name=objective, momentum=0.9, queue_size=64, predictor_hidden_sizes=(8,),
                num_prototypes=6, freeze_prototypes_epochs=1.0)
  fields.update(objective_fields)
  return cfg.ExperimentConfig(
      data=input_pipeline.PretrainDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern="unused"), num_frames=4, stride=1,
          crop_size=16, num_clips=num_clips, use_xla=False),
      model=cfg.ModelConfig(depth=10, stem_filters=4, stage_filters=(4, 4, 8, 8),
                            sync_batch_norm=True, head_hidden_sizes=(8,), head_output_size=4),
      objective=cfg.ObjectiveConfig(**fields),
      optimizer=cfg.OptimizerConfig(name="lars", base_learning_rate=1.0, reference_batch_size=8,
                                    warmup_epochs=0),
      train=cfg.TrainConfig(global_batch_size=batch, epochs=10, num_train_examples=4 * batch,
                            temperature=0.2, seed=3))


def views(config, seed: int = 0) -> dict:
  """Random clips {"view_k": [B, T, S, S, 3]} in [0, 1]."""
  rng = np.random.default_rng(seed)
  data, batch = config.data, config.train.global_batch_size
  shape = (batch, data.num_frames, data.crop_size, data.crop_size, 3)
  return {f"view_{k}": tf.constant(rng.uniform(0, 1, shape), tf.float32)
          for k in range(1, data.num_clips + 1)}


def make_trainer(config, tmp_path):
  # The same initial weights whatever ran before in this process (xdist hands files to workers
  # in no fixed order): an unlucky draw of this 8-unit head gave a clip whose hidden ReLUs were
  # all zero, a zero key, and a NaN in the test's own normalisation.
  keras.utils.set_random_seed(config.train.seed)
  trainer = pretrain.Trainer(config, str(tmp_path), tf.distribute.get_strategy(),
                             log=lambda _: None)
  trainer.restore()
  step = tf.function(lambda features: trainer.replica_step(features, False))
  return trainer, step


# ---- the momentum encoder


def test_momentum_follows_the_cosine_from_m0_to_one():
  m0, total = 0.994, 1000
  assert float(momentum.momentum_at(0, total, m0)) == pytest.approx(m0, abs=1e-7)
  # Half-way: 1 − (1 − m0)·(cos(π/2) + 1)/2 = 1 − 0.003.
  assert float(momentum.momentum_at(500, total, m0)) == pytest.approx(0.997, abs=1e-7)
  # A quarter: 1 − 0.006·(1 + √2/2)/2 = 0.99487868.
  assert float(momentum.momentum_at(250, total, m0)) == pytest.approx(
      1 - 0.006 * (1 + math.sqrt(0.5)) / 2, abs=1e-7)
  assert float(momentum.momentum_at(total, total, m0)) == 1.0
  assert float(momentum.momentum_at(3 * total, total, m0)) == 1.0   # max_steps past the schedule


def _assert_ema(pairs, before, m):
  changed = 0
  for (target, source), old in zip(pairs, before):
    np.testing.assert_allclose(target.numpy(), m * old + (1 - m) * source.numpy(), rtol=1e-6,
                               atol=1e-7, err_msg=source.path)
    changed += not np.array_equal(target.numpy(), old)
  assert changed > len(pairs) // 2


# ---- MoCo's queue


def test_enqueue_is_fifo_and_wraps_around():
  queue = tf.zeros([5, 2])
  keys = tf.constant([[1., 1.], [2., 2.], [3., 3.]])
  queue, pointer = moco.enqueue(queue, tf.constant(3, tf.int64), keys)
  np.testing.assert_array_equal(queue.numpy()[:, 0], [3, 0, 0, 1, 2])
  assert int(pointer) == 1
  queue, pointer = moco.enqueue(queue, pointer, tf.constant([[4., 4.], [5., 5.]]))
  np.testing.assert_array_equal(queue.numpy()[:, 0], [3, 4, 5, 1, 2])
  assert int(pointer) == 3
  # The oldest entries go first: the next key overwrites 1, the one after it 2.
  queue, pointer = moco.enqueue(queue, pointer, tf.constant([[6., 6.], [7., 7.]]))
  np.testing.assert_array_equal(queue.numpy()[:, 0], [3, 4, 5, 6, 7])
  assert int(pointer) == 0


def test_moco_step_updates_the_momentum_network_and_the_queue(tmp_path):
  # BYOL's momentum network is the same MomentumEncoder (its steps are checked under two replicas
  # below). One trainer for both checks: tracing the step is most of the time.
  config = tiny_config("moco", num_clips=3, batch=4, queue_size=30)
  trainer, step = make_trainer(config, tmp_path)
  objective = trainer.objective
  pairs = objective.encoder.pairs()
  # A new run starts the target as a copy of the online network; BN statistics are averaged too.
  for target, source in pairs:
    np.testing.assert_array_equal(target.numpy(), source.numpy())
  assert any("moving_mean" in source.path for _, source in pairs)
  initial = objective.queue.numpy()
  np.testing.assert_allclose(np.linalg.norm(initial, axis=1), 1.0, rtol=1e-6)

  features = views(config, 5)
  # This step's keys: the momentum network's (still the online one's copy), normalised.
  clips = tf.concat([features[f"view_{k}"] for k in (1, 2, 3)], axis=0)
  keys = objective.encoder(clips, 3).numpy()                                  # [ρ, B, D]
  keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
  before = [target.numpy() for target, _ in pairs]
  step(features)
  _assert_ema(pairs, before, 0.9)                             # m at k = 0 is m0
  queue = objective.queue.numpy()
  # All ρ·B keys enter, clip-major, at the front; the rest is untouched. Eager against the traced
  # step: float32 rounding of the convolutions.
  np.testing.assert_allclose(queue[:12], keys.reshape(12, -1), rtol=1e-4, atol=2e-5)
  np.testing.assert_array_equal(queue[12:], initial[12:])
  assert int(objective.queue_pointer.numpy()) == 12

  before = [target.numpy() for target, _ in pairs]
  step(views(config, 6))
  _assert_ema(pairs, before, 1 - 0.1 * (math.cos(math.pi / config.total_steps) + 1) / 2)
  step(views(config, 7))                 # 36 keys in a queue of 30: wraps around
  assert int(objective.queue_pointer.numpy()) == 6
  assert not np.array_equal(objective.queue.numpy()[:6], queue[:6])
  np.testing.assert_allclose(np.linalg.norm(objective.queue.numpy(), axis=1), 1.0, rtol=1e-5)
  # The target's forward pass in training mode did not move its statistics by itself.
  assert objective.encoder.model.backbone.stem_norm.momentum == 1.0


# ---- SwAV's prototypes


def test_swav_prototypes_are_unit_vectors_frozen_in_the_first_epoch(tmp_path):
  config = tiny_config("swav")           # 4 steps an epoch
  trainer, step = make_trainer(config, tmp_path)
  kernel = trainer.objective.prototypes.kernel
  initial = kernel.numpy()
  np.testing.assert_allclose(np.linalg.norm(initial, axis=0), 1.0, rtol=1e-6)
  backbone_before = trainer.model.backbone.stem_conv.kernel.numpy()
  for seed in range(4):
    step(views(config, seed))
  # Frozen: no gradient; LARS's weight decay only rescales them and the normalisation undoes it.
  np.testing.assert_allclose(kernel.numpy(), initial, rtol=1e-5, atol=1e-6)
  assert not np.allclose(trainer.model.backbone.stem_conv.kernel.numpy(), backbone_before)
  for seed in range(4, 6):
    step(views(config, seed))
  assert np.abs(kernel.numpy() - initial).max() > 1e-4                  # epoch 2: they learn
  np.testing.assert_allclose(np.linalg.norm(kernel.numpy(), axis=0), 1.0, rtol=1e-5)


def test_normalize_prototypes_makes_each_column_a_unit_vector():
  kernel = tf.constant([[3., 0.], [4., 2.]])
  np.testing.assert_allclose(swav.normalize_prototypes(kernel).numpy(), [[0.6, 0.], [0.8, 1.]])


# ---- one replica against two


TWO_REPLICAS = '''
import dataclasses, json, sys, tempfile
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
sys.path.insert(0, "tests")
from test_objectives import tiny_config, views
from cvrl_tf import pretrain

def state(trainer):
  objective = trainer.objective
  values = {"weights": trainer.variables}
  if hasattr(objective, "encoder"):
    values["momentum"] = [t for t, _ in objective.encoder.pairs()]
  if hasattr(objective, "queue"):
    values["queue"] = [objective.queue, objective.queue_pointer]
  return {k: [np.asarray(v.numpy(), np.float64).tolist() for v in vs] for k, vs in values.items()}

results = {}
for objective in sys.argv[1].split(","):
  for name in ("one", "two"):
    keras.utils.set_random_seed(1)
    # A gentle learning rate: the second step compares the first one's updates, and float32
    # differences of the first step's gradients grow with the step size.
    config = tiny_config(objective, num_clips=3, batch=8, freeze_prototypes_epochs=0.0)
    config = dataclasses.replace(config, optimizer=dataclasses.replace(
        config.optimizer, base_learning_rate=0.05))
    strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if name == "two"
                else tf.distribute.OneDeviceStrategy("/cpu:0"))
    trainer = pretrain.Trainer(config, tempfile.mkdtemp(), strategy, log=lambda _: None)
    trainer.restore()

    @tf.function
    def step(features):
      shares = strategy.run(trainer.replica_step, args=(features, True))
      return tf.stack([strategy.reduce("SUM", s, axis=None) for s in shares])

    values = []
    for seed in (0, 1):   # the second step sees the first one's queue and momentum network
      batch = views(config, seed)
      per_replica = 8 // strategy.num_replicas_in_sync
      features = strategy.experimental_distribute_values_from_function(
          lambda ctx: {k: v[ctx.replica_id_in_sync_group * per_replica:
                            (ctx.replica_id_in_sync_group + 1) * per_replica]
                       for k, v in batch.items()})
      values.append(step(features).numpy().tolist())
    results[f"{objective}/{name}"] = {"values": values, "state": state(trainer)}
print(json.dumps(results))
'''


# SimCLR's two-replica steps are test_train_replicas.py's, and MoCo's its two workers' (the same
# step and queue across replicas, on real records). One process per objective: a
# MirroredStrategy made after another one's collectives ran in the same process can mismatch
# collective instances (TF 2.21), which no run of ours does.
@pytest.mark.parametrize("objective", ["byol", "swav"])
def test_two_replicas_step_like_one_replica(objective):
  objectives = [objective]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([*python_c(TWO_REPLICAS), ",".join(objectives)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  runs = json.loads(result.stdout.strip().splitlines()[-1])
  for objective in objectives:
    one, two = runs[f"{objective}/one"], runs[f"{objective}/two"]
    # [loss, regularization, metrics..., gradient norm] of two steps. The norm sums ~10^4 squared
    # gradients through SyncBN over a few 1×1 maps of res5: float32 summation order alone moves it
    # by up to ~1e-3 relative (measured 8e-4); a share or gather error moves it by factors.
    one_values, two_values = np.array(one["values"]), np.array(two["values"])
    np.testing.assert_allclose(two_values[:, :-1], one_values[:, :-1], rtol=1e-4, atol=1e-6,
                               err_msg=objective)
    np.testing.assert_allclose(two_values[:, -1], one_values[:, -1], rtol=2e-3,
                               err_msg=objective)
    # The variables after two steps: the same float32 noise of the gradients (SyncBN on tiny
    # maps) moves them by up to ~1e-4 (measured 9e-5), against steps of ~1e-2.
    assert sorted(two["state"]) == sorted(one["state"])
    for group in one["state"]:
      for a, b in zip(one["state"][group], two["state"][group]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-3, atol=3e-4,
                                   err_msg=f"{objective} {group}")
