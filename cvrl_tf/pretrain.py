"""CVRL pretraining: the model, the training step and the loop. Driven by cvrl_tf.train.

Data are read in segments of `checkpoint_every_steps` steps: the pipeline of the segment that
starts at step s is seeded from (train.seed, s). A run that resumes from the checkpoint at step s
therefore sees exactly the batches an uninterrupted run sees, without saving the input pipeline's
buffers in the checkpoint (gigabytes of videos at Kinetics scale). The price is one pipeline
start per segment.
"""

import dataclasses
import os
import time
from typing import Callable

import keras
import tensorflow as tf

from cvrl_tf import config as cfg
from cvrl_tf import heads
from cvrl_tf import input_pipeline
from cvrl_tf import lars
from cvrl_tf import losses
from cvrl_tf import resnet3d
from cvrl_tf import runtime
from cvrl_tf import schedules


def _mix_seed(seed: int, step) -> int:
  """A per-run, per-position seed: the data segment starting at `step`, or the step itself."""
  return (seed * 1_000_003 + step) % (2**31 - 1)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the last checkpoint before it is kept."""


@dataclasses.dataclass
class Model:
  backbone: resnet3d.ResNet3D
  head: heads.ProjectionHead

  @property
  def trainable_variables(self):
    return self.backbone.trainable_variables + self.head.trainable_variables


def build_model(model: cfg.ModelConfig, num_frames: int, crop_size: int) -> Model:
  """Backbone + projection head, built (variables created) for [B, T, S, S, 3] clips."""
  backbone = resnet3d.ResNet3D(
      depth=model.depth, width_multiplier=model.width_multiplier,
      stem_filters=model.stem_filters, stage_filters=model.stage_filters,
      stem_temporal_kernel=model.stem_temporal_kernel,
      stem_temporal_stride=model.stem_temporal_stride, temporal_kernels=model.temporal_kernels,
      sync_batch_norm=model.sync_batch_norm, bn_momentum=model.bn_momentum,
      bn_epsilon=model.bn_epsilon)
  backbone.build((None, num_frames, crop_size, crop_size, 3))
  head = heads.ProjectionHead(
      hidden_sizes=model.head_hidden_sizes, output_size=model.head_output_size,
      bn_momentum=model.head_bn_momentum, bn_epsilon=model.bn_epsilon,
      sync_batch_norm=model.sync_batch_norm)
  head.build((None, backbone.output_channels))
  return Model(backbone, head)


def build_optimizer(config: cfg.ExperimentConfig, model: Model):
  """LARS (kernels adapted and decayed, BN and biases not) or the reference SGD; + schedule."""
  opt = config.optimizer
  schedule = schedules.WarmupCosineDecay(config.learning_rate, total_steps=config.total_steps,
                                         warmup_steps=config.warmup_steps)
  if opt.name == "lars":
    optimizer = lars.LARS(schedule, momentum=opt.momentum, weight_decay=opt.weight_decay,
                          trust_coefficient=opt.trust_coefficient)
    optimizer.exclude_variables(lars.non_kernel_variables(model.backbone)
                                + lars.non_kernel_variables(model.head))
  else:
    optimizer = keras.optimizers.SGD(schedule, momentum=opt.momentum, nesterov=False)
  # Slots must exist before the traced step runs under a strategy (Keras 3).
  optimizer.build(model.trainable_variables)
  return optimizer, schedule


def restore_initial_backbone(backbone: resnet3d.ResNet3D, path: str) -> str:
  """Loads `--init_checkpoint` into the backbone, or fails naming what did not match.

  Accepts a cvrl_tf backbone checkpoint (import_checkpoint's output, a directory), a cvrl_tf
  training checkpoint (a prefix or its directory), or a reference-release backbone checkpoint.
  """
  try:
    count = resnet3d.restore_backbone_checkpoint(backbone, path)
    return f"restored {count} backbone variables from {path}"
  except resnet3d.CheckpointMismatchError as ours:
    try:
      count = resnet3d.load_model_garden_checkpoint(backbone, path)
      return f"loaded {count} backbone variables from the reference checkpoint {path}"
    except resnet3d.CheckpointMismatchError as reference:
      raise resnet3d.CheckpointMismatchError(
          f"--init_checkpoint={path!r} matches this backbone neither as a cvrl_tf checkpoint "
          f"({ours}) nor as a reference-release checkpoint ({reference})") from None


class Trainer:
  """Owns the strategy-scoped state of one pretraining run and runs its loop."""

  def __init__(self, config: cfg.ExperimentConfig, workdir: str,
               strategy: tf.distribute.Strategy, log: Callable[[str], None] = print):
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
    data = config.data
    with strategy.scope():
      self.model = build_model(config.model, data.num_frames, data.crop_size)
      self.optimizer, self.schedule = build_optimizer(config, self.model)
      self.first_bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
    self.kernels = (lars.kernel_variables(self.model.backbone)
                    + lars.kernel_variables(self.model.head))
    self.checkpoint = tf.train.Checkpoint(backbone=self.model.backbone, head=self.model.head,
                                          optimizer=self.optimizer)
    # Every worker restores from the chief's checkpoints (all workers must resume at the same
    # step); saving is collective, so the other workers write throw-away copies elsewhere.
    self.checkpoint_dir = os.path.join(workdir, "checkpoints")
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, runtime.save_dir(self.checkpoint_dir, strategy),
        max_to_keep=config.train.keep_checkpoints, step_counter=self.optimizer.iterations)
    self.writer = (tf.summary.create_file_writer(os.path.join(workdir, "summaries", "train"))
                   if runtime.is_chief(strategy) else tf.summary.create_noop_writer())
    self._loop = tf.function(self._train_loop)

  @property
  def step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  def restore(self) -> str:
    """Resumes from the run's latest checkpoint, else loads train.init_checkpoint, else nothing."""
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
    if self.config.train.init_checkpoint:
      return restore_initial_backbone(self.model.backbone, self.config.train.init_checkpoint)
    return "started from random initialisation"

  # ---- the step

  def _augment(self, features):
    if not self.config.data.augment_in_step:
      return features
    context = tf.distribute.get_replica_context()
    seed = tf.stack([_mix_seed(self.config.train.seed, self.optimizer.iterations),
                     tf.cast(context.replica_id_in_sync_group, tf.int64)])
    seed = tf.cast(seed, tf.int32)
    return input_pipeline.augment_pretrain_batch(features, seed, self.config.data.augmentation)

  def _replica_step(self, features, with_gradient_norm: bool):
    """One optimisation step on this replica's batch; returns global-batch shares."""
    features = self._augment(features)
    clips = tf.concat([features["view_1"], features["view_2"]], axis=0)  # [2B, T, S, S, 3]
    variables = self.model.trainable_variables
    with tf.GradientTape() as tape:
      pooled = self.model.backbone(clips, training=True)["pooled"]       # [2B, C]
      projection_1, projection_2 = tf.split(self.model.head(pooled, training=True), 2)
      out = losses.nt_xent(projection_1, projection_2, self.config.train.temperature)
      regularization = tf.constant(0.0)
      if self.config.optimizer.name == "sgd":  # LARS decays inside the optimizer
        regularization = losses.weight_decay_loss(self.kernels, self.config.optimizer.weight_decay)
      # `out.loss` is already this replica's share of the global-mean loss (see losses.py).
      loss = out.loss + regularization / self.replicas
    gradients = tape.gradient(loss, variables)
    gradient_norm = tf.constant(0.0)
    if with_gradient_norm:
      # The optimizer sums gradients over replicas inside apply_gradients, out of sight; the norm
      # of that sum needs a sum of our own (an extra all-reduce, once per loop call). The update
      # still uses the local gradients, so logging does not change the weights.
      context = tf.distribute.get_replica_context()
      # Every replica holds the whole norm; as a share (1/R of it) it sums to the norm again.
      gradient_norm = tf.linalg.global_norm(
          context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)) / self.replicas
    self.optimizer.apply_gradients(zip(gradients, variables))
    return (out.loss, regularization / self.replicas, out.contrast_accuracy,
            out.contrast_entropy, gradient_norm)

  def _run_step(self, iterator, with_gradient_norm: bool):
    shares = self.strategy.run(self._replica_step, args=(next(iterator), with_gradient_norm))
    # One value at a time: MultiWorkerMirroredStrategy.reduce does not take a structure.
    values = tf.stack([self.strategy.reduce(tf.distribute.ReduceOp.SUM, share, axis=None)
                       for share in shares])  # [5]
    finite = tf.math.is_finite(values[0] + values[1])
    bad = tf.logical_and(tf.logical_not(finite), self.first_bad_step < 0)
    self.first_bad_step.assign(tf.where(bad, self.optimizer.iterations, self.first_bad_step))
    return values

  def _train_loop(self, iterator, num_steps):
    """`num_steps` steps in one call (>= 1); returns the mean of [loss, reg, acc, ent] and the
    gradient norm of the last step."""
    totals = tf.zeros([5])
    for _ in tf.range(num_steps - 1):
      totals += self._run_step(iterator, with_gradient_norm=False)
    last = self._run_step(iterator, with_gradient_norm=True)
    totals += last
    return tf.concat([totals[:4] / tf.cast(num_steps, tf.float32), last[4:]], axis=0)

  # ---- the loop

  def _dataset(self, segment_start: int):
    data = self.config.data
    reader = dataclasses.replace(
        data.reader, per_replica_batch_size=self.per_replica_batch,
        seed=_mix_seed(self.config.train.seed, segment_start),
        deterministic=self.config.train.deterministic or data.reader.deterministic)
    data = dataclasses.replace(data, reader=reader)
    if self.config.train.input_sharding == "files":
      return self.strategy.distribute_datasets_from_function(
          lambda context: input_pipeline.pretrain_dataset(data, context))
    global_batch = self.config.train.global_batch_size
    whole = dataclasses.replace(
        data, reader=dataclasses.replace(reader, per_replica_batch_size=global_batch))

    def rows_of_this_host(context):
      # Every host builds the same global batches; replica r of host h takes rows
      # [(h·R_h + r)·B, (h·R_h + r + 1)·B), as it would on a single host.
      local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
      start = context.input_pipeline_id * local_replicas * self.per_replica_batch
      stop = start + local_replicas * self.per_replica_batch
      dataset = input_pipeline.pretrain_dataset(whole, None)
      dataset = dataset.map(lambda batch: {k: v[start:stop] for k, v in batch.items()})
      return dataset.unbatch().batch(self.per_replica_batch, drop_remainder=True)

    return self.strategy.distribute_datasets_from_function(rows_of_this_host)

  def _write_summaries(self, step: int, values, clips_per_s: float) -> None:
    loss, regularization, accuracy, entropy, gradient_norm = (float(v) for v in values)
    with self.writer.as_default(step=step):
      tf.summary.scalar("loss/total", loss + regularization)
      tf.summary.scalar("loss/contrastive", loss)
      tf.summary.scalar("loss/regularization", regularization)
      tf.summary.scalar("contrast/accuracy", accuracy)
      tf.summary.scalar("contrast/entropy", entropy)
      tf.summary.scalar("learning_rate", float(self.schedule(step - 1)))
      tf.summary.scalar("gradient_norm", gradient_norm)
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

  def train(self) -> dict:
    """Runs to config.stop_step from wherever the run is; returns the last logged values."""
    train = self.config.train
    total = self.config.stop_step
    clips_per_step = 2 * train.global_batch_size
    last = {}
    run_start, run_start_step = time.monotonic(), self.step
    while self.step < total:
      segment_start = self.step
      segment_end = min(total, (segment_start // train.checkpoint_every_steps + 1)
                        * train.checkpoint_every_steps)
      iterator = iter(self._dataset(segment_start))
      while self.step < segment_end:
        # Calls end on log boundaries so every logged line covers whole, equal-sized calls.
        next_log = (self.step // train.log_every_steps + 1) * train.log_every_steps
        num_steps = min(train.steps_per_loop, segment_end - self.step, next_log - self.step)
        start = time.monotonic()
        values = self._loop(iterator, tf.constant(num_steps))
        values = values.numpy()
        seconds = time.monotonic() - start
        self._check_finite()
        step = self.step
        if step % train.log_every_steps == 0 or step == total:
          clips_per_s = num_steps * clips_per_step / max(seconds, 1e-9)
          self._write_summaries(step, values, clips_per_s)
          done = step - run_start_step
          rate = (time.monotonic() - run_start) / max(done, 1)
          eta = (total - step) * rate
          last = {"step": step, "loss": float(values[0] + values[1]),
                  "contrast_accuracy": float(values[2]), "contrast_entropy": float(values[3]),
                  "clips_per_second": clips_per_s}
          self.log(f"step {step}/{total}  loss {last['loss']:.4f}  "
                   f"acc {values[2]:.3f}  lr {float(self.schedule(step - 1)):.4g}  "
                   f"{clips_per_s:.1f} clips/s  ETA {_duration(eta)}")
      self.manager.save(checkpoint_number=self.step)
      runtime.discard_scratch(self.manager.directory, self.checkpoint_dir)
      self.log(f"saved checkpoint at step {self.step}")
    return last


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"
