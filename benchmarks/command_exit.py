"""CPU a command spends after its `main` returned: `cvrl_tf.cli.run` (heap frozen) against absl's
plain `app.run`, alternated, each a fresh `python -m cvrl_tf.train`-like process.

  .venv/bin/python benchmarks/command_exit.py              # 3 rounds of a 4-step tiny run (~3 min)

Each process trains the tests' tiny pretraining experiment for 4 steps on generated records (one
checkpoint segment, so that only the exit differs), prints its own CPU time when `main` returns,
and the parent reads the child's total CPU time from `os.wait4`. The difference is what the exit
costs: CPython's finalisation collects garbage over every object still alive, and a process that
traced TensorFlow graphs holds about half a million. Prints per process the CPU (user + system)
before and after `main` returned, and as the LAST line the ratio of the median exit costs.
"""

import os
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import numpy as np

import machine

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 3, "rounds of (frozen, plain)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPERIMENT = '''
from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline


def get_config():
  return cfg.ExperimentConfig(
      data=input_pipeline.PretrainDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern={pattern!r}, shuffle_buffer_size=16,
                                             cycle_length=2),
          num_frames=4, stride=2, crop_size=32, use_xla=False),
      model=cfg.ModelConfig(depth=10, stem_filters=4, stage_filters=(4, 8, 8, 8),
                            sync_batch_norm=True, head_hidden_sizes=(16,), head_output_size=8),
      train=cfg.TrainConfig(global_batch_size=8, epochs=2, num_train_examples=16,
                            steps_per_loop=2, log_every_steps=2, checkpoint_every_steps=4,
                            seed=1))
'''

# Runs train.main under cli.run ("frozen") or app.run ("plain"); prints the CPU seconds used when
# main returns. argv: variant, then train's flags.
CHILD = '''
import resource, sys
from absl import app
from cvrl_tf import cli, train
variant, sys.argv = sys.argv[1], ["train", *sys.argv[2:]]

def main(argv):
  try:
    return train.main(argv)
  finally:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"CPU_AT_RETURN {usage.ru_utime + usage.ru_stime}", file=sys.stderr, flush=True)

(cli.run if variant == "frozen" else app.run)(main)
'''


def _write_records(root: str) -> str:
  import tensorflow as tf
  from cvrl_tf import schema
  rng = np.random.default_rng(0)
  for shard in range(2):
    with tf.io.TFRecordWriter(os.path.join(root, f"train-{shard}.tfrecord")) as writer:
      for i in range(8):
        base = rng.uniform(40, 200)
        frames = [tf.io.encode_jpeg(np.clip(base + 3 * t + rng.normal(0, 30, (40, 48, 3)), 0,
                                            255).astype(np.uint8)).numpy() for t in range(20)]
        writer.write(schema.serialize_video(
            frames, video_id=f"v{shard}{i}", filename=f"v{shard}{i}.mp4", fps=25.0, height=40,
            width=48, start_us=0, end_us=800_000))
  path = os.path.join(root, "tiny.py")
  with open(path, "w") as f:
    f.write(EXPERIMENT.format(pattern=os.path.join(root, "train-*.tfrecord")))
  return path


def _run(variant: str, experiment: str, workdir: str) -> tuple:
  """(CPU seconds until main returned, CPU seconds after) of one child process."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0")
  process = subprocess.Popen(
      [sys.executable, "-c", CHILD, variant, f"--experiment={experiment}",
       f"--workdir={workdir}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  stderr = process.stderr.read()
  _, status, usage = os.wait4(process.pid, 0)
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f"the {variant} run failed:\n{stderr[-3000:]}")
  at_return = float(stderr.split("CPU_AT_RETURN ")[1].split()[0])
  return at_return, usage.ru_utime + usage.ru_stime - at_return


def main(argv):
  del argv
  print(machine.cpu_description())
  exits = {"frozen": [], "plain": []}
  with tempfile.TemporaryDirectory() as root:
    experiment = _write_records(root)
    for round_ in range(FLAGS.rounds):
      for variant in ("frozen", "plain") if round_ % 2 == 0 else ("plain", "frozen"):
        main_cpu, exit_cpu = _run(variant, experiment,
                                  os.path.join(root, f"run_{variant}_{round_}"))
        exits[variant].append(exit_cpu)
        print(f"round {round_} {variant:6s}: main {main_cpu:5.2f} s CPU, exit {exit_cpu:5.2f} s")
  frozen, plain = (statistics.median(exits[v]) for v in ("frozen", "plain"))
  print(f"exit CPU, median: frozen {frozen:.2f} s, plain {plain:.2f} s: "
        f"{plain / max(frozen, 1e-3):.1f}x, {plain - frozen:.2f} s saved per command")


if __name__ == "__main__":
  app.run(main)
