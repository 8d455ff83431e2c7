"""batch_norm.FusedBatchNorm against Keras's BatchNormalization and a NumPy reference: the fused
kernel, the synchronized statistics through one all-reduce (two replicas, one replica, XLA)."""

import json
import os
import subprocess
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import python_c
from cvrl_tf import batch_norm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOMENTUM, EPSILON = 0.5, 1e-5


def set_weights(layer, channels, moving=True):
  """Non-trivial γ, β (and moving statistics): a test then sees every one of them."""
  if layer.gamma is not None:
    layer.gamma.assign(np.linspace(0.5, 1.5, channels))
  if layer.beta is not None:
    layer.beta.assign(np.linspace(-1.0, 1.0, channels))
  if moving:
    layer.moving_mean.assign(np.linspace(-0.3, 0.6, channels))
    layer.moving_variance.assign(np.linspace(0.5, 2.0, channels))


def train_step(layer, x, weight):
  """One training call: the output and the gradients of Σ weight·y³ for [x, γ, β]."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=True)
    loss = tf.reduce_sum(weight * tf.cast(y, tf.float32) ** 3)
  return y, tape.gradient(loss, [x, layer.gamma, layer.beta])


def moving_statistics(layer):
  return layer.moving_mean.numpy(), layer.moving_variance.numpy()


def numpy_batch_norm(xs, weights, gamma, beta, moving_mean, moving_variance):
  """Training-mode BN over the concatenated batches `xs` (one per replica), in float64.

  The loss is Σ_r Σ weight_r · y_r³; returns per replica [y, dx, dγ, dβ] (dγ, dβ: that replica's
  own share, what it hands the optimizer) and the updated moving statistics.
  """
  x = np.concatenate(xs).astype(np.float64)
  axes = tuple(range(x.ndim - 1))
  mean, variance = x.mean(axis=axes), x.var(axis=axes)
  std = np.sqrt(variance + EPSILON)
  normalized = (x - mean) / std
  y = normalized * gamma + beta
  dy = 3.0 * np.concatenate(weights) * y ** 2
  dnormalized = dy * gamma
  dx = (dnormalized - dnormalized.mean(axis=axes)
        - normalized * (dnormalized * normalized).mean(axis=axes)) / std
  bounds = np.cumsum([0] + [len(b) for b in xs])
  shares = []
  for start, stop in zip(bounds[:-1], bounds[1:]):
    part = slice(start, stop)
    shares.append([y[part], dx[part], (dy[part] * normalized[part]).sum(axis=axes),
                   dy[part].sum(axis=axes)])
  return shares, (MOMENTUM * moving_mean + (1 - MOMENTUM) * mean,
                  MOMENTUM * moving_variance + (1 - MOMENTUM) * variance)


# ---- two replicas: a MirroredStrategy on two logical CPUs


# Logical devices must exist before TF initialises: a fresh interpreter. One MirroredStrategy for
# every check (a second one in a process can mismatch collective instances, TF 2.21).
_TWO_REPLICAS = textwrap.dedent("""
    import collections, json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    sys.path.insert(0, "tests")
    from test_batch_norm import MOMENTUM, EPSILON, set_weights, two_replica_inputs
    from cvrl_tf import batch_norm

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2

    def per_replica(values):
      return strategy.experimental_distribute_values_from_function(
          lambda context: tf.constant(values[context.replica_id_in_sync_group]))

    def local(value):
      return [np.asarray(t).tolist() for t in strategy.experimental_local_results(value)]

    def layers(shape):
      channels = shape[-1]
      with strategy.scope():
        made = {"ours": batch_norm.FusedBatchNorm(momentum=MOMENTUM, epsilon=EPSILON,
                                                  synchronized=True),
                "keras": keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON,
                                                         synchronized=True)}
        for layer in made.values():
          layer.build((None,) + shape[1:])
          set_weights(layer, channels)
      return made

    def collective_ops(concrete_function):
      # Ops of the traced graph and of every function it calls (strategy.run traces both
      # replicas into one graph).
      counts = collections.Counter()
      def walk(graph):
        counts.update(op.type for op in graph.get_operations())
        for function in graph._functions.values():
          if hasattr(function, "graph"):
            walk(function.graph)
      walk(concrete_function.graph)
      return {k: v for k, v in counts.items() if "Collective" in k or "Nccl" in k}

    result = {}
    for name, (xs, weights) in two_replica_inputs().items():
      x, weight = per_replica(xs), per_replica(weights)
      for kind, layer in layers(xs[0].shape).items():
        @tf.function
        def step(x, weight):
          def replica(x, weight):
            with tf.GradientTape() as tape:
              tape.watch(x)
              y = layer(x, training=True)
              loss = tf.reduce_sum(weight * y ** 3)
            return [y] + tape.gradient(loss, [x, layer.gamma, layer.beta])
          return strategy.run(replica, args=(x, weight))
        out = step(x, weight)
        result[f"{name}/{kind}"] = {
            "y": local(out[0]), "dx": local(out[1]), "dgamma": local(out[2]),
            "dbeta": local(out[3]), "moving_mean": local(layer.moving_mean.value),
            "moving_variance": local(layer.moving_variance.value)}

    # Collectives in two stacked layers, forward alone and forward + backward (traced only).
    xs, _ = two_replica_inputs()["video"]
    x = per_replica(xs)
    for kind in ("ours", "keras"):
      first, second = layers(xs[0].shape)[kind], layers(xs[0].shape)[kind]
      def forward(x):
        return second(first(x, training=True), training=True)
      def backward(x):
        with tf.GradientTape() as tape:
          tape.watch(x)
          loss = tf.reduce_sum(forward(x) ** 3)
        return tape.gradient(loss, x)
      for direction, fn in (("forward", forward), ("backward", backward)):
        traced = tf.function(lambda x: strategy.run(fn, args=(x,))).get_concrete_function(x)
        result[f"count/{kind}/{direction}"] = collective_ops(traced)
    print("RESULT" + json.dumps(result))
""")


def two_replica_inputs():
  """{case: ([x per replica], [loss weight per replica])}: a backbone's [B, T, H, W, C] and a
  head's [B, C]; the replicas' batches differ (3x + 1), so local statistics are not global."""
  rng = np.random.default_rng(0)
  cases = {}
  for name, shape in (("video", (2, 2, 3, 3, 4)), ("head", (3, 5))):
    x = rng.normal(size=shape).astype(np.float32)
    cases[name] = ([x, 3.0 * rng.normal(size=shape).astype(np.float32) + 1.0],
                   [rng.uniform(0.5, 1.5, shape).astype(np.float32) for _ in range(2)])
  return cases


@pytest.fixture(scope="module")
def two_replicas():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  run = subprocess.run([*python_c(_TWO_REPLICAS)], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.split("RESULT", 1)[1])


@pytest.mark.parametrize("case", ["video", "head"])
def test_two_replicas_equal_keras_sync_bn_and_numpy(two_replicas, case):
  xs, weights = two_replica_inputs()[case]
  channels = xs[0].shape[-1]
  reference = keras.layers.BatchNormalization()
  reference.build((None, channels))
  set_weights(reference, channels)
  shares, (moving_mean, moving_variance) = numpy_batch_norm(
      xs, weights, reference.gamma.numpy(), reference.beta.numpy(),
      reference.moving_mean.numpy(), reference.moving_variance.numpy())
  ours, keras_sync = two_replicas[f"{case}/ours"], two_replicas[f"{case}/keras"]
  for replica in range(2):
    for i, key in enumerate(("y", "dx", "dgamma", "dbeta")):
      a, b = np.array(ours[key][replica]), np.array(keras_sync[key][replica])
      expected = shares[replica][i]
      scale = np.abs(expected).max()
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale, err_msg=f"{key} {replica}")
      np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-6 * scale,
                                 err_msg=f"{key} {replica}")
    for key, expected in (("moving_mean", moving_mean), ("moving_variance", moving_variance)):
      np.testing.assert_allclose(ours[key][replica], keras_sync[key][replica], rtol=1e-5,
                                 atol=1e-7)
      np.testing.assert_allclose(ours[key][replica], expected, rtol=1e-5, atol=1e-7)
  # Each replica's copy of the moving statistics is the same: the next step's common shift.
  for key in ("moving_mean", "moving_variance"):
    np.testing.assert_array_equal(ours[key][0], ours[key][1])


def test_one_all_reduce_per_layer(two_replicas):
  counts = {key.split("/", 1)[1]: value for key, value in two_replicas.items()
            if key.startswith("count/")}
  # Two stacked layers on two replicas: ours one CollectiveReduceV2 per layer and replica
  # forward, one more backward; Keras's three forward (sum, sum of squares, count), two backward.
  assert counts["ours/forward"] == {"CollectiveReduceV2": 2 * 2}
  assert counts["ours/backward"] == {"CollectiveReduceV2": 2 * 2 * 2}
  assert counts["keras/forward"] == {"CollectiveReduceV2": 2 * 2 * 3}
  assert counts["keras/backward"] == {"CollectiveReduceV2": 2 * 2 * 5}


# ---- one replica: the synchronized layer is the plain one (the fused kernel for 4-D and 5-D)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("shape", [(2, 2, 3, 3, 4), (6, 5)])
def test_synchronized_on_one_replica_equals_plain_keras(dtype, shape):
  rng = np.random.default_rng(1)
  x = tf.constant(2.0 * rng.normal(size=shape) + 1.0, tf.float32)
  weight = tf.constant(rng.uniform(0.5, 1.5, shape), tf.float32)
  results = []
  for layer in (keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, dtype=dtype),
                batch_norm.FusedBatchNorm(momentum=MOMENTUM, epsilon=EPSILON, synchronized=True,
                                          dtype=dtype)):
    layer.build(shape)
    set_weights(layer, shape[-1])
    results.append((*train_step(layer, x, weight), *moving_statistics(layer)))
  (y0, g0, m0, v0), (y1, g1, m1, v1) = results
  assert y1.dtype == y0.dtype == keras.mixed_precision.Policy(dtype).compute_dtype
  # Float32 statistics either way; a 16-bit output and the gradient through it round (8 or 11
  # bits of mantissa) where float32 summation order moves a value across a rounding boundary.
  tolerance = 1e-5 if dtype == "float32" else 1e-2
  np.testing.assert_allclose(np.float32(y1), np.float32(y0), rtol=tolerance, atol=tolerance)
  for a, b, name in zip(g1, g0, ("dx", "dgamma", "dbeta")):
    np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * np.abs(b).max(),
                               err_msg=name)
  np.testing.assert_allclose(m1, m0, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)


def test_synchronized_statistics_of_a_large_mean_are_exact_once_the_moving_mean_tracks_it():
  # 10 ± 1: float32 E[x²] − E[x]² loses ~100× in precision (Keras's synchronized BN). Centred on
  # the moving mean, the second step's variance is as exact as two passes over x.
  # [N, C]: on one replica, a 4-D or 5-D batch goes to the fused kernel instead.
  rng = np.random.default_rng(2)
  x = tf.constant(rng.normal(10.0, 1.0, size=(64 * 16 * 16, 8)), tf.float32)
  expected = np.float64(x.numpy()).var(axis=0)
  layer = batch_norm.FusedBatchNorm(momentum=0.0, synchronized=True)
  errors = []
  for _ in range(2):  # momentum 0: the moving statistics are the last batch's
    layer(x, training=True)
    errors.append(np.abs(layer.moving_variance.numpy() / expected - 1).max())
  plain = tf.nn.moments(x, axes=[0])[1].numpy()
  # Fresh (moving mean 0): Keras's error, measured 2.6e-4; tracked: 1.1e-6, as tf.nn.moments.
  assert errors[0] < 1e-3 and errors[1] < 5e-6, errors
  assert np.abs(plain / expected - 1).max() < 5e-6


# ---- XLA: the TPU's compiler, on CPU with one replica


# On one replica: 5-D, the fused kernel; [N, C], the synchronized moments.
@pytest.mark.parametrize("shape", [(2, 2, 3, 3, 4), (18, 4)])
def test_synchronized_compiles_with_xla_to_the_same_values(shape):
  rng = np.random.default_rng(3)
  x = tf.constant(2.0 * rng.normal(size=shape) + 1.0, tf.float32)
  weight = tf.constant(rng.uniform(0.5, 1.5, x.shape), tf.float32)
  results = []
  for jit in (False, True):
    layer = batch_norm.FusedBatchNorm(momentum=MOMENTUM, epsilon=EPSILON, synchronized=True)
    layer.build(x.shape)
    set_weights(layer, 4)
    step = tf.function(lambda x, w: train_step(layer, x, w), jit_compile=jit)
    y, grads = step(x, weight)
    results.append([y, *grads, *moving_statistics(layer)])
    if jit:  # XLA's program: its batch-norm op, or the statistics as its reductions
      expected = "batch-norm-training(" if len(shape) == 5 else "reduce("
      assert expected in step.experimental_get_compiler_ir(x, weight)(stage="hlo")
  for a, b in zip(*results):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


# ---- one replica, unsynchronized: TF's fused kernel


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_equals_keras(dtype):
  x = tf.random.stateless_normal([2, 3, 5, 4, 6], seed=[5, 6]) * 2.0 + 1.0
  layers = [keras.layers.BatchNormalization(momentum=0.5, epsilon=1e-5, dtype=dtype),
            batch_norm.FusedBatchNorm(momentum=0.5, epsilon=1e-5, dtype=dtype)]
  results = []
  for layer in layers:
    layer.build(x.shape)
    set_weights(layer, 6, moving=False)
    results.append((*train_step(layer, x, 1.0), *moving_statistics(layer)))
  (y0, g0, m0, v0), (y1, g1, m1, v1) = results
  assert y1.dtype == y0.dtype
  np.testing.assert_allclose(np.float32(y1), np.float32(y0), atol=1e-5)
  for a, b in zip(g1, g0):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
  # Moving statistics from the biased batch variance, like Keras.
  np.testing.assert_allclose(m1, m0, atol=1e-6)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
