"""Multi-view averaging, metrics, kNN votes and semi-supervised subsets against hand-computed and
NumPy references."""

import json

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import classify
from cvrl_tf import evaluate
from cvrl_tf import knn


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
