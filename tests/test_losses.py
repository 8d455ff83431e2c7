"""NT-Xent against a NumPy reference and a hand-computed case; one vs two replicas; two workers."""

import json
import math
import os
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import free_ports
from cvrl_tf import losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_nt_xent(view_1, view_2, temperature):
  """SPEC.md §2 written out anchor by anchor, in float64: (loss, accuracy, entropy)."""
  z = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in (np.float64(view_1),
                                                            np.float64(view_2))]
  n = len(view_1)
  direction_losses = []
  for own, other in ((0, 1), (1, 0)):
    anchor_losses = []
    for i in range(n):
      anchor = z[own][i]
      positive = anchor @ z[other][i] / temperature
      # 2N − 2 negatives: the other view's other clips and the own view's other clips.
      negatives = [anchor @ z[other][j] / temperature for j in range(n) if j != i]
      negatives += [anchor @ z[own][j] / temperature for j in range(n) if j != i]
      logits = np.array([positive] + negatives)
      anchor_losses.append(np.log(np.sum(np.exp(logits))) - positive)
    direction_losses.append(np.mean(anchor_losses))
  cross = z[0] @ z[1].T / temperature  # [N, N], view-1 anchors against view-2 clips
  accuracy = np.mean(np.argmax(cross, axis=1) == np.arange(n))
  prob = np.exp(cross - cross.max(axis=1, keepdims=True))
  prob /= prob.sum(axis=1, keepdims=True)
  entropy = np.mean(-np.sum(prob * np.log(prob), axis=1))
  return sum(direction_losses), accuracy, entropy


def _values(outputs):
  return [float(v) for v in outputs]


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_matches_numpy_reference(temperature):
  rng = np.random.default_rng(0)
  view_1 = rng.normal(size=(6, 5)).astype(np.float32)
  # Correlated views, so that accuracy is neither 0 nor 1 by construction.
  view_2 = (view_1 + 1.2 * rng.normal(size=(6, 5))).astype(np.float32)
  outputs = losses.nt_xent(tf.constant(view_1), tf.constant(view_2), temperature)
  expected = numpy_nt_xent(view_1, view_2, temperature)
  np.testing.assert_allclose(_values(outputs), expected, rtol=1e-5, atol=1e-5)
  assert 0 < expected[1] < 1  # the accuracy check above is not vacuous


def test_hand_computed_case():
  # N = 2, D = 2, τ = 1. After normalisation (the lengths are there to test it):
  #   view 1: a0 = (1, 0), a1 = (1, 0);   view 2: b0 = (1, 0), b1 = (0, 1).
  # Per anchor, −log softmax of the positive over {positive, 2N − 2 = 2 negatives}:
  #   a0: pos b0 → 1; negs b1 → 0, a1 → 1:  log(e + 1 + e) − 1 = log(2e + 1) − 1
  #   a1: pos b1 → 0; negs b0 → 1, a0 → 1:  log(1 + e + e)     = log(2e + 1)
  #   b0: pos a0 → 1; negs a1 → 1, b1 → 0:  log(2e + 1) − 1
  #   b1: pos a1 → 0; negs a0 → 0, b0 → 0:  log(3)
  # loss = mean(view 1) + mean(view 2) = (3 log(2e + 1) − 2 + log 3) / 2
  #      = (3 · 1.861995 − 2 + 1.098612) / 2 = 2.342298
  # Accuracy: both view-1 rows of cross-view logits are [1, 0]; a0's positive is column 0 (right),
  # a1's is column 1 (wrong): 0.5. Entropy: softmax([1, 0]) = (e, 1) / (e + 1) = (0.731059,
  # 0.268941), H = −Σ p log p = 0.582203 for both rows.
  view_1 = tf.constant([[3.0, 0.0], [0.5, 0.0]])
  view_2 = tf.constant([[2.0, 0.0], [0.0, 4.0]])
  outputs = losses.nt_xent(view_1, view_2, temperature=1.0)
  expected_loss = (3 * math.log(2 * math.e + 1) - 2 + math.log(3)) / 2
  np.testing.assert_allclose(expected_loss, 2.342298, atol=1e-6)
  np.testing.assert_allclose(_values(outputs), [expected_loss, 0.5, 0.582203], atol=1e-6)
  np.testing.assert_allclose(_values(outputs), numpy_nt_xent(view_1, view_2, 1.0), atol=1e-6)


def test_gradient_matches_numpy_finite_differences():
  rng = np.random.default_rng(1)
  view_1 = rng.normal(size=(3, 4))
  view_2 = rng.normal(size=(3, 4))
  v1 = tf.constant(view_1, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(v1)
    loss = losses.nt_xent(v1, tf.constant(view_2, tf.float32), 0.5).loss
  grad = tape.gradient(loss, v1).numpy()
  eps = 1e-6
  numeric = np.zeros_like(view_1)
  for index in np.ndindex(*view_1.shape):
    plus, minus = view_1.copy(), view_1.copy()
    plus[index] += eps
    minus[index] -= eps
    numeric[index] = (numpy_nt_xent(plus, view_2, 0.5)[0]
                      - numpy_nt_xent(minus, view_2, 0.5)[0]) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, atol=1e-4)


def test_bfloat16_inputs_are_computed_in_float32():
  rng = np.random.default_rng(2)
  view_1 = rng.normal(size=(4, 8)).astype(np.float32)
  view_2 = rng.normal(size=(4, 8)).astype(np.float32)
  as_bf16 = [tf.cast(tf.cast(v, tf.bfloat16), tf.float32).numpy() for v in (view_1, view_2)]
  outputs = losses.nt_xent(tf.constant(view_1, tf.bfloat16), tf.constant(view_2, tf.bfloat16))
  assert all(v.dtype == tf.float32 for v in outputs)
  # Exactly the float32 loss of the bfloat16-rounded inputs: nothing else was rounded.
  np.testing.assert_allclose(_values(outputs), numpy_nt_xent(*as_bf16, 0.1), rtol=1e-5)


def test_perfect_and_uniform_limits():
  # Identical views, orthogonal videos: accuracy 1; cross-view logits [10, 0, 0, 0] at τ = 0.1.
  eye = tf.eye(4)
  outputs = losses.nt_xent(eye, eye, 0.1)
  assert float(outputs.contrast_accuracy) == 1.0
  logits = np.array([10.0, 0, 0, 0])
  prob = np.exp(logits) / np.exp(logits).sum()
  # ≈ 0.0015 nats: float32 rounding of the probabilities limits the relative precision.
  np.testing.assert_allclose(float(outputs.contrast_entropy), -np.sum(prob * np.log(prob)),
                             atol=1e-7)
  # All clips equal: every one of the 2N − 1 candidates has the same logit → loss 2 log(2N − 1),
  # entropy log N.
  ones = tf.ones([4, 3])
  outputs = losses.nt_xent(ones, ones, 0.1)
  np.testing.assert_allclose(float(outputs.loss), 2 * math.log(7), rtol=1e-6)
  np.testing.assert_allclose(float(outputs.contrast_entropy), math.log(4), rtol=1e-6)


def test_inside_tf_function_and_one_device_strategy():
  rng = np.random.default_rng(3)
  view_1 = tf.constant(rng.normal(size=(5, 3)), tf.float32)
  view_2 = tf.constant(rng.normal(size=(5, 3)), tf.float32)
  eager = _values(losses.nt_xent(view_1, view_2))
  traced = _values(tf.function(losses.nt_xent)(view_1, view_2))
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  in_strategy = _values(strategy.run(tf.function(losses.nt_xent), args=(view_1, view_2)))
  np.testing.assert_allclose(traced, eager, rtol=1e-6)
  np.testing.assert_allclose(in_strategy, eager, rtol=1e-6)
  with strategy.scope(), pytest.raises(RuntimeError, match="replica context"):
    losses.nt_xent(view_1, view_2)  # cross-replica context: no replica to gather from


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match="temperature"):
    losses.nt_xent(tf.ones([2, 2]), tf.ones([2, 2]), temperature=0.0)
  with pytest.raises(ValueError, match=r"\[B, D\]"):
    losses.nt_xent(tf.ones([2, 2, 2]), tf.ones([2, 2, 2]))


def test_weight_decay_loss_is_half_sum_of_squares():
  kernels = [tf.Variable([[1.0, -2.0], [3.0, 0.5]]), tf.Variable([4.0])]
  # wd · Σ w² / 2 = 1e-2 · (1 + 4 + 9 + 0.25 + 16) / 2 = 0.15125
  with tf.GradientTape() as tape:
    penalty = losses.weight_decay_loss(kernels, 1e-2)
  np.testing.assert_allclose(float(penalty), 0.15125, rtol=1e-6)
  # The reference release's `wd * Σ tf.nn.l2_loss`; Keras's L2(wd / 2), not L2(wd).
  np.testing.assert_allclose(float(penalty), sum(float(keras.regularizers.L2(5e-3)(k))
                                                 for k in kernels), rtol=1e-6)
  # Its gradient is wd · w: the decay LARS adds to the gradient.
  for grad, kernel in zip(tape.gradient(penalty, kernels), kernels):
    np.testing.assert_allclose(grad, 1e-2 * kernel.numpy(), rtol=1e-6)
  assert float(losses.weight_decay_loss([], 1e-2)) == 0.0
  with pytest.raises(ValueError, match="weight_decay"):
    losses.weight_decay_loss(kernels, -1.0)


# Shared by the two-device and the two-worker runs: a linear "projection head" on fixed inputs,
# the loss share and its gradients on each replica, the gradients summed over replicas as a Keras
# optimizer does. GLOBAL rows are split evenly, replica r taking rows r·B ... r·B + B − 1.
_COMMON = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    from cvrl_tf import losses

    GLOBAL = 8
    rng = np.random.default_rng(7)
    FEATURES_1 = rng.normal(size=(GLOBAL, 5)).astype(np.float32)
    FEATURES_2 = (FEATURES_1 + 0.8 * rng.normal(size=(GLOBAL, 5))).astype(np.float32)
    KERNEL = rng.normal(size=(5, 3)).astype(np.float32)
    BIAS = rng.normal(size=(3,)).astype(np.float32)

    def run(strategy):
      with strategy.scope():
        kernel = tf.Variable(KERNEL)
        bias = tf.Variable(BIAS)

      def step(features_1, features_2):
        with tf.GradientTape() as tape:
          proj_1 = features_1 @ kernel + bias
          proj_2 = features_2 @ kernel + bias
          tape.watch([proj_1, proj_2])
          out = losses.nt_xent(proj_1, proj_2, 0.1)
        grads = tape.gradient(out.loss, [kernel, bias, proj_1, proj_2])
        context = tf.distribute.get_replica_context()
        # What the optimizer does with variable gradients: sum them over replicas.
        grads[:2] = context.all_reduce(tf.distribute.ReduceOp.SUM, grads[:2])
        return out, grads

      def split(context):
        batch = GLOBAL // context.num_replicas_in_sync
        rows = slice(context.replica_id_in_sync_group * batch,
                     (context.replica_id_in_sync_group + 1) * batch)
        return tf.constant(FEATURES_1[rows]), tf.constant(FEATURES_2[rows])

      inputs = strategy.experimental_distribute_values_from_function(split)
      out, grads = strategy.run(tf.function(step), args=inputs)
      shares = [float(v) for v in strategy.experimental_local_results(out.loss)]
      # One reduce per value: MultiWorkerMirroredStrategy.reduce does not take a structure.
      total = lambda t: float(strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None))
      local = lambda t: [x.numpy() for x in strategy.experimental_local_results(t)]
      return {
          "loss": total(out.loss), "accuracy": total(out.contrast_accuracy),
          "entropy": total(out.contrast_entropy), "shares": shares,
          "kernel_grad": local(grads[0])[0].tolist(), "bias_grad": local(grads[1])[0].tolist(),
          # Each replica's gradient for its own rows, in replica order: the whole batch's.
          "proj_1_grad": np.concatenate(local(grads[2])).tolist(),
          "proj_2_grad": np.concatenate(local(grads[3])).tolist(),
          "replicas": strategy.num_replicas_in_sync,
      }
""")

_TWO_DEVICES = textwrap.dedent("""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""") + _COMMON + textwrap.dedent("""
    result = {"one": run(tf.distribute.get_strategy()),
              "two": run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))}
    print("RESULT" + json.dumps(result))
""")


def _env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _common():
  """`_COMMON`'s data and `run`, in this process."""
  namespace = {}
  exec(_COMMON, namespace)  # pylint: disable=exec-used
  return namespace


def test_two_replicas_give_the_loss_and_gradients_of_one():
  # Logical devices must exist before TF initialises: a fresh interpreter.
  run = subprocess.run([sys.executable, "-c", _TWO_DEVICES], capture_output=True, text=True,
                       env=_env(), cwd=REPO, timeout=240)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.split("RESULT", 1)[1])
  one, two = result["one"], result["two"]
  assert (one["replicas"], two["replicas"]) == (1, 2)
  for key in ("loss", "accuracy", "entropy", "kernel_grad", "bias_grad", "proj_1_grad",
              "proj_2_grad"):
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # The shares differ per replica and add up to the global loss.
  assert abs(two["shares"][0] - two["shares"][1]) > 1e-3
  np.testing.assert_allclose(sum(two["shares"]), one["loss"], rtol=1e-5)
  # And the one-replica run agrees with the NumPy reference.
  common = _common()
  project = lambda f: np.float64(f) @ np.float64(common["KERNEL"]) + np.float64(common["BIAS"])
  expected = numpy_nt_xent(project(common["FEATURES_1"]), project(common["FEATURES_2"]), 0.1)
  np.testing.assert_allclose([one["loss"], one["accuracy"], one["entropy"]], expected, rtol=1e-5)


_WORKER = _COMMON + textwrap.dedent("""
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    print("RESULT" + json.dumps(run(strategy)), flush=True)
""")


@pytest.mark.slow
def test_two_workers_give_the_loss_and_gradients_of_one_process(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
  workers = []
  for index in range(2):
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    workers.append(subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_env(TF_CONFIG=tf_config), cwd=REPO))
  deadline = time.monotonic() + 240
  outputs = {}
  try:
    for index, worker in enumerate(workers):
      outputs[index] = worker.communicate(timeout=max(1.0, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    pass  # reported below, with the killed workers' stderr
  finally:
    # A worker whose peer died waits for it forever: never leave one behind.
    for index, worker in enumerate(workers):
      if worker.poll() is None:
        worker.kill()
        outputs[index] = worker.communicate()
  for index, worker in enumerate(workers):
    assert worker.returncode == 0, f"worker {index}: {outputs[index][1][-3000:]}"
  outputs = [outputs[index] for index in range(2)]
  results = [json.loads(stdout.split("RESULT", 1)[1]) for stdout, _ in outputs]
  one = _common()["run"](tf.distribute.get_strategy())
  for result in results:
    assert result["replicas"] == 2
    # Each worker holds one replica: its proj gradients are for its own rows only.
    for key in ("loss", "accuracy", "entropy", "kernel_grad", "bias_grad"):
      np.testing.assert_allclose(result[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
  for key in ("proj_1_grad", "proj_2_grad"):
    np.testing.assert_allclose(np.concatenate([r[key] for r in results]), one[key], rtol=1e-5,
                               atol=1e-6, err_msg=key)
