"""Linear evaluation, fine-tuning and semi-supervised fine-tuning, on the shared loop.

  linear_eval  the backbone is frozen, BN statistics included (it runs in inference mode and
               receives no gradients); only the classifier (L2-normalise -> Dense) trains.
  finetune     every layer trains; the backbone's BN uses batch statistics (synchronized when
               model.sync_batch_norm). With evaluation.label_fraction < 1 it trains on a
               class-balanced subset of the labelled videos: the semi-supervised protocol.

A run starts from train.init_checkpoint (a pretraining checkpoint, an imported backbone or a
reference-release backbone) and refuses to start when that does not load: see
pretrain.restore_initial_backbone. Evaluation (cvrl_tf.evaluate, the 30-view protocol) runs every
evaluation.eval_every_steps and at the end, on every replica of every host; the chief writes
<workdir>/metrics.json.
"""

import dataclasses
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from cvrl_tf import config as cfg
from cvrl_tf import evaluate
from cvrl_tf import heads
from cvrl_tf import input_pipeline
from cvrl_tf import lars
from cvrl_tf import loop
from cvrl_tf import losses
from cvrl_tf import microbatch
from cvrl_tf import networks
from cvrl_tf import pretrain
from cvrl_tf import runtime
from cvrl_tf import storage

SUBSET_FILE = "label_subset.json"


def choose_subset(video_labels: Sequence[tuple], fraction: float, seed: int) -> list:
  """A class-balanced sample of labelled videos: the same fraction of every class.

  Args:
    video_labels: [(video_id, label)] of the training split (unlabelled records, label < 0, are
      never chosen).
    fraction: of each class's videos, rounded, at least one per class.
    seed: the same seed and videos give the same subset, whatever their order.

  Returns:
    The chosen video ids, sorted.
  """
  by_class = {}
  for video_id, label in video_labels:
    if label >= 0:
      by_class.setdefault(label, set()).add(video_id)
  chosen = []
  for label in sorted(by_class):
    ids = sorted(by_class[label])
    count = max(1, int(round(fraction * len(ids))))
    # A generator per class: adding a class to the dataset does not change the others' picks.
    rng = np.random.default_rng([seed, label])
    chosen += [ids[i] for i in rng.permutation(len(ids))[:count]]
  return sorted(chosen)


def read_subset(workdir: str, fraction: float, seed: int) -> Optional[list]:
  """The video ids of <workdir>/label_subset.json, None when there is none; fails when it holds
  another fraction or seed."""
  path = storage.join(workdir, SUBSET_FILE)
  if not storage.exists(path):
    return None
  saved = storage.read_json(path)
  if saved["fraction"] != fraction or saved["seed"] != seed:
    raise ValueError(f"{path} holds a subset of fraction {saved['fraction']} (seed "
                     f"{saved['seed']}), this run asks for {fraction} (seed {seed}); use a "
                     "new --workdir")
  return saved["videos"]


def make_subset_record(train_pattern: str, eval_pattern: str, fraction: float, seed: int,
                       log=print) -> dict:
  """Chooses the subset (choose_subset) from the training shards' labels; fails when it shares
  videos with the evaluation split. Returns what label_subset.json holds ("videos": the ids)."""
  log(f"choosing {fraction:.2%} of the labelled videos of {train_pattern} (reads the shards' "
      "context features once)")
  video_labels = input_pipeline.read_video_labels(train_pattern)
  subset = choose_subset(video_labels, fraction, seed)
  overlap = set(subset) & {v for v, _ in input_pipeline.read_video_labels(eval_pattern)}
  if overlap:
    raise ValueError(f"{len(overlap)} videos of the training subset are also in the evaluation "
                     f"split ({eval_pattern}), e.g. {sorted(overlap)[:3]}: the splits overlap")
  labels = dict(video_labels)
  per_class = {}
  for video_id in subset:
    per_class[labels[video_id]] = per_class.get(labels[video_id], 0) + 1
  return {"fraction": fraction, "seed": seed, "num_videos": len(subset),
          "of_videos": len(video_labels),
          "per_class": {str(k): v for k, v in sorted(per_class.items())}, "videos": subset}


def load_or_choose_subset(workdir: str, train_pattern: str, eval_pattern: str, fraction: float,
                          seed: int, log=print, write: bool = True) -> list:
  """The run's semi-supervised subset: read from <workdir>/label_subset.json, or chosen (and
  written there when `write`: on the chief; the other workers choose the same one)."""
  saved = read_subset(workdir, fraction, seed)
  if saved is not None:
    return saved
  record = make_subset_record(train_pattern, eval_pattern, fraction, seed, log)
  if write:
    path = storage.join(workdir, SUBSET_FILE)
    storage.atomic_write_json(path, record, indent=1)
    log(f"training subset: {record['num_videos']} of {record['of_videos']} videos, written to "
        f"{path}")
  return record["videos"]


def _scaled_first(scaled, loss_and_aux):
  loss, aux = loss_and_aux
  return scaled(loss), aux


class Trainer(loop.TrainLoop):
  """One linear-evaluation or fine-tuning run (config: ClassificationExperimentConfig)."""

  summary_names = ("loss/cross_entropy", "loss/regularization", "train/top1")

  def build(self) -> dict:
    config = self.config
    cfg.require_backbone(config)
    data = config.train_data
    self.frozen = config.task == "linear_eval"
    self.backbone = networks.build_backbone(config.model, data.num_frames, data.crop_size)
    self.classifier = heads.LinearClassifier(
        config.evaluation.num_classes, normalize=config.classifier.normalize,
        batch_norm=config.classifier.batch_norm,
        dropout_rate=config.classifier.dropout_rate)
    self.classifier.build((None, self.backbone.output_channels))
    if self.frozen:
      self.backbone.trainable = False
    layers = [self.classifier] if self.frozen else [self.backbone, self.classifier]
    self.trained_variables = [v for layer in layers for v in layer.trainable_variables]
    self.kernels = [v for layer in layers for v in lars.kernel_variables(layer)]
    self.optimizer, self.schedule = pretrain.build_optimizer(config, layers,
                                                             self.trained_variables)
    self.history = evaluate.read_history(self.workdir)
    self.subset = None
    return {"backbone": self.backbone, "classifier": self.classifier, "optimizer": self.optimizer}

  def restore_initial(self) -> str:
    path = self.config.train.init_checkpoint
    if path:
      return pretrain.restore_initial_backbone(self.backbone, path)
    return "evaluating a randomly initialised backbone (evaluation.allow_random_backbone=true)"

  def prepare(self) -> None:
    """Chooses (or reloads) the semi-supervised subset; call after restore, before train."""
    evaluation = self.config.evaluation
    if evaluation.label_fraction < 1:
      self.subset = load_or_choose_subset(
          self.workdir, self.config.train_data.reader.file_pattern,
          self.config.eval_data.reader.file_pattern, evaluation.label_fraction,
          evaluation.subset_seed, self.log, write=runtime.is_chief(self.strategy))

  # ---- the step

  def _regularization(self) -> tf.Tensor:
    """This replica's share of the SGD recipe's L2 term (LARS decays inside the optimizer)."""
    if self.config.optimizer.name != "sgd" or not self.config.optimizer.weight_decay:
      return tf.constant(0.0)
    return losses.weight_decay_loss(self.kernels,
                                    self.config.optimizer.weight_decay) / self.replicas

  def _cross_entropy(self, features):
    """(cross-entropy, (cross-entropy, correct)) of a batch or chunk, as global-batch shares."""
    global_batch = self.config.train.global_batch_size
    # Frozen: inference mode, so BN uses (and keeps) its moving statistics.
    pooled = self.backbone(features["video"], training=not self.frozen)["pooled"]    # [B, C]
    if self.frozen:
      pooled = tf.stop_gradient(pooled)
    logits = self.classifier(pooled, training=True)                                # [B, K]
    labels = features["label"]
    targets = tf.one_hot(labels, self.config.evaluation.num_classes)
    per_example = keras.losses.categorical_crossentropy(
        targets, logits, from_logits=True,
        label_smoothing=self.config.classifier.label_smoothing)
    cross_entropy = tf.reduce_sum(per_example) / global_batch
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels),
                      tf.float32)
    return cross_entropy, (cross_entropy, tf.reduce_sum(correct) / global_batch)

  def replica_step(self, features, with_gradient_norm: bool):
    """One step on this replica's batch; returns global-batch shares of [ce, reg, top-1, norm].

    With train.microbatches = k, the batch goes through in k chunks whose gradients are summed
    (the cross-entropy is a sum over examples, so the sum is the whole batch's gradient; BN in
    training mode sees each chunk's statistics).
    """
    k = self.config.train.microbatches
    scaled = self.loss_scale.scaled   # S · loss is differentiated (S = 1 unless float16)
    with tf.GradientTape() as tape:
      regularization = self._regularization()
      if k == 1:
        loss, (cross_entropy, correct) = self._cross_entropy(features)
        loss = scaled(loss + regularization)
      else:
        loss = scaled(regularization)
    gradients = tape.gradient(loss, self.trained_variables)
    if k > 1:
      chunks = [dict(zip(features, parts)) for parts in
                zip(*[microbatch.split(value, k) for value in features.values()])]
      (cross_entropy, correct), chunk_gradients = microbatch.accumulate(
          chunks, lambda chunk: _scaled_first(scaled, self._cross_entropy(chunk)),
          self.trained_variables)
      gradients = microbatch.add(chunk_gradients, gradients)
    gradients, finite = self.loss_scale.unscale(gradients)
    gradient_norm = (self.global_gradient_norm(gradients) if with_gradient_norm
                     else tf.constant(0.0))
    self.loss_scale.apply_if_finite(finite, self._update, gradients)
    return (cross_entropy, regularization, correct, gradient_norm)

  def _update(self, gradients):
    self.optimizer.apply_gradients(zip(gradients, self.trained_variables))

  def dataset(self, segment_start: int, skip_steps: int = 0):
    data = self.config.train_data
    reader = self.segment_reader(data.reader, segment_start)
    data = dataclasses.replace(data, reader=reader)
    return self.strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.classification_train_dataset(
            data, context, num_classes=self.config.evaluation.num_classes,
            video_ids=self.subset, skip_batches=skip_steps * loop.batches_per_step(context)))

  def progress_line(self, step, total, values, clips_per_s, eta) -> str:
    return (f"step {step}/{total}  loss {values[0] + values[1]:.4f}  train top-1 {values[2]:.3f}  "
            f"lr {float(self.schedule(step - 1)):.4g}  {clips_per_s:.1f} clips/s  "
            f"ETA {loop.duration(eta)}")

  # ---- evaluation

  def model_outputs(self, clips: tf.Tensor) -> dict:
    """clips [N, T, S, S, 3] -> {"logits": [N, K], "features": pooled [N, C]}, inference mode."""
    pooled = self.backbone(clips, training=False)["pooled"]
    return {"logits": self.classifier(pooled, training=False), "features": pooled}

  def evaluate(self, step: int) -> dict:
    """The multi-view evaluation of the current weights on every replica; call it on every host.

    Every host gets the metrics; the chief writes metrics.json, the PNG and the summaries.
    """
    config = self.config
    evaluation = config.evaluation
    data = config.eval_data
    label_map = evaluate.find_label_map(evaluation.label_map, data.reader.file_pattern)
    names = evaluate.label_names(label_map, evaluation.num_classes)
    outputs = evaluate.predict(
        self.model_outputs,
        lambda context: input_pipeline.padded_eval_dataset(
            data, context, num_classes=evaluation.num_classes),
        self.log, self.strategy)
    metrics = evaluate.classification_metrics(outputs["probabilities"], outputs["label"], names)
    metrics.update(step=step, protocol=f"{data.num_clips} clips x {data.num_crops} crops, "
                   "softmax averaged", views_per_video=data.num_views, task=config.task,
                   init_checkpoint=config.train.init_checkpoint, label_map=label_map or "")
    self.history = [h for h in self.history if h["step"] != step]
    self.history.append({"step": step, "top1": metrics["top1"], "top5": metrics["top5"]})
    if runtime.is_chief(self.strategy):
      evaluate.write_report(self.workdir, metrics, names, evaluation.confusion_matrix_max_classes,
                            history=self.history)
      with self.writer.as_default(step=step):
        tf.summary.scalar("eval/top1", metrics["top1"])
        tf.summary.scalar("eval/top5", metrics["top5"])
      self.writer.flush()
    self.log(f"evaluation at step {step}: top-1 {metrics['top1']:.4f}  top-5 "
             f"{metrics['top5']:.4f}  mean class accuracy {metrics['mean_class_accuracy']:.4f} "
             f"on {metrics['num_videos']} videos x {data.num_views} views, "
             f"{self.replicas} replica(s)")
    return metrics

  def on_segment_end(self, step: int) -> None:
    every = self.config.evaluation.eval_every_steps
    if every and step % every == 0 and step < self.config.stop_step:
      self.evaluate(step)  # on every worker: the evaluation is collective

  def run(self) -> dict:
    """Trains to the stop step (if not there yet), then the final evaluation (every worker)."""
    self.train()
    return self.evaluate(self.step)
