"""LARS against SGD with momentum, a hand-computed trust ratio, exclusion by object, tf.distribute."""

import json
import os
import subprocess
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import python_c
from cvrl_tf import lars, schedules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gradient(step, variable):
  """A gradient that changes from step to step and with the weights: [.] like `variable`."""
  base = np.linspace(-1.0, 1.0, variable.size).reshape(variable.shape)
  return np.float32(base * (step + 1) + 0.5 * variable)


def _train(optimizer, initial, steps=5):
  variables = [keras.Variable(w) for w in initial]
  for step in range(steps):
    grads = [tf.constant(_gradient(step, v.numpy())) for v in variables]
    optimizer.apply_gradients(zip(grads, variables))
  return [v.numpy() for v in variables]


def _initial():
  rng = np.random.default_rng(0)
  return [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]


def test_without_adaptation_and_decay_equals_sgd_momentum():
  # The schedule changes the rate every step: LARS keeps it inside the momentum like Keras SGD.
  schedule = schedules.WarmupCosineDecay(0.5, total_steps=6, warmup_steps=2)
  expected = _train(keras.optimizers.SGD(schedule, momentum=0.9, nesterov=False), _initial())
  got = _train(lars.LARS(schedule, momentum=0.9, weight_decay=0.0, trust_coefficient=None),
               _initial())
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, atol=1e-6)
  assert not np.allclose(got[0], _initial()[0])  # it moved


def test_excluded_variables_get_plain_momentum_sgd():
  initial = _initial()
  expected = _train(keras.optimizers.SGD(0.1, momentum=0.9), initial)
  variables = [keras.Variable(w) for w in initial]
  optimizer = lars.LARS(0.1, weight_decay=0.01, trust_coefficient=0.001, exclude=variables)
  for step in range(5):
    grads = [tf.constant(_gradient(step, v.numpy())) for v in variables]
    optimizer.apply_gradients(zip(grads, variables))
  for v, e in zip(variables, expected):
    np.testing.assert_allclose(v.numpy(), e, atol=1e-6)


def test_one_step_matches_hand_computed_trust_ratio():
  # w = (3, 4), ‖w‖ = 5; g = (0.6, 0.8); wd = 0.1 → g + wd·w = (0.9, 1.2), ‖·‖ = 1.5.
  # trust ratio = η ‖w‖ / ‖g + wd·w‖ = 0.001 · 5 / 1.5 = 1/300; lr = 0.5 → lr · ratio = 1/600.
  # v = 0.9 · 0 + (1/600) · (0.9, 1.2) = (0.0015, 0.002); w ← (3 − 0.0015, 4 − 0.002).
  w = keras.Variable([3.0, 4.0])
  optimizer = lars.LARS(0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.001)
  optimizer.apply_gradients([(tf.constant([0.6, 0.8]), w)])
  np.testing.assert_allclose(w.numpy(), [2.9985, 3.998], rtol=1e-6)
  np.testing.assert_allclose(optimizer.momentums[0].numpy(), [0.0015, 0.002], rtol=1e-5)
  # Step 2, same gradient: w = 0.9995 · (3, 4), so g + wd·w = (0.6, 0.8) + 0.09995 · (3, 4)
  # = 0.29995 · (3, 4) and the ratio is 0.001 · 0.9995 / 0.29995; v = 0.9 v + 0.5 · ratio · g.
  ratio = 0.001 * 0.9995 / 0.29995
  velocity = 0.9 * np.array([0.0015, 0.002]) + 0.5 * ratio * 0.29995 * np.array([3.0, 4.0])
  optimizer.apply_gradients([(tf.constant([0.6, 0.8]), w)])
  np.testing.assert_allclose(w.numpy(), np.array([2.9985, 3.998]) - velocity, rtol=1e-6)


def test_trust_ratio_is_one_for_zero_weights_or_gradients():
  zeros, w = keras.Variable([0.0, 0.0]), keras.Variable([3.0, 4.0])
  optimizer = lars.LARS(0.5, weight_decay=0.0)
  optimizer.apply_gradients([(tf.constant([1.0, 2.0]), zeros), (tf.constant([0.0, 0.0]), w)])
  np.testing.assert_allclose(zeros.numpy(), [-0.5, -1.0])  # a plain SGD step, not a 0 step
  np.testing.assert_allclose(w.numpy(), [3.0, 4.0])
  assert np.all(np.isfinite(optimizer.momentums[1].numpy()))


def _model():
  inputs = keras.Input([2, 4, 4, 3])
  x = keras.layers.Conv3D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
  x = keras.layers.BatchNormalization(name="norm")(x)
  x = keras.layers.GlobalAveragePooling3D()(x)
  outputs = keras.layers.Dense(2, name="dense")(x)
  return keras.Model(inputs, outputs)


def test_kernel_selection_is_by_layer_attribute():
  model = _model()
  conv, norm, dense = (model.get_layer(n) for n in ("conv", "norm", "dense"))
  assert [id(v) for v in lars.kernel_variables(model)] == [id(conv.kernel), id(dense.kernel)]
  assert {id(v) for v in lars.non_kernel_variables(model)} == {
      id(norm.gamma), id(norm.beta), id(dense.bias)}
  # Moving statistics are not trainable: neither list has them.
  selected = lars.kernel_variables(model) + lars.non_kernel_variables(model)
  assert {id(v) for v in selected} == {id(v) for v in model.trainable_variables}


def test_excluded_model_variables_get_no_decay_and_no_adaptation():
  model = _model()
  model(tf.zeros([1, 2, 4, 4, 3]))
  # β starts at 0 and a zero gradient is the clearest probe: with decay or adaptation a non-zero
  # weight would still move; here only the kernels may.
  norm, dense = model.get_layer("norm"), model.get_layer("dense")
  dense.bias.assign([1.0, -2.0])
  optimizer = lars.LARS(0.1, weight_decay=0.1, exclude=lars.non_kernel_variables(model))
  before = [v.numpy() for v in model.trainable_variables]
  grads = [tf.zeros_like(v) for v in model.trainable_variables]
  optimizer.apply_gradients(zip(grads, model.trainable_variables))
  after = {id(v): v.numpy() for v in model.trainable_variables}
  for v, old in zip(model.trainable_variables, before):
    if optimizer.is_excluded(v):
      np.testing.assert_array_equal(after[id(v)], old)  # no decay on γ = 1, β, bias
    else:
      # Decay alone: g = wd · w, ratio = η ‖w‖ / ‖wd · w‖ = η / wd → w ← w − lr · η · w.
      np.testing.assert_allclose(after[id(v)], old * (1 - 0.1 * 0.001), rtol=1e-6)
  assert {id(v) for v in model.trainable_variables if optimizer.is_excluded(v)} == {
      id(norm.gamma), id(norm.beta), id(dense.bias)}
  # A non-zero gradient on an excluded variable: exactly lr · g, no trust ratio.
  optimizer = lars.LARS(0.1, weight_decay=0.1, exclude=[dense.bias])
  optimizer.apply_gradients([(tf.constant([2.0, 4.0]), dense.bias)])
  np.testing.assert_allclose(dense.bias.numpy(), [1.0 - 0.2, -2.0 - 0.4], rtol=1e-6)


def test_inside_tf_function_equals_eager():
  initial = _initial()
  eager_vars = [keras.Variable(w) for w in initial]
  traced_vars = [keras.Variable(w) for w in initial]
  eager = lars.LARS(0.3, weight_decay=0.01, exclude=[eager_vars[1]])
  traced = lars.LARS(0.3, weight_decay=0.01, exclude=[traced_vars[1]])

  @tf.function
  def step(grads):
    traced.apply_gradients(zip(grads, traced_vars))

  for i in range(3):
    grads = [tf.constant(_gradient(i, w)) for w in initial]
    eager.apply_gradients(zip(grads, eager_vars))
    step(grads)
  for e, t in zip(eager_vars, traced_vars):
    np.testing.assert_allclose(t.numpy(), e.numpy(), rtol=1e-6)
  assert int(traced.iterations.numpy()) == 3


def test_config_round_trip():
  schedule = schedules.WarmupCosineDecay(0.32, total_steps=100, warmup_steps=10)
  optimizer = lars.LARS(schedule, momentum=0.8, weight_decay=1e-5, trust_coefficient=0.002)
  config = optimizer.get_config()
  assert (config["momentum"], config["weight_decay"], config["trust_coefficient"]) == (
      0.8, 1e-5, 0.002)
  restored = lars.LARS.from_config(dict(config))  # from_config replaces values in place
  assert restored.get_config() == config
  # pylint: disable-next=protected-access
  assert isinstance(restored._learning_rate, schedules.WarmupCosineDecay)
  restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
  assert isinstance(restored, lars.LARS) and restored.get_config() == config


def test_rejects_bad_arguments_and_name_based_exclusion():
  with pytest.raises(ValueError, match="momentum"):
    lars.LARS(0.1, momentum=1.0)
  with pytest.raises(ValueError, match="weight_decay"):
    lars.LARS(0.1, weight_decay=-1e-6)
  with pytest.raises(ValueError, match="trust_coefficient"):
    lars.LARS(0.1, trust_coefficient=0.0)
  with pytest.raises(ValueError, match="by object"):
    lars.LARS(0.1).exclude_from_weight_decay(var_names=["bias"])


# One replica on the whole batch against two replicas on halves, for three LARS steps of a linear
# projection trained with NT-Xent: the whole training step, distributed.
_TWO_DEVICES = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from cvrl_tf import lars, losses

    rng = np.random.default_rng(5)
    FEATURES = rng.normal(size=(2, 8, 6)).astype(np.float32)  # [view, N, D]
    FEATURES[1] = FEATURES[0] + 0.7 * FEATURES[1]

    def train(strategy):
      with strategy.scope():
        dense = keras.layers.Dense(4, kernel_initializer=keras.initializers.Constant(
            np.random.default_rng(6).normal(size=(6, 4))), bias_initializer="ones")
        dense.build([None, 6])
        optimizer = lars.LARS(0.5, weight_decay=0.05, exclude=lars.non_kernel_variables(dense))
        # Slots made in the scope, before the traced step: Keras optimizers (SGD too) cannot
        # create them inside strategy.run in a tf.function.
        optimizer.build(dense.trainable_variables)

      @tf.function
      def step(view_1, view_2):
        def replica_step(view_1, view_2):
          with tf.GradientTape() as tape:
            loss = losses.nt_xent(dense(view_1), dense(view_2), 0.2).loss
          grads = tape.gradient(loss, dense.trainable_variables)
          optimizer.apply_gradients(zip(grads, dense.trainable_variables))
          return loss
        loss = strategy.run(replica_step, args=(view_1, view_2))
        return strategy.reduce("SUM", loss, axis=None)

      def split(context):
        n = 8 // context.num_replicas_in_sync
        first = context.replica_id_in_sync_group * n
        rows = slice(first, first + n)
        return tf.constant(FEATURES[0, rows]), tf.constant(FEATURES[1, rows])

      inputs = strategy.experimental_distribute_values_from_function(split)
      loss = [float(step(*inputs)) for _ in range(3)]
      return {"loss": loss, "kernel": dense.kernel.numpy().tolist(),
              "bias": dense.bias.numpy().tolist(), "replicas": strategy.num_replicas_in_sync}

    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print("RESULT" + json.dumps({"one": train(tf.distribute.get_strategy()), "two": train(two)}))
""")


def test_two_replicas_train_like_one():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  run = subprocess.run([*python_c(_TWO_DEVICES)], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=240)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.split("RESULT", 1)[1])
  one, two = result["one"], result["two"]
  assert (one["replicas"], two["replicas"]) == (1, 2)
  assert one["loss"][2] < one["loss"][0]  # it trained
  for key in ("loss", "kernel", "bias"):
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
