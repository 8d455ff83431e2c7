"""The warm-up + cosine schedule at hand-computed points; batch scaling; epochs to steps."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import schedules


def _rate(schedule, step):
  return float(schedule(tf.constant(step, tf.int64)))


def test_hand_computed_points():
  # peak 0.32, 110 steps, 10 of warm-up, so the cosine spans steps 10 ... 110 (100 steps).
  schedule = schedules.WarmupCosineDecay(0.32, total_steps=110, warmup_steps=10)
  expected = {
      0: 0.0,                                        # 1) warm-up from 0
      5: 0.16,                                       #    0.32 · 5 / 10
      9: 0.288,                                      #    0.32 · 9 / 10
      10: 0.32,                                      # end of warm-up: the peak
      35: 0.16 * (1 + math.cos(math.pi / 4)),        # 2) a quarter of the cosine: 0.273137
      60: 0.16,                                      #    halfway: 0.32 · ½ (1 + cos π/2)
      85: 0.16 * (1 + math.cos(3 * math.pi / 4)),    #    three quarters: 0.046863
      110: 0.0,                                      # end
      150: 0.0,                                      # 3) after the end
  }
  np.testing.assert_allclose(expected[35], 0.273137, atol=1e-6)
  for step, rate in expected.items():
    np.testing.assert_allclose(_rate(schedule, step), rate, atol=1e-7, err_msg=f"step {step}")


def test_no_warmup_starts_at_the_peak():
  schedule = schedules.WarmupCosineDecay(1.0, total_steps=4, warmup_steps=0)
  np.testing.assert_allclose([_rate(schedule, s) for s in range(5)],
                             [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                              0.5 * (1 - math.cos(math.pi / 4)), 0.0], atol=1e-7)


def test_int32_int64_and_traced_steps_and_a_long_run():
  # 800 epochs of Kinetics-600 at batch 256 (1430 steps per epoch): over a million steps.
  schedule = schedules.WarmupCosineDecay(0.08, total_steps=1_143_950, warmup_steps=7150)
  traced = tf.function(schedule)
  for step in (0, 3575, 7150, 575_550, 1_143_949):
    expected = (0.08 * step / 7150 if step < 7150 else
                0.04 * (1 + math.cos(math.pi * (step - 7150) / (1_143_950 - 7150))))
    for value in (tf.constant(step, tf.int32), tf.constant(step, tf.int64)):
      np.testing.assert_allclose(float(traced(value)), expected, rtol=1e-6, atol=1e-12)
  assert schedule(0).dtype == tf.float32


def test_drives_an_optimizer():
  schedule = schedules.WarmupCosineDecay(0.32, total_steps=20, warmup_steps=4)
  optimizer = keras.optimizers.SGD(schedule)
  w = keras.Variable([0.0])
  for _ in range(3):
    optimizer.apply_gradients([(tf.constant([1.0]), w)])
  # Rates at iterations 0, 1, 2: 0, 0.08, 0.16.
  np.testing.assert_allclose(w.numpy(), [-0.24], rtol=1e-6)


def test_linear_batch_scaling():
  assert schedules.scaled_learning_rate(1024) == pytest.approx(0.32)
  assert schedules.scaled_learning_rate(256) == pytest.approx(0.08)
  assert schedules.scaled_learning_rate(4096) == pytest.approx(1.28)
  assert schedules.scaled_learning_rate(512, base_lr=0.2, reference_batch=256) == pytest.approx(0.4)
  with pytest.raises(ValueError, match="batch_size"):
    schedules.scaled_learning_rate(0)


def test_epochs_to_steps_reproduces_the_reference_release():
  # Kinetics-600 train, 366016 videos at batch 1024: the reference release's YAML has 71488
  # train steps for 200 epochs and 1787 warm-up steps for 5.
  steps_per_epoch = 366016 / 1024
  assert schedules.epochs_to_steps(200, steps_per_epoch) == 71488
  assert schedules.epochs_to_steps(5, steps_per_epoch) == 1787
  assert schedules.epochs_to_steps(800, 210) == 168000
  assert schedules.epochs_to_steps(3, 0.5) == 2  # 1.5 rounds up
  assert schedules.epochs_to_steps(0, 357.4375) == 0  # no warm-up
  schedule = schedules.WarmupCosineDecay.from_epochs(0.32, epochs=200, warmup_epochs=5,
                                                     steps_per_epoch=steps_per_epoch)
  assert (schedule.total_steps, schedule.warmup_steps) == (71488, 1787)
  np.testing.assert_allclose(_rate(schedule, 1787), 0.32, rtol=1e-6)


def test_config_round_trip():
  schedule = schedules.WarmupCosineDecay(0.32, total_steps=100, warmup_steps=5)
  config = schedule.get_config()
  assert config == {"peak_learning_rate": 0.32, "total_steps": 100, "warmup_steps": 5,
                    "name": "warmup_cosine_decay"}
  restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
  assert isinstance(restored, schedules.WarmupCosineDecay) and restored.get_config() == config
  assert _rate(restored, 50) == _rate(schedule, 50)


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match="total_steps"):
    schedules.WarmupCosineDecay(0.1, total_steps=0)
  with pytest.raises(ValueError, match="warmup_steps"):
    schedules.WarmupCosineDecay(0.1, total_steps=10, warmup_steps=11)
  with pytest.raises(ValueError, match="peak_learning_rate"):
    schedules.WarmupCosineDecay(-0.1, total_steps=10)
  with pytest.raises(ValueError, match="steps_per_epoch"):
    schedules.epochs_to_steps(1, 0)


def test_a_config_names_its_schedule():
  schedule = schedules.make_schedule("warmup_cosine", 0.32, total_steps=110, warmup_steps=10)
  assert isinstance(schedule, schedules.WarmupCosineDecay)
  assert (schedule.peak_learning_rate, schedule.total_steps, schedule.warmup_steps) == \
      (0.32, 110, 10)
  assert _rate(schedule, 60) == pytest.approx(0.16)
  with pytest.raises(ValueError, match="unknown learning-rate schedule 'cosine'; expected one of "
                     "warmup_cosine"):
    schedules.make_schedule("cosine", 0.32, total_steps=110, warmup_steps=10)
