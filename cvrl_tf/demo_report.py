r"""The last step of `make demo`: the SSL-vs-random summary, its JSON and its plot.

  python -m cvrl_tf.demo_report --demo_out=demo_out --started_at=$(date +%s)

Reads what the earlier steps wrote under --demo_out:
  pretrain/summaries/train        TensorBoard scalars of the pretraining run
  linear_eval/metrics.json        linear evaluation of the pretrained backbone
  linear_eval_random/metrics.json the same protocol on a randomly initialised backbone
  knn/knn_metrics.json, knn_random/knn_metrics.json
and writes summary.json (ssl_top1, random_init_top1, ssl_knn_top1, random_init_knn_top1, their
margins, wall_seconds) and summary.png (training curves; SSL vs random), then prints the table.
It exits non-zero when linear-eval top-1 of the pretrained backbone does not beat the random one
by --min_margin: the demo's claim is that pretraining learns something.
"""

import io
import sys
import time

import numpy as np
from absl import app
from absl import flags

from cvrl_tf import storage

FLAGS = flags.FLAGS
flags.DEFINE_string("demo_out", "demo_out", "The demo's output folder.")
flags.DEFINE_float("started_at", None, "Unix time the demo started (for wall_seconds).")
flags.DEFINE_float("min_margin", 0.10, "Required ssl_top1 - random_init_top1.")
flags.DEFINE_string("export_check", "", "JSON file written by the export check, if any.")

RUNS = {"ssl_top1": ("linear_eval", "metrics.json"),
        "random_init_top1": ("linear_eval_random", "metrics.json"),
        "ssl_knn_top1": ("knn", "knn_metrics.json"),
        "random_init_knn_top1": ("knn_random", "knn_metrics.json")}


def read_scalars(event_dir: str) -> dict:
  """{tag: ([steps], [values])} of the scalars in a TensorBoard event directory."""
  import tensorflow as tf

  scalars = {}
  for path in storage.glob(storage.join(event_dir, "events.out.tfevents.*")):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                  else value.simple_value)
        steps, values = scalars.setdefault(value.tag, ([], []))
        steps.append(int(event.step))
        values.append(number)
  # A resumed run may log a step twice: keep the last.
  for tag, (steps, values) in scalars.items():
    last = dict(zip(steps, values))
    scalars[tag] = (sorted(last), [last[s] for s in sorted(last)])
  return scalars


def read_metrics(demo_out: str) -> dict:
  """{summary key: the metrics dict of that run}; fails naming a missing file."""
  metrics = {}
  for key, (run, name) in RUNS.items():
    path = storage.join(demo_out, run, name)
    if not storage.exists(path):
      raise FileNotFoundError(f"{path} is missing: run `make demo` (the step that writes it "
                              "failed or did not run)")
    metrics[key] = storage.read_json(path)
  return metrics


def summarize(metrics: dict, wall_seconds, curves: dict) -> dict:
  summary = {key: metrics[key]["top1"] for key in RUNS}
  summary["linear_margin"] = summary["ssl_top1"] - summary["random_init_top1"]
  summary["knn_margin"] = summary["ssl_knn_top1"] - summary["random_init_knn_top1"]
  summary["ssl_top5"] = metrics["ssl_top1"]["top5"]
  summary["random_init_top5"] = metrics["random_init_top1"]["top5"]
  summary["eval_videos"] = metrics["ssl_top1"]["num_videos"]
  summary["num_classes"] = len(metrics["ssl_top1"]["per_class_accuracy"])
  summary["views_per_video"] = metrics["ssl_top1"]["views_per_video"]
  summary["wall_seconds"] = wall_seconds
  for tag, name in (("loss/contrastive", "final_pretrain_loss"),
                    ("contrast/accuracy", "final_contrast_accuracy")):
    if tag in curves and curves[tag][1]:
      summary[name] = curves[tag][1][-1]
  return summary


def plot(curves: dict, summary: dict, path: str) -> None:
  """Training curves (loss, contrast accuracy) and the SSL-vs-random bars, as one PNG."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot

  figure, axes = pyplot.subplots(1, 3, figsize=(13, 3.8))
  for axis, tag, title in ((axes[0], "loss/contrastive", "pretraining loss (NT-Xent)"),
                           (axes[1], "contrast/accuracy", "contrast accuracy")):
    steps, values = curves.get(tag, ([], []))
    axis.plot(steps, values, color="tab:blue")
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
  groups = ("linear eval", "kNN")
  ssl = (summary["ssl_top1"], summary["ssl_knn_top1"])
  random = (summary["random_init_top1"], summary["random_init_knn_top1"])
  x = np.arange(len(groups))
  axes[2].bar(x - 0.18, ssl, 0.36, label="CVRL pretrained", color="tab:blue")
  axes[2].bar(x + 0.18, random, 0.36, label="random init", color="tab:gray")
  for offset, values in ((-0.18, ssl), (0.18, random)):
    for i, value in enumerate(values):
      axes[2].text(i + offset, value + 0.01, f"{value:.0%}", ha="center", fontsize=8)
  axes[2].axhline(1 / summary["num_classes"], color="tab:red", linestyle=":", linewidth=1, label="chance")
  axes[2].set_xticks(x, labels=groups)
  axes[2].set_ylim(0, 1)
  axes[2].set_title(f"held-out top-1 ({summary['eval_videos']} videos)", fontsize=10)
  axes[2].legend(fontsize=8, loc="upper right")
  figure.tight_layout()
  png = io.BytesIO()
  figure.savefig(png, format="png", dpi=100)
  pyplot.close(figure)
  storage.atomic_write_bytes(path, png.getvalue())


def table(summary: dict) -> str:
  rows = [("", "CVRL pretrained", "random init", "margin"),
          ("linear eval top-1", f"{summary['ssl_top1']:.1%}", f"{summary['random_init_top1']:.1%}",
           f"{summary['linear_margin']:+.1%}"),
          ("kNN top-1", f"{summary['ssl_knn_top1']:.1%}", f"{summary['random_init_knn_top1']:.1%}",
           f"{summary['knn_margin']:+.1%}")]
  widths = [max(len(row[i]) for row in rows) for i in range(4)]
  return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths))
                   for row in rows)


def main(argv):
  del argv
  wall = (round(time.time() - FLAGS.started_at, 1) if FLAGS.started_at is not None else None)
  curves = read_scalars(storage.join(FLAGS.demo_out, "pretrain", "summaries", "train"))
  summary = summarize(read_metrics(FLAGS.demo_out), wall, curves)
  if FLAGS.export_check and storage.exists(FLAGS.export_check):
    summary["export_check"] = storage.read_json(FLAGS.export_check)
  storage.atomic_write_json(storage.join(FLAGS.demo_out, "summary.json"), summary)
  plot(curves, summary, storage.join(FLAGS.demo_out, "summary.png"))
  print(f"\n{table(summary)}\n")
  print(f"{summary['eval_videos']} held-out videos x {summary['views_per_video']} views; "
        f"wrote {FLAGS.demo_out}/summary.json and {FLAGS.demo_out}/summary.png"
        + (f"; demo wall time {wall / 60:.1f} min" if wall is not None else ""))
  if summary["linear_margin"] < FLAGS.min_margin:
    print(f"error: pretraining beat random initialisation by {summary['linear_margin']:.1%}, "
          f"less than the {FLAGS.min_margin:.0%} the demo promises", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
