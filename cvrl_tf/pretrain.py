"""Pretraining: the online network, the objective and the training step, on the shared loop.

The step feeds the ρ clips of each video (data.num_clips) through the online backbone + head and
hands them to the objective (cvrl_tf.objectives: CVRL's / ρSimCLR's NT-Xent, ρMoCo, ρBYOL,
ρSwAV), which keeps its own state (momentum network, queue, prototypes) in the checkpoint.

Driven by cvrl_tf.train. Resuming sees the same batches as an uninterrupted run: see loop.py.
"""

import dataclasses

import keras
import tensorflow as tf

from cvrl_tf import backbone_checkpoint
from cvrl_tf import input_pipeline
from cvrl_tf import lars
from cvrl_tf import microbatch
from cvrl_tf import loop
from cvrl_tf import losses
from cvrl_tf import networks
from cvrl_tf import objectives
from cvrl_tf import resnet3d
from cvrl_tf import schedules

NonFiniteLossError = loop.NonFiniteLossError


def build_optimizer(config, layers, variables):
  """LARS (kernels adapted and decayed, BN and biases not) or SGD (L2 in the loss); + schedule.

  Args:
    config: an ExperimentConfig or ClassificationExperimentConfig.
    layers: the trained layers (their BN parameters and biases are excluded from LARS).
    variables: the variables the optimizer updates.
  """
  opt = config.optimizer
  schedule = schedules.make_schedule(opt.schedule, config.learning_rate, config.total_steps,
                                     config.warmup_steps)
  if opt.name == "lars":
    optimizer = lars.LARS(schedule, momentum=opt.momentum, weight_decay=opt.weight_decay,
                          trust_coefficient=opt.trust_coefficient)
    optimizer.exclude_variables([v for layer in layers for v in lars.non_kernel_variables(layer)])
  else:
    optimizer = keras.optimizers.SGD(schedule, momentum=opt.momentum, nesterov=False)
  # Slots must exist before the traced step runs under a strategy (Keras 3).
  optimizer.build(variables)
  return optimizer, schedule


def restore_initial_backbone(backbone: resnet3d.ResNet3D, path: str) -> str:
  """Loads `--init_checkpoint` into the backbone, or fails naming what did not match.

  Accepts a cvrl_tf backbone checkpoint (import_checkpoint's output, a directory), a cvrl_tf
  training checkpoint (a prefix or its directory), or a reference-release backbone checkpoint.
  """
  try:
    count = backbone_checkpoint.restore_backbone_checkpoint(backbone, path)
    return f"restored {count} backbone variables from {path}"
  except backbone_checkpoint.CheckpointMismatchError as ours:
    try:
      count = backbone_checkpoint.load_model_garden_checkpoint(backbone, path)
      return f"loaded {count} backbone variables from the reference checkpoint {path}"
    except backbone_checkpoint.CheckpointMismatchError as reference:
      raise backbone_checkpoint.CheckpointMismatchError(
          f"--init_checkpoint={path!r} matches this backbone neither as a cvrl_tf checkpoint "
          f"({ours}) nor as a reference-release checkpoint ({reference})") from None


def replicated_rows(data: input_pipeline.PretrainDataConfig, context: tf.distribute.InputContext,
                    skip_steps: int = 0) -> tf.data.Dataset:
  """This host's rows of the global batches every host builds alike (input_sharding=replicate).

  Replica r of host h takes rows [(h·R_h + r)·B, (h·R_h + r + 1)·B) of each global batch, as it
  would on a single host (B = data.reader.per_replica_batch_size, R_h replicas per host). The
  order is deterministic even when the run is not: a sloppy interleave or map would let each
  host reorder its records and build a different "identical" batch.

  Args:
    skip_steps: global batches to pass over (a run resumed inside a data segment).

  Returns:
    Dataset of {"view_1", ..., "view_ρ"}: [B, T, S, S, 3], the host's replicas' batches in turn.
  """
  per_replica = data.reader.per_replica_batch_size
  global_batch = input_pipeline.global_batch_size(per_replica, context)
  whole = dataclasses.replace(data, reader=dataclasses.replace(
      data.reader, per_replica_batch_size=global_batch, deterministic=True))
  start = context.input_pipeline_id * loop.batches_per_step(context) * per_replica
  stop = start + loop.batches_per_step(context) * per_replica
  dataset = input_pipeline.pretrain_dataset(whole, None, skip_batches=skip_steps)
  dataset = dataset.map(lambda batch: {k: v[start:stop] for k, v in batch.items()})
  return dataset.unbatch().batch(per_replica, drop_remainder=True)


class Trainer(loop.TrainLoop):
  """One pretraining run: backbone + projection head, the configured objective, LARS or SGD."""

  def build(self) -> dict:
    data = self.config.data
    self.clips_per_example = data.num_clips
    self.model = networks.build_model(self.config.model, data.num_frames, data.crop_size)
    self.objective = objectives.make_objective(self.config, self.model)
    state = self.objective.build()
    names = self.objective.summary_names
    self.summary_names = (names[0], "loss/regularization") + tuple(names[1:])
    layers = [self.model.backbone, self.model.head, *self.objective.trained_layers]
    self.network_variables = self.model.trainable_variables
    self.variables = self.network_variables + self.objective.trainable_variables
    self.optimizer, self.schedule = build_optimizer(self.config, layers, self.variables)
    self.kernels = [v for layer in layers for v in lars.kernel_variables(layer)]
    return dict(state, backbone=self.model.backbone, head=self.model.head,
                optimizer=self.optimizer)

  def restore_initial(self) -> str:
    done = "started from random initialisation"
    if self.config.train.init_checkpoint:
      done = restore_initial_backbone(self.model.backbone, self.config.train.init_checkpoint)
    self.objective.initialize()
    return done

  # ---- the step

  def _augment(self, features):
    if not self.config.data.augment_in_step:
      return features
    context = tf.distribute.get_replica_context()
    seed = tf.stack([loop.mix_seed(self.config.train.seed, self.optimizer.iterations),
                     tf.cast(context.replica_id_in_sync_group, tf.int64)])
    seed = tf.cast(seed, tf.int32)
    return input_pipeline.augment_pretrain_batch(features, seed, self.config.data.augmentation)

  def _clips(self, features) -> tf.Tensor:
    """[ρB, T, S, S, 3]: the views concatenated, clip k of video b at row k·B + b."""
    return tf.concat([features[name] for name in self.config.data.view_names], axis=0)

  def _regularization(self) -> tf.Tensor:
    """This replica's share of the SGD recipe's L2 term (LARS decays inside the optimizer)."""
    if self.config.optimizer.name != "sgd":
      return tf.constant(0.0)
    return losses.weight_decay_loss(self.kernels,
                                    self.config.optimizer.weight_decay) / self.replicas

  def _loss_and_gradients(self, features, step):
    """(StepOutputs, regularization share, gradients of self.variables) of the whole batch, in
    one piece; the gradients are of S · loss (S the loss scale, 1 unless float16)."""
    with tf.GradientTape() as tape:
      out = self.objective.loss(self._clips(features), step)
      regularization = self._regularization()
      # `out.loss` is already this replica's share of the global-mean loss (see losses.py).
      loss = self.loss_scale.scaled(out.loss + regularization)
    return out, regularization, tape.gradient(loss, self.variables)

  def _microbatched_loss_and_gradients(self, features, step):
    """The same, in train.microbatches chunks of videos (all ρ clips of a video in one chunk),
    through the gradient cache: the loss still sees the whole global batch (microbatch.py)."""
    k = self.config.train.microbatches
    views = [microbatch.split(features[name], k) for name in self.config.data.view_names]
    chunks = [tf.concat(chunk_views, axis=0) for chunk_views in zip(*views)]  # k × [ρB/k, ...]

    def loss_on(projections, targets):
      out = self.objective.loss_on(projections, targets, step)
      # Scaled here, the gradient with respect to the projections (float32) is S · G, and each
      # chunk's backward pass through the float16 network carries it: the sum of the chunks'
      # gradients is that of S · loss, as in one piece.
      return self.loss_scale.scaled(out.loss), out

    online = [self.model.backbone, self.model.head]
    out, gradients = microbatch.gradient_cache(
        chunks, self.objective.project, self.objective.targets, loss_on,
        self.network_variables, self.objective.trainable_variables,
        reset_after_forward=[v for layer in online for v in layer.non_trainable_weights])
    with tf.GradientTape() as tape:
      regularization = self._regularization()
      scaled_regularization = self.loss_scale.scaled(regularization)
    if self.config.optimizer.name == "sgd":
      gradients = microbatch.add(gradients,
                                 tape.gradient(scaled_regularization, self.variables))
    return out, regularization, gradients

  def replica_step(self, features, with_gradient_norm: bool):
    """One optimisation step on this replica's batch; returns global-batch shares."""
    features = self._augment(features)
    # k, the steps before this one: read before apply_gradients increments it.
    step = tf.convert_to_tensor(self.optimizer.iterations)
    if self.config.train.microbatches > 1:
      out, regularization, gradients = self._microbatched_loss_and_gradients(features, step)
    else:
      out, regularization, gradients = self._loss_and_gradients(features, step)
    # ÷ S: from here on the gradients of the loss; not finite on some replica: skip the step.
    gradients, finite = self.loss_scale.unscale(gradients)
    gradients = self.objective.gradients(gradients, self.variables, step)
    gradient_norm = (self.global_gradient_norm(gradients) if with_gradient_norm
                     else tf.constant(0.0))
    self.loss_scale.apply_if_finite(finite, self._update, gradients, out.state, step)
    return (out.loss, regularization, *out.metrics, gradient_norm)

  def _update(self, gradients, state, step):
    """The optimizer step, then the objective's (momentum network, queue, prototypes)."""
    self.optimizer.apply_gradients(zip(gradients, self.variables))
    self.objective.after_update(state, step)

  # ---- the data

  def dataset(self, segment_start: int, skip_steps: int = 0):
    data = self.config.data
    reader = self.segment_reader(data.reader, segment_start)
    data = dataclasses.replace(data, reader=reader)
    if self.config.train.input_sharding == "files":
      return self.strategy.distribute_datasets_from_function(
          lambda context: input_pipeline.pretrain_dataset(
              data, context, skip_batches=skip_steps * loop.batches_per_step(context)))
    return self.strategy.distribute_datasets_from_function(
        lambda context: replicated_rows(data, context, skip_steps))

  # ---- the log

  def progress_line(self, step, total, values, clips_per_s, eta) -> str:
    named = dict(zip(self.summary_names, values))
    accuracy = (f"acc {named['contrast/accuracy']:.3f}  " if "contrast/accuracy" in named
                else "")
    # Near 0: the embeddings are collapsing (losses.embedding_spread).
    spread = (f"spread {named[objectives.SPREAD]:.2f}  " if objectives.SPREAD in named else "")
    return (f"step {step}/{total}  loss {values[0] + values[1]:.4f}  {accuracy}{spread}"
            f"lr {float(self.schedule(step - 1)):.4g}  "
            f"{clips_per_s:.1f} clips/s  ETA {loop.duration(eta)}")

  def train(self) -> dict:
    last = super().train()
    if last:
      last["loss"] = last[self.summary_names[0]] + last["loss/regularization"]
      if "contrast/accuracy" in last:
        last["contrast_accuracy"] = last["contrast/accuracy"]
        last["contrast_entropy"] = last["contrast/entropy"]
      if objectives.SPREAD in last:
        last["embedding_spread"] = last[objectives.SPREAD]
    return last
