r"""Pretraining steps/s of the `demo` experiment with one replica and with two (two logical CPU
devices, a real MirroredStrategy), on the demo TFRecords.

  make demo                       # builds demo_out/tfrecords once
  python benchmarks/train_step.py [--steps=24] [--warmup_steps=8]

Each configuration runs in its own process (logical devices must be set before TensorFlow
starts); the figure is steps/s after warm-up, with the input pipeline included, as training sees
it. Both runs use the same global batch, so on one 2-core host the two-replica run measures the
cost of splitting the step (cross-replica gather, SyncBN, gradient all-reduce), not a speed-up.
Last line: `ratio <two_replicas / one_replica>`.
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent('''
    import json, os, sys, time, tempfile
    replicas, steps, warmup = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    import tensorflow as tf
    if replicas > 1:
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    from cvrl_tf import config as cfg, pretrain
    config = cfg.load_experiment("demo", [
        "train.strategy=" + ("mirrored" if replicas > 1 else "default"),
        f"train.steps_per_loop={max(steps, warmup)}"])   # each timing is one call
    strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
                if replicas > 1 else tf.distribute.get_strategy())
    trainer = pretrain.Trainer(config, tempfile.mkdtemp(), strategy, log=lambda _: None)
    iterator = iter(trainer.dataset(0))
    trainer._loop(iterator, tf.constant(warmup))[0].numpy()
    start = time.perf_counter()
    trainer._loop(iterator, tf.constant(steps))[0].numpy()
    print(json.dumps({"steps_per_s": steps / (time.perf_counter() - start),
                      "clips_per_step": 2 * config.train.global_batch_size}))
''')


def run(replicas: int, steps: int, warmup: int) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-c", WORKER, str(replicas), str(steps), str(warmup)],
                          capture_output=True, text=True, cwd=REPO, env=env, check=False)
  if result.returncode:
    raise SystemExit(f"{replicas}-replica run failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--warmup_steps", type=int, default=8)
  args = parser.parse_args()
  if not os.path.isdir(os.path.join(REPO, "demo_out", "tfrecords")):
    raise SystemExit("demo_out/tfrecords is missing: run `make demo` first")
  rates = {}
  for replicas in (1, 2):
    result = run(replicas, args.steps, args.warmup_steps)
    rates[replicas] = result["steps_per_s"]
    print(f"{replicas} replica(s)  {rates[replicas]:.3f} steps/s  "
          f"({rates[replicas] * result['clips_per_step']:.1f} clips/s)", flush=True)
  print(f"ratio {rates[2] / rates[1]:.3f}")


if __name__ == "__main__":
  main()
