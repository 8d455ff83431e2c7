r"""Has a pretraining run learned content, collapsed, or neither? One batch through its network.

  python benchmarks/probe_embeddings.py --workdir=/tmp/demo_objectives/moco_rho2/pretrain \
      [--checkpoint=.../ckpt-160 | --checkpoint=init] [--tfrecords=demo_out/tfrecords]

Builds the run's online network from its config.json, restores the newest checkpoint (or the one
named; `init` is the run's random initialisation, same seed), draws --batches training batches
from the run's own input pipeline (same augmentation, ρ clips per video) and, in training mode as
the objective sees it, reports for the pooled backbone feature and for the projection the mean
over the batches of:

  spread       losses.embedding_spread: about 1 when the unit vectors use every direction, 0 when
               every clip maps to one vector
  top share    the share of the variance of the unit vectors along their first principal
               direction (near 1: dimensional collapse onto a line)
  pair cosine  mean cosine of a video's clip 1 and clip 2, against clip 1 and another video's clip 2
  rank         how often clip 1's own clip 2 is closer to it than another video's clip 2 is:
               0.5 is chance (the network cannot tell a video's other clip from another video's),
               1 is perfect

The last line is `positive rank of the projection: <rank>`. Used for the ρ-SSL demo runs in
benchmarks/RESULTS.md; a diagnostic: it prints, and writes nothing.
"""

import argparse
import os
import tempfile

import numpy as np


def pair_statistics(first: np.ndarray, second: np.ndarray) -> dict:
  """Statistics of clip-1 rows `first` [B, D] against clip-2 rows `second` [B, D] (row b of
  each from video b) and of all 2B rows; see the module docstring."""
  import tensorflow as tf
  from cvrl_tf import losses

  rows = np.concatenate([first, second]).astype(np.float32)
  unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
  cosine = unit[:len(first)] @ unit[len(first):].T                                 # [B, B]
  others = ~np.eye(len(first), dtype=bool)
  centred = unit - unit.mean(axis=0)
  variance = np.linalg.svd(centred, compute_uv=False) ** 2
  return {
      "spread": float(losses.embedding_spread(tf.constant(rows))),
      "top share": float(variance[0] / variance.sum()),
      "positive cosine": float(np.diag(cosine).mean()),
      "other-video cosine": float(cosine[others].mean()),
      "rank": float((np.diag(cosine)[:, None] > cosine)[others].mean()),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="A pretraining run's workdir.")
  parser.add_argument("--checkpoint", default=None,
                      help="A checkpoint prefix, or 'init' (default: the newest).")
  parser.add_argument("--tfrecords", default=None,
                      help="Folder of train-* shards (default: the run's own file pattern).")
  parser.add_argument("--batches", type=int, default=8, help="Batches to average over.")
  args = parser.parse_args()
  if args.batches < 1:
    raise SystemExit(f"--batches must be >= 1, got {args.batches}")

  import tensorflow as tf
  from cvrl_tf import config as cfg
  from cvrl_tf import pretrain
  from cvrl_tf import storage

  config = cfg.read_workdir_config(args.workdir)
  if not isinstance(config, cfg.ExperimentConfig):
    raise SystemExit(f"{args.workdir} is a {type(config).__name__} run; give a pretraining "
                     "workdir (its config.json names an ExperimentConfig)")
  if args.tfrecords:
    config = cfg.apply_overrides(config, [
        f"data.reader.file_pattern={os.path.join(args.tfrecords, 'train-*-of-*.tfrecord')}"])
  with tempfile.TemporaryDirectory() as scratch:
    trainer = pretrain.Trainer(config, scratch, tf.distribute.get_strategy(), log=lambda _: None)
    if args.checkpoint == "init":
      trainer.restore_initial()
      restored = "random initialisation"
    else:
      restored = args.checkpoint or tf.train.latest_checkpoint(
          storage.join(args.workdir, "checkpoints"))
      if not restored:
        raise SystemExit(f"no checkpoint in {args.workdir}/checkpoints")
      if not tf.io.gfile.exists(restored + ".index"):
        raise SystemExit(f"--checkpoint={restored}: no {restored}.index; give a checkpoint "
                         "prefix such as WORKDIR/checkpoints/ckpt-320, or 'init'")
      trainer.checkpoint.restore(restored).expect_partial()
    batches = list(trainer.dataset(0).take(args.batches))

  batch = config.train.global_batch_size
  totals = {}
  for features in batches:
    clips = tf.concat([features[name] for name in config.data.view_names], axis=0)  # [ρB, ...]
    pooled = trainer.model.backbone(clips, training=True)["pooled"]                 # [ρB, C]
    for name, rows in (("pooled feature", pooled),
                       ("projection", trainer.model.head(pooled, training=True))):
      rows = rows.numpy()
      for key, value in pair_statistics(rows[:batch], rows[batch:2 * batch]).items():
        totals.setdefault(name, {}).setdefault(key, []).append(value)
  print(f"{args.workdir} ({config.objective.name}, ρ = {config.data.num_clips}): {restored}, "
        f"{len(batches)} batches of {batch} videos")
  for name, columns in totals.items():
    stats = {key: float(np.mean(values)) for key, values in columns.items()}
    print(f"  {name:15s} " + "  ".join(f"{key} {value:.3f}" for key, value in stats.items()))
  print(f"positive rank of the projection: {stats['rank']:.3f}")


if __name__ == "__main__":
  main()
