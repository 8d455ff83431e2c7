r"""End-to-end training throughput of a named experiment, what binds it, and its FLOPs utilisation.

  python benchmarks/train_throughput.py --experiment=demo
  python benchmarks/train_throughput.py --experiment=cvrl_k600 --global_batch_size=256 \
      --file_pattern='gs://my-bucket/k600_tfrecords/train-*' \
      --config=train.mixed_precision=mixed_bfloat16 --peak_tflops=312

In one process, with the experiment's Trainer (cvrl_tf.train.make_trainer: pretraining, linear
evaluation or fine-tuning) on the strategy the devices present imply (runtime.make_strategy, as
`python -m cvrl_tf.train` chooses it), three rates in clips/s (a video of a pretraining batch is
data.num_clips clips), each after --warmup_steps untimed steps, in calls of train.steps_per_loop
steps as training makes them:

  pipeline  the distributed dataset alone: every replica's batch fetched onto its device, no model
  step      the compiled multi-step loop on one batch repeated (the trainer's per-host dataset
            through `.take(batches per step).cache().repeat()`): no decoding
  loop      the real loop (Trainer._loop) on the real iterator: what a training run gets

The slower of pipeline and step binds the loop. On an accelerator the two overlap and the loop
approaches the slower one; on a CPU they share the same cores and the loop is slower than both.
The pipeline's host CPU time per clip gives its rate per fully used core, which sets the host
cores an accelerator needs (BUILD.md, "What to expect per accelerator").

With --peak_tflops (the peak of one replica's device, in the run's precision: a GPU; a TPU core
as TensorFlow counts them), MFU = loop clips/s × training FLOPs per clip ÷ (peak × replicas).
Training FLOPs per clip = 3 × the forward of backbone + head (cvrl_tf.flops), plus one forward
for a momentum encoder (MoCo, BYOL); a linear evaluation runs the frozen backbone forward only.

Like cvrl_tf.train, oneDNN is on unless the experiment is deterministic (then the process
restarts with it off) or TF_ENABLE_ONEDNN_OPTS is set. `--measure=pipeline` alone measures a
host's decoding without running the model. Last line: `clips_per_s <loop>` (or the last rate
measured).
"""

import argparse
import gc
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import machine  # noqa: E402  (beside this script)


def load_config(cfg, experiment, overrides, global_batch_size, file_pattern):
  """The experiment with the overrides and the shortcut flags (which come last, so they win).

  A classification experiment without an init checkpoint gets evaluation.allow_random_backbone:
  the weights do not change the throughput.
  """
  config = cfg.load_experiment(experiment, overrides)
  classification = isinstance(config, cfg.ClassificationExperimentConfig)
  extra = []
  if global_batch_size:
    extra.append(f"train.global_batch_size={global_batch_size}")
  if file_pattern:
    extra.append(f"{'train_data' if classification else 'data'}.reader.file_pattern="
                 f"{file_pattern}")
  if classification and not config.train.init_checkpoint:
    extra.append("evaluation.allow_random_backbone=true")
  return cfg.load_experiment(experiment, [*overrides, *extra]) if extra else config


def training_flops_per_clip(trainer) -> tuple:
  """(FLOPs of one training step per clip, how they were counted)."""
  from cvrl_tf import classify, flops  # pylint: disable=g-import-not-at-top
  from cvrl_tf.objectives import momentum  # pylint: disable=g-import-not-at-top

  if isinstance(trainer, classify.Trainer):
    data, backbone, head = trainer.config.train_data, trainer.backbone, trainer.classifier
  else:
    data, backbone, head = trainer.config.data, trainer.model.backbone, trainer.model.head
  clip = (data.num_frames, data.crop_size, data.crop_size)
  backbone_forward = flops.forward_flops(backbone, None, clip)
  head_forward = 2 * flops.head_forward_macs(head, backbone.output_channels)
  shape = f"{clip[0]}×{clip[1]}²"
  passes = flops.TRAINING_FLOPS_PER_FORWARD
  if isinstance(trainer, classify.Trainer) and trainer.frozen:
    return (backbone_forward + passes * head_forward,
            f"frozen backbone forward {backbone_forward / 1e9:.2f} + {passes} × head at {shape}")
  forward, parts = backbone_forward + head_forward, "backbone + head"
  if isinstance(getattr(getattr(trainer, "objective", None), "encoder", None),
                momentum.MomentumEncoder):
    passes, parts = passes + 1, "backbone + head; online 3, momentum network 1"
  return passes * forward, f"{passes} × forward {forward / 1e9:.2f} ({parts}) at {shape}"


class _FirstBatchesRepeated:
  """`strategy`, except that a dataset it distributes yields its first step's batches forever."""

  def __init__(self, strategy):
    self._strategy = strategy

  def distribute_datasets_from_function(self, dataset_fn, options=None):
    from cvrl_tf import loop  # pylint: disable=g-import-not-at-top
    return self._strategy.distribute_datasets_from_function(
        lambda context: dataset_fn(context).take(loop.batches_per_step(context)).cache().repeat(),
        options)

  def __getattr__(self, name):
    return getattr(self._strategy, name)


def one_batch_repeated(trainer):
  """The trainer's distributed dataset, its first step's batches repeated: the step alone."""
  strategy = trainer.strategy
  trainer.strategy = _FirstBatchesRepeated(strategy)
  try:
    return trainer.dataset(0)
  finally:
    trainer.strategy = strategy


def fetch_loop(strategy):
  """A compiled `(iterator, num_steps)` that fetches each step's batches onto the replicas and
  reads one value of each (so that nothing is pruned): the pipeline alone, as the loop sees it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def touch(features):
    return tf.add_n([tf.cast(tf.reshape(t, [-1])[0], tf.float32)
                     for t in tf.nest.flatten(features)])

  @tf.function
  def fetch(iterator, num_steps):
    total = tf.constant(0.0)
    for _ in tf.range(num_steps):
      total += strategy.reduce("SUM", strategy.run(touch, args=(next(iterator),)), axis=None)
    return total

  return fetch


def timed(call, iterator, steps: int, warmup: int, steps_per_call: int) -> tuple:
  """(wall seconds, process CPU seconds) of `steps` steps after `warmup`, in calls as training."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def run(count):
    while count > 0:
      n = min(steps_per_call, count)
      tf.nest.flatten(call(iterator, tf.constant(n)))[0].numpy()
      count -= n

  run(warmup)
  wall, cpu = time.perf_counter(), time.process_time()
  run(steps)
  return time.perf_counter() - wall, time.process_time() - cpu


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiment", required=True,
                      help="Experiment name or file, as for cvrl_tf.train.")
  parser.add_argument("--config", action="append", default=[],
                      help="Override: dotted.key=value (repeatable).")
  parser.add_argument("--global_batch_size", type=int, default=None,
                      help="Shortcut for --config=train.global_batch_size=N (videos).")
  parser.add_argument("--file_pattern", default=None,
                      help="Training shards: data.reader.file_pattern (pretraining) or "
                      "train_data.reader.file_pattern (classification).")
  parser.add_argument("--steps", type=int, default=20, help="Timed steps per measurement.")
  parser.add_argument("--warmup_steps", type=int, default=5,
                      help="Untimed steps first (tracing, buffers).")
  parser.add_argument("--measure", default="pipeline,step,loop",
                      help="Which rates, in this order: any of pipeline, step, loop.")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="Peak TFLOP/s of one replica's device in the run's precision (MFU).")
  args = parser.parse_args()
  if args.steps < 1 or args.warmup_steps < 1:
    parser.error(f"--steps and --warmup_steps must be >= 1, got {args.steps} and "
                 f"{args.warmup_steps}")
  args.measure = [name.strip() for name in args.measure.split(",") if name.strip()]
  unknown = sorted(set(args.measure) - {"pipeline", "step", "loop"})
  if unknown or not args.measure or len(set(args.measure)) != len(args.measure):
    parser.error(f"--measure takes distinct names among pipeline, step, loop; got "
                 f"{','.join(args.measure) or 'nothing'}")
  if args.peak_tflops is not None and args.peak_tflops <= 0:
    parser.error(f"--peak_tflops must be > 0, got {args.peak_tflops}")
  return args


def main():
  args = parse_args()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  chose_onednn = "TF_ENABLE_ONEDNN_OPTS" not in os.environ  # as cvrl_tf.train: see there
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
  from cvrl_tf import config as cfg  # pylint: disable=g-import-not-at-top

  try:
    config = load_config(cfg, args.experiment, args.config, args.global_batch_size,
                         args.file_pattern)
  except cfg.ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  if chose_onednn and config.train.deterministic:
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from cvrl_tf import classify, runtime, storage, train  # pylint: disable=g-import-not-at-top

  strategy = runtime.make_strategy(config.train.strategy, config.train.tpu)
  runtime.set_precision(config.train.mixed_precision)
  runtime.set_determinism(config.train.seed, config.train.deterministic)
  devices = [d.name for d in tf.config.list_logical_devices()]
  try:
    replica_devices = ", ".join(strategy.extended.worker_devices)
  except RuntimeError:  # the default strategy: one replica on the default device
    replica_devices = "the default device"
  print(f"experiment {config.name}, global batch {config.train.global_batch_size}, "
        f"{config.train.mixed_precision}, TF {tf.__version__}, TF_ENABLE_ONEDNN_OPTS="
        f"{os.environ['TF_ENABLE_ONEDNN_OPTS']}, jit_compile={config.train.jit_compile}")
  print(f"host CPU: {machine.cpu_description()}")
  print(f"devices: {', '.join(devices)}; {strategy.num_replicas_in_sync} replica(s) "
        f"({type(strategy).__name__}) on {replica_devices}")

  workdir = storage.make_local_scratch(prefix="cvrl_throughput_")
  try:
    trainer = train.make_trainer(config, workdir, strategy, log=lambda _: None)
    trainer.restore()
    if isinstance(trainer, classify.Trainer):
      trainer.prepare()
    clips_per_step = trainer.clips_per_example * config.train.global_batch_size
    steps, warmup, per_call = args.steps, args.warmup_steps, config.train.steps_per_loop

    def measure(name, call, dataset):
      iterator = iter(dataset)
      seconds, cpu_seconds = timed(call, iterator, steps, warmup, per_call)
      del iterator  # stops its prefetching threads before the next measurement
      gc.collect()
      rate = steps * clips_per_step / seconds
      cpu_ms = 1e3 * cpu_seconds / (steps * clips_per_step)
      print(f"{name:9s} {rate:9.2f} clips/s  ({steps} steps of {clips_per_step} clips in "
            f"{seconds:.2f} s; process CPU {cpu_ms:.1f} ms per clip)", flush=True)
      return rate, cpu_ms

    train_loop = trainer._loop  # pylint: disable=protected-access
    datasets = {"pipeline": lambda: (fetch_loop(strategy), trainer.dataset(0)),
                "step": lambda: (train_loop, one_batch_repeated(trainer)),
                "loop": lambda: (train_loop, trainer.dataset(0))}
    rates, cpu_ms = {}, {}
    for name in args.measure:
      rates[name], cpu_ms[name] = measure(name, *datasets[name]())
  finally:
    storage.remove(workdir)

  if "pipeline" in rates:
    print(f"pipeline per host core: {1e3 / cpu_ms['pipeline']:.1f} clips/s of CPU time "
          f"({cpu_ms['pipeline']:.1f} ms per clip)")
  if "pipeline" in rates and "step" in rates:
    pipeline, step = rates["pipeline"], rates["step"]
    binding, other = ("input pipeline", step) if pipeline < step else ("training step", pipeline)
    reached = (f"; the loop reaches {rates['loop'] / min(pipeline, step):.2f} of it"
               if "loop" in rates else "")
    print(f"binds: the {binding} ({min(pipeline, step):.2f} clips/s, the other {other:.2f})"
          f"{reached}")
  flops_per_clip, how = training_flops_per_clip(trainer)
  print(f"training FLOPs: {flops_per_clip / 1e9:.2f} GFLOP per clip ({how})")
  for name in ("loop", "step"):
    if name in rates:
      achieved = rates[name] * flops_per_clip
      mfu = ""
      if args.peak_tflops:
        peak = args.peak_tflops * 1e12 * strategy.num_replicas_in_sync
        mfu = (f", MFU {100 * achieved / peak:.1f}% of {strategy.num_replicas_in_sync} × "
               f"{args.peak_tflops:g} TFLOP/s")
      print(f"{name}: {achieved / 1e12:.4g} TFLOP/s achieved{mfu}")
  last = args.measure[-1]
  print(f"clips_per_s {rates[last]:.3f}" + ("" if last == "loop" else f"  ({last} only)"))


if __name__ == "__main__":
  main()
