"""Multi-view averaging, metrics, kNN votes and semi-supervised subsets against hand-computed and
NumPy references; evaluation and kNN under 1 replica, 2 replicas (MirroredStrategy on two logical
CPUs) and 2 workers (MultiWorkerMirroredStrategy on 127.0.0.1) against the eager one-device
evaluation; their files on a non-local file system (ram://)."""

import dataclasses
import json
import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from conftest import free_ports
from conftest import python_c
from cvrl_tf import classify
from cvrl_tf import evaluate
from cvrl_tf import input_pipeline
from cvrl_tf import knn
from cvrl_tf import schema
from cvrl_tf import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def test_view_average_of_a_hand_computed_case():
  # One video, two views over two classes: logits (0, ln 3) -> softmax (1/4, 3/4); logits
  # (ln 3, 0) -> (3/4, 1/4). The average is (1/2, 1/2), though the mean logit (ln√3, ln√3)
  # would give the same here, the second video shows the difference: views (0, 0) and
  # (0, ln 9) -> (1/2, 1/2) and (1/10, 9/10) -> average (3/10, 7/10), whereas averaging the
  # logits first would give softmax(0, ln 3) = (1/4, 3/4).
  logits = tf.constant([[[0.0, np.log(3)], [np.log(3), 0.0]],
                        [[0.0, 0.0], [0.0, np.log(9)]]])
  np.testing.assert_allclose(evaluate.average_view_probabilities(logits).numpy(),
                             [[0.5, 0.5], [0.3, 0.7]], atol=1e-6)


def test_view_function_reshapes_views_and_averages_each_output():
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(2 * 3 * 3 * 3, 4)).astype(np.float32)

  def model(clips):  # [N, 2, 3, 3, 3] -> logits [N, 4], features [N, 2]
    flat = tf.reshape(clips, [tf.shape(clips)[0], -1])
    return {"logits": flat @ weights, "features": flat[:, :2]}

  video = rng.uniform(size=(2, 5, 2, 3, 3, 3)).astype(np.float32)  # [B, V, T, S, S, 3]
  out = evaluate.view_function(model)(tf.constant(video))
  flat = video.reshape(2, 5, -1)
  logits = flat @ weights
  softmax = np.exp(logits - logits.max(-1, keepdims=True))
  softmax /= softmax.sum(-1, keepdims=True)
  np.testing.assert_allclose(out["probabilities"].numpy(), softmax.mean(1), rtol=1e-5)
  np.testing.assert_allclose(out["features"].numpy(), flat[:, :, :2].mean(1), rtol=1e-6)


def test_predict_collects_every_video_of_a_dataset():
  videos = np.arange(3 * 2 * 1 * 1 * 1 * 3, dtype=np.float32).reshape(3, 2, 1, 1, 1, 3)
  dataset = tf.data.Dataset.from_tensor_slices(
      {"video": videos, "label": np.array([2, 0, 1], np.int32),
       "video_id": np.array([b"a", b"b", b"c"])}).batch(2)  # batches of 2 and 1
  out = evaluate.predict(lambda clips: {"features": tf.reshape(clips, [-1, 3])}, dataset)
  np.testing.assert_array_equal(out["label"], [2, 0, 1])
  np.testing.assert_array_equal(out["video_id"], ["a", "b", "c"])
  np.testing.assert_allclose(out["features"], videos.reshape(3, 2, 3).mean(1))


def test_classification_metrics_by_hand():
  scores = np.array([[0.1, 0.6, 0.3],    # true 1: top-1 right
                     [0.5, 0.2, 0.3],    # true 2: second -> top-1 wrong, top-2 right
                     [0.2, 0.3, 0.5],    # true 2: right
                     [0.4, 0.4, 0.2]])   # true 1: tie of 0 and 1 -> argmax takes 0: wrong
  labels = np.array([1, 2, 2, 1])
  metrics = evaluate.classification_metrics(scores, labels, ["a", "b", "c"])
  assert metrics["top1"] == pytest.approx(0.5)
  assert metrics["top5"] == pytest.approx(1.0)          # 3 classes: top-5 = top-3
  assert metrics["per_class_accuracy"] == {"a": None, "b": 0.5, "c": 0.5}
  assert metrics["mean_class_accuracy"] == pytest.approx(0.5)
  assert metrics["confusion_matrix"] == [[0, 0, 0], [1, 1, 0], [1, 0, 1]]
  assert evaluate.top_k_correct(scores, labels, 2).tolist() == [True, True, True, True]
  with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
    evaluate.classification_metrics(scores, np.array([1, 2, 3, 0]))


def test_report_writes_metrics_and_a_confusion_matrix(tmp_path):
  metrics = evaluate.classification_metrics(np.eye(3)[[0, 1, 1]], np.array([0, 1, 2]),
                                            ["x", "y", "z"])
  path = evaluate.write_report(str(tmp_path), metrics, ["x", "y", "z"], max_plot_classes=3,
                               history=[{"step": 5, "top1": 2 / 3, "top5": 1.0}])
  saved = json.loads(open(path).read())
  assert saved["top1"] == pytest.approx(2 / 3) and saved["history"][0]["step"] == 5
  png = (tmp_path / "confusion_matrix.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  assert evaluate.read_history(str(tmp_path)) == saved["history"]


def _numpy_knn(bank, bank_labels, queries, num_classes, k, temperature):
  scores = np.zeros((len(queries), num_classes))
  for i, query in enumerate(queries):
    similarity = bank @ query
    nearest = np.argsort(-similarity, kind="stable")[:k]
    for j in nearest:
      scores[i, bank_labels[j]] += np.exp(similarity[j] / temperature)
  return scores


def test_knn_votes_match_numpy():
  rng = np.random.default_rng(3)
  bank = knn.normalise(rng.normal(size=(300, 16)))
  labels = rng.integers(0, 5, size=300)
  queries = knn.normalise(rng.normal(size=(37, 16)))
  for k, temperature in ((1, 0.07), (20, 0.07), (200, 0.5), (1000, 1.0)):  # k > N: all vote
    got = knn.knn_scores(bank.astype(np.float32), labels, queries.astype(np.float32), 5, k,
                         temperature, chunk_size=16)
    want = _numpy_knn(bank, labels, queries, 5, min(k, 300), temperature)
    np.testing.assert_allclose(got, want, rtol=2e-4)


def test_knn_finds_the_labels_of_clustered_features():
  rng = np.random.default_rng(4)
  centres = knn.normalise(rng.normal(size=(4, 32)))
  bank_labels = np.repeat(np.arange(4), 50)
  bank = knn.normalise(centres[bank_labels] + 0.05 * rng.normal(size=(200, 32)))
  query_labels = np.repeat(np.arange(4), 10)
  queries = knn.normalise(centres[query_labels] + 0.05 * rng.normal(size=(40, 32)))
  scores = knn.knn_scores(bank, bank_labels, queries, 4, k=20, temperature=0.07)
  assert evaluate.classification_metrics(scores, query_labels)["top1"] == 1.0


def test_subsets_are_class_balanced_deterministic_and_seeded():
  videos = [(f"c{c}_{i:03d}", c) for c in range(5) for i in range(20 + 10 * c)]  # 20..60 a class
  videos.append(("unlabelled", -1))
  subset = classify.choose_subset(videos, 0.1, seed=7)
  labels = dict(videos)
  counts = np.bincount([labels[v] for v in subset], minlength=5)
  np.testing.assert_array_equal(counts, [2, 3, 4, 5, 6])       # round(10% of 20, 30, ..., 60)
  assert "unlabelled" not in subset and len(set(subset)) == len(subset)
  shuffled = [videos[i] for i in np.random.default_rng(0).permutation(len(videos))]
  assert classify.choose_subset(shuffled, 0.1, seed=7) == subset      # order does not matter
  assert classify.choose_subset(videos, 0.1, seed=8) != subset
  tiny = classify.choose_subset(videos, 0.001, seed=7)                # at least one a class
  assert sorted(labels[v] for v in tiny) == [0, 1, 2, 3, 4]


def test_subset_selection_is_statistically_uniform_within_a_class():
  # Over 400 seeds each of the 20 videos of a class is picked with probability 5/20: a χ² test.
  from scipy import stats
  videos = [(f"v{i:02d}", 0) for i in range(20)]
  counts = np.zeros(20)
  for seed in range(400):
    for video in classify.choose_subset(videos, 0.25, seed):
      counts[int(video[1:])] += 1
  assert counts.sum() == 400 * 5
  assert stats.chisquare(counts).pvalue > 0.001



# ---- files through cvrl_tf.storage: a label map beside ram:// shards, reports, subsets

def test_label_map_beside_shards_on_a_non_local_file_system():
  root = "ram://evaluate_label_map"
  with tf.io.TFRecordWriter(f"{root}/val-00000-of-00001.tfrecord") as writer:
    writer.write(b"")
  storage.atomic_write_text(f"{root}/{schema.LABEL_MAP_FILE}",
                            schema.format_label_map(["walk", "run", "jump"]))
  found = evaluate.find_label_map("", f"{root}/val-*")
  assert found == f"{root}/{schema.LABEL_MAP_FILE}"
  assert evaluate.label_names(found, 3) == ["walk", "run", "jump"]
  with pytest.raises(ValueError, match="names 3 classes but evaluation.num_classes is 4"):
    evaluate.label_names(found, 4)
  assert evaluate.find_label_map(found, "ram://elsewhere/*") == found
  with pytest.raises(FileNotFoundError, match="evaluation.label_map='ram://nothing/x.txt'"):
    evaluate.find_label_map("ram://nothing/x.txt", f"{root}/val-*")
  assert evaluate.find_label_map("", "ram://evaluate_no_shards/val-*") is None
  assert not os.path.exists("ram:")  # nothing fell through to the local disk


def _record(video_id, label):
  return schema.serialize_video([b"x"], video_id=video_id, filename=video_id, fps=25.0,
                                height=1, width=1, start_us=0, end_us=40_000, label_index=label,
                                label_text=str(label))


def test_report_history_and_subset_on_a_non_local_file_system():
  workdir = "ram://evaluate_report/run"
  metrics = evaluate.classification_metrics(np.eye(2)[[0, 1, 0]], np.array([0, 1, 1]), ["a", "b"])
  path = evaluate.write_report(workdir, metrics, ["a", "b"], max_plot_classes=2,
                               history=[{"step": 3, "top1": 2 / 3, "top5": 1.0}])
  assert path == f"{workdir}/metrics.json"
  assert storage.read_json(path)["confusion_matrix"] == [[1, 0], [1, 1]]
  assert storage.read_bytes(f"{workdir}/confusion_matrix.png")[:4] == b"\x89PNG"
  assert evaluate.read_history(workdir) == [{"step": 3, "top1": 2 / 3, "top5": 1.0}]
  knn_path = evaluate.write_report(workdir, metrics, ["a", "b"], 2, file_name=knn.METRICS_FILE)
  assert storage.exists(knn_path) and storage.exists(f"{workdir}/knn_confusion_matrix.png")
  # The semi-supervised subset: a non-chief worker chooses the same videos and writes nothing.
  split = "ram://evaluate_report/data"
  with tf.io.TFRecordWriter(f"{split}/train.tfrecord") as writer:
    for i in range(8):
      writer.write(_record(f"t{i}", i % 2))
  with tf.io.TFRecordWriter(f"{split}/val.tfrecord") as writer:
    writer.write(_record("v0", 0))
  args = (f"{split}/train.tfrecord", f"{split}/val.tfrecord", 0.5, 1)
  quiet = lambda _: None
  other = classify.load_or_choose_subset(workdir, *args, log=quiet, write=False)
  assert not storage.exists(f"{workdir}/{classify.SUBSET_FILE}")
  chief = classify.load_or_choose_subset(workdir, *args, log=quiet)
  assert chief == other and len(chief) == 4
  assert storage.read_json(f"{workdir}/{classify.SUBSET_FILE}")["videos"] == chief
  assert classify.read_subset(workdir, 0.5, 1) == chief
  with pytest.raises(ValueError, match="holds a subset of fraction 0.5 .seed 1.*asks for 0.25"):
    classify.read_subset(workdir, 0.25, 1)
  assert not os.path.exists("ram:")


# ---- evaluation under a strategy: tiny records, a tiny model; 1 replica, 2 replicas, 2 workers

def test_video_ids_survive_packing_into_numbers():
  ids = ["abc", "", "ünïcødé_ß", "x" * 300]
  packed = evaluate.pack_video_ids(tf.constant(ids))
  assert packed.dtype == tf.int32 and packed.shape == (4, evaluate.VIDEO_ID_BYTES // 4)
  # Ids longer than VIDEO_ID_BYTES are cut.
  assert evaluate.unpack_video_ids(packed.numpy()).tolist() == ids[:3] + ["x" * 256]


CLASSES = 8
# 7 queries in 3 files (3, 2, 2): 7 fills no whole number of global batches of 2 or 4, and 3
# files split 2 : 1 over 2 hosts (file sharding, uneven). 9 bank videos in 1 file: record
# sharding over 2 hosts.
EVAL_FILES = (3, 2, 2)
BANK_FILES = (9,)
TINY_EXPERIMENTS = {"tiny_linear.py": """
from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline
ROOT = {root!r}
CLIP = dict(num_frames=4, stride=2)


def model():
  return cfg.ModelConfig(depth=10, stem_filters=4, stage_filters=(4, 8, 8, 8),
                         sync_batch_norm=True, head_hidden_sizes=(16,), head_output_size=8)


def views(pattern):
  return input_pipeline.EvalDataConfig(
      reader=input_pipeline.ReaderConfig(file_pattern=ROOT + "/" + pattern,
                                         per_replica_batch_size=2, cycle_length=2),
      num_clips=2, num_crops=3, short_side=16, crop_size=16, **CLIP)


def get_config():
  return cfg.ClassificationExperimentConfig(
      task="linear_eval",
      train_data=input_pipeline.ClassificationTrainDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern=ROOT + "/train-*"), crop_size=16,
          use_xla=False, **CLIP),
      eval_data=views("val-*"), model=model(),
      optimizer=cfg.OptimizerConfig(name="sgd", base_learning_rate=0.1),
      train=cfg.TrainConfig(global_batch_size=4, epochs=1, num_train_examples=8),
      evaluation=cfg.EvaluationConfig(num_classes={classes}, allow_random_backbone=True))
""", "tiny_knn.py": """
import os
import sys
sys.path.insert(0, os.path.dirname(__file__))
import tiny_linear
from cvrl_tf import config as cfg


def get_config():
  return cfg.KnnExperimentConfig(
      bank_data=tiny_linear.views("train-*"), eval_data=tiny_linear.views("val-*"),
      model=tiny_linear.model(),
      train=cfg.TrainConfig(init_checkpoint=tiny_linear.ROOT + "/weights/ckpt"),
      evaluation=cfg.EvaluationConfig(num_classes={classes}, knn_k=3, knn_temperature=0.1))
"""}


def _video_record(video_id, label, rng):
  # A colour and a horizontal gradient of its own per video: features (and kNN neighbours)
  # differ by clear margins. 8 frames of 16 × 20.
  colour, slope = rng.uniform(30, 220, 3), rng.uniform(-4, 4, 3)
  frames = []
  for t in range(8):
    frame = colour + slope * np.arange(20)[None, :, None] + rng.normal(0, 8, (16, 20, 3)) + 3 * t
    frames.append(tf.io.encode_jpeg(np.clip(frame, 0, 255).astype(np.uint8), quality=95).numpy())
  return schema.serialize_video(frames, video_id=video_id, filename=video_id + ".mp4", fps=25.0,
                                height=16, width=20, start_us=0, end_us=320_000,
                                label_index=label, label_text=f"class {label}")


def _write_tiny_split(root, split, sizes, rng):
  """Shards of `sizes` videos; returns their ids in file order."""
  ids = []
  for shard, size in enumerate(sizes):
    path = os.path.join(root, schema.shard_name(split, shard, len(sizes)))
    with tf.io.TFRecordWriter(path) as writer:
      for i in range(size):
        ids.append(f"{split}{shard}_{i}")
        writer.write(_video_record(ids[-1], len(ids) % CLASSES, rng))
  return ids


def _eager_reference(model_outputs, data):
  """The evaluation as it ran before strategies: eval_dataset batches on one device, eagerly;
  softmax and view mean in NumPy. Sorted by video id."""
  results = {"video_id": [], "label": [], "probabilities": [], "features": []}
  for batch in input_pipeline.eval_dataset(data):
    video = batch["video"].numpy()                                    # [B, V, T, S, S, 3]
    outputs = model_outputs(tf.constant(video.reshape(-1, *video.shape[2:])))
    logits = outputs["logits"].numpy().astype(np.float64).reshape(*video.shape[:2], -1)
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    results["probabilities"] += list(softmax.mean(1))
    results["features"] += list(outputs["features"].numpy().reshape(*video.shape[:2], -1).mean(1))
    results["video_id"] += [v.decode() for v in batch["video_id"].numpy()]
    results["label"] += batch["label"].numpy().tolist()
  order = np.argsort(results["video_id"])
  return {name: np.array(values)[order] for name, values in results.items()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """Tiny records, two experiment files, the weights every process loads, and the reference."""
  import keras
  from cvrl_tf import config as cfg

  root = str(tmp_path_factory.mktemp("strategies"))
  rng = np.random.default_rng(5)
  eval_ids = _write_tiny_split(root, "val", EVAL_FILES, rng)
  bank_ids = _write_tiny_split(root, "train", BANK_FILES, rng)
  names = [f"class {i}" for i in range(CLASSES)]
  storage.atomic_write_text(os.path.join(root, schema.LABEL_MAP_FILE),
                            schema.format_label_map(names))
  for name, text in TINY_EXPERIMENTS.items():
    storage.atomic_write_text(os.path.join(root, name), text.format(root=root, classes=CLASSES))
  keras.utils.set_random_seed(0)
  linear = cfg.load_experiment(os.path.join(root, "tiny_linear.py"), [])
  trainer = classify.Trainer(linear, os.path.join(root, "reference"),
                             tf.distribute.get_strategy(), log=lambda _: None)
  tf.train.Checkpoint(backbone=trainer.backbone, classifier=trainer.classifier).write(
      os.path.join(root, "weights", "ckpt"))
  knn_config = cfg.load_experiment(os.path.join(root, "tiny_knn.py"), [])
  queries = _eager_reference(trainer.model_outputs, linear.eval_data)
  bank = _eager_reference(trainer.model_outputs, knn_config.bank_data)
  evaluation = knn_config.evaluation
  knn_reference = _numpy_knn(knn.normalise(bank["features"]), bank["label"],
                             knn.normalise(queries["features"]), CLASSES, evaluation.knn_k,
                             evaluation.knn_temperature)
  return {"root": root, "eval_ids": eval_ids, "bank_ids": bank_ids, "queries": queries,
          "knn_scores": knn_reference, "names": names, "config": linear}


def _with_pattern(data, root, pattern):
  return dataclasses.replace(data, reader=dataclasses.replace(
      data.reader, file_pattern=os.path.join(root, pattern)))


def test_padded_eval_batches_end_in_masked_padding_forever(tiny_run):
  config = _with_pattern(tiny_run["config"].eval_data, tiny_run["root"], "val-00000-*")
  batches = list(input_pipeline.padded_eval_dataset(config).take(4).as_numpy_iterator())
  assert [b["valid"].tolist() for b in batches] == [[True, True], [True, False], [False, False],
                                                    [False, False]]
  assert [b["video_id"].tolist() for b in batches[:2]] == [[b"val0_0", b"val0_1"], [b"val0_2", b""]]
  assert batches[1]["position"].tolist() == [[0, 2], [-1, -1]]
  assert batches[0]["position"].tolist() == [[0, 0], [0, 1]]
  padding = batches[3]
  assert padding["video"].shape == (2, 6, 4, 16, 16, 3) and not padding["video"].any()
  assert padding["label"].tolist() == [0, 0] and padding["position"].min() == -1
  # The real rows are eval_dataset's.
  (first, second) = input_pipeline.eval_dataset(config).as_numpy_iterator()
  np.testing.assert_array_equal(batches[0]["video"], first["video"])
  np.testing.assert_array_equal(batches[1]["video"][:1], second["video"])


@pytest.mark.parametrize("split, expected", [
    # 3 files, 2 hosts: host 0 reads files 0 and 2, host 1 file 1.
    ("val", [["val0_0", "val0_1", "val0_2", "val2_0", "val2_1"], ["val1_0", "val1_1"]]),
    # 1 file, 2 hosts: both read it in order, each keeps every other record.
    ("train", [[f"train0_{i}" for i in range(0, 9, 2)], [f"train0_{i}" for i in range(1, 9, 2)]]),
])
def test_every_video_is_read_by_exactly_one_host(tiny_run, split, expected):
  config = _with_pattern(tiny_run["config"].eval_data, tiny_run["root"], f"{split}-*")
  hosts = []
  for host in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=host,
                                         num_replicas_in_sync=2)
    batches = input_pipeline.padded_eval_dataset(config, context).take(4).as_numpy_iterator()
    ids = [v.decode() for b in batches for v, ok in zip(b["video_id"], b["valid"]) if ok]
    hosts.append(sorted(ids))
  assert hosts == expected


def _evaluation_process(root, kinds, output, env=None):
  code = (f"import sys; sys.path.insert(0, {TESTS!r}); import worker_tasks; "
          "worker_tasks.evaluation_results(*sys.argv[1:])")
  return subprocess.Popen([*python_c(code), root, kinds, str(output)], cwd=REPO,
                          env=env or dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(processes):
  outputs = []
  try:
    for process in processes:
      stdout, stderr = process.communicate(timeout=600)
      outputs.append((process.returncode, stdout, stderr))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for code, stdout, stderr in outputs:
    assert code == 0, stdout + stderr[-3000:]


def _check_against_reference(result, tiny_run):
  """Per-video values and metrics of one strategy's run against the eager one-device run."""
  reference = tiny_run["queries"]
  # Every video once, padding never: in file order, whatever the hosts and replicas.
  assert result["video_id"] == result["knn_video_id"] == tiny_run["eval_ids"]
  order = np.argsort(result["video_id"])
  np.testing.assert_array_equal(np.array(result["label"])[order], reference["label"])
  np.testing.assert_allclose(np.array(result["probabilities"])[order], reference["probabilities"],
                             rtol=1e-5, atol=1e-7)
  expected = evaluate.classification_metrics(reference["probabilities"], reference["label"],
                                             tiny_run["names"])
  # kNN weights are exp(cosine / 0.1): a 1e-7 cosine difference is 1e-6 relative.
  np.testing.assert_allclose(np.array(result["knn_scores"])[order], tiny_run["knn_scores"],
                             rtol=2e-5)
  expected_knn = evaluate.classification_metrics(tiny_run["knn_scores"], reference["label"],
                                                 tiny_run["names"])
  for key in ("num_videos", "top1", "top5", "mean_class_accuracy", "per_class_accuracy",
              "confusion_matrix"):
    assert result["metrics"][key] == expected[key], key
    assert result["knn_metrics"][key] == expected_knn[key], key
  assert result["knn_metrics"]["bank_videos"] == len(tiny_run["bank_ids"])
  assert result["metrics"]["num_videos"] == len(tiny_run["eval_ids"])


def test_one_and_two_replicas_evaluate_like_the_eager_single_device_run(tiny_run, tmp_path):
  output = tmp_path / "results.json"
  _finish([_evaluation_process(tiny_run["root"], "one,mirrored", output)])
  results = json.loads(output.read_text())
  for kind in ("one", "mirrored"):
    _check_against_reference(results[kind], tiny_run)
  log = "\n".join(results["mirrored"]["log"])
  assert "evaluating 6 views per video on 2 replica(s) (MirroredStrategy)" in log
  assert "evaluated 7 videos on 2 replica(s) (MirroredStrategy)" in log
  assert "evaluated 9 videos on 2 replica(s)" in log                  # the kNN bank
  assert "on 1 replica(s) (_DefaultDistributionStrategy)" in "\n".join(results["one"]["log"])
  runs = os.path.join(tiny_run["root"], "runs")
  saved = storage.read_json(os.path.join(runs, "mirrored_linear", "metrics.json"))
  assert saved["top1"] == results["one"]["metrics"]["top1"] and saved["num_videos"] == 7
  assert os.path.exists(os.path.join(runs, "mirrored_knn", "knn_metrics.json"))


@pytest.mark.slow
def test_two_workers_evaluate_like_the_eager_single_device_run_and_only_the_chief_writes(
    tiny_run, tmp_path):
  cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
  processes = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                  "index": index}}))
    processes.append(_evaluation_process(tiny_run["root"], "workers",
                                         tmp_path / f"worker{index}.json", env))
  _finish(processes)
  results = [json.loads((tmp_path / f"worker{index}.json").read_text())[f"worker{index}"]
             for index in range(2)]
  for result in results:  # both hosts hold every video's outputs
    _check_against_reference(result, tiny_run)
  assert [result["chief"] for result in results] == [True, False]
  assert "evaluating 6 views per video on 2 replica(s) (CollectiveAllReduceStrategy)" in (
      "\n".join(results[0]["log"]))
  runs = os.path.join(tiny_run["root"], "runs")
  assert sorted(os.listdir(os.path.join(runs, "worker0_linear"))) == [
      "confusion_matrix.png", "metrics.json", "summaries"]
  assert sorted(os.listdir(os.path.join(runs, "worker0_knn"))) == [
      "knn_confusion_matrix.png", "knn_metrics.json"]
  assert not os.path.exists(os.path.join(runs, "worker1_linear"))
  assert not os.path.exists(os.path.join(runs, "worker1_knn"))
