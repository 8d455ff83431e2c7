"""kNN classification on frozen features: InstDisc / SlowFast's temperature-weighted vote.

Every video becomes one L2-normalised feature (the pooled backbone output, averaged over its
views). A query's k most cosine-similar training videos vote for their labels with weights
exp(similarity / τ); the class scores are the summed votes. No training: one pass over the
training split (the memory bank) and one over the evaluation split, so it is cheap enough to
follow a pretraining run checkpoint by checkpoint.
"""

import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from cvrl_tf import config as cfg
from cvrl_tf import evaluate
from cvrl_tf import input_pipeline
from cvrl_tf import pretrain

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
            log: Optional[Callable[[str], None]] = None) -> dict:
  """One pass of `data`: {"features": [N, C] L2-normalised view means, "label", "video_id"}."""
  dataset = input_pipeline.eval_dataset(data, num_classes=num_classes)
  outputs = evaluate.predict(pooled_model(backbone), dataset, log)
  outputs["features"] = normalise(outputs["features"])
  return outputs


def run(config, workdir: str, log: Callable[[str], None] = print) -> dict:
  """The kNN experiment: loads the backbone, scores eval_data against bank_data, writes metrics.

  Args:
    config: a KnnExperimentConfig.

  Returns:
    The metrics written to <workdir>/knn_metrics.json (top1, top5, per-class, k, temperature).
  """
  cfg.require_backbone(config)
  data = config.eval_data
  backbone = pretrain.build_backbone(config.model, data.num_frames, data.crop_size)
  if config.train.init_checkpoint:
    log(pretrain.restore_initial_backbone(backbone, config.train.init_checkpoint))
  else:  # validate() only lets this through with evaluation.allow_random_backbone
    log("evaluating a randomly initialised backbone (evaluation.allow_random_backbone)")
  evaluation = config.evaluation
  label_map = evaluate.find_label_map(evaluation.label_map, data.reader.file_pattern)
  names = evaluate.label_names(label_map, evaluation.num_classes)
  bank = extract(backbone, config.bank_data, evaluation.num_classes, log)
  log(f"memory bank: {len(bank['label'])} videos")
  queries = extract(backbone, data, evaluation.num_classes, log)
  scores = knn_scores(bank["features"], bank["label"], queries["features"],
                      evaluation.num_classes, evaluation.knn_k, evaluation.knn_temperature)
  metrics = evaluate.classification_metrics(scores, queries["label"], names)
  metrics.update(protocol="knn", k=min(evaluation.knn_k, len(bank["label"])),
                 temperature=evaluation.knn_temperature, bank_videos=int(len(bank["label"])),
                 views_per_video=data.num_views, init_checkpoint=config.train.init_checkpoint)
  os.makedirs(workdir, exist_ok=True)
  path = evaluate.write_report(workdir, metrics, names, evaluation.confusion_matrix_max_classes,
                               file_name=METRICS_FILE)
  log(f"kNN (k={metrics['k']}, τ={evaluation.knn_temperature}): top-1 {metrics['top1']:.4f}  "
      f"top-5 {metrics['top5']:.4f} on {metrics['num_videos']} videos; wrote {path}")
  return metrics
