"""NT-Xent against a NumPy reference and a hand-computed case; one vs two replicas; two workers.
The ρ-SSL losses (rho_nt_xent, moco_loss, byol_loss, sinkhorn, swav_loss) the same way."""

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
from conftest import python_c
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

def _two_devices(common: str) -> str:
  """A script that runs `common`'s `run(strategy)` on one replica and on two logical CPUs."""
  return textwrap.dedent("""
      import tensorflow as tf
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  """) + common + textwrap.dedent("""
      result = {"one": run(tf.distribute.get_strategy()),
                "two": run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))}
      print("RESULT" + json.dumps(result))
  """)


_TWO_DEVICES = _two_devices(_COMMON)


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
  run = subprocess.run([*python_c(_TWO_DEVICES)], capture_output=True, text=True,
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


# ρ-SSL losses (issue 14). Each against a float64 NumPy reference written from the definitions,
# for ρ = 2, 3, 4, and a small case computed by hand.


def _unit(x):
  x = np.float64(x)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ordered_pairs(rho):
  return [(i, j) for i in range(rho) for j in range(rho) if i != j]


def _entropy(logits):
  prob = np.exp(logits - logits.max())
  prob /= prob.sum()
  return -np.sum(prob * np.log(prob))


def numpy_rho_nt_xent(projections, temperature):
  """The mean over pairs i < j of the two-view loss and its metrics: (loss, accuracy, entropy)."""
  rho = len(projections)
  values = [numpy_nt_xent(projections[i], projections[j], temperature)
            for i in range(rho) for j in range(i + 1, rho)]
  return tuple(np.mean(values, axis=0))


def numpy_moco(queries, keys, queue, temperature):
  """Per (ordered pair, video): −log softmax of the positive over [positive, queue]; and metrics."""
  q, k, u = _unit(queries), _unit(keys), _unit(queue)
  terms = []
  for i, j in _ordered_pairs(len(q)):
    for b in range(q.shape[1]):
      logits = np.concatenate([[q[i, b] @ k[j, b]], u @ q[i, b]]) / temperature
      loss = np.log(np.sum(np.exp(logits))) - logits[0]
      terms.append((loss, logits[0] > logits[1:].max(), _entropy(logits)))
  return tuple(np.mean(terms, axis=0))


def numpy_byol(predictions, targets):
  p, t = _unit(predictions), _unit(targets)
  return np.mean([2 - 2 * p[i, b] @ t[j, b]
                  for i, j in _ordered_pairs(len(p)) for b in range(p.shape[1])])


def numpy_sinkhorn(scores, epsilon, iterations):
  """SwAV's distributed_sinkhorn, transcribed for one process: [N, K] -> [N, K]."""
  q = np.exp(np.float64(scores) / epsilon).T  # [K, N]
  num_prototypes, num_samples = q.shape
  q /= q.sum()
  for _ in range(iterations):
    q /= q.sum(axis=1, keepdims=True)
    q /= num_prototypes
    q /= q.sum(axis=0, keepdims=True)
    q /= num_samples
  return (num_samples * q).T


def numpy_swav(scores, temperature, epsilon, iterations, codes=None):
  """Mean over (ordered pair, video) of −Σ_k q_ik log softmax(S_j/τ)_k; `codes` to fix them."""
  scores = np.float64(scores)
  if codes is None:
    codes = [numpy_sinkhorn(s, epsilon, iterations) for s in scores]
  terms = []
  for i, j in _ordered_pairs(len(scores)):
    for b in range(scores.shape[1]):
      logits = scores[j, b] / temperature
      log_prob = logits - np.log(np.sum(np.exp(logits)))
      terms.append(-codes[i][b] @ log_prob)
  return np.mean(terms)


def _clips(rng, rho, batch, dim, noise=0.8):
  """[ρ, B, D] float32: ρ noisy clips of B random videos, so positives are likelier, not certain."""
  videos = rng.normal(size=(1, batch, dim))
  return (videos + noise * rng.normal(size=(rho, batch, dim))).astype(np.float32)


@pytest.mark.parametrize("rho", [2, 3, 4])
def test_rho_nt_xent_matches_numpy_reference(rho):
  projections = _clips(np.random.default_rng(10 + rho), rho, 5, 4)
  outputs = losses.rho_nt_xent(tf.constant(projections), 0.2)
  expected = numpy_rho_nt_xent(projections, 0.2)
  np.testing.assert_allclose(_values(outputs), expected, rtol=1e-5, atol=1e-6)
  assert 0 < expected[1] < 1  # the accuracy check above is not vacuous


def test_rho_nt_xent_at_rho_2_is_nt_xent():
  rng = np.random.default_rng(20)
  view_1, view_2 = _clips(rng, 2, 6, 5)
  pair = _values(losses.nt_xent(tf.constant(view_1), tf.constant(view_2), 0.1))
  stacked = _values(losses.rho_nt_xent(tf.constant(np.stack([view_1, view_2])), 0.1))
  assert stacked == pair  # the same operations: bit for bit


def test_rho_nt_xent_hand_computed_case():
  # ρ = 3, N = 2, D = 2, τ = 1. After normalisation: P_1 = [(1, 0), (1, 0)] and
  # P_2 = P_3 = [(1, 0), (0, 1)]. Pairs (1, 2) and (1, 3) are test_hand_computed_case's views:
  # loss (3 log(2e + 1) − 2 + log 3) / 2 = 2.342298, accuracy 0.5, entropy H([1, 0]) = 0.582203.
  # Pair (2, 3), identical views: every anchor's positive → 1, its two negatives → 0:
  # loss 2 (log(e + 2) − 1) = 1.102889, accuracy 1, entropy H([1, 0]) again.
  # Means over the 3 pairs: loss 1.929162, accuracy 2/3, entropy 0.582203.
  projections = tf.constant([[[3.0, 0.0], [0.5, 0.0]],
                             [[2.0, 0.0], [0.0, 4.0]],
                             [[0.1, 0.0], [0.0, 7.0]]])
  pair_12 = (3 * math.log(2 * math.e + 1) - 2 + math.log(3)) / 2
  pair_23 = 2 * (math.log(math.e + 2) - 1)
  expected = [(2 * pair_12 + pair_23) / 3, 2 / 3, 0.582203]
  np.testing.assert_allclose(expected[0], 1.929162, atol=1e-6)
  np.testing.assert_allclose(_values(losses.rho_nt_xent(projections, 1.0)), expected, atol=1e-6)
  np.testing.assert_allclose(numpy_rho_nt_xent(projections.numpy(), 1.0), expected, atol=1e-6)


@pytest.mark.parametrize("rho", [2, 3, 4])
def test_moco_loss_matches_numpy_reference(rho):
  rng = np.random.default_rng(30 + rho)
  queries = _clips(rng, rho, 4, 6, noise=0.5)
  keys = (queries + 0.5 * rng.normal(size=queries.shape)).astype(np.float32)
  queue = rng.normal(size=(9, 6)).astype(np.float32)
  outputs = losses.moco_loss(tf.constant(queries), tf.constant(keys), tf.constant(queue), 0.2)
  expected = numpy_moco(queries, keys, queue, 0.2)
  np.testing.assert_allclose(_values(outputs), expected, rtol=1e-5, atol=1e-6)
  assert 0 < expected[1] < 1


def test_moco_loss_hand_computed_case():
  # ρ = 2, one video, D = 2, τ = 1; the lengths test the normalisation. After it:
  # q_1 = (1, 0), q_2 = (0, 1); k_1 = (0, 1), k_2 = (1, 0); queue (1, 0), (−1, 0).
  # (1, 2): positive q_1·k_2 = 1, queue logits [1, −1]: loss log(2e + 1/e) − 1 = 0.758624;
  #   the positive ties the first queue logit: it does not beat it (accuracy 0); entropy of
  #   softmax [1, 1, −1] = log Z − E[logit] = log(2e + 1/e) − (2e − 1/e)/(2e + 1/e) = 0.885382.
  # (2, 1): positive q_2·k_1 = 1, queue logits [0, 0]: loss log(e + 2) − 1 = 0.551445;
  #   accuracy 1;
  #   entropy log(e + 2) − e/(e + 2) = 0.975328.
  # Means: loss 0.655034, accuracy 0.5, entropy 0.930355.
  queries = tf.constant([[[3.0, 0.0]], [[0.0, 0.5]]])
  keys = tf.constant([[[0.0, 2.0]], [[4.0, 0.0]]])
  queue = tf.constant([[2.0, 0.0], [-1.0, 0.0]])
  e = math.e
  z_12, z_21 = 2 * e + 1 / e, e + 2
  expected = [(math.log(z_12) + math.log(z_21)) / 2 - 1, 0.5,
              (math.log(z_12) - (2 * e - 1 / e) / z_12 + math.log(z_21) - e / z_21) / 2]
  np.testing.assert_allclose(expected, [0.655034, 0.5, 0.930355], atol=1e-6)
  outputs = losses.moco_loss(queries, keys, queue, temperature=1.0)
  np.testing.assert_allclose(_values(outputs), expected, atol=1e-6)


@pytest.mark.parametrize("rho", [2, 3, 4])
def test_byol_loss_matches_numpy_reference(rho):
  rng = np.random.default_rng(40 + rho)
  predictions = _clips(rng, rho, 5, 3)
  targets = (predictions + rng.normal(size=predictions.shape)).astype(np.float32)
  loss = losses.byol_loss(tf.constant(predictions), tf.constant(targets))
  np.testing.assert_allclose(float(loss), numpy_byol(predictions, targets), rtol=1e-5)


def test_byol_loss_hand_computed_case():
  # ρ = 3, one video, D = 2. Normalised: p = (1, 0), (0, 1), (1, 1)/√2; t = (1, 0), (1, 0), (0, 1).
  # cos(p_i, t_j) over the 6 ordered pairs: (1,2) 1, (1,3) 0, (2,1) 0, (2,3) 1, (3,1) 1/√2,
  # (3,2) 1/√2; sum 2 + √2. Mean of 2 − 2 cos = 2 − (2 + √2)/3 = (4 − √2)/3 = 0.861929.
  predictions = tf.constant([[[2.0, 0.0]], [[0.0, 3.0]], [[0.5, 0.5]]])
  targets = tf.constant([[[1.0, 0.0]], [[5.0, 0.0]], [[0.0, 0.2]]])
  np.testing.assert_allclose((4 - math.sqrt(2)) / 3, 0.861929, atol=1e-6)
  loss = losses.byol_loss(predictions, targets)
  np.testing.assert_allclose(float(loss), (4 - math.sqrt(2)) / 3, rtol=1e-6)


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_matches_numpy_reference(iterations):
  scores = np.random.default_rng(50 + iterations).uniform(-1, 1, size=(12, 5)).astype(np.float32)
  codes = losses.sinkhorn(tf.constant(scores), epsilon=0.1, iterations=iterations)
  np.testing.assert_allclose(codes, numpy_sinkhorn(scores, 0.1, iterations), rtol=1e-4,
                             atol=1e-6)


def test_sinkhorn_hand_computed_case():
  # N = K = 2, ε = 1, S = [[log 3, 0], [0, 0]]: Q = exp(S)ᵀ = [[3, 1], [1, 1]] (rows prototypes),
  # / its sum 6 → [[1/2, 1/6], [1/6, 1/6]].
  # Iteration 1: rows sum to (2/3, 1/3) → scaled to 1/2: [[3/8, 1/8], [1/4, 1/4]]; columns sum
  #   to (5/8, 3/8) → scaled to 1/2: [[3/10, 1/6], [1/5, 1/3]];
  #   codes 2·Qᵀ = [[3/5, 2/5], [1/3, 2/3]].
  # Iteration 2: rows sum to (7/15, 8/15) → [[9/28, 5/28], [3/16, 5/16]]; columns sum to
  #   (57/112, 55/112) → [[6/19, 2/11], [7/38, 7/22]]; codes [[12/19, 7/19], [4/11, 7/11]].
  scores = tf.constant([[math.log(3.0), 0.0], [0.0, 0.0]])
  np.testing.assert_allclose(losses.sinkhorn(scores, 1.0, 1), [[3 / 5, 2 / 5], [1 / 3, 2 / 3]],
                             rtol=1e-6)
  np.testing.assert_allclose(losses.sinkhorn(scores, 1.0, 2),
                             [[12 / 19, 7 / 19], [4 / 11, 7 / 11]], rtol=1e-6)
  # Equal scores: uniform codes 1/K.
  np.testing.assert_allclose(losses.sinkhorn(tf.zeros([4, 5]), 0.05, 3), np.full([4, 5], 0.2),
                             rtol=1e-6)


def test_sinkhorn_marginals():
  # Cosine-like scores, 64 samples, 8 prototypes, SwAV's ε; 3 then 200 iterations.
  scores = np.random.default_rng(60).uniform(-1, 1, size=(64, 8)).astype(np.float32)
  for iterations, tolerance in ((3, 0.5), (200, 1e-3)):
    codes = losses.sinkhorn(tf.constant(scores), 0.05, iterations).numpy()
    assert codes.min() >= 0
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-5)  # each sample: exactly 1
    np.testing.assert_allclose(codes.sum(axis=0), 64 / 8, rtol=tolerance)  # each prototype: N/K
  # Not vacuous: the codes are far from uniform (one-hot-like at ε = 0.05).
  assert codes.max() > 0.9


def test_sinkhorn_is_finite_when_a_prototype_scores_far_below_another():
  # At ε = 0.015 prototype 1's scores sit (−0.9 − 1)/ε < −126 below the global maximum: one global
  # shift would underflow its whole row to 0 (0/0 = NaN); the per-prototype shift keeps it exact.
  scores = np.array([[1.0, -0.95], [0.9, -1.0], [0.95, -0.9], [0.2, -0.92]], np.float32)
  codes = losses.sinkhorn(tf.constant(scores), 0.015, 3).numpy()
  assert np.all(np.isfinite(codes))
  np.testing.assert_allclose(codes, numpy_sinkhorn(scores, 0.015, 3), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rho", [2, 3, 4])
def test_swav_loss_matches_numpy_reference(rho):
  scores = np.tanh(_clips(np.random.default_rng(70 + rho), rho, 6, 5))  # cosine-like, [ρ, B, K]
  loss = losses.swav_loss(tf.constant(scores), temperature=0.1, epsilon=0.05, iterations=3)
  np.testing.assert_allclose(float(loss), numpy_swav(scores, 0.1, 0.05, 3), rtol=1e-5)


def test_swav_loss_hand_computed_case():
  # ρ = 2, N = K = 2, τ = ε = 1, one iteration. S_1 = [[log 3, 0], [0, 0]]: codes [[3/5, 2/5],
  # [1/3, 2/3]] (test_sinkhorn_hand_computed_case), softmax rows (3/4, 1/4) and (1/2, 1/2).
  # S_2 = 0: codes and softmax all 1/2.
  # (1, 2): both videos −Σ q log(1/2) = log 2. (2, 1): video 0 −(½ log ¾ + ½ log ¼)
  # = 2 log 2 − ½ log 3; video 1 log 2. Mean of the 4: (5 log 2 − ½ log 3)/4 = 0.729107.
  scores = tf.constant([[[math.log(3.0), 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
  expected = (5 * math.log(2) - 0.5 * math.log(3)) / 4
  np.testing.assert_allclose(expected, 0.729107, atol=1e-6)
  np.testing.assert_allclose(float(losses.swav_loss(scores, 1.0, 1.0, 1)), expected, rtol=1e-6)


def _finite_differences(function, x, eps=1e-6):
  numeric = np.zeros_like(x)
  for index in np.ndindex(*x.shape):
    plus, minus = x.copy(), x.copy()
    plus[index] += eps
    minus[index] -= eps
    numeric[index] = (function(plus) - function(minus)) / (2 * eps)
  return numeric


def test_rho_loss_gradients_match_finite_differences():
  # ρ = 3; the gradient w.r.t. the one input that has one (the others are stop-gradiented).
  rng = np.random.default_rng(80)
  x = rng.normal(size=(3, 2, 4))
  other = rng.normal(size=(3, 2, 4))
  queue = rng.normal(size=(5, 4))
  swav_codes = [numpy_sinkhorn(s, 0.5, 3) for s in x]  # no gradient through the codes: held fixed
  cases = {
      "rho_nt_xent": (lambda t: losses.rho_nt_xent(t, 0.5).loss,
                      lambda a: numpy_rho_nt_xent(a, 0.5)[0]),
      "moco_loss": (lambda t: losses.moco_loss(t, tf.constant(other, tf.float32),
                                               tf.constant(queue, tf.float32), 0.5).loss,
                    lambda a: numpy_moco(a, other, queue, 0.5)[0]),
      "byol_loss": (lambda t: losses.byol_loss(t, tf.constant(other, tf.float32)),
                    lambda a: numpy_byol(a, other)),
      "swav_loss": (lambda t: losses.swav_loss(t, 0.5, 0.5, 3),
                    lambda a: numpy_swav(a, 0.5, 0.5, 3, codes=swav_codes)),
  }
  for name, (tf_loss, numpy_loss) in cases.items():
    inputs = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      loss = tf_loss(inputs)
    np.testing.assert_allclose(tape.gradient(loss, inputs), _finite_differences(numpy_loss, x),
                               atol=1e-4, err_msg=name)


def test_keys_queue_targets_and_codes_get_no_gradient():
  rng = np.random.default_rng(81)
  queries, keys = (tf.constant(rng.normal(size=(2, 3, 4)), tf.float32) for _ in range(2))
  queue = tf.constant(rng.normal(size=(5, 4)), tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([queries, keys, queue])
    moco = losses.moco_loss(queries, keys, queue).loss
    byol = losses.byol_loss(queries, keys)
    codes = losses.sinkhorn(queries[0])
  assert tape.gradient(moco, [keys, queue]) == [None, None]
  assert tape.gradient(moco, queries) is not None
  assert tape.gradient(byol, keys) is None
  assert tape.gradient(codes, queries) is None


def test_rho_losses_compute_in_float32():
  rng = np.random.default_rng(82)
  x, y = (rng.normal(size=(3, 4, 6)).astype(np.float32) for _ in range(2))
  queue = rng.normal(size=(7, 6)).astype(np.float32)
  bf16 = lambda a: tf.constant(a, tf.bfloat16)
  rounded = lambda a: tf.cast(bf16(a), tf.float32).numpy()
  scores = np.tanh(x)
  results = {
      "rho_nt_xent": (losses.rho_nt_xent(bf16(x)), numpy_rho_nt_xent(rounded(x), 0.1)),
      "moco_loss": (losses.moco_loss(bf16(x), bf16(y), bf16(queue)),
                    numpy_moco(rounded(x), rounded(y), rounded(queue), 0.1)),
      "byol_loss": ([losses.byol_loss(bf16(x), bf16(y))], [numpy_byol(rounded(x), rounded(y))]),
      "swav_loss": ([losses.swav_loss(bf16(scores))], [numpy_swav(rounded(scores), 0.1, 0.05, 3)]),
      "sinkhorn": ([losses.sinkhorn(bf16(scores[0]))],
                   [numpy_sinkhorn(rounded(scores[0]), 0.05, 3)]),
  }
  for name, (outputs, expected) in results.items():
    assert all(v.dtype == tf.float32 for v in outputs), name
    # Exactly the float32 value of the bfloat16-rounded inputs: nothing else was rounded.
    for value, reference in zip(outputs, expected):
      np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-6, err_msg=name)


def numpy_spread(embeddings):
  """√D · mean over dimensions of the (population) std over rows of the unit rows, float64."""
  z = _unit(np.float64(embeddings))
  return np.sqrt(z.shape[1]) * z.std(axis=0).mean()


def test_embedding_spread_matches_numpy_reference():
  rng = np.random.default_rng(5)
  x = (rng.normal(size=(1, 6)) + 0.5 * rng.normal(size=(40, 6))).astype(np.float32)
  np.testing.assert_allclose(float(losses.embedding_spread(tf.constant(x))), numpy_spread(x),
                             rtol=1e-5)


def test_embedding_spread_hand_computed_and_limits():
  # Rows (3, 0) and (0, 2): unit (1, 0), (0, 1); each coordinate has mean 0.5 and std 0.5,
  # so √2 · 0.5.
  hand = losses.embedding_spread(tf.constant([[3.0, 0.0], [0.0, 2.0]]))
  np.testing.assert_allclose(float(hand), np.sqrt(2) / 2, rtol=1e-6)
  # Every clip on one direction (any lengths): collapsed, 0.
  collapsed = np.outer([1.0, 2.0, 0.5, 7.0], [0.3, -0.2, 0.9]).astype(np.float32)
  assert float(losses.embedding_spread(tf.constant(collapsed))) < 1e-3
  # Directions uniform on the sphere: each coordinate's variance is 1/D, so about 1 (20,000
  # draws in D = 16: the estimate's sampling error is well under 0.01).
  sphere = np.random.default_rng(0).normal(size=(20000, 16)).astype(np.float32)
  np.testing.assert_allclose(float(losses.embedding_spread(tf.constant(sphere))), 1.0, atol=0.01)
  with pytest.raises(ValueError, match=r"embeddings must be \[M, D\]"):
    losses.embedding_spread(tf.ones([2, 3, 4]))


def test_rho_losses_reject_bad_arguments():
  clips, queue = tf.ones([2, 3, 4]), tf.ones([5, 4])
  bad = [
      (lambda: losses.rho_nt_xent(tf.ones([3, 4])), r"projections must be \[ρ, B, D\]"),
      (lambda: losses.rho_nt_xent(tf.ones([1, 3, 4])), "ρ >= 2"),
      (lambda: losses.rho_nt_xent(clips, temperature=0.0), "temperature"),
      (lambda: losses.moco_loss(clips, tf.ones([2, 3, 5]), queue), "queries and keys"),
      (lambda: losses.moco_loss(clips, clips, tf.ones([5, 3])), r"queue must be \[K, D\]"),
      (lambda: losses.moco_loss(clips, clips, tf.ones([0, 4])), "K >= 1"),
      (lambda: losses.moco_loss(clips, clips, queue, temperature=-1.0), "temperature"),
      (lambda: losses.byol_loss(clips, tf.ones([3, 3, 4])), "predictions and targets"),
      (lambda: losses.byol_loss(tf.ones([3, 4]), tf.ones([3, 4])), "predictions must be"),
      (lambda: losses.sinkhorn(clips), r"scores must be \[B, K\]"),
      (lambda: losses.sinkhorn(queue, epsilon=0.0), "epsilon"),
      (lambda: losses.sinkhorn(queue, iterations=0), "iterations"),
      (lambda: losses.sinkhorn(queue, iterations=2.0), "iterations"),
      (lambda: losses.swav_loss(queue), r"scores must be \[ρ, B, K\]"),
      (lambda: losses.swav_loss(clips, epsilon=-0.05), "epsilon"),
      (lambda: losses.swav_loss(clips, temperature=0), "temperature"),
  ]
  for call, message in bad:
    with pytest.raises(ValueError, match=message):
      call()
  with tf.distribute.OneDeviceStrategy("/cpu:0").scope(), pytest.raises(RuntimeError,
                                                                          match="replica context"):
    losses.byol_loss(clips, clips)


# One vs two replicas for every ρ-SSL loss: a linear "projection head" on fixed [ρ, N, F] inputs,
# replica r taking videos r·B ... r·B + B − 1 of every clip; shares, summed variable gradients,
# the inputs' gradients (each replica's own rows) and the Sinkhorn codes.
_RHO_COMMON = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    from cvrl_tf import losses

    RHO, GLOBAL = 3, 8
    rng = np.random.default_rng(17)
    VIDEOS = rng.normal(size=(1, GLOBAL, 5))
    FEATURES = (VIDEOS + 0.8 * rng.normal(size=(RHO, GLOBAL, 5))).astype(np.float32)
    TARGETS = (VIDEOS + 0.8 * rng.normal(size=(RHO, GLOBAL, 5))).astype(np.float32)
    KERNEL = rng.normal(size=(5, 4)).astype(np.float32)
    PROTOTYPES = rng.normal(size=(4, 6)).astype(np.float32)
    QUEUE = rng.normal(size=(7, 4)).astype(np.float32)

    def run(strategy):
      with strategy.scope():
        kernel = tf.Variable(KERNEL)
        prototypes = tf.Variable(PROTOTYPES)

      def step(features, targets):
        with tf.GradientTape(persistent=True) as tape:
          proj = tf.einsum("ibf,fd->ibd", features, kernel)  # [ρ, B, D]
          keys = tf.einsum("ibf,fd->ibd", targets, kernel)
          tape.watch(proj)
          scores = tf.einsum("ibd,dk->ibk", tf.math.l2_normalize(proj, axis=-1),
                             tf.math.l2_normalize(prototypes, axis=0))  # [ρ, B, K], cosines
          out = {"rho_nt_xent": losses.rho_nt_xent(proj, 0.2),
                 "moco_loss": losses.moco_loss(proj, keys, tf.constant(QUEUE), 0.2),
                 "byol_loss": losses.byol_loss(proj, keys),
                 "swav_loss": losses.swav_loss(scores, 0.1, 0.05, 3)}
        context = tf.distribute.get_replica_context()
        grads = {}
        for name, value in out.items():
          loss = value.loss if name in ("rho_nt_xent", "moco_loss") else value
          kernel_grad, prototype_grad, proj_grad = tape.gradient(loss, [kernel, prototypes, proj])
          # What the optimizer does with variable gradients: sum them over replicas.
          variables = [kernel_grad if prototype_grad is None else prototype_grad]
          grads[name] = context.all_reduce(tf.distribute.ReduceOp.SUM, variables) + [proj_grad]
        spread = losses.embedding_spread(tf.reshape(proj, [-1, proj.shape[-1]]))
        return out, grads, losses.sinkhorn(scores[1], 0.05, 3), spread

      def split(context):
        batch = GLOBAL // context.num_replicas_in_sync
        rows = slice(context.replica_id_in_sync_group * batch,
                     (context.replica_id_in_sync_group + 1) * batch)
        return tf.constant(FEATURES[:, rows]), tf.constant(TARGETS[:, rows])

      inputs = strategy.experimental_distribute_values_from_function(split)
      out, grads, codes, spread = strategy.run(tf.function(step), args=inputs)
      # One reduce per value: MultiWorkerMirroredStrategy.reduce does not take a structure.
      total = lambda t: float(strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None))
      local = lambda t: [x.numpy() for x in strategy.experimental_local_results(t)]
      result = {"replicas": strategy.num_replicas_in_sync,
                "codes": np.concatenate(local(codes)).tolist(), "spread": total(spread)}
      for name, value in out.items():
        values = value if name in ("rho_nt_xent", "moco_loss") else [value]
        result[name] = {
            "values": [total(v) for v in values], "shares": [float(s) for s in local(values[0])],
            "variable_grad": local(grads[name][0])[0].tolist(),
            # Each replica's gradient for its own videos, in replica order: the whole batch's.
            "input_grad": np.concatenate(local(grads[name][1]), axis=1).tolist()}
      return result
""")

_RHO_TWO_DEVICES = _two_devices(_RHO_COMMON)


def test_rho_losses_two_replicas_give_the_values_of_one():
  # Logical devices must exist before TF initialises: a fresh interpreter.
  run = subprocess.run([*python_c(_RHO_TWO_DEVICES)], capture_output=True, text=True,
                       env=_env(), cwd=REPO, timeout=240)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.split("RESULT", 1)[1])
  one, two = result["one"], result["two"]
  assert (one["replicas"], two["replicas"]) == (1, 2)
  np.testing.assert_allclose(two["codes"], one["codes"], rtol=1e-5, atol=1e-6, err_msg="codes")
  np.testing.assert_allclose(two["spread"], one["spread"], rtol=1e-5, err_msg="spread")
  for name in ("rho_nt_xent", "moco_loss", "byol_loss", "swav_loss"):
    for key in ("values", "variable_grad", "input_grad"):
      np.testing.assert_allclose(two[name][key], one[name][key], rtol=1e-5, atol=1e-6,
                                 err_msg=f"{name} {key}")
    # The shares differ per replica and add up to the global loss.
    shares = two[name]["shares"]
    assert abs(shares[0] - shares[1]) > 1e-4, name
    np.testing.assert_allclose(sum(shares), one[name]["values"][0], rtol=1e-5, err_msg=name)

  # And the one-replica run agrees with the NumPy references on the whole batch.
  common = {}
  exec(_RHO_COMMON, common)  # pylint: disable=exec-used
  kernel = np.float64(common["KERNEL"])
  proj, keys = np.float64(common["FEATURES"]) @ kernel, np.float64(common["TARGETS"]) @ kernel
  scores = _unit(proj) @ (np.float64(common["PROTOTYPES"])
                          / np.linalg.norm(common["PROTOTYPES"], axis=0))
  np.testing.assert_allclose(one["rho_nt_xent"]["values"], numpy_rho_nt_xent(proj, 0.2),
                             rtol=1e-5)
  np.testing.assert_allclose(one["moco_loss"]["values"],
                             numpy_moco(proj, keys, common["QUEUE"], 0.2), rtol=1e-5)
  np.testing.assert_allclose(one["byol_loss"]["values"], [numpy_byol(proj, keys)], rtol=1e-5)
  np.testing.assert_allclose(one["spread"], numpy_spread(proj.reshape(-1, proj.shape[-1])),
                             rtol=1e-5)
  np.testing.assert_allclose(one["swav_loss"]["values"], [numpy_swav(scores, 0.1, 0.05, 3)],
                             rtol=1e-4)
  np.testing.assert_allclose(one["codes"], numpy_sinkhorn(scores[1], 0.05, 3), rtol=1e-4,
                             atol=1e-6)
