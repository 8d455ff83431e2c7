"""Training-step throughput of R3D-50: forward + backward + SGD update, clips/s.

  .venv/bin/python benchmarks/model_step.py                      # baseline, fp32, bf16 (~2 min)
  .venv/bin/python benchmarks/model_step.py --modes=fp32,fp32_xla,baseline --steps=10
  .venv/bin/python benchmarks/model_step.py --backend=jax --modes=fp32,baseline   # no TF needed

Batch 4 clips × 8×112×112×3, CVRL's R3D-50 (SPEC.md §2) → pooled 2048-d → Dense(400) →
cross-entropy; SGD momentum 0.9. Modes:

  baseline   the same network written with plain keras.layers.Conv3D / MaxPooling3D (what a
             straightforward Keras 3 port runs): the comparison measured in the same run
  fp32       cvrl_tf.resnet3d.ResNet3D: each FoldedConv3D runs what choose_implementation
             measured fastest for its shape and for this process's backend (oneDNN or Eigen:
             matmuls, conv2d folds, conv3d, conv3d with a patch-matmul kernel gradient)
  bf16       the same under the mixed_bfloat16 policy
  fp32_xla, bf16_xla, baseline_xla   the step compiled with jit_compile=True

--backend=jax runs the same step under Keras's JAX backend (TensorFlow need not be installed:
what measures the network on a GPU image that has JAX only): every FoldedConv3D is
keras.ops.conv, every BN Keras's own, and the whole step — forward, jax.value_and_grad, the SGD
update through optimizer.stateless_apply — is one jax.jit (so there are no *_xla modes). The first
(untimed) step includes XLA's compilation of it.

The last two lines compare fp32 with the reference release's 3.4 clips/s on this machine kind
(SPEC.md §6, an anchor measured elsewhere: the reference cannot run here) and, as the LAST line,
with the baseline measured in this run.
"""

import functools
import os
import sys
import time


def _backend_argument():
  """--backend's value, read before Keras is imported: Keras fixes its backend on import, before
  absl parses the flags. None when the flag is absent (KERAS_BACKEND or Keras's default holds)."""
  for i, arg in enumerate(sys.argv[1:], start=1):
    if arg.startswith("--backend="):
      return arg.split("=", 1)[1]
    if arg == "--backend" and i + 1 < len(sys.argv):
      return sys.argv[i + 1]
  return None


if _backend_argument():
  os.environ["KERAS_BACKEND"] = _backend_argument()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import keras
import numpy as np

if keras.backend.backend() == "tensorflow":
  import tensorflow as tf

from cvrl_tf import resnet3d
# pylint: enable=g-import-not-at-top,wrong-import-position

_BACKEND = flags.DEFINE_enum(
    "backend", os.environ.get("KERAS_BACKEND", "tensorflow"), ["tensorflow", "jax"],
    "Keras backend to time the step under (read before Keras loads; KERAS_BACKEND otherwise).")
_MODES = flags.DEFINE_list("modes", ["baseline", "fp32", "bf16"],
                           "Any of baseline, fp32, bf16, and their *_xla variants.")
# bf16 runs ≈ 14 s a step on a CPU without native bfloat16 (AVX2): few steps keep the default
# run near 2 minutes.
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per mode (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps first (tracing, XLA compilation).")
_BATCH = flags.DEFINE_integer("batch", 4, "Clips per step.")

FRAMES, SIZE, CLASSES = 8, 112, 400
REFERENCE_CLIPS_PER_S = 3.4  # SPEC.md §6: the reference release, fp32, this machine kind


def plain_conv3d_r3d50() -> keras.Model:
  """R3D-50 with stock Keras layers only: the baseline FoldedConv3D is measured against."""
  conv = lambda x, n, k, s=1: keras.layers.Conv3D(n, k, s, padding="same", use_bias=False)(x)
  bn = lambda x: keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
  inputs = keras.Input((None, None, None, 3))
  x = keras.layers.ReLU()(bn(conv(inputs, 64, (5, 7, 7), (2, 2, 2))))
  x = keras.layers.MaxPooling3D((1, 3, 3), (1, 2, 2), padding="same")(x)
  channels = 64
  for stage, (filters, blocks, kt) in enumerate(zip(resnet3d.STAGE_FILTERS, resnet3d.BLOCKS[50],
                                                    resnet3d.TEMPORAL_KERNELS)):
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      shortcut = x
      if channels != 4 * filters:
        shortcut = bn(conv(x, 4 * filters, 1, (1, stride, stride)))
      y = keras.layers.ReLU()(bn(conv(x, filters, (kt, 1, 1))))
      y = keras.layers.ReLU()(bn(conv(y, filters, (1, 3, 3), (1, stride, stride))))
      y = bn(conv(y, 4 * filters, 1))
      x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
      channels = 4 * filters
  pooled = keras.layers.GlobalAveragePooling3D(dtype="float32")(x)
  return keras.Model(inputs, {"pooled": pooled})


def make_train_step(mode: str):
  """A warmed-up `step()` of `mode` that runs one forward + backward + SGD update."""
  precision = "mixed_bfloat16" if mode.startswith("bf16") else "float32"
  keras.mixed_precision.set_dtype_policy(precision)
  try:
    keras.utils.set_random_seed(0)
    backbone = (plain_conv3d_r3d50() if mode.startswith("baseline")
                else resnet3d.ResNet3D(depth=50))
    classifier = keras.layers.Dense(CLASSES, dtype="float32")
  finally:
    keras.mixed_precision.set_dtype_policy("float32")
  optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
  clips = tf.random.uniform([_BATCH.value, FRAMES, SIZE, SIZE, 3], seed=1)
  labels = tf.random.uniform([_BATCH.value], 0, CLASSES, tf.int32, seed=2)
  # Variables are created outside tf.function.
  classifier.build((None, backbone(clips[:1], training=False)["pooled"].shape[-1]))
  variables = backbone.trainable_variables + classifier.trainable_variables
  optimizer.build(variables)

  @tf.function(jit_compile=mode.endswith("_xla"))
  def train_step(clips, labels):
    with tf.GradientTape() as tape:
      logits = classifier(backbone(clips, training=True)["pooled"])
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  def step():
    loss = train_step(clips, labels).numpy()
    if not np.isfinite(loss):
      raise RuntimeError(f"{mode}: non-finite loss {loss}")

  for _ in range(_WARMUP.value):
    step()
  return step


def make_jax_train_step(mode: str):
  """`make_train_step` under the JAX backend: the same network, loss and SGD, as one jax.jit of
  forward + jax.value_and_grad + optimizer.stateless_apply over explicit variable values."""
  import jax  # pylint: disable=g-import-not-at-top
  precision = "mixed_bfloat16" if mode.startswith("bf16") else "float32"
  keras.mixed_precision.set_dtype_policy(precision)
  try:
    keras.utils.set_random_seed(0)
    backbone = (plain_conv3d_r3d50() if mode.startswith("baseline")
                else resnet3d.ResNet3D(depth=50))
    classifier = keras.layers.Dense(CLASSES, dtype="float32")
  finally:
    keras.mixed_precision.set_dtype_policy("float32")
  optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
  rng = np.random.default_rng(1)
  clips = jax.numpy.asarray(
      rng.uniform(size=(_BATCH.value, FRAMES, SIZE, SIZE, 3)).astype(np.float32))
  labels = jax.numpy.asarray(rng.integers(0, CLASSES, _BATCH.value).astype(np.int32))
  # Built, not called: an eager JAX call compiles every op of the network one by one.
  backbone.build((None, FRAMES, SIZE, SIZE, 3))
  classifier.build((None, 4 * resnet3d.STAGE_FILTERS[-1]))  # R3D-50's pooled width, 2048
  trainable = backbone.trainable_variables + classifier.trainable_variables
  optimizer.build(trainable)
  split = len(backbone.trainable_variables)

  def loss_fn(trainable_values, moving_values, clips, labels):
    # moving_values: the BNs' moving statistics, updated by the training-mode call.
    endpoints, moving_values = backbone.stateless_call(
        trainable_values[:split], moving_values, clips, training=True)
    logits, _ = classifier.stateless_call(trainable_values[split:], [], endpoints["pooled"])
    loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
        labels, logits, from_logits=True))
    return loss, moving_values

  # The state is donated: XLA updates the variables in place, as TF's assign does.
  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, clips, labels):
    trainable_values, moving_values, optimizer_values = state
    (loss, moving_values), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable_values, moving_values, clips, labels)
    trainable_values, optimizer_values = optimizer.stateless_apply(
        optimizer_values, grads, trainable_values)
    return loss, (trainable_values, moving_values, optimizer_values)

  state = ([v.value for v in trainable], [v.value for v in backbone.non_trainable_variables],
           [v.value for v in optimizer.variables])

  def step():
    nonlocal state
    loss, state = train_step(state, clips, labels)
    loss = float(loss)  # waits for the step
    if not np.isfinite(loss):
      raise RuntimeError(f"{mode}: non-finite loss {loss}")

  for _ in range(_WARMUP.value):
    step()
  return step


def clips_per_second(modes) -> dict:
  """{mode: clips/s}, the median over rounds that time each mode once, in turn.

  Interleaving keeps the comparison fair when other work on the machine comes and goes. The
  process's CPU seconds per step are printed too: on a shared machine they vary far less than
  wall time.
  """
  make = make_jax_train_step if keras.backend.backend() == "jax" else make_train_step
  steps = {mode: make(mode) for mode in modes}
  times = {mode: [] for mode in modes}
  cpu_times = {mode: [] for mode in modes}
  for _ in range(_STEPS.value):
    for mode, step in steps.items():
      start, cpu_start = time.perf_counter(), time.process_time()
      step()
      times[mode].append(time.perf_counter() - start)
      cpu_times[mode].append(time.process_time() - cpu_start)
  results = {}
  for mode in modes:
    median = float(np.median(times[mode]))
    results[mode] = _BATCH.value / median
    print(f"{mode:13s} {median:6.3f} s/step (median of {len(times[mode])}, min "
          f"{min(times[mode]):.3f})  {results[mode]:6.2f} clips/s  CPU "
          f"{np.median(cpu_times[mode]):6.3f} s/step", flush=True)
  return results


def main(argv):
  del argv
  modes = _MODES.value
  known = {"baseline", "fp32", "bf16"}
  unknown = [m for m in modes if m.removesuffix("_xla") not in known]
  if unknown:
    raise app.UsageError(f"unknown modes {unknown}; choose from {sorted(known)} and their _xla "
                         "variants")
  if keras.backend.backend() != _BACKEND.value:
    raise app.UsageError(f"Keras runs the {keras.backend.backend()} backend, not --backend="
                         f"{_BACKEND.value}: set KERAS_BACKEND, or pass --backend=NAME (with '=')")
  header = f"R3D-50 train step, batch {_BATCH.value} × {FRAMES}×{SIZE}×{SIZE}×3, "
  if _BACKEND.value == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    xla_modes = [m for m in modes if m.endswith("_xla")]
    if xla_modes:
      raise app.UsageError(f"{xla_modes}: under JAX every step is compiled by XLA; drop '_xla'")
    print(header + f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, Keras "
          f"{keras.__version__}")
  else:
    # TF 2.21 leaves oneDNN off on this AMD CPU unless the variable is set; figures differ 1.3×.
    print(header + f"TF {tf.__version__}, Keras {keras.__version__}, TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(unset)')}")
  results = clips_per_second(modes)
  if "fp32" in results:
    print(f"ratio_fp32_vs_reference_anchor {results['fp32'] / REFERENCE_CLIPS_PER_S:.2f}  "
          f"(fp32 / {REFERENCE_CLIPS_PER_S} clips/s, SPEC.md §6, not measured in this run)")
    if "baseline" in results:
      print(f"ratio_fp32_vs_plain_conv3d {results['fp32'] / results['baseline']:.2f}")


if __name__ == "__main__":
  app.run(main)
