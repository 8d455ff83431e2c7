"""The custom training loop every trained experiment shares: segments, checkpoints, logs, NaNs.

A subclass (pretrain.Trainer, classify.Trainer) builds its model and optimizer, and says what one
replica does per step and which data a segment reads. This class runs the steps in multi-step
tf.function calls, keeps each replica's values of every step on its device and sums them over the
replicas once per call, writes TensorBoard summaries and the progress line, saves a checkpoint at
the end of every segment and stops on a non-finite loss.

Data are read in segments of `checkpoint_every_steps` steps: the pipeline of the segment that
starts at step s is seeded from (train.seed, s). A run that resumes from the checkpoint at step s
therefore sees exactly the batches an uninterrupted run sees, without saving the input pipeline's
buffers in the checkpoint (gigabytes of videos at Kinetics scale). The price is one pipeline
start per segment. A checkpoint inside a segment (a preemption's) resumes in that segment's
pipeline, past the records the steps before it consumed (skipped before decoding), so it too sees
the uninterrupted run's batches.

Preemption (SIGTERM from GKE, Slurm, a TPU maintenance event): the entry point's signal handler
calls `request_stop`; at the end of the current multi-step call every worker learns whether any
worker was asked to stop (one small collective per call), and if so they all save a
checkpoint at that step and `train` raises `Preempted`. tf.distribute's PreemptionCheckpointHandler
does the same for MultiWorkerMirrored on Borg and GCE GPU VMs, but not for TPU or CPU VMs on GCE,
numbers checkpoints by calls instead of steps and adds its own variable to the checkpoint.

Multi-worker: every worker restores from the workdir's checkpoints, and `restore` checks that they
all reached the same step (a workdir that is not shared, a stale copy on one host) instead of
letting mismatched collectives hang.
"""

import abc
import dataclasses
import functools
import time
from typing import Callable, Optional, Sequence, Tuple

import tensorflow as tf

from cvrl_tf import backbone_checkpoint
from cvrl_tf import config as cfg
from cvrl_tf import loss_scale
from cvrl_tf import runtime
from cvrl_tf import storage

# What a preempted run exits with: 128 + SIGTERM, what schedulers see when SIGTERM kills a process
# and what tf.distribute's preemption handler uses on GCE. Not 0: Kubernetes Jobs and Slurm would
# count the run as finished. Restart the same command to resume.
PREEMPTED_EXIT_CODE = 143


def mix_seed(seed: int, step) -> int:
  """A per-run, per-position seed: the data segment starting at `step`, or the step itself."""
  return (seed * 1_000_003 + step) % (2**31 - 1)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the last checkpoint before it is kept."""


class WorkersDisagreeError(RuntimeError):
  """Workers restored different steps; training them together would hang."""


class Preempted(Exception):
  """The run stopped on request (SIGTERM) after saving a checkpoint at `step`."""

  def __init__(self, step: int, checkpoint: str):
    super().__init__(f"stopped on request (SIGTERM) at step {step}; saved {checkpoint}. Run the "
                     "same command again to resume")
    self.step = step


def batches_per_step(context: tf.distribute.InputContext) -> int:
  """Per-replica batches one host's pipeline yields per step: one for each of its replicas."""
  return context.num_replicas_in_sync // context.num_input_pipelines


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
  every checkpoint (periodic evaluation). Only the chief writes (checkpoints, summaries).
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
    microbatches = config.train.microbatches
    if microbatches < 1 or self.per_replica_batch % microbatches:
      raise cfg.ConfigError(
          f"train.microbatches={microbatches} does not split the per-replica batch of "
          f"{self.per_replica_batch} (train.global_batch_size={config.train.global_batch_size} "
          f"over {self.replicas} replicas); use a divisor of {self.per_replica_batch}")
    with strategy.scope():
      # Before build: the steps scale their losses with it (loss_scale.py).
      self.loss_scale = loss_scale.for_precision(config.train.mixed_precision)
      objects = self.build()
      # [steps_per_loop, values]: each replica's values of its last steps, newest last, in its
      # own copy on its own device. Sync-on-read with SUM, as Keras metrics are: a replica writes
      # its copy without communicating, and reading the variable outside strategy.run sums the
      # copies, the one cross-replica reduction of a call (TPUStrategy: one transfer per core).
      # Scratch, not in the checkpoint.
      self._step_values = tf.Variable(
          tf.zeros([config.train.steps_per_loop, len(self.summary_names) + 1]),
          trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
          aggregation=tf.VariableAggregation.SUM)
    self.checkpoint = tf.train.Checkpoint(**objects, **self.loss_scale.checkpoint_objects())
    # Every worker restores from the chief's checkpoints (all workers must resume at the same
    # step); saving is collective, and runtime.save_checkpoint keeps only the chief's copy.
    self.checkpoint_dir = storage.join(workdir, "checkpoints")
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, self.checkpoint_dir, max_to_keep=config.train.keep_checkpoints,
        step_counter=self.optimizer.iterations)
    self.writer = (tf.summary.create_file_writer(storage.join(workdir, "summaries", "train"))
                   if runtime.is_chief(strategy) else tf.summary.create_noop_writer())
    self._loop = tf.function(self._train_loop)
    # One replica function per value of with_gradient_norm, bound here rather than passed
    # through strategy.run: TPUStrategy turns a Python argument into a tensor, and the norm's
    # full-gradient all-reduce into a tf.cond in every step.
    # Plain Python, not AutoGraph: the step has no tensor-dependent Python control flow, and
    # converting it and everything it calls cost 8.7 s of a 44 s tiny run (RESULTS.md).
    self._replica_steps = {
        flag: self._compiled(tf.autograph.experimental.do_not_convert(
            functools.partial(self._recorded_step, with_gradient_norm=flag)))
        for flag in (False, True)}
    self._min_max = runtime.min_max_over_replicas(strategy)
    # request_stop defers the stop to the next call boundary while `train` runs.
    self._training = False
    self._stop_requested = False

  # ---- what a subclass provides

  @abc.abstractmethod
  def build(self) -> dict:
    """Creates the model, `self.optimizer` and `self.schedule`; returns the checkpointed objects."""

  @abc.abstractmethod
  def replica_step(self, features, with_gradient_norm: bool):
    """One step on this replica's batch; returns a tuple of global-batch shares."""

  @abc.abstractmethod
  def dataset(self, segment_start: int, skip_steps: int):
    """The distributed dataset of the segment that starts at `segment_start`, without the
    batches of its first `skip_steps` steps (a run resumed inside the segment). Skip per-replica
    batches with the pipelines' `skip_batches` (`skip_steps * batches_per_step(context)`)."""

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
    """Resumes from the run's latest checkpoint, else initialises it (restore_initial).

    A collective: every worker must call it, and all must reach the same step.

    Raises:
      WorkersDisagreeError naming the lowest and highest step when they do not.
    """
    latest = tf.train.latest_checkpoint(self.checkpoint_dir)
    if latest:
      try:
        self.checkpoint.restore(latest).assert_existing_objects_matched()
      except (AssertionError, ValueError) as e:
        raise backbone_checkpoint.CheckpointMismatchError(
            f"{latest} does not fit this run's model and optimizer ({str(e)[:300]}); was the "
            "workdir made with another config? Use a new --workdir (and --init_checkpoint to "
            "start from its backbone)") from None
      done = f"resumed from {latest} at step {self.step}"
    else:
      done = self.restore_initial()
    check_same_step(self.step, self._min_max(self.step), self.checkpoint_dir, latest)
    return done

  def request_stop(self) -> bool:
    """Asks the run to stop (for a SIGTERM handler); returns whether `train` will act on it.

    While `train` runs, it stops at the end of the current call (or checkpoint, or periodic
    evaluation): every worker saves a checkpoint of that step, then `train` raises Preempted.
    Outside `train` (set-up, a final evaluation) there is nothing unsaved, and this returns
    False: the caller then exits at once.
    """
    self._stop_requested = True
    return self._training

  def _stop_agreed(self) -> bool:
    # Any worker asked: all stop at this step (a collective after every call, on every worker).
    return self._min_max(int(self._stop_requested))[1] > 0

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

  def _compiled(self, replica_step):
    """`replica_step`, XLA-compiled whole when train.jit_compile is set (what TPUStrategy does
    to every step anyway; on CPU the test suite's proxy for it)."""
    if not self.config.train.jit_compile:
      return replica_step
    return tf.function(replica_step, jit_compile=True)

  def _recorded_step(self, features, with_gradient_norm: bool) -> None:
    """`replica_step`, its values appended to this replica's copy of _step_values (the oldest
    row drops out): on the device, no communication."""
    shares = tf.stack(self.replica_step(features, with_gradient_norm))  # [values]
    rows = self._step_values.value()                         # this replica's copy
    self._step_values.assign(tf.concat([rows[1:], shares[None]], axis=0))

  def _train_loop(self, iterator, num_steps):
    """`num_steps` steps in one call, 1 <= num_steps <= train.steps_per_loop.

    Returns:
      values: [len(summary_names) + 1], the means over the steps of the values summed over the
        replicas, then the gradient norm of the last step.
      finite_steps: how many steps came before the first whose summed values (the norm aside)
        were not finite; num_steps when all were.
    """
    tf.debugging.assert_less_equal(
        num_steps, self.config.train.steps_per_loop,
        message="a call runs at most train.steps_per_loop steps (the rows of _step_values)")
    for _ in tf.range(num_steps - 1):
      self.strategy.run(self._replica_steps[False], args=(next(iterator),))
    self.strategy.run(self._replica_steps[True], args=(next(iterator),))
    # The call's only cross-replica reduction: one tensor (MultiWorkerMirroredStrategy.reduce
    # takes no structure). Rows before the call's own are older calls' and stay out.
    rows = self.strategy.reduce(tf.distribute.ReduceOp.SUM, self._step_values, axis=None)
    rows = tf.convert_to_tensor(rows)[self.config.train.steps_per_loop - num_steps:]
    # [num_steps, values]: row i is step i's values summed over the replicas, what reducing
    # each step's values on their own gave; the checks and means below are theirs. A value that
    # is not finite on one replica is not finite in the sum (NaN and ±inf propagate).
    finite = tf.math.is_finite(tf.reduce_sum(rows[:, :-1], axis=1))          # [num_steps]
    finite_steps = tf.reduce_min(tf.where(finite, num_steps, tf.range(num_steps)))
    means = tf.reduce_sum(rows[:, :-1], axis=0) / tf.cast(num_steps, tf.float32)
    return tf.concat([means, rows[-1, -1:]], axis=0), finite_steps

  def _write_summaries(self, step: int, values, clips_per_s: float) -> None:
    with self.writer.as_default(step=step):
      for name, value in zip(self.summary_names, values):
        tf.summary.scalar(name, float(value))
      tf.summary.scalar("learning_rate", float(self.schedule(step - 1)))
      tf.summary.scalar("gradient_norm", float(values[-1]))
      tf.summary.scalar("clips_per_second", clips_per_s)
      for name, value in self.loss_scale.summaries().items():
        tf.summary.scalar(name, value)
    self.writer.flush()

  def _check_finite(self, start: int, finite_steps: int, num_steps: int) -> None:
    """Raises NonFiniteLossError naming the first non-finite step of a call of `num_steps`
    steps from step `start` that returned `finite_steps` (see _train_loop)."""
    if finite_steps < num_steps:
      # 1-based: optimizer.iterations after that step (each step advances it by one).
      bad = start + finite_steps + 1
      kept = tf.train.latest_checkpoint(self.checkpoint_dir) or "none yet"
      raise NonFiniteLossError(
          f"the loss became NaN or infinite at step {bad}; nothing after the last good "
          f"checkpoint was saved: {kept}. Lower optimizer.base_learning_rate (or lengthen "
          "optimizer.warmup_epochs) or check the input data")

  def _check_loss_scale(self) -> None:
    # Halved on every overflow: below 1, float16 overflows even unscaled (a forward pass whose
    # values exceed 65504 gives a non-finite loss and stops in _check_finite instead).
    scale = self.loss_scale.summaries().get("loss_scale", 1.0)
    if scale < 1.0:
      raise NonFiniteLossError(
          f"the gradients overflowed float16 at every loss scale down to {scale * 2:g} (step "
          f"{self.step}, {self.loss_scale.summaries()['skipped_steps']:.0f} steps skipped); "
          "train with train.mixed_precision=mixed_bfloat16 or float32")

  def progress_line(self, step: int, total: int, values, clips_per_s: float, eta: float) -> str:
    """The logged line; `values` as summary_names (means over the logged steps)."""
    return (f"step {step}/{total}  loss {values[0]:.4f}  lr {float(self.schedule(step - 1)):.4g}  "
            f"{clips_per_s:.1f} clips/s  ETA {duration(eta)}")

  def _save(self) -> str:
    runtime.save_checkpoint(self.manager, self.step, self.strategy)
    self.log(f"saved checkpoint at step {self.step}")
    return storage.join(self.checkpoint_dir, f"ckpt-{self.step}")

  def train(self) -> dict:
    """Runs to config.stop_step from wherever the run is; returns the last logged values.

    Raises:
      Preempted: after `request_stop`, once every worker saved a checkpoint of the same step.
    """
    train = self.config.train
    total, every = self.config.stop_step, train.checkpoint_every_steps
    clips_per_step = self.clips_per_example * train.global_batch_size
    last = {}
    run_start, run_start_step = time.monotonic(), self.step
    try:
      self._training = True
      while self.step < total:
        # A run resumed inside a segment reads on in that segment's pipeline. A step skipped
        # for a float16 overflow consumed a batch without advancing the step: the segment's
        # data_offset counts them, so a resumed run passes over exactly the batches the
        # uninterrupted one consumed (the segment then reads more than `every` batches).
        # Counting consumed batches, rather than retrying a batch inside the step, keeps the
        # step a fixed graph (no loop around forward and backward, BN updates and
        # collectives) on every strategy, TPU included.
        segment_start = self.step // every * every
        segment_end = min(total, segment_start + every)
        iterator = iter(self.dataset(
            segment_start, self.step - segment_start + self.loss_scale.data_offset()))
        stop = False
        while self.step < segment_end and not stop:
          # Calls end on log boundaries so every logged line covers whole, equal-sized calls.
          next_log = (self.step // train.log_every_steps + 1) * train.log_every_steps
          first = self.step
          num_steps = min(train.steps_per_loop, segment_end - first, next_log - first)
          start = time.monotonic()
          values, finite_steps = self._loop(iterator, tf.constant(num_steps))
          values = values.numpy()
          seconds = time.monotonic() - start
          self._check_finite(first, int(finite_steps), num_steps)
          self._check_loss_scale()
          step = self.step
          if step % train.log_every_steps == 0 or step == total:
            clips_per_s = num_steps * clips_per_step / max(seconds, 1e-9)
            self._write_summaries(step, values, clips_per_s)
            done = step - run_start_step
            eta = (total - step) * (time.monotonic() - run_start) / max(done, 1)
            last = {"step": step, "clips_per_second": clips_per_s,
                    "gradient_norm": float(values[-1])}
            last.update({name: float(v) for name, v in zip(self.summary_names, values)})
            self.log(self.progress_line(step, total, values, clips_per_s, eta))
          stop = self._stop_agreed()
        if self.step % every == 0:   # a data-segment boundary (not only max_steps' end)
          self.loss_scale.start_segment()   # saved with it: a resume here reads from 0
        saved = self._save()
        if not stop:
          self.on_segment_end(self.step)
          stop = self._stop_agreed()  # asked during the save or the evaluation
        if stop:
          raise Preempted(self.step, saved)
    finally:
      self._training = False
    return last


def check_same_step(step: int, min_max: Tuple[int, int], checkpoint_dir: str,
                    latest: Optional[str]) -> None:
  """Fails when the workers' restored steps (`min_max`: lowest, highest) differ.

  Raises:
    WorkersDisagreeError naming both steps, this worker's and what it read.
  """
  low, high = min_max
  if low != high:
    read = f"restored {latest}" if latest else "found no checkpoint"
    raise WorkersDisagreeError(
        f"workers restored different steps ({low} and {high}); this worker {read} in "
        f"{checkpoint_dir!r} (step {step}). Every worker must read the same checkpoints: is the "
        "workdir a local path on each host instead of shared storage (gs://, NFS), or a stale "
        "copy on one of them?")
