"""The demo's summary: scalars read back from TensorBoard files, margins, the JSON and the verdict."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import demo_report
from cvrl_tf import evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_demo(root, ssl_correct: int, random_correct: int):
  """A demo_out folder: pretraining summaries and the four evaluations' metrics (8 videos)."""
  writer = tf.summary.create_file_writer(str(root / "pretrain" / "summaries" / "train"))
  with writer.as_default():
    for step, loss in ((16, 8.0), (32, 6.5), (32, 6.0), (48, 5.0)):  # step 32 logged twice
      tf.summary.scalar("loss/contrastive", loss, step=step)
      tf.summary.scalar("contrast/accuracy", 1.0 / loss, step=step)
  writer.flush()
  labels = np.arange(8) % 4
  for run, name, correct in (("linear_eval", "metrics.json", ssl_correct),
                             ("linear_eval_random", "metrics.json", random_correct),
                             ("knn", "knn_metrics.json", ssl_correct),
                             ("knn_random", "knn_metrics.json", 2)):
    predicted = np.where(np.arange(8) < correct, labels, (labels + 1) % 4)
    metrics = evaluate.classification_metrics(np.eye(4)[predicted], labels)
    metrics["views_per_video"] = 12
    (root / run).mkdir(parents=True)
    (root / run / name).write_text(json.dumps(metrics))


def test_scalars_summary_and_plot(tmp_path):
  _fake_demo(tmp_path, ssl_correct=6, random_correct=2)
  curves = demo_report.read_scalars(str(tmp_path / "pretrain" / "summaries" / "train"))
  steps, losses = curves["loss/contrastive"]
  assert steps == [16, 32, 48] and losses == pytest.approx([8.0, 6.0, 5.0])  # last of step 32
  summary = demo_report.summarize(demo_report.read_metrics(str(tmp_path)), 12.5, curves)
  assert summary["ssl_top1"] == 0.75 and summary["random_init_top1"] == 0.25
  assert summary["linear_margin"] == pytest.approx(0.5)
  assert summary["random_init_knn_top1"] == 0.25 and summary["knn_margin"] == pytest.approx(0.5)
  assert summary["final_pretrain_loss"] == pytest.approx(5.0) and summary["num_classes"] == 4
  assert "+50.0%" in demo_report.table(summary)
  demo_report.plot(curves, summary, str(tmp_path / "summary.png"))
  assert (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("random_correct, code", [(2, 0), (6, 1)])
def test_the_command_fails_when_pretraining_does_not_beat_random(tmp_path, random_correct, code):
  _fake_demo(tmp_path, ssl_correct=6, random_correct=random_correct)
  result = subprocess.run([sys.executable, "-m", "cvrl_tf.demo_report",
                           f"--demo_out={tmp_path}", "--started_at=0"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == code, result.stderr
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["wall_seconds"] > 0 and summary["ssl_top1"] == 0.75
  if code:
    assert "beat random initialisation by 0.0%" in result.stderr


def test_a_missing_step_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="linear_eval_random/metrics.json"):
    (tmp_path / "linear_eval").mkdir()
    (tmp_path / "linear_eval" / "metrics.json").write_text("{}")
    demo_report.read_metrics(str(tmp_path))
