"""train.microbatches: the gradient cache of every objective, gradient accumulation, the checks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import config as cfg
from cvrl_tf import losses
from cvrl_tf import microbatch
from cvrl_tf import pretrain

TINY = ["train.global_batch_size=8", "data.num_frames=4", "data.crop_size=16", "model.depth=10",
        "model.width_multiplier=0.125", "model.head_hidden_sizes=8", "model.head_output_size=8",
        "objective.queue_size=16", "objective.num_prototypes=8"]


def _dense_network(seed):
  keras.utils.set_random_seed(seed)
  network = keras.Sequential([keras.layers.Dense(6, activation="relu"), keras.layers.Dense(4)])
  network.build((None, 5))
  return network


def test_split_is_in_order_and_rejects_a_batch_it_cannot_split():
  parts = microbatch.split(tf.reshape(tf.range(12), [2, 6]), 3, axis=1)
  np.testing.assert_array_equal(np.concatenate([p.numpy() for p in parts], axis=1),
                                np.arange(12).reshape(2, 6))
  with pytest.raises(ValueError, match="batch of 6 does not split into 4 equal microbatches"):
    microbatch.split(tf.zeros([6, 3]), 4)


@pytest.mark.parametrize("k", [2, 4])
def test_gradient_cache_equals_the_whole_batch_gradient(k):
  # A network without batch statistics: the cached gradient is the whole batch's, exactly (to
  # float32), although NT-Xent couples every row with every other.
  network = _dense_network(0)
  rng = np.random.default_rng(0)
  views = tf.constant(rng.normal(size=(2, 8, 5)), tf.float32)             # [ρ, B, 5]
  offsets = tf.constant(rng.normal(size=(2, 8, 4)), tf.float32)           # a "target" per row

  def embed(chunk):                                              # ([ρ, b, 5], _) -> [ρ, b, 4]
    return tf.reshape(network(tf.reshape(chunk[0], [-1, 5])), [2, -1, 4])

  def loss_on(embeddings, targets):
    out = losses.rho_nt_xent(embeddings + targets[0], 0.5)
    return out.loss, out.contrast_accuracy

  with tf.GradientTape() as tape:
    whole_loss, whole_accuracy = loss_on(embed((views,)), (offsets,))
  expected = tape.gradient(whole_loss, network.trainable_variables)
  chunks = list(zip(microbatch.split(views, k, axis=1), microbatch.split(offsets, k, axis=1)))
  accuracy, gradients = tf.function(lambda: microbatch.gradient_cache(
      chunks, embed, lambda chunk: (chunk[1],), loss_on, network.trainable_variables))()
  assert float(accuracy) == pytest.approx(float(whole_accuracy))
  for got, want in zip(gradients, expected):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)


def test_accumulated_gradient_equals_the_whole_batch_gradient():
  network = _dense_network(1)
  rng = np.random.default_rng(1)
  inputs = tf.constant(rng.normal(size=(12, 5)), tf.float32)
  labels = tf.constant(rng.integers(0, 4, 12))

  def loss(chunk):
    x, y = chunk
    per_example = keras.losses.sparse_categorical_crossentropy(y, network(x), from_logits=True)
    value = tf.reduce_sum(per_example) / 12.0        # the chunk's share of the batch mean
    return value, (value,)

  with tf.GradientTape() as tape:
    whole, _ = loss((inputs, labels))
  expected = tape.gradient(whole, network.trainable_variables)
  chunks = list(zip(microbatch.split(inputs, 3), microbatch.split(labels, 3)))
  (summed,), gradients = microbatch.accumulate(chunks, loss, network.trainable_variables)
  assert float(summed) == pytest.approx(float(whole), rel=1e-6)
  for got, want in zip(gradients, expected):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)


def _trainer(objective, *overrides):
  keras.utils.set_random_seed(0)
  config = cfg.load_experiment("demo", TINY + [f"objective.name={objective}", *overrides])
  trainer = pretrain.Trainer(config, "ram://microbatch", tf.distribute.get_strategy(),
                             log=lambda _: None)
  trainer.restore_initial()
  rng = np.random.default_rng(0)
  features = {name: tf.constant(rng.uniform(size=(8, 4, 16, 16, 3)), tf.float32)
              for name in config.data.view_names}
  return trainer, features


def _bn_layers(trainer):
  models = [trainer.model]
  if hasattr(trainer.objective, "encoder"):
    models.append(trainer.objective.encoder.model)
  return [layer for model in models for part in (model.backbone, model.head)
          for layer in part._flatten_layers()
          if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("objective", ["simclr", "moco", "byol", "swav"])
def test_every_objective_gets_the_whole_batch_gradient_in_microbatches(objective):
  # BN frozen (inference statistics): nothing couples the examples but the loss, so two chunks
  # through the gradient cache give the one-piece step's loss, metrics and gradients (MoCo's
  # keys and BYOL's targets from the momentum network in chunks too; BYOL's predictor and SwAV's
  # prototypes differentiated once on the whole batch).
  trainer, features = _trainer(objective, "train.microbatches=2")
  for layer in _bn_layers(trainer):
    layer.trainable = False
  step = tf.constant(0, tf.int64)
  whole_out, _, whole = tf.function(lambda f: trainer._loss_and_gradients(f, step))(features)
  out, _, cached = tf.function(
      lambda f: trainer._microbatched_loss_and_gradients(f, step))(features)
  np.testing.assert_allclose([out.loss, *out.metrics], [whole_out.loss, *whole_out.metrics],
                             rtol=1e-5, atol=1e-6)
  assert len(cached) == len(whole) == len(trainer.variables)
  scale = max(float(tf.reduce_max(tf.abs(g))) for g in whole)
  for got, want in zip(cached, whole):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-5 * scale)
  for got, want in zip(out.state, whole_out.state):      # MoCo's keys for the queue
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_moving_statistics_take_one_update_per_chunk():
  # With BN training, the first (forward-only) pass must leave the moving statistics as they
  # were: they end as after one training-mode pass over chunk 0 and then chunk 1.
  trainer, features = _trainer("simclr", "train.microbatches=2")
  online = [trainer.model.backbone, trainer.model.head]
  statistics = [v for layer in online for v in layer.non_trainable_weights]
  start = [v.numpy() for v in statistics]
  step = tf.constant(0, tf.int64)
  tf.function(lambda f: trainer._microbatched_loss_and_gradients(f, step))(features)
  got = [v.numpy() for v in statistics]
  for variable, value in zip(statistics, start):
    variable.assign(value)
  for c in range(2):
    chunk = tf.concat([features[name][4 * c:4 * c + 4] for name in ("view_1", "view_2")], 0)
    tf.function(trainer.objective.project)(chunk)
  changed = 0
  for a, b, before in zip(got, [v.numpy() for v in statistics], start):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    changed += not np.allclose(a, before)
  assert changed == len(statistics)


def test_microbatches_must_split_the_per_replica_batch():
  config = cfg.load_experiment("demo", TINY + ["train.microbatches=3"])
  with pytest.raises(cfg.ConfigError, match="microbatches=3 does not split the per-replica "
                                            "batch of 8"):
    pretrain.Trainer(config, "ram://microbatch_bad", tf.distribute.get_strategy())
