r"""Trains a named experiment: `python -m cvrl_tf.train --experiment=NAME --workdir=DIR`.

  python -m cvrl_tf.train --experiment=cvrl_k600 --workdir=/ckpt/k600 \
      --config=data.reader.file_pattern='/data/k600/train-*' --config=train.global_batch_size=512
  python -m cvrl_tf.train --experiment=cvrl_k600 --print_config
  python -m cvrl_tf.train --experiment=demo --workdir=demo_out/pretrain

The workdir holds everything the run writes: config.json (the resolved config), checkpoints/,
summaries/ (TensorBoard). Re-running the same command resumes from the latest checkpoint. The
strategy is chosen from the environment (TPU when --config=train.tpu=NAME, MultiWorkerMirrored
when TF_CONFIG names several workers, Mirrored on several GPUs, else one device) unless
train.strategy says otherwise.
"""

import json
import os
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("experiment", None, "Experiment name (experiments/NAME.py) or path to a file.")
flags.DEFINE_multi_string("config", [], "Override: dotted.key=value (repeatable).")
flags.DEFINE_string("workdir", None, "Directory for config.json, checkpoints and summaries.")
flags.DEFINE_string("init_checkpoint", None, "Shortcut for --config=train.init_checkpoint=PATH.")
flags.DEFINE_bool("print_config", False, "Print the resolved config as JSON and exit.")


def _write_config(workdir: str, text: str) -> None:
  """config.json of the run; a resumed run must have been started with the same config."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      previous = json.load(f)
    current = json.loads(text)
    changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    if changed:
      print(f"note: {path} differs from this run's config in {changed}; the run continues with "
            "the new values and config.json is updated", file=sys.stderr)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.experiment:
    raise app.UsageError("--experiment is required (e.g. --experiment=demo)")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from cvrl_tf import config as cfg  # after the log level: config imports TensorFlow

  overrides = list(FLAGS.config)
  if FLAGS.init_checkpoint:
    overrides.append(f"train.init_checkpoint={FLAGS.init_checkpoint}")
  try:
    config = cfg.load_experiment(FLAGS.experiment, overrides)
  except cfg.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = cfg.to_json(config)
  if FLAGS.print_config:
    print(text, end="")
    return 0
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required to train (it holds checkpoints and summaries)")

  from cvrl_tf import pretrain
  from cvrl_tf import resnet3d
  from cvrl_tf import runtime

  strategy = runtime.make_strategy(config.train.strategy, config.train.tpu)
  runtime.set_precision(config.train.mixed_precision)
  runtime.set_determinism(config.train.seed, config.train.deterministic)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if runtime.is_chief(strategy):
    _write_config(FLAGS.workdir, text)
  print(f"experiment {config.name}: {config.total_steps} steps of {config.train.global_batch_size} "
        f"videos on {strategy.num_replicas_in_sync} replica(s) ({type(strategy).__name__}); "
        f"workdir {FLAGS.workdir}", flush=True)
  try:
    trainer = pretrain.Trainer(config, FLAGS.workdir, strategy,
                               log=lambda line: print(line, flush=True))
    print(trainer.restore(), flush=True)
    trainer.train()
  except (cfg.ConfigError, resnet3d.CheckpointMismatchError, FileNotFoundError,
          pretrain.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"done: step {trainer.step}; checkpoints in {trainer.manager.directory}", flush=True)
  return 0


if __name__ == "__main__":
  app.run(main)
