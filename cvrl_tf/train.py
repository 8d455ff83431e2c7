r"""Trains a named experiment: `python -m cvrl_tf.train --experiment=NAME --workdir=DIR`.

  python -m cvrl_tf.train --experiment=cvrl_k600 --workdir=/ckpt/k600 \
      --config=data.reader.file_pattern='/data/k600/train-*' --config=train.global_batch_size=512
  python -m cvrl_tf.train --experiment=cvrl_k600 --print_config
  python -m cvrl_tf.train --experiment=demo --workdir=demo_out/pretrain
  python -m cvrl_tf.train --experiment=cvrl_k600_linear_eval --workdir=/ckpt/k600_linear \
      --init_checkpoint=/ckpt/k600/checkpoints
  python -m cvrl_tf.train --experiment=cvrl_k600_knn --workdir=/ckpt/k600_knn \
      --init_checkpoint=/ckpt/k600/checkpoints/ckpt-50000

Pretraining, linear evaluation, fine-tuning (transfer and semi-supervised) and kNN experiments all
run here; the experiment's config type says which (cvrl_tf.config). The workdir holds everything
a run writes: config.json (the resolved config), checkpoints/, summaries/ (TensorBoard), and for
evaluations metrics.json / knn_metrics.json (+ a confusion-matrix PNG for small label sets).
Re-running the same command resumes from the latest checkpoint. SIGTERM (a preemption: GKE, Slurm,
a TPU maintenance event) saves a checkpoint at the end of the current multi-step call and exits
with code 143 (128 + SIGTERM: "terminated, not finished"); give the scheduler a grace period
longer than one call plus a checkpoint save. The
strategy is chosen from the environment (TPU when --config=train.tpu=NAME, MultiWorkerMirrored
when TF_CONFIG names several workers, Mirrored on several GPUs, else one device) unless
train.strategy says otherwise.
"""

import json
import os
import sys
import time
from typing import Callable

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("experiment", None, "Experiment name (experiments/NAME.py) or path to a file.")
flags.DEFINE_multi_string("config", [], "Override: dotted.key=value (repeatable).")
flags.DEFINE_string("workdir", None, "Directory for config.json, checkpoints and summaries.")
flags.DEFINE_string("init_checkpoint", None, "Shortcut for --config=train.init_checkpoint=PATH.")
flags.DEFINE_bool("print_config", False, "Print the resolved config as JSON and exit.")


# What may change between a run and its resumption: how it is logged, stopped, placed and fed.
# Anything else (model, optimizer, batch, schedule, augmentation, seed) would silently make the
# resumed run a different experiment.
RESUMABLE_CHANGES = (
    "train.max_steps", "train.log_every_steps", "train.steps_per_loop", "train.keep_checkpoints",
    "train.strategy", "train.tpu", "train.init_checkpoint", "data.reader.file_pattern",
    "data.reader.cycle_length", "data.augment_in_step", "data.use_xla", "data.opencv_resize",
    "data.opencv_color", "derived",
    # Data that moved (another bucket, a new mount): every experiment type's data groups.
    "train_data.reader.file_pattern", "eval_data.reader.file_pattern",
    "bank_data.reader.file_pattern", "evaluation.label_map")


def _flatten(tree, prefix=""):
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f"{prefix}{key}."))
  return flat


def _defaults(data: dict) -> dict:
  """Every key of the config tree that `data` (a config.json) is one of, at its default."""
  from cvrl_tf import config as cfg  # not at the top: config imports TensorFlow
  return _flatten(cfg.to_dict(type(cfg.from_dict(data))()))


def check_resumable(workdir: str, text: str) -> None:
  """Refuses to continue a run in `workdir` with a config that changes the experiment."""
  from cvrl_tf import storage  # not at the top: storage imports TensorFlow
  path = storage.join(workdir, "config.json")
  if not storage.exists(path):
    return
  before = _flatten(storage.read_json(path))
  now = _flatten(json.loads(text))
  # A key cvrl_tf added after the run began (e.g. optimizer.schedule) is absent from its
  # config.json: the run used that key's default.
  before = {**_defaults(json.loads(text)), **before}
  changed = sorted(key for key in set(before) | set(now)
                   if before.get(key) != now.get(key)
                   and not key.startswith(RESUMABLE_CHANGES))
  if changed:
    details = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
    raise ValueError(
        f"{workdir} holds a run with another config ({details}); resume it with the same "
        "experiment and overrides, or start a new --workdir (with --init_checkpoint to reuse "
        "its backbone)")


def _stop_on_sigterm(trainer) -> None:
  """SIGTERM stops the training steps at the next call boundary, with a checkpoint (see
  loop.TrainLoop.request_stop); anywhere else it ends the process at once, as by default."""
  import signal

  def handle(signum, frame):
    del frame
    if not trainer.request_stop():
      print("SIGTERM outside the training steps: exiting (nothing unsaved)", file=sys.stderr,
            flush=True)
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)

  signal.signal(signal.SIGTERM, handle)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.experiment:
    raise app.UsageError("--experiment is required (e.g. --experiment=demo)")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # TF 2.21 turns oneDNN on by itself only on CPUs with AVX-512 VNNI-class features, not on AVX2
  # ones (the AMD EPYC machines the recipes were measured on); on, the training step is 1.2-1.3x
  # and the input pipeline's blur 11x faster there (benchmarks/RESULTS.md). But oneDNN's kernels
  # are not covered by TF's op determinism: a killed and resumed train.deterministic run came out
  # 1e-4 away from an uninterrupted one.
  # So: on, unless the run is deterministic (see below). It must be set before TensorFlow is
  # imported; an explicit TF_ENABLE_ONEDNN_OPTS is always obeyed.
  chose_onednn = "TF_ENABLE_ONEDNN_OPTS" not in os.environ
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
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
  if chose_onednn and config.train.deterministic:
    # TensorFlow is loaded with oneDNN on; only a fresh process can turn it off.
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "cvrl_tf.train", *sys.argv[1:]])
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required to train (it holds checkpoints and summaries)")

  from cvrl_tf import runtime

  try:
    check_resumable(FLAGS.workdir, text)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  strategy = runtime.make_strategy(config.train.strategy, config.train.tpu)
  runtime.set_precision(config.train.mixed_precision)
  runtime.set_determinism(config.train.seed, config.train.deterministic)
  return run_experiment(config, FLAGS.workdir, strategy, lambda line: print(line, flush=True),
                        stop_on_sigterm=True)


def make_trainer(config, workdir: str, strategy, log: Callable[[str], None]):
  """The loop.TrainLoop of a trained experiment: classify.Trainer for linear evaluation and
  fine-tuning, pretrain.Trainer for pretraining (kNN trains nothing: a ConfigError)."""
  from cvrl_tf import classify
  from cvrl_tf import config as cfg
  from cvrl_tf import pretrain

  if isinstance(config, cfg.KnnExperimentConfig):
    raise cfg.ConfigError(f"experiment {config.name} is a kNN evaluation: it has no training loop")
  if isinstance(config, cfg.ClassificationExperimentConfig):
    return classify.Trainer(config, workdir, strategy, log=log)
  return pretrain.Trainer(config, workdir, strategy, log=log)


def run_experiment(config, workdir: str, strategy, log: Callable[[str], None],
                   stop_on_sigterm: bool = False) -> int:
  """Checks the inputs, then runs (or resumes) the experiment in `workdir`; returns the exit code.

  The strategy, precision and determinism are the caller's (they must be set before any other
  TensorFlow op runs). Errors a user can fix are printed to stderr with their exit code: 2 when
  refused before anything ran (nothing written), 1 when the run failed, 143 when preempted.
  """
  import tensorflow as tf
  from cvrl_tf import backbone_checkpoint
  from cvrl_tf import classify
  from cvrl_tf import config as cfg
  from cvrl_tf import knn
  from cvrl_tf import loop
  from cvrl_tf import preflight
  from cvrl_tf import pretrain
  from cvrl_tf import runtime
  from cvrl_tf import storage

  text = cfg.to_json(config)
  started = time.monotonic()
  try:  # before the workdir exists: a wrong input leaves nothing behind
    preflight.check_run(config, workdir, log)
  except (preflight.PreflightError, cfg.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  log(f"inputs checked in {time.monotonic() - started:.1f} s")
  write_config = lambda: (storage.atomic_write_text(storage.join(workdir, "config.json"), text)
                          if runtime.is_chief(strategy) else None)
  try:
    if isinstance(config, cfg.KnnExperimentConfig):
      log(f"experiment {config.name}: kNN (k={config.evaluation.knn_k}) on "
          f"{config.eval_data.reader.file_pattern}; workdir {workdir}")
      knn.run(config, workdir, strategy, log)
      write_config()
      return 0
    log(f"experiment {config.name}: {config.stop_step} of {config.total_steps} steps of "
        f"{config.train.global_batch_size} videos on {strategy.num_replicas_in_sync} "
        f"replica(s) ({type(strategy).__name__}); workdir {workdir}")
    trainer = make_trainer(config, workdir, strategy, log)
    if stop_on_sigterm:
      _stop_on_sigterm(trainer)
    log(trainer.restore())
    write_config()  # after the restore: config.json describes the checkpoints
    if isinstance(trainer, classify.Trainer):
      trainer.prepare()
      trainer.run()
    else:
      trainer.train()
  except (cfg.ConfigError, backbone_checkpoint.CheckpointMismatchError, FileNotFoundError,
          ValueError, pretrain.NonFiniteLossError, loop.WorkersDisagreeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except loop.Preempted as e:
    log(f"preempted: {e}")
    return loop.PREEMPTED_EXIT_CODE
  except tf.errors.InvalidArgumentError as e:  # bad records: the message names the video
    print(f"error: {e.message.strip()[:2000]}", file=sys.stderr)
    return 1
  log(f"done: step {trainer.step}; checkpoints in {trainer.manager.directory}")
  return 0


if __name__ == "__main__":
  from cvrl_tf import cli
  cli.run(main)
