r"""Peak memory and time of one pretraining step with train.microbatches = 1, 2, 4.

  .venv/bin/python benchmarks/microbatch_memory.py [--experiment=demo] [--batch=32] \
      [--microbatches=1,2,4] [--objective=simclr] [--steps=3] [--config=key=value ...]

Each k runs in its own process (peak memory is per process): the experiment's Trainer on one
device, a fixed batch of random clips (no input pipeline: its buffers are not what microbatches
change), the replica step traced first, then `--steps` steps. Reported per k:

  peak      the process's peak memory during the timed steps: get_memory_info's "peak" on a
            GPU / TPU, and on a CPU with oneDNN on (on by default here, as cvrl_tf.train has it:
            TensorFlow's CPU allocator is then a BFC pool that keeps statistics); with oneDNN
            off, the most bytes in use from malloc (glibc's mallinfo2, sampled every 2 ms: the
            plain CPU allocator keeps none, and the resident set keeps what malloc freed).
            The last column of each line says which.
  step      that peak minus the memory in use before the timed steps (after one untimed step:
            model, optimizer state and the optimised graph are in both): the activations and
            temporaries one step adds
  s/step    median time of the timed steps

Every k computes the same loss over the whole batch (cvrl_tf/microbatch.py); the LAST line is
the step memory of the largest k as a fraction of k = 1's.
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap

import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent('''
    import ctypes, json, os, sys, threading, time
    import numpy as np
    import tensorflow as tf
    from cvrl_tf import config as cfg, pretrain
    experiment, steps, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    config = cfg.load_experiment(experiment, overrides)
    trainer = pretrain.Trainer(config, "ram://microbatch_memory", tf.distribute.get_strategy(),
                               log=lambda _: None)
    trainer.restore_initial()
    data, batch = config.data, config.train.global_batch_size
    rng = np.random.default_rng(0)
    shape = (batch, data.num_frames, data.crop_size, data.crop_size, 3)
    features = {name: tf.constant(rng.uniform(size=shape), tf.float32)
                for name in data.view_names}
    step = tf.function(lambda f: trainer.replica_step(f, with_gradient_norm=False))
    values = [float(v) for v in step(features)]      # tracing, graph optimisation, first run
    accelerators = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU")

    class MallInfo2(ctypes.Structure):
      _fields_ = [(name, ctypes.c_size_t) for name in (
          "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
          "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def resident():  # bytes the process has malloc'ed and not freed (glibc: all arenas + mmaps)
      info = libc.mallinfo2()
      return info.uordblks + info.hblkhd

    highest, done = [0], threading.Event()

    def sample():  # the CPU allocator keeps no statistics: sample malloc's bytes in use
      while not done.is_set():
        highest[0] = max(highest[0], resident())
        time.sleep(0.002)
    # The device's allocator statistics where it keeps them: GPU / TPU, and the CPU when oneDNN
    # is on (its allocator is a BFC pool with statistics); otherwise malloc's, sampled.
    device = (accelerators or tf.config.list_logical_devices("CPU"))[0].name
    try:
      tf.config.experimental.reset_memory_stats(device)
      before = tf.config.experimental.get_memory_info(device)["current"]
      source = "allocator"
    except ValueError:
      device, source = None, "malloc"
      before = resident()
      threading.Thread(target=sample, daemon=True).start()
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      values = [float(v) for v in step(features)]
      times.append(time.perf_counter() - start)
    done.set()
    peak = (tf.config.experimental.get_memory_info(device)["peak"] if device
            else max(highest[0], resident()))
    print(json.dumps({"peak": peak, "traced": before, "loss": values[0],
                      "seconds": float(np.median(times)), "source": source,
                      "device": (accelerators[0].name if accelerators else "CPU")}))
''')


def run(args, k: int) -> dict:
  overrides = [f"train.global_batch_size={args.batch}", f"train.microbatches={k}",
               f"objective.name={args.objective}", *args.config]
  # oneDNN on unless the caller chose, as cvrl_tf.train runs: its CPU allocator (a BFC pool)
  # keeps the statistics that get_memory_info reads, so the peak is exact, not sampled.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
  result = subprocess.run(
      [sys.executable, "-c", WORKER, args.experiment, str(args.steps), json.dumps(overrides)],
      capture_output=True, text=True, cwd=REPO, env=env, check=False)
  if result.returncode:
    raise SystemExit(f"microbatches={k} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiment", default="demo")
  parser.add_argument("--objective", default="simclr")
  parser.add_argument("--batch", type=int, default=32, help="videos per step (one device)")
  parser.add_argument("--microbatches", default="1,2,4")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--config", action="append", default=[], help="key=value overrides")
  args = parser.parse_args()
  if args.steps < 1:
    raise SystemExit("--steps must be >= 1")
  ks = [int(k) for k in args.microbatches.split(",")]
  print(f"{args.experiment} ({args.objective}), {args.batch} videos per step, "
        f"{machine.cpu_description()}")
  results = {}
  for k in ks:
    r = results[k] = run(args, k)
    print(f"k={k}  peak {r['peak'] / 2**20:8.1f} MiB  step {(r['peak'] - r['traced']) / 2**20:8.1f}"
          f" MiB  {r['seconds']:.2f} s/step  loss {r['loss']:.5f}  ({r['device']}, {r['source']})",
          flush=True)
  first, last = results[ks[0]], results[ks[-1]]
  ratio = (last["peak"] - last["traced"]) / max(first["peak"] - first["traced"], 1)
  print(f"step memory k={ks[-1]} / k={ks[0]}: {ratio:.2f}")


if __name__ == "__main__":
  main()
