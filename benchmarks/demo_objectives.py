r"""The ρ-SSL study's four objectives at demo scale: does each one learn, at ρ = 2 and ρ = 4?

  make demo                       # builds demo_out/tfrecords once
  python benchmarks/demo_objectives.py --workdir=/tmp/demo_objectives [--runs=moco/2,byol/4]

Pretrains experiments/demo_rho_{simclr,moco,byol,swav}.py (demo.py's tiny R3D-18, data, 40
epochs and seed, with only the objective changed) at ρ = 2 and ρ = 4 clips per video, then
linear-evaluates each backbone with `demo_linear_eval` (same protocol, same seed), and a randomly
initialised backbone once as the baseline, all through the train entry point. simclr at ρ = 2 is
`make demo`'s own pretraining.

ρ = 4 changes data.num_clips only, except for MoCo, whose study recipe ties the SGD step to ρ (its
losses are summed over the clips in SlowFast, averaged in ours: see experiments/_rho_ssl.py), so
its ρ = 4 run doubles the learning rate and halves the weight decay, as rho_moco_k400_rho4 does.

The table's spread column is each run's `embedding/spread` (losses.embedding_spread: about 1 for
embeddings that use every direction, 0 when every clip maps to one vector) at its first and last
logged step, read from the run's TensorBoard summaries; "—" for runs made before the metric.

Runs whose workdir already holds a finished result are not repeated. Prints a table; the last
line is `lowest margin over random init: <points> (<run>)`.
"""

import argparse
import json
import os
import sys

import demo_ablation
from cvrl_tf import demo_report
from cvrl_tf import objectives

OBJECTIVES = ("simclr", "moco", "byol", "swav")
CLIPS = (2, 4)
# Overrides of a ρ = 4 run beyond data.num_clips=4 (see the module docstring).
RHO4 = {"moco": ["optimizer.base_learning_rate=0.4", "optimizer.weight_decay=2.5e-5"]}


def run_names() -> list:
  return [f"{objective}/{clips}" for objective in OBJECTIVES for clips in CLIPS]


def pretrain_args(name: str, out: str, train_pattern) -> list:
  objective, clips = name.split("/")
  overrides = [f"data.num_clips={clips}"] + (RHO4.get(objective, []) if clips == "4" else [])
  if train_pattern:
    overrides.append(f"data.reader.file_pattern={train_pattern}")
  return [f"--experiment=demo_rho_{objective}", f"--workdir={out}/pretrain",
          *[f"--config={o}" for o in overrides]]


def linear_args(out: str, init, patterns) -> list:
  args = ["--experiment=demo_linear_eval", f"--workdir={out}/linear_eval"]
  args.append(f"--init_checkpoint={init}" if init
              else "--config=evaluation.allow_random_backbone=true")
  if patterns:
    train_pattern, val_pattern = patterns
    args += [f"--config=train_data.reader.file_pattern={train_pattern}",
             f"--config=eval_data.reader.file_pattern={val_pattern}"]
  return args


def finished(out: str, steps) -> dict:
  """{"top1", "pretrain_s", "eval_s"} of a run, running what is missing."""
  record = os.path.join(out, "result.json")
  if os.path.exists(record):
    with open(record) as f:
      return json.load(f)
  os.makedirs(out, exist_ok=True)
  times = {}
  for key, args, log in steps:
    times[key] = demo_ablation.run(args, os.path.join(out, log))
  with open(os.path.join(out, "linear_eval", "metrics.json")) as f:
    result = dict(times, top1=json.load(f)["top1"])
  with open(record, "w") as f:
    json.dump(result, f)
  return result


def spread(out: str) -> str:
  """'first → last' logged embedding/spread of a run's pretraining, or '—' if not logged."""
  scalars = demo_report.read_scalars(os.path.join(out, "pretrain", "summaries", "train"))
  if objectives.SPREAD not in scalars:
    return "—"
  values = scalars[objectives.SPREAD][1]
  return f"{values[0]:.2f} → {values[-1]:.2f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="One sub-folder per run goes here.")
  parser.add_argument("--tfrecords", default=None,
                      help="Folder of train-*/val-* shards (default: the experiments' own).")
  parser.add_argument("--runs", default=",".join(run_names()),
                      help=f"Comma-separated subset of {', '.join(run_names())}.")
  args = parser.parse_args()
  patterns = None
  if args.tfrecords:
    patterns = (os.path.join(args.tfrecords, "train-*-of-*.tfrecord"),
                os.path.join(args.tfrecords, "val-*-of-*.tfrecord"))
  root = os.path.abspath(args.workdir)

  random_out = os.path.join(root, "random")
  baseline = finished(random_out, [("eval_s", linear_args(random_out, None, patterns),
                                    "linear_eval.log")])
  print(f"random init: top-1 {100 * baseline['top1']:.1f}", flush=True)
  rows, outs = {}, {}
  for name in args.runs.split(","):
    if name not in run_names():
      raise SystemExit(f"unknown run {name!r}; choose from {', '.join(run_names())}")
    out = outs[name] = os.path.join(root, name.replace("/", "_rho"))
    rows[name] = finished(out, [
        ("pretrain_s", pretrain_args(name, out, patterns and patterns[0]), "pretrain.log"),
        ("eval_s", linear_args(out, f"{out}/pretrain/checkpoints", patterns),
         "linear_eval.log")])
    print(f"{name}: top-1 {100 * rows[name]['top1']:.1f}", flush=True)

  print()
  print("| objective | ρ | linear top-1 (%) | random init (%) | margin (points) "
        "| embedding spread | pretrain (s) | linear eval (s) |")
  print("|---|---|---|---|---|---|---|---|")
  for name, row in rows.items():
    objective, clips = name.split("/")
    margin = 100 * (row["top1"] - baseline["top1"])
    print(f"| {objective} | {clips} | {100 * row['top1']:.1f} | {100 * baseline['top1']:.1f} "
          f"| {margin:+.1f} | {spread(outs[name])} | {row['pretrain_s']:.0f} "
          f"| {row['eval_s']:.0f} |")
  worst = min(rows, key=lambda name: rows[name]["top1"])
  print(f"lowest margin over random init: {100 * (rows[worst]['top1'] - baseline['top1']):+.1f} "
        f"points ({worst})")
  sys.stdout.flush()


if __name__ == "__main__":
  main()
