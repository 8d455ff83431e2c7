"""The custom training loop every trained experiment shares: segments, checkpoints, logs, NaNs.

A subclass (pretrain.Trainer, classify.Trainer) builds its model and optimizer, and says what one
replica does per step and which data a segment reads. This class runs the steps in multi-step
tf.function calls, sums the replicas' values, writes TensorBoard summaries and the progress line,
saves a checkpoint at the end of every segment and stops on a non-finite loss.

Data are read in segments of `checkpoint_every_steps` steps: the pipeline of the segment that
starts at step s is seeded from (train.seed, s). A run that resumes from the checkpoint at step s
therefore sees exactly the batches an uninterrupted run sees, without saving the input pipeline's
buffers in the checkpoint (gigabytes of videos at Kinetics scale). The price is one pipeline
start per segment.
"""

import abc
import dataclasses
import os
import time
from typing import Callable, Sequence

import tensorflow as tf

from cvrl_tf import config as cfg
from cvrl_tf import resnet3d
from cvrl_tf import runtime


def mix_seed(seed: int, step) -> int:
  """A per-run, per-position seed: the data segment starting at `step`, or the step itself."""
  return (seed * 1_000_003 + step) % (2**31 - 1)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the last checkpoint before it is kept."""


def duration(seconds: float) -> str:
  """'1h02m' or '3m05s'."""
  seconds = int(seconds)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"


class TrainLoop(abc.ABC):
  """The strategy-scoped state of one training run, and its loop.

  Subclasses set `summary_names` (TensorBoard tags of the values `replica_step` returns, the
  first being the loss; a gradient norm is appended), `clips_per_example`, and implement
  `build`, `replica_step`, `dataset` and `restore_initial`. `on_segment_end(step)` runs after
  every checkpoint (periodic evaluation).
  """

  summary_names: Sequence[str] = ()
  clips_per_example: int = 1

  def __init__(self, config, workdir: str, strategy: tf.distribute.Strategy,
               log: Callable[[str], None] = print):
    self.config = config
    self.workdir = workdir
    self.strategy = strategy
    self.log = log
    self.replicas = strategy.num_replicas_in_sync
    if config.train.global_batch_size % self.replicas:
      raise cfg.ConfigError(
          f"train.global_batch_size={config.train.global_batch_size} does not split over "
          f"{self.replicas} replicas; use a multiple of {self.replicas}")
    self.per_replica_batch = config.train.global_batch_size // self.replicas
    with strategy.scope():
      objects = self.build()
      self.first_bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
    self.checkpoint = tf.train.Checkpoint(**objects)
    # Every worker restores from the chief's checkpoints (all workers must resume at the same
    # step); saving is collective, so the other workers write throw-away copies elsewhere.
    self.checkpoint_dir = os.path.join(workdir, "checkpoints")
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, runtime.save_dir(self.checkpoint_dir, strategy),
        max_to_keep=config.train.keep_checkpoints, step_counter=self.optimizer.iterations)
    self.writer = (tf.summary.create_file_writer(os.path.join(workdir, "summaries", "train"))
                   if runtime.is_chief(strategy) else tf.summary.create_noop_writer())
    self._loop = tf.function(self._train_loop)

  # ---- what a subclass provides

  @abc.abstractmethod
  def build(self) -> dict:
    """Creates the model, `self.optimizer` and `self.schedule`; returns the checkpointed objects."""

  @abc.abstractmethod
  def replica_step(self, features, with_gradient_norm: bool):
    """One step on this replica's batch; returns a tuple of global-batch shares."""

  @abc.abstractmethod
  def dataset(self, segment_start: int):
    """The distributed dataset of the segment that starts at `segment_start`."""

  @abc.abstractmethod
  def restore_initial(self) -> str:
    """Initialises a new run (train.init_checkpoint); returns what it did."""

  def on_segment_end(self, step: int) -> None:
    """Runs on every worker after each checkpoint."""

  # ---- shared

  @property
  def step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  def restore(self) -> str:
    """Resumes from the run's latest checkpoint, else initialises it (restore_initial)."""
    latest = tf.train.latest_checkpoint(self.checkpoint_dir)
    if latest:
      try:
        self.checkpoint.restore(latest).assert_existing_objects_matched()
      except (AssertionError, ValueError) as e:
        raise resnet3d.CheckpointMismatchError(
            f"{latest} does not fit this run's model and optimizer ({str(e)[:300]}); was the "
            "workdir made with another config? Use a new --workdir (and --init_checkpoint to "
            "start from its backbone)") from None
      return f"resumed from {latest} at step {self.step}"
    return self.restore_initial()

  def segment_reader(self, reader, segment_start: int):
    """`reader` (an input_pipeline.ReaderConfig) for the data segment starting at `segment_start`:
    per-replica batch, the segment's seed, and determinism when the run asks for it."""
    return dataclasses.replace(
        reader, per_replica_batch_size=self.per_replica_batch,
        seed=mix_seed(self.config.train.seed, segment_start),
        deterministic=self.config.train.deterministic or reader.deterministic)

  def global_gradient_norm(self, gradients) -> tf.Tensor:
    """This replica's share (1/R) of the norm of the summed gradients; call in replica context.

    The optimizer sums gradients over replicas inside apply_gradients, out of sight; the norm of
    that sum needs a sum of our own (an extra all-reduce, once per loop call). The update still
    uses the local gradients, so logging does not change the weights.
    """
    context = tf.distribute.get_replica_context()
    return tf.linalg.global_norm(
        context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)) / self.replicas

  def _run_step(self, iterator, with_gradient_norm: bool):
    shares = self.strategy.run(self.replica_step, args=(next(iterator), with_gradient_norm))
    # One value at a time: MultiWorkerMirroredStrategy.reduce does not take a structure.
    values = tf.stack([self.strategy.reduce(tf.distribute.ReduceOp.SUM, share, axis=None)
                       for share in shares])  # [len(summary_names) + 1]
    bad = tf.logical_and(tf.logical_not(tf.math.is_finite(tf.reduce_sum(values[:-1]))),
                         self.first_bad_step < 0)
    self.first_bad_step.assign(tf.where(bad, self.optimizer.iterations, self.first_bad_step))
    return values

  def _train_loop(self, iterator, num_steps):
    """`num_steps` steps in one call (>= 1); returns the means of the values and the gradient
    norm of the last step."""
    size = len(self.summary_names) + 1
    totals = tf.zeros([size])
    for _ in tf.range(num_steps - 1):
      totals += self._run_step(iterator, with_gradient_norm=False)
    last = self._run_step(iterator, with_gradient_norm=True)
    totals += last
    return tf.concat([totals[:-1] / tf.cast(num_steps, tf.float32), last[-1:]], axis=0)

  def _write_summaries(self, step: int, values, clips_per_s: float) -> None:
    with self.writer.as_default(step=step):
      for name, value in zip(self.summary_names, values):
        tf.summary.scalar(name, float(value))
      tf.summary.scalar("learning_rate", float(self.schedule(step - 1)))
      tf.summary.scalar("gradient_norm", float(values[-1]))
      tf.summary.scalar("clips_per_second", clips_per_s)
    self.writer.flush()

  def _check_finite(self) -> None:
    # first_bad_step holds optimizer.iterations read after the update: the 1-based step number.
    bad = int(self.first_bad_step.numpy())
    if bad >= 0:
      kept = tf.train.latest_checkpoint(self.checkpoint_dir) or "none yet"
      raise NonFiniteLossError(
          f"the loss became NaN or infinite at step {bad}; nothing after the last good "
          f"checkpoint was saved: {kept}. Lower optimizer.base_learning_rate (or lengthen "
          "optimizer.warmup_epochs) or check the input data")

  def progress_line(self, step: int, total: int, values, clips_per_s: float, eta: float) -> str:
    """The logged line; `values` as summary_names (means over the logged steps)."""
    return (f"step {step}/{total}  loss {values[0]:.4f}  lr {float(self.schedule(step - 1)):.4g}  "
            f"{clips_per_s:.1f} clips/s  ETA {duration(eta)}")

  def train(self) -> dict:
    """Runs to config.stop_step from wherever the run is; returns the last logged values."""
    train = self.config.train
    total = self.config.stop_step
    clips_per_step = self.clips_per_example * train.global_batch_size
    last = {}
    run_start, run_start_step = time.monotonic(), self.step
    while self.step < total:
      segment_start = self.step
      segment_end = min(total, (segment_start // train.checkpoint_every_steps + 1)
                        * train.checkpoint_every_steps)
      iterator = iter(self.dataset(segment_start))
      while self.step < segment_end:
        # Calls end on log boundaries so every logged line covers whole, equal-sized calls.
        next_log = (self.step // train.log_every_steps + 1) * train.log_every_steps
        num_steps = min(train.steps_per_loop, segment_end - self.step, next_log - self.step)
        start = time.monotonic()
        values = self._loop(iterator, tf.constant(num_steps)).numpy()
        seconds = time.monotonic() - start
        self._check_finite()
        step = self.step
        if step % train.log_every_steps == 0 or step == total:
          clips_per_s = num_steps * clips_per_step / max(seconds, 1e-9)
          self._write_summaries(step, values, clips_per_s)
          done = step - run_start_step
          eta = (total - step) * (time.monotonic() - run_start) / max(done, 1)
          last = {"step": step, "clips_per_second": clips_per_s, "gradient_norm": float(values[-1])}
          last.update({name: float(v) for name, v in zip(self.summary_names, values)})
          self.log(self.progress_line(step, total, values, clips_per_s, eta))
      self.manager.save(checkpoint_number=self.step)
      runtime.discard_scratch(self.manager.directory, self.checkpoint_dir)
      self.log(f"saved checkpoint at step {self.step}")
      self.on_segment_end(self.step)
    return last
