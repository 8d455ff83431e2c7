"""Decode tasks that misbehave, for the builder's worker-pool tests.

They live in their own module (imports: os, time) because spawned workers import the module of
the function they run; a test module would drag TensorFlow into every worker. For the same
reason `evaluation_results` (run in fresh processes by tests/test_evaluate.py) imports TensorFlow
inside.
"""

import os
import time


def hang(path, **kwargs):
  """A decode that never finishes (a stuck network read, a pathological file)."""
  del path, kwargs
  time.sleep(3600)


def crash(path, **kwargs):
  """A decoder that takes its process down (a segfault in a codec)."""
  del path, kwargs
  os._exit(11)


def nap(path, **kwargs):
  """A decode that takes 0.2 s and returns the file name: workers that set a build's pace."""
  del kwargs
  time.sleep(0.2)
  return os.path.basename(path)


def record_start(path, **kwargs):
  """Appends the video's file name and its FFmpeg thread count to `start_order.txt` beside it,
  then returns the name: the order in which workers start videos, and how they decode them."""
  with open(os.path.join(os.path.dirname(path), "start_order.txt"), "a") as log:
    log.write(f"{os.path.basename(path)}:{kwargs['threads']}\n")
  return os.path.basename(path)


def evaluation_results(root: str, kinds: str, output: str) -> None:
  """For tests/test_evaluate.py: the tiny model's multi-view evaluation and kNN under strategies.

  Run in a fresh process (`kinds` "one,mirrored" makes two logical CPUs first; "workers" is a
  MultiWorkerMirroredStrategy from TF_CONFIG). Loads the weights of <root>/weights/ckpt into a
  classify.Trainer built from <root>/tiny_linear.py, runs Trainer.evaluate and the kNN of
  <root>/tiny_knn.py (workdirs <root>/runs/<kind>_linear and _knn), and writes to `output` (JSON)
  per kind their metrics, the per-video outputs of evaluate.predict and the kNN scores.
  """
  import json

  import tensorflow as tf

  kinds = kinds.split(",")
  if "mirrored" in kinds:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  from cvrl_tf import classify
  from cvrl_tf import config as cfg
  from cvrl_tf import evaluate
  from cvrl_tf import knn
  from cvrl_tf import runtime

  # The per-video outputs, as evaluate.predict hands them to the evaluations (a spy, so that each
  # pass runs once).
  predictions = []
  predict = evaluate.predict
  evaluate.predict = lambda *args, **kwargs: predictions.append(predict(*args, **kwargs)) or (
      predictions[-1])
  make = {"one": tf.distribute.get_strategy,
          "mirrored": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
          "workers": tf.distribute.MultiWorkerMirroredStrategy}
  results = {}
  for kind in kinds:
    strategy = make[kind]()
    name = f"worker{strategy.cluster_resolver.task_id}" if kind == "workers" else kind
    lines = []
    del predictions[:]
    linear = cfg.load_experiment(os.path.join(root, "tiny_linear.py"), [])
    trainer = classify.Trainer(linear, os.path.join(root, "runs", f"{name}_linear"), strategy,
                               log=lines.append)
    tf.train.Checkpoint(backbone=trainer.backbone, classifier=trainer.classifier).read(
        os.path.join(root, "weights", "ckpt")).expect_partial().assert_existing_objects_matched()
    metrics = trainer.evaluate(step=0)
    knn_config = cfg.load_experiment(os.path.join(root, "tiny_knn.py"), [])
    knn_metrics = knn.run(knn_config, os.path.join(root, "runs", f"{name}_knn"), strategy,
                          lines.append)
    outputs, bank, queries = predictions
    evaluation = knn_config.evaluation
    scores = knn.knn_scores(knn.normalise(bank["features"]), bank["label"],
                            knn.normalise(queries["features"]), evaluation.num_classes,
                            evaluation.knn_k, evaluation.knn_temperature)
    results[name] = {
        "chief": runtime.is_chief(strategy), "log": lines, "metrics": metrics,
        "probabilities": outputs["probabilities"].tolist(), "label": outputs["label"].tolist(),
        "video_id": outputs["video_id"].tolist(), "knn_metrics": knn_metrics,
        "knn_scores": scores.tolist(), "knn_video_id": queries["video_id"].tolist()}
  with open(output, "w") as f:
    json.dump(results, f)
