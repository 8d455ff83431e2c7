"""train.jit_compile: the whole training step through XLA (its own file, so that pytest-xdist
can run it beside test_train.py's end-to-end runs)."""

import numpy as np
import tensorflow as tf

from test_train import experiment  # noqa: F401  (the fixture: tiny records and experiment)


def test_the_xla_compiled_step_equals_the_plain_one(experiment):
  # train.jit_compile: the whole replica step (forward, loss, backward, LARS, the momentum
  # network's update and the queue's, both through merge_call) through XLA on CPU, our
  # stand-in for what TPUStrategy compiles. MoCo has every part SimCLR's step has, and state.
  # One step: the compile dominates (the step that also computes the gradient norm).
  import keras
  from cvrl_tf import config as cfg
  from cvrl_tf import pretrain
  from cvrl_tf import storage
  runs = {}
  for jit in (False, True):
    keras.utils.set_random_seed(1)
    config = cfg.load_experiment(experiment, [
        "objective.name=moco", "objective.queue_size=64", f"train.jit_compile={jit}"])
    trainer = pretrain.Trainer(config, storage.join("ram://xla", str(jit)),
                               tf.distribute.get_strategy(), log=lambda _: None)
    trainer.restore_initial()
    values = trainer._loop(iter(trainer.dataset(0)), tf.constant(1))[0].numpy()
    state = (trainer.model.trainable_variables + [trainer.objective.queue]
             + trainer.objective.encoder.model.backbone.weights)
    runs[jit] = values, [v.numpy() for v in state]
  (plain, plain_state), (compiled, compiled_state) = runs[False], runs[True]
  # [loss, regularization, accuracy, entropy, spread, gradient norm]; float32 summation order
  # differs between XLA's and TensorFlow's kernels (weights measured 1.4e-5 apart at most).
  np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-5)
  for a, b in zip(compiled_state, plain_state):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
