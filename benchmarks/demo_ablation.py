r"""CVRL's augmentation ablation (the paper's TA / SA / TA+SA / TA+SA+TC table) at demo scale.

  make demo                       # builds demo_out/tfrecords once
  python benchmarks/demo_ablation.py --workdir=/tmp/demo_ablation [--epochs=40] [--seed=0]

Pretrains the `demo` experiment four times, changing only the augmentation, then linear-evaluates
each run with `demo_linear_eval` (same seed, same protocol), all through the train entry point:

  TA        temporal augmentation only: the Δ sampling, and no spatial augmentation beyond a fixed
            crop (the whole frame, squashed to the crop size: an area range of (1, 1) with a square
            aspect cannot fit the frame, so the sampler falls back to the whole frame); no flip,
            colour, grey, blur or solarize.
  SA        spatial only: both clips from the same start (Δ = 0,
            data.temporal_augmentation=false) and the full spatial recipe, drawn per frame (no
            temporal consistency).
  TA+SA     Δ sampling + the full spatial recipe, drawn per frame.
  TA+SA+TC  the demo recipe as is: Δ sampling + spatial recipe drawn once per clip.

Runs whose workdir already holds a finished result are not repeated. Prints a table; the last
line is `TA+SA+TC top-1 minus TA top-1: <points>`.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NO_SPATIAL = [
    "data.augmentation.area_range=1.0,1.0", "data.augmentation.aspect_ratio_range=1.0,1.0",
    "data.augmentation.flip_probability=0.0", "data.augmentation.color_jitter_probability=0.0",
    "data.augmentation.grayscale_probability=0.0",
    "data.augmentation.blur_probability_view_1=0.0",
    "data.augmentation.blur_probability_view_2=0.0",
    "data.augmentation.solarize_probability_view_1=0.0",
    "data.augmentation.solarize_probability_view_2=0.0",
]
PER_FRAME = ["data.augmentation.temporally_consistent=false"]
NO_DELTA = ["data.temporal_augmentation=false"]

VARIANTS = {
    "TA": NO_SPATIAL,
    "SA": NO_DELTA + PER_FRAME,
    "TA+SA": PER_FRAME,
    "TA+SA+TC": [],
}


def run(args: list, log_path: str) -> float:
  """Runs `python -m cvrl_tf.train ARGS`, logging to log_path; returns the wall time in s."""
  start = time.time()
  with open(log_path, "w") as log:
    result = subprocess.run([sys.executable, "-m", "cvrl_tf.train", *args], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, check=False,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  if result.returncode:
    raise SystemExit(f"python -m cvrl_tf.train {' '.join(args)} failed; see {log_path}")
  return time.time() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="One sub-folder per variant goes here.")
  parser.add_argument("--seed", type=int, default=0, help="train.seed of every run.")
  parser.add_argument("--epochs", type=float, default=None,
                      help="Pretraining epochs (default: the demo experiment's).")
  parser.add_argument("--tfrecords", default=None,
                      help="Folder of train-*/val-* shards (default: the experiments' own).")
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"Comma-separated subset of {', '.join(VARIANTS)}.")
  args = parser.parse_args()
  train_pattern = val_pattern = None
  if args.tfrecords:
    train_pattern = os.path.join(args.tfrecords, "train-*-of-*.tfrecord")
    val_pattern = os.path.join(args.tfrecords, "val-*-of-*.tfrecord")
  seed = [f"--config=train.seed={args.seed}"]

  rows = {}
  for name in args.variants.split(","):
    if name not in VARIANTS:
      raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    out = os.path.join(os.path.abspath(args.workdir), name.replace("+", "_"))
    os.makedirs(out, exist_ok=True)
    metrics_path = os.path.join(out, "linear_eval", "metrics.json")
    pretrain_s = eval_s = float("nan")
    if not os.path.exists(metrics_path):
      pretrain = ["--experiment=demo", f"--workdir={out}/pretrain", *seed,
                  *[f"--config={o}" for o in VARIANTS[name]]]
      if args.epochs is not None:
        pretrain.append(f"--config=train.epochs={args.epochs}")
      if train_pattern:
        pretrain.append(f"--config=data.reader.file_pattern={train_pattern}")
      pretrain_s = run(pretrain, os.path.join(out, "pretrain.log"))
      linear = ["--experiment=demo_linear_eval", f"--workdir={out}/linear_eval", *seed,
                f"--init_checkpoint={out}/pretrain/checkpoints"]
      if train_pattern:
        linear += [f"--config=train_data.reader.file_pattern={train_pattern}",
                   f"--config=eval_data.reader.file_pattern={val_pattern}"]
      eval_s = run(linear, os.path.join(out, "linear_eval.log"))
      with open(os.path.join(out, "wall_times.json"), "w") as f:
        json.dump({"pretrain_s": pretrain_s, "eval_s": eval_s}, f)
    if os.path.exists(os.path.join(out, "wall_times.json")):
      with open(os.path.join(out, "wall_times.json")) as f:
        pretrain_s, eval_s = json.load(f).values()
    with open(metrics_path) as f:
      rows[name] = (json.load(f)["top1"], pretrain_s, eval_s)
    print(f"{name}: top-1 {100 * rows[name][0]:.1f}", flush=True)

  print()
  print("| variant | linear top-1 (%) | pretrain (s) | linear eval (s) |")
  print("|---|---|---|---|")
  for name, (top1, pretrain_s, eval_s) in rows.items():
    print(f"| {name} | {100 * top1:.1f} | {pretrain_s:.0f} | {eval_s:.0f} |")
  if "TA" in rows and "TA+SA+TC" in rows:
    print(f"TA+SA+TC top-1 minus TA top-1: {100 * (rows['TA+SA+TC'][0] - rows['TA'][0]):+.1f}")


if __name__ == "__main__":
  main()
