"""Tracing time of a pretraining replica step on one replica: BN through TF's fused kernel (what
runs) against the synchronized moments (what ran before, forced here), alternated in one process.

  .venv/bin/python benchmarks/trace_time.py                   # tiny SimCLR, 3 rounds (~2 min)
  .venv/bin/python benchmarks/trace_time.py --depth=50 --rounds=1

The step is `pretrain.Trainer.replica_step` with the gradient norm, traced by
`tf.function(...).get_concrete_function` from TensorSpecs (no data read, nothing run): the
Python and graph-building time every run pays before its first step, twice per loop (with and
without the gradient norm). The demo experiment's recipe (SyncBN on, LARS), at the given depth
and with the test suite's tiny widths unless --depth=50. Each round builds a fresh trainer per
mode. Prints ops and seconds per trace, and as the LAST line the ratio of the medians.
"""

import statistics
import time

from absl import app
from absl import flags
import tensorflow as tf

from cvrl_tf import batch_norm
from cvrl_tf import config as cfg
from cvrl_tf import pretrain

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 10, "ResNet depth: 10 (the tests' tiny model) or 50 (the paper's)")
flags.DEFINE_integer("rounds", 3, "rounds of (fused, synchronized)")

TINY = ["model.stem_filters=4", "model.stage_filters=4,8,8,8", "model.head_hidden_sizes=16",
        "model.head_output_size=8"]


def _trace(config) -> tuple:
  """(ops in the traced graph, seconds) for one trace of a fresh trainer's replica step."""
  trainer = pretrain.Trainer(config, "ram://trace_time", tf.distribute.get_strategy(),
                             log=lambda _: None)
  data = config.data
  clip = tf.TensorSpec([config.train.global_batch_size, data.num_frames, data.crop_size,
                        data.crop_size, 3], tf.float32)
  features = {name: clip for name in data.view_names}
  step = tf.function(lambda f: trainer.replica_step(f, with_gradient_norm=True),
                     autograph=False)
  start = time.perf_counter()
  graph = step.get_concrete_function(features).graph
  return len(graph.get_operations()), time.perf_counter() - start


def main(argv):
  del argv
  overrides = [f"model.depth={FLAGS.depth}", "train.global_batch_size=8",
               "data.num_frames=4", "data.crop_size=32"]
  if FLAGS.depth != 50:
    overrides += TINY
  config = cfg.load_experiment("demo", overrides)
  fused_path = batch_norm._replicas_in_sync
  times = {"fused": [], "synchronized": []}
  for round_ in range(FLAGS.rounds):
    for mode in times:
      # One replica: the synchronized moments' all-reduce is the identity, as it was when the
      # layer took that path on one replica.
      batch_norm._replicas_in_sync = fused_path if mode == "fused" else (lambda: 2)
      ops, seconds = _trace(config)
      times[mode].append(seconds)
      print(f"round {round_}  {mode:12s}  {ops:6d} ops  {seconds:6.2f} s", flush=True)
  batch_norm._replicas_in_sync = fused_path
  fused, synchronized = (statistics.median(times[m]) for m in ("fused", "synchronized"))
  print(f"median trace: fused {fused:.2f} s, synchronized moments {synchronized:.2f} s; "
        f"synchronized / fused = {synchronized / fused:.2f}x")


if __name__ == "__main__":
  app.run(main)
