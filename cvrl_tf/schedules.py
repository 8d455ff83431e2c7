"""The pretraining learning rate: linear warm-up, then cosine decay to 0; scaled with the batch size.

  scaled_learning_rate  0.32 at global batch 1024, linear in the batch size (SPEC.md §2)
  epochs_to_steps       epochs × steps_per_epoch, rounded to the nearest step
  WarmupCosineDecay     keras LearningRateSchedule: step -> learning rate
  SCHEDULES             the names a config gives (optimizer.schedule) -> their classes
  make_schedule         the schedule a config names

The optimizer calls the schedule with its iteration count before incrementing it, so the update
of step t uses the rate at t: step 0 gets 0 and the last step before `total_steps` a tiny rate.
"""

import math

import keras
import tensorflow as tf


def scaled_learning_rate(batch_size: int, base_lr: float = 0.32,
                         reference_batch: int = 1024) -> float:
  """`base_lr` at `reference_batch` videos, scaled linearly: 0.32 · batch_size / 1024.

  Args:
    batch_size: the GLOBAL batch size in videos (clip pairs), over all replicas.
    base_lr: the learning rate at `reference_batch`.
    reference_batch: the batch size `base_lr` was tuned for.
  """
  if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if not isinstance(reference_batch, int) or reference_batch <= 0:
    raise ValueError(f"reference_batch must be a positive int, got {reference_batch!r}")
  if not base_lr > 0:
    raise ValueError(f"base_lr must be > 0, got {base_lr!r}")
  return base_lr * batch_size / reference_batch


def epochs_to_steps(epochs: float, steps_per_epoch: float) -> int:
  """epochs · steps_per_epoch rounded to the nearest step (halves up); `steps_per_epoch` may be
  fractional (dataset size / global batch).

  Kinetics-600, batch 1024: steps_per_epoch = 366016 / 1024 = 357.4375, so 200 epochs are
  71487.5 → 71488 steps and 5 warm-up epochs 1787.19 → 1787: the reference release's numbers.
  """
  if not epochs >= 0:
    raise ValueError(f"epochs must be >= 0, got {epochs!r}")
  if not steps_per_epoch > 0:
    raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch!r}")
  return int(math.floor(epochs * steps_per_epoch + 0.5))


@keras.saving.register_keras_serializable(package="cvrl_tf")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from 0 to `peak_learning_rate`, then cosine decay to 0 at `total_steps`.

    1) step < W:       lr = peak · step / W
    2) W ≤ step ≤ T:   lr = peak · ½ (1 + cos(π (step − W) / (T − W)))
    3) step > T:       lr = 0

  The cosine starts where the warm-up ends (as in SimCLR). The reference release's Model Garden
  schedule instead runs the cosine from step 0 and warms up to its value at W: at 5 of 200 epochs
  its peak is 0.9985 · peak, a difference of no consequence.

  Args:
    peak_learning_rate: the rate at the end of the warm-up (see `scaled_learning_rate`).
    total_steps: T > 0, the length of the run in optimizer steps.
    warmup_steps: 0 ≤ W ≤ T.
    name: optional, for the graph name scope.
  """

  def __init__(self, peak_learning_rate: float, total_steps: int, warmup_steps: int = 0,
               name: str = "warmup_cosine_decay"):
    super().__init__()
    if not peak_learning_rate >= 0:
      raise ValueError(f"peak_learning_rate must be >= 0, got {peak_learning_rate!r}")
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps <= 0:
      raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if (not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool)
        or not 0 <= warmup_steps <= total_steps):
      raise ValueError(f"warmup_steps must be an int in [0, total_steps={total_steps}], got "
                       f"{warmup_steps!r}")
    self.peak_learning_rate = float(peak_learning_rate)
    self.total_steps = total_steps
    self.warmup_steps = warmup_steps
    self.name = name

  @classmethod
  def from_epochs(cls, peak_learning_rate: float, epochs: float, warmup_epochs: float,
                  steps_per_epoch: float, name: str = "warmup_cosine_decay"):
    """The schedule for `epochs` of training with `warmup_epochs` of warm-up (`epochs_to_steps`)."""
    return cls(peak_learning_rate, epochs_to_steps(epochs, steps_per_epoch),
               epochs_to_steps(warmup_epochs, steps_per_epoch), name=name)

  def __call__(self, step):
    with tf.name_scope(self.name):
      # float64 for the step arithmetic: float32 loses integer steps above 2^24 (16.7 M).
      step = tf.cast(step, tf.float64)
      peak = tf.constant(self.peak_learning_rate, tf.float64)
      warmup = float(self.warmup_steps)
      decay = float(max(self.total_steps - self.warmup_steps, 1))
      warmup_lr = peak * step / max(warmup, 1.0)  # 1)
      progress = tf.clip_by_value((step - warmup) / decay, 0.0, 1.0)  # 2), 3)
      cosine_lr = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
      lr = tf.where(step < warmup, warmup_lr, cosine_lr)
      return tf.cast(lr, tf.float32)

  def get_config(self):
    return {"peak_learning_rate": self.peak_learning_rate, "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps, "name": self.name}


# The schedules a config can name (optimizer.schedule). Each class takes
# (peak_learning_rate, total_steps, warmup_steps).
SCHEDULES = {"warmup_cosine": WarmupCosineDecay}


def make_schedule(name: str, peak_learning_rate: float, total_steps: int,
                  warmup_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
  """The schedule SCHEDULES[name] (e.g. "warmup_cosine") for a run of `total_steps` steps.

  Raises:
    ValueError naming `name` and the schedules there are.
  """
  if name not in SCHEDULES:
    raise ValueError(f"unknown learning-rate schedule {name!r}; expected one of "
                     f"{', '.join(sorted(SCHEDULES))}")
  return SCHEDULES[name](peak_learning_rate, total_steps=total_steps, warmup_steps=warmup_steps)
