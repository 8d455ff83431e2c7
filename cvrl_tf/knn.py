"""kNN classification on frozen features: InstDisc / SlowFast's temperature-weighted vote.

Every video becomes one L2-normalised feature (the pooled backbone output, averaged over its
views). A query's k most cosine-similar training videos vote for their labels with weights
exp(similarity / τ); the class scores are the summed votes. No training: one pass over the
training split (the memory bank) and one over the evaluation split, so it is cheap enough to
follow a pretraining run checkpoint by checkpoint.

Both passes run on every replica of every host (evaluate.predict); every host then holds all the
features and takes the vote, and only the chief writes knn_metrics.json.
"""

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from cvrl_tf import config as cfg
from cvrl_tf import evaluate
from cvrl_tf import input_pipeline
from cvrl_tf import networks
from cvrl_tf import pretrain
from cvrl_tf import runtime

METRICS_FILE = "knn_metrics.json"


def knn_scores(bank: tf.Tensor, bank_labels: tf.Tensor, queries: tf.Tensor, num_classes: int,
               k: int = 200, temperature: float = 0.07, chunk_size: int = 1024) -> np.ndarray:
  """Temperature-weighted kNN votes.

  Args:
    bank: [N, D] L2-normalised training features.
    bank_labels: [N] int labels in [0, num_classes).
    queries: [M, D] L2-normalised query features.
    k: neighbours per query (at most N).
    temperature: τ of the exp(cosine / τ) weights.
    chunk_size: queries per similarity matrix ([chunk, N] floats in memory).

  Returns:
    [M, num_classes] float32 scores: for each class, the summed weights of the neighbours with
    that label. Normalise rows to read them as probabilities.
  """
  bank = tf.convert_to_tensor(bank, tf.float32)
  bank_labels = tf.cast(bank_labels, tf.int32)
  k = min(k, int(bank.shape[0]))

  @tf.function
  def score(chunk):
    similarity = tf.matmul(chunk, bank, transpose_b=True)        # [m, N]
    top, index = tf.math.top_k(similarity, k=k)                   # [m, k]
    weights = tf.exp(top / temperature)
    votes = tf.one_hot(tf.gather(bank_labels, index), num_classes) * weights[..., None]
    return tf.reduce_sum(votes, axis=1)                           # [m, C]

  queries = tf.convert_to_tensor(queries, tf.float32)
  parts = [score(queries[start:start + chunk_size]).numpy()
           for start in range(0, int(queries.shape[0]), chunk_size)]
  return np.concatenate(parts) if parts else np.zeros([0, num_classes], np.float32)


def normalise(features: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (a zero row stays zero)."""
  norms = np.linalg.norm(features, axis=1, keepdims=True)
  return features / np.maximum(norms, 1e-12)


def pooled_model(backbone) -> Callable:
  """clips [N, T, S, S, 3] -> {"features": pooled [N, C]}, backbone in inference mode."""
  return lambda clips: {"features": backbone(clips, training=False)["pooled"]}


def extract(backbone, data: input_pipeline.EvalDataConfig, num_classes: int,
            strategy: Optional[tf.distribute.Strategy] = None,
            log: Optional[Callable[[str], None]] = None) -> dict:
  """One pass of `data` on every replica of `strategy` (call it on every host).

  Returns:
    {"features": [N, C] L2-normalised view means, "label": [N], "video_id": [N]}: every video of
    `data`, in file order, on every host.
  """
  outputs = evaluate.predict(
      pooled_model(backbone),
      lambda context: input_pipeline.padded_eval_dataset(data, context, num_classes=num_classes),
      log, strategy)
  outputs["features"] = normalise(outputs["features"])
  return outputs


def score(backbone, config, strategy: Optional[tf.distribute.Strategy] = None,
          log: Optional[Callable[[str], None]] = None) -> dict:
  """Extracts the bank and the queries on every replica, then takes the vote on this host.

  Args:
    backbone: built under `strategy`'s scope, weights loaded.
    config: a KnnExperimentConfig.

  Returns:
    {"scores": [M, C] knn_scores of the queries, "label": [M], "video_id": [M] (file order),
    "bank_videos": N}.
  """
  evaluation = config.evaluation
  bank = extract(backbone, config.bank_data, evaluation.num_classes, strategy, log)
  if log:
    log(f"memory bank: {len(bank['label'])} videos")
  queries = extract(backbone, config.eval_data, evaluation.num_classes, strategy, log)
  scores = knn_scores(bank["features"], bank["label"], queries["features"],
                      evaluation.num_classes, evaluation.knn_k, evaluation.knn_temperature)
  return {"scores": scores, "label": queries["label"], "video_id": queries["video_id"],
          "bank_videos": len(bank["label"])}


def run(config, workdir: str, strategy: tf.distribute.Strategy,
        log: Callable[[str], None] = print) -> dict:
  """The kNN experiment: loads the backbone, scores eval_data against bank_data, writes metrics.

  Call it on every host: the features are extracted on every replica of `strategy`; every host
  then holds all of them and takes the vote, and the chief writes the files.

  Args:
    config: a KnnExperimentConfig.
    strategy: where to extract the features (the backbone is built in its scope).

  Returns:
    The metrics written to <workdir>/knn_metrics.json (top1, top5, per-class, k, temperature).
  """
  cfg.require_backbone(config)
  data = config.eval_data
  with strategy.scope():
    backbone = networks.build_backbone(config.model, data.num_frames, data.crop_size)
  if config.train.init_checkpoint:
    log(pretrain.restore_initial_backbone(backbone, config.train.init_checkpoint))
  else:  # validate() only lets this through with evaluation.allow_random_backbone
    log("evaluating a randomly initialised backbone (evaluation.allow_random_backbone)")
  evaluation = config.evaluation
  label_map = evaluate.find_label_map(evaluation.label_map, data.reader.file_pattern)
  names = evaluate.label_names(label_map, evaluation.num_classes)
  result = score(backbone, config, strategy, log)
  metrics = evaluate.classification_metrics(result["scores"], result["label"], names)
  metrics.update(protocol="knn", k=min(evaluation.knn_k, result["bank_videos"]),
                 temperature=evaluation.knn_temperature, bank_videos=result["bank_videos"],
                 views_per_video=data.num_views, init_checkpoint=config.train.init_checkpoint)
  summary = (f"kNN (k={metrics['k']}, τ={evaluation.knn_temperature}): top-1 "
             f"{metrics['top1']:.4f}  top-5 {metrics['top5']:.4f} on {metrics['num_videos']} "
             f"videos, {strategy.num_replicas_in_sync} replica(s)")
  if runtime.is_chief(strategy):
    path = evaluate.write_report(workdir, metrics, names, evaluation.confusion_matrix_max_classes,
                                 file_name=METRICS_FILE)
    summary += f"; wrote {path}"
  log(summary)
  return metrics
