"""Projection head and linear classifier against NumPy references."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import batch_norm
from cvrl_tf import heads


def randomize_batch_norm(layer, rng):
  """Non-trivial γ, β and moving statistics, so a test sees every one of them."""
  c = layer.gamma.shape[0]
  layer.gamma.assign(rng.uniform(0.5, 1.5, c))
  layer.beta.assign(rng.normal(0, 0.5, c))
  layer.moving_mean.assign(rng.normal(0, 0.5, c))
  layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))


def numpy_projection(head, x, training):
  """The head by hand: N × [x W -> BN -> ReLU] -> x W + b."""
  for i in range(1, len(head.hidden_sizes) + 1):
    x = x @ getattr(head, f"dense{i}").kernel.numpy()
    norm = getattr(head, f"norm{i}")
    if training:
      mean, var = x.mean(axis=0), x.var(axis=0)
    else:
      mean, var = norm.moving_mean.numpy(), norm.moving_variance.numpy()
    x = (x - mean) / np.sqrt(var + 1e-5) * norm.gamma.numpy() + norm.beta.numpy()
    x = np.maximum(x, 0.0)
  return x @ head.output_dense.kernel.numpy() + head.output_dense.bias.numpy()


@pytest.mark.parametrize("training", [False, True])
def test_projection_head_matches_numpy(training):
  rng = np.random.default_rng(0)
  head = heads.ProjectionHead(hidden_sizes=(16, 12, 10), output_size=6)
  x = rng.normal(size=(8, 20)).astype(np.float32)
  head.build(x.shape)
  for i in (1, 2, 3):
    randomize_batch_norm(getattr(head, f"norm{i}"), rng)
  head.output_dense.bias.assign(rng.normal(size=6))
  y = head(x, training=training)
  np.testing.assert_allclose(y, numpy_projection(head, x.astype(np.float64), training),
                             rtol=1e-4, atol=1e-4)


def test_projection_head_moving_statistics_use_momentum_0997():
  head = heads.ProjectionHead(hidden_sizes=(4,), output_size=2)
  x = np.random.default_rng(1).normal(size=(16, 3)).astype(np.float32)
  head(x, training=True)
  batch_mean = (x @ head.dense1.kernel.numpy()).mean(axis=0)
  np.testing.assert_allclose(head.norm1.moving_mean, 0.003 * batch_mean, rtol=1e-3, atol=1e-7)
  assert head.norm1.epsilon == 1e-5


def test_projection_head_default_sizes():
  head = heads.ProjectionHead()
  head.build((None, 2048))
  # 3 × [2048×2048 kernel (no bias: BN follows) + γ, β] + 2048×128 + 128.
  trainable = 3 * (2048 * 2048 + 2 * 2048) + 2048 * 128 + 128
  assert sum(int(np.prod(v.shape)) for v in head.trainable_weights) == trainable
  assert sum(int(np.prod(v.shape)) for v in head.weights) == trainable + 3 * 2 * 2048
  assert head.norm1.momentum == 0.997 and not head.norm1.synchronized
  synchronized = heads.ProjectionHead(sync_batch_norm=True).norm3
  # One all-reduce per BN (tests/test_batch_norm.py), not Keras's three.
  assert synchronized.synchronized and isinstance(synchronized, batch_norm.FusedBatchNorm)


def test_projection_head_is_fully_checkpointed(tmp_path):
  head = heads.ProjectionHead(hidden_sizes=(4, 4), output_size=2)
  head.build((None, 3))
  prefix = tf.train.Checkpoint(head=head).write(str(tmp_path / "head"))
  keys = [k for k, _ in tf.train.list_variables(prefix) if k.endswith("VARIABLE_VALUE")]
  assert len(keys) == len(head.weights) == 2 * (1 + 4) + 2


def test_linear_classifier_matches_numpy():
  rng = np.random.default_rng(2)
  classifier = heads.LinearClassifier(num_classes=5)
  x = rng.normal(size=(4, 7)).astype(np.float32)
  classifier.build(x.shape)
  classifier.dense.bias.assign(rng.normal(size=5))
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  expected = unit @ classifier.dense.kernel.numpy() + classifier.dense.bias.numpy()
  np.testing.assert_allclose(classifier(x), expected, rtol=1e-5, atol=1e-6)
  # Scale-invariant, and a zero feature gives the bias, not NaN.
  np.testing.assert_allclose(classifier(10.0 * x), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(classifier(np.zeros((1, 7), np.float32))[0],
                             classifier.dense.bias.numpy(), atol=1e-7)
  assert 0.005 < np.std(classifier.dense.kernel.numpy()) < 0.02  # N(0, 0.01²)


def test_mixed_precision_outputs_are_float32():
  head = heads.ProjectionHead(hidden_sizes=(8,), output_size=4, dtype="mixed_bfloat16")
  classifier = heads.LinearClassifier(3, dtype="mixed_bfloat16")
  x = tf.random.normal([4, 6])
  assert head(x, training=True).dtype == tf.float32
  assert head.dense1.compute_dtype == "bfloat16"
  assert classifier(tf.cast(x, tf.bfloat16)).dtype == tf.float32


def test_get_config_round_trip():
  head = heads.ProjectionHead(hidden_sizes=(8, 4), output_size=3, bn_momentum=0.9,
                              sync_batch_norm=True, name="proj")
  config = json.loads(json.dumps(head.get_config()))
  assert heads.ProjectionHead.from_config(config).get_config() == head.get_config()
  classifier = heads.LinearClassifier(7, kernel_initializer="zeros")
  config = json.loads(json.dumps(classifier.get_config()))
  clone = heads.LinearClassifier.from_config(config)
  assert clone.get_config() == classifier.get_config()
  clone.build((None, 2))
  assert not np.any(clone.dense.kernel.numpy())


@pytest.mark.parametrize("make, match", [
    (lambda: heads.ProjectionHead(hidden_sizes=(8, 0)), r"hidden_sizes .* got \(8, 0\)"),
    (lambda: heads.ProjectionHead(output_size=-1), "output_size .* got -1"),
    (lambda: heads.ProjectionHead(bn_momentum=1.5), "bn_momentum=1.5"),
    (lambda: heads.LinearClassifier(0), "num_classes must be a positive int, got 0"),
])
def test_bad_arguments_are_echoed(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_fine_tuning_classifier_skips_normalisation_and_drops_out():
  rng = np.random.default_rng(5)
  features = rng.normal(size=(64, 12)).astype(np.float32)
  classifier = heads.LinearClassifier(3, normalize=False, dropout_rate=0.5)
  classifier.build((None, 12))
  kernel, bias = (v.numpy() for v in classifier.dense.weights)
  # Inference: a plain Dense on the raw feature.
  np.testing.assert_allclose(classifier(features, training=False).numpy(),
                             features @ kernel + bias, rtol=1e-5, atol=1e-6)
  # Training: inverted dropout, so each input is 0 or doubled; about half are zeroed.
  keras.utils.set_random_seed(0)
  ones = classifier.dropout(np.ones((64, 12), np.float32), training=True).numpy()
  assert set(np.unique(ones)) == {0.0, 2.0} and 0.4 < (ones == 0).mean() < 0.6
  clone = heads.LinearClassifier.from_config(classifier.get_config())
  assert (clone.normalize, clone.dropout_rate) == (False, 0.5)


def test_batch_norm_probe_standardises_the_normalised_feature():
  rng = np.random.default_rng(6)
  # Features sharing one dominant direction, as a small backbone's do.
  features = (np.ones(16) + 0.05 * rng.normal(size=(32, 16))).astype(np.float32)
  classifier = heads.LinearClassifier(4, batch_norm=True)
  classifier.build((None, 16))
  kernel, bias = classifier.dense.kernel.numpy(), classifier.dense.bias.numpy()
  unit = features / np.linalg.norm(features, axis=1, keepdims=True)
  standard = (unit - unit.mean(0)) / np.sqrt(unit.var(0) + 1e-6)
  np.testing.assert_allclose(classifier(features, training=True).numpy(),
                             standard @ kernel + bias, rtol=1e-4, atol=1e-4)
  # Inference uses the moving statistics, which moved 10% of the way to the batch's.
  moving_mean = 0.1 * unit.mean(0)
  moving_var = 0.9 + 0.1 * unit.var(0) * 32 / 31       # Keras keeps the unbiased variance
  expected = (unit - moving_mean) / np.sqrt(moving_var + 1e-6) @ kernel + bias
  np.testing.assert_allclose(classifier(features, training=False).numpy(), expected,
                             rtol=1e-4, atol=1e-4)
  assert [v.name for v in classifier.trainable_variables] == ["kernel", "bias"]
  assert heads.LinearClassifier.from_config(classifier.get_config()).batch_norm
