"""ResNet3D: sizes, reference parity, checkpoint loading, SyncBN, serialisation."""

import json
import os
import subprocess
import textwrap
import typing

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import python_c
from cvrl_tf import backbone_checkpoint
from cvrl_tf import config as cfg
from cvrl_tf import convolutions
from cvrl_tf import resnet3d

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference")
if not os.path.isdir(REFERENCE):
  REFERENCE = "/work/shared/reference"
NARROW = os.path.join(REFERENCE, "model_garden_r3d50_narrow")
NARROW_PREFIX = os.path.join(NARROW, "backbone")
NARROW_FILTERS = (8, 16, 32, 64)


def count_params(depth, stem=64, stage=(64, 128, 256, 512), kernels=(1, 1, 3, 3), stem_kt=5):
  """(trainable, all) parameters of the architecture, counted by hand from SPEC.md §2."""
  trainable = moving = 0
  def conv(n):
    nonlocal trainable
    trainable += n
  def bn(c):
    nonlocal trainable, moving
    trainable += 2 * c  # gamma, beta
    moving += 2 * c  # moving mean, variance
  conv(stem_kt * 7 * 7 * 3 * stem)
  bn(stem)
  c = stem
  for f, k, n in zip(stage, kernels, resnet3d.BLOCKS[depth]):
    for _ in range(n):
      if depth >= 50:  # bottleneck: k×1×1, 1×3×3, 1×1×1 (×4)
        out = 4 * f
        conv(k * c * f + 9 * f * f + f * out)
        bn(f), bn(f), bn(out)
      else:  # basic: k×3×3, 1×3×3
        out = f
        conv(k * 9 * c * f + 9 * f * f)
        bn(f), bn(f)
      if c != out:  # projection shortcut
        conv(c * out)
        bn(out)
      c = out
  return trainable, trainable + moving


def model_params(model):
  return (sum(int(np.prod(v.shape)) for v in model.trainable_weights),
          sum(int(np.prod(v.shape)) for v in model.weights))


@pytest.fixture(scope="module")
def r3d50():
  model = resnet3d.ResNet3D(depth=50)
  model.build()
  return model


@pytest.fixture(scope="module")
def narrow():
  model = resnet3d.ResNet3D(depth=50, stage_filters=NARROW_FILTERS)
  backbone_checkpoint.load_model_garden_checkpoint(model, NARROW_PREFIX)
  return model


@pytest.fixture(scope="module")
def expected():
  return dict(np.load(os.path.join(NARROW, "expected.npz")))


def tiny(**kwargs):
  kwargs.setdefault("stem_filters", 4)
  kwargs.setdefault("stage_filters", (2, 3, 4, 5))
  return resnet3d.ResNet3D(**kwargs)


def test_r3d50_has_the_reference_parameter_count(r3d50):
  # SPEC.md §2, counted on the reference release's own model.
  assert model_params(r3d50) == (31_672_128, 31_725_248)
  assert count_params(50) == (31_672_128, 31_725_248)  # the hand count agrees: use it below


@pytest.mark.parametrize("depth, width, expected", [
    (18, 1, (20_061_504, 20_071_104)),
    (101, 1, (59_577_152, 59_682_496)),
    (50, 2, (126_488_192, 126_594_432)),
])
def test_parameter_counts(depth, width, expected):
  model = resnet3d.ResNet3D(depth=depth, width_multiplier=width)
  model.build()
  assert model_params(model) == expected
  assert count_params(depth, 64 * width, tuple(f * width for f in (64, 128, 256, 512))) == expected


def test_narrow_model_has_the_reference_parameter_count(narrow):
  with open(os.path.join(NARROW, "meta.json")) as f:
    meta = json.load(f)
  assert model_params(narrow) == (meta["trainable_params"], meta["all_params"])


def test_endpoint_shapes_at_16x224(r3d50):
  spec = r3d50.compute_output_spec(keras.KerasTensor((2, 16, 224, 224, 3)))
  assert {k: tuple(v.shape) for k, v in spec.items()} == {
      "stem": (2, 8, 56, 56, 64), "res2": (2, 8, 56, 56, 256), "res3": (2, 8, 28, 28, 512),
      "res4": (2, 8, 14, 14, 1024), "res5": (2, 8, 7, 7, 2048), "pooled": (2, 2048)}
  assert tuple(spec) == resnet3d.ENDPOINTS


@pytest.mark.parametrize("depth", [18, 50])
def test_endpoints_of_odd_small_inputs(depth):
  # "same" padding: every stride-2 layer gives ceil(n / 2), at any size.
  model = tiny(depth=depth)
  out = model(tf.random.uniform([2, 5, 33, 19, 3]), training=False)
  c = 4 if depth == 50 else 1
  assert {k: tuple(v.shape) for k, v in out.items()} == {
      "stem": (2, 3, 9, 5, 4), "res2": (2, 3, 9, 5, 2 * c), "res3": (2, 3, 5, 3, 3 * c),
      "res4": (2, 3, 3, 2, 4 * c), "res5": (2, 3, 2, 1, 5 * c), "pooled": (2, 5 * c)}
  np.testing.assert_allclose(out["pooled"], tf.reduce_mean(out["res5"], axis=[1, 2, 3]),
                             rtol=1e-6)


def test_identity_shortcut_of_a_strided_block():
  # res3..res5 keep 8 channels: their strided first blocks subsample the identity, no projection
  # (the reference release's rule), so only res2's first block has a shortcut conv.
  model = tiny(stage_filters=(2, 2, 2, 2))
  out = model(tf.random.uniform([1, 2, 32, 32, 3]), training=False)
  assert out["res5"].shape == (1, 1, 1, 1, 8)
  assert [name for name, block in model.blocks() if block.use_projection] == ["res2_block1"]
  assert model_params(model)[0] == count_params(50, 4, (2, 2, 2, 2))[0]


def test_reference_parity(narrow, expected):
  """The reference release's own outputs for its own checkpoint, in inference mode."""
  out = narrow(tf.constant(expected["input"]), training=False)
  np.testing.assert_allclose(out["pooled"], expected["pooled"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out["res2"], expected["endpoint_2"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out["res5"], expected["endpoint_5"], atol=1e-4, rtol=0)


# Kernel, strides and input channels covering every branch of choose_implementation and every
# special case of the implementations (odd and even kernels, temporal and spatial strides, "same"
# padding that is uneven at the end).
CONV_CASES = [
    ((1, 1, 1), (1, 1, 1), 3), ((1, 1, 1), (1, 2, 2), 3), ((1, 1, 1), (2, 2, 2), 3),
    ((1, 3, 3), (1, 1, 1), 3), ((1, 3, 3), (1, 2, 2), 3), ((1, 3, 3), (1, 2, 2), 512),
    ((3, 1, 1), (1, 1, 1), 3), ((5, 7, 7), (2, 2, 2), 3), ((5, 7, 7), (1, 2, 2), 3),
    ((4, 3, 3), (3, 1, 1), 3), ((3, 3, 3), (1, 2, 2), 8), ((2, 1, 1), (1, 1, 1), 3),
    ((1, 1, 2), (1, 1, 1), 3)]
IMPLEMENTATION_CASES = [
    (name, *case) for case in CONV_CASES
    for name in convolutions.applicable_implementations(case[0], case[1]) if name != "conv3d"]


def conv_and_gradients(fn, x, kernel):
  """(y, dloss/dx, dloss/dkernel) of fn(x, kernel) under a fixed random linear loss."""
  with tf.GradientTape() as tape:
    tape.watch([x, kernel])
    y = fn(x, kernel)
    loss = tf.reduce_sum(y * tf.random.stateless_normal(tf.shape(y), seed=[3, 4]))
  return (y, *tape.gradient(loss, [x, kernel]))


@pytest.mark.parametrize("name, kernel, strides, channels", IMPLEMENTATION_CASES)
def test_every_implementation_equals_conv3d(name, kernel, strides, channels):
  # Element by element, forward and both gradients, against tf.nn.conv3d itself.
  x = tf.random.stateless_normal([2, 5, 9, 8, channels], seed=[1, 2])
  k = tf.random.stateless_normal([*kernel, channels, 6], seed=[5, 6])
  actual = conv_and_gradients(lambda x, k: convolutions.IMPLEMENTATIONS[name](x, k, strides), x, k)
  expected = conv_and_gradients(lambda x, k: tf.nn.conv3d(x, k, [1, *strides, 1], "SAME"), x, k)
  for a, e in zip(actual, expected):
    assert a.shape == e.shape
    np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3 if channels > 3 else 1e-4)


@pytest.mark.parametrize("kernel, strides, channels", CONV_CASES)
def test_patches_equal_extract_volume_patches(kernel, strides, channels):
  # The slices-and-concat patches (XLA can compile them) against TF's own op, exactly.
  x = tf.random.stateless_normal([2, 5, 9, 8, channels], seed=[7, 8])
  expected = tf.extract_volume_patches(x, [1, *kernel, 1], [1, *strides, 1], "SAME")
  np.testing.assert_array_equal(convolutions._patches(x, kernel, strides), expected)


@pytest.mark.parametrize("kernel, strides, channels", CONV_CASES)
def test_folded_conv_layer_equals_conv3d(kernel, strides, channels):
  # The layer, whatever it chose in this process, with its own variable.
  conv = convolutions.FoldedConv3D(6, kernel, strides)
  x = tf.random.stateless_normal([2, 5, 9, 8, channels], seed=[1, 2])
  conv.build(x.shape)
  results = []
  for fn in (conv, lambda x: tf.nn.conv3d(x, conv.kernel, [1, *strides, 1], "SAME")):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = fn(x)
      loss = tf.reduce_sum(y * tf.random.stateless_normal(tf.shape(y), seed=[3, 4]))
    results.append((y, *tape.gradient(loss, [x, conv.kernel])))
  for actual, expected in zip(*results):  # y, dloss/dx, dloss/dkernel
    # float32 sums of ~10² products: rounding ~1e-6 of the tensor's largest value (~60 for the
    # kernel gradient), which a value near 0 must be allowed too (2e-5 off at -0.04, measured
    # with Eigen's kernels on an AVX-512 CPU).
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-4,
                               atol=max(1e-4 if channels > 3 else 1e-5, 1e-6 * scale))
  assert tuple(results[0][0].shape) == conv.compute_output_shape(x.shape)


# R3D-50's convolutions on a batch of 4 clips of 8×112² (benchmarks/model_step.py): kernel,
# strides, input channels, filters, output positions B·T'·H'·W' -> (Eigen's, oneDNN's) choice.
R3D50_CHOICES = [
    ((5, 7, 7), (2, 2, 2), 3, 64, 4 * 4 * 56 * 56, "stacked_time_conv2d", "conv3d"),
    ((1, 1, 1), (1, 1, 1), 256, 64, 4 * 4 * 28 * 28, "matmul", "matmul"),
    ((1, 3, 3), (1, 1, 1), 64, 64, 4 * 4 * 28 * 28, "spatial_conv2d", "spatial_conv2d"),
    ((1, 1, 1), (1, 2, 2), 256, 512, 4 * 4 * 14 * 14, "spatial_conv2d", "spatial_conv2d"),
    ((1, 3, 3), (1, 2, 2), 128, 128, 4 * 4 * 14 * 14, "spatial_conv2d", "spatial_conv2d"),
    ((3, 1, 1), (1, 1, 1), 512, 256, 4 * 4 * 14 * 14, "temporal_conv2d", "conv3d"),
    ((1, 1, 1), (1, 2, 2), 512, 1024, 4 * 4 * 7 * 7, "conv3d", "spatial_conv2d"),
    ((3, 1, 1), (1, 1, 1), 1024, 256, 4 * 4 * 7 * 7, "temporal_conv2d", "conv3d"),
    ((3, 1, 1), (1, 1, 1), 1024, 512, 4 * 4 * 7 * 7, "temporal_conv2d",
     "conv3d_patch_kernel_grad"),
    ((1, 1, 1), (1, 2, 2), 1024, 2048, 4 * 4 * 4 * 4, "conv3d", "matmul"),
    # Strided patches cost more than they save.
    ((1, 3, 3), (1, 2, 2), 512, 512, 4 * 4 * 4 * 4, "conv3d", "conv3d"),
    ((1, 3, 3), (1, 1, 1), 512, 512, 4 * 4 * 4 * 4, "conv3d", "conv3d_patch_kernel_grad"),
    ((3, 1, 1), (1, 1, 1), 2048, 512, 4 * 4 * 4 * 4, "temporal_conv2d",
     "conv3d_patch_kernel_grad"),
    # res5 of 4 clips of 16×224² (4·8·7·7 positions): the 3×3 conv is past the threshold
    # (512·512 / 500), the temporal conv from 2048 channels is not (2048·512 / 500).
    ((1, 3, 3), (1, 1, 1), 512, 512, 4 * 8 * 7 * 7, "conv3d", "conv3d"),
    ((3, 1, 1), (1, 1, 1), 2048, 512, 4 * 8 * 7 * 7, "temporal_conv2d",
     "conv3d_patch_kernel_grad"),
    # A temporal stride on a 1×1×1 kernel: only subsampling covers it with oneDNN.
    ((1, 1, 1), (2, 1, 1), 64, 64, 100, "temporal_conv2d", "matmul"),
    # A static shape is needed to count positions.
    ((3, 1, 1), (1, 1, 1), 2048, 512, None, "temporal_conv2d", "conv3d"),
]


@pytest.mark.parametrize("kernel, strides, channels, filters, positions, eigen, onednn",
                         R3D50_CHOICES)
def test_implementation_choices(kernel, strides, channels, filters, positions, eigen, onednn):
  for backend, expected in ((False, eigen), (True, onednn)):
    assert convolutions.choose_implementation(kernel, strides, channels, filters, positions,
                                              backend) == expected
    assert convolutions.choose_implementation(kernel, strides, channels, filters, positions,
                                              backend, "CPU") == expected
    assert expected in convolutions.applicable_implementations(kernel, strides)
  # On accelerators every R3D-50 shape is cuDNN's / XLA's conv3d, whatever the host CPU does.
  for device in ("GPU", "TPU"):
    for backend in (False, True):
      assert convolutions.choose_implementation(kernel, strides, channels, filters, positions,
                                                backend, device) == "conv3d"


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("positions", [None, 1, 10**9])
def test_every_choice_is_applicable(onednn, positions):
  for kernel, strides, channels in CONV_CASES:
    for in_channels in (channels, 256, 512, 1024, 2048):
      choice = convolutions.choose_implementation(kernel, strides, in_channels, 512, positions,
                                                  onednn)
      assert choice in convolutions.applicable_implementations(kernel, strides), (
          kernel, strides, in_channels, positions, onednn)


def test_layer_counts_output_positions(monkeypatch):
  # res5's temporal conv on 8×112² clips, batch 4: [4, 4, 4, 4, 2048] -> 256 positions.
  monkeypatch.setattr(convolutions, "onednn_enabled", lambda: True)
  conv = convolutions.FoldedConv3D(512, (3, 1, 1))
  assert conv.implementation((4, 4, 4, 4, 2048)) == "conv3d_patch_kernel_grad"
  assert conv.implementation((None, 4, 4, 4, 2048)) == "conv3d"  # unknown: no positions
  assert conv.implementation((64, 8, 14, 14, 2048)) == "conv3d"  # 100,352 positions
  monkeypatch.setattr(convolutions, "onednn_enabled", lambda: False)
  assert conv.implementation((4, 4, 4, 4, 2048)) == "temporal_conv2d"


def test_the_layer_asks_where_it_runs(monkeypatch):
  # A 1×1×1 conv: a matmul on this CPU, conv3d when the process sees a GPU or a TPU, oneDNN or not.
  conv = convolutions.FoldedConv3D(8, 1)
  assert convolutions.device_type() == "CPU"  # the test machine has no accelerator
  assert conv.implementation((2, 4, 6, 6, 16)) == "matmul"
  for device in ("GPU", "TPU"):
    monkeypatch.setattr(convolutions, "device_type", lambda device=device: device)
    for onednn in (False, True):
      monkeypatch.setattr(convolutions, "onednn_enabled", lambda onednn=onednn: onednn)
      assert conv.implementation((2, 4, 6, 6, 16)) == "conv3d", (device, onednn)
  with pytest.raises(ValueError, match="device must be one of CPU, GPU, TPU"):
    convolutions.choose_implementation((1, 1, 1), (1, 1, 1), 4, 4, None, False, "gpu")


def test_a_forced_implementation_runs_everywhere_and_computes_the_same():
  x = tf.random.stateless_normal([2, 4, 6, 6, 16], seed=[3, 1])
  auto = convolutions.FoldedConv3D(8, (1, 3, 3))
  forced = convolutions.FoldedConv3D(8, (1, 3, 3), implementation="conv3d")
  auto.build(x.shape)
  forced.build(x.shape)
  forced.kernel.assign(auto.kernel)
  assert auto.implementation(x.shape) == "spatial_conv2d"
  assert forced.implementation(x.shape) == "conv3d"
  np.testing.assert_allclose(forced(x), auto(x), rtol=1e-5, atol=1e-5)
  assert convolutions.FoldedConv3D.from_config(forced.get_config()).forced_implementation == (
      "conv3d")
  with pytest.raises(ValueError, match=r"cannot compute a \(3, 3, 3\) convolution.*one of "
                                       r"stacked_time_conv2d, conv3d, conv3d_patch_kernel_grad"):
    convolutions.FoldedConv3D(8, 3, implementation="matmul")


def test_a_network_forced_to_conv3d_equals_auto_and_round_trips():
  kwargs = dict(depth=18, stem_filters=4, stage_filters=(4, 8, 8, 8))
  auto, forced = resnet3d.ResNet3D(**kwargs), resnet3d.ResNet3D(conv_implementation="conv3d",
                                                                **kwargs)
  clips = tf.random.stateless_uniform([2, 4, 32, 32, 3], seed=[2, 2])
  auto.build(clips.shape)
  forced.build(clips.shape)
  forced.set_weights(auto.get_weights())
  convs = [forced.stem_conv] + [layer for _, block in forced.blocks()
                                for layer in block.sublayers().values()
                                if isinstance(layer, convolutions.FoldedConv3D)]
  # The stem, two per basic block, and res3's projection shortcut (4 -> 8 channels).
  assert len(convs) == 1 + 8 * 2 + 1 and {c.forced_implementation for c in convs} == {"conv3d"}
  np.testing.assert_allclose(forced(clips, training=False)["pooled"],
                             auto(clips, training=False)["pooled"], rtol=1e-4, atol=1e-5)
  assert resnet3d.ResNet3D.from_config(forced.get_config()).conv_implementation == "conv3d"
  # The config's choices are the network's.
  hint = typing.get_type_hints(cfg.ModelConfig)["conv_implementation"]
  assert typing.get_args(hint) == convolutions.NETWORK_IMPLEMENTATIONS
  with pytest.raises(ValueError, match="conv_implementation must be one of auto, conv3d"):
    resnet3d.ResNet3D(conv_implementation="matmul", **kwargs)
  with pytest.raises(cfg.ConfigError, match="model.conv_implementation='matmul': expected one of"):
    cfg.apply_overrides(cfg.ExperimentConfig(), ["model.conv_implementation=matmul"])


def test_patch_kernel_gradient_compiles_with_xla():
  # tf.extract_volume_patches has no XLA kernel; the slices that replace it must compile.
  x = tf.random.stateless_normal([2, 3, 4, 4, 5], seed=[1, 2])
  k = tf.random.stateless_normal([3, 1, 1, 5, 6], seed=[3, 4])
  def grads(conv):
    with tf.GradientTape() as tape:
      tape.watch([x, k])
      loss = tf.reduce_sum(conv(x, k) ** 2)
    return tape.gradient(loss, [x, k])
  compiled = tf.function(
      lambda: grads(lambda x, k: convolutions._conv3d_patch_kernel_grad(x, k, (1, 1, 1))),
      jit_compile=True)()
  expected = grads(lambda x, k: tf.nn.conv3d(x, k, [1] * 5, "SAME"))
  for a, e in zip(compiled, expected):
    np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)


_ONEDNN_SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    from cvrl_tf import convolutions
    assert convolutions.onednn_enabled(), "TF_ENABLE_ONEDNN_OPTS=1 did not switch oneDNN on"
    for kernel, strides, channels in %r:
      x = tf.random.stateless_normal([2, 5, 9, 8, channels], seed=[1, 2])
      k = tf.random.stateless_normal([*kernel, channels, 6], seed=[5, 6])
      def grads(fn):
        with tf.GradientTape() as tape:
          tape.watch([x, k])
          y = fn(x, k)
          loss = tf.reduce_sum(y * tf.random.stateless_normal(tf.shape(y), seed=[3, 4]))
        return (y, *tape.gradient(loss, [x, k]))
      expected = grads(lambda x, k: tf.nn.conv3d(x, k, [1, *strides, 1], "SAME"))
      for name in convolutions.applicable_implementations(kernel, strides):
        for a, e in zip(grads(lambda x, k: convolutions.IMPLEMENTATIONS[name](x, k, strides)),
                        expected):
          np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3, err_msg=f"{name} {kernel}")
      # The layer with oneDNN's choice, at this shape and at one with few positions.
      for shape in ([2, 5, 9, 8, channels], [1, 2, 3, 3, channels]):
        conv = convolutions.FoldedConv3D(6, kernel, strides)
        conv.build(shape)
        xs = tf.random.stateless_normal(shape, seed=[1, 2])
        np.testing.assert_allclose(conv(xs), tf.nn.conv3d(xs, conv.kernel, [1, *strides, 1],
                                                          "SAME"), rtol=1e-4, atol=1e-4,
                                   err_msg=f"{conv.implementation(shape)} {kernel} {strides}")
    print("ok")
""")


def test_every_implementation_equals_conv3d_with_onednn():
  # oneDNN's kernels (the default of `python -m cvrl_tf.train`) in a process of their own.
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="2")
  run = subprocess.run([*python_c(_ONEDNN_SCRIPT % (CONV_CASES,))],
                       capture_output=True, text=True, env=env, timeout=300)
  assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


def test_folded_conv_by_hand():
  # 1×1×3 kernel [1, 2, 3] on a row [1, 2, 3, 4], stride 2, "same": pads one zero at the end
  # (TF's rule) -> [1·1 + 2·2 + 3·3, 3·1 + 4·2 + 0·3] = [14, 11].
  conv = convolutions.FoldedConv3D(1, (1, 1, 3), (1, 1, 2))
  conv.build((None, None, None, None, 1))
  conv.kernel.assign(np.array([1.0, 2.0, 3.0]).reshape(1, 1, 3, 1, 1))
  y = conv(np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 1, 1, 4, 1))
  np.testing.assert_array_equal(np.ravel(y), [14.0, 11.0])


def test_full_size_checkpoint_layout_is_accepted(r3d50):
  """The published R3D-50 checkpoint's keys and shapes are exactly what the loader asks for."""
  listed = {}
  with open(os.path.join(REFERENCE, "model_garden_r3d50_full_variables.txt")) as f:
    for line in f:
      key, shape = line.split(" ", 1)
      if key.endswith("/.ATTRIBUTES/VARIABLE_VALUE"):
        listed[key] = tuple(json.loads(shape))
  assert len(listed) == 265
  ours = {k: tuple(v.shape) for k, v in backbone_checkpoint.model_garden_keys(r3d50).items()}
  assert ours == listed


def test_architecture_is_read_off_the_checkpoint():
  with open(os.path.join(NARROW, "meta.json")) as f:
    meta = json.load(f)
  assert backbone_checkpoint.model_garden_architecture(NARROW_PREFIX) == {
      "depth": 50, "stem_filters": meta["stem_filters"], "stage_filters": meta["stage_filters"],
      "stem_temporal_kernel": 5, "temporal_kernels": meta["temporal_kernels"]}


def write_checkpoint(prefix, values):
  """A checkpoint with exactly these {key: array} (keys as in tf.train.list_variables)."""
  root = {}
  for key, value in values.items():
    parts = key[:-len("/.ATTRIBUTES/VARIABLE_VALUE")].split("/")
    node = root
    for part in parts[1:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = tf.Variable(value)
  tf.train.Checkpoint(**{parts[0]: root}).write(prefix)


def narrow_values():
  reader = tf.train.load_checkpoint(NARROW_PREFIX)
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.endswith("/.ATTRIBUTES/VARIABLE_VALUE")}


def snapshot(model):
  return [v.numpy().copy() for v in model.weights]


def assert_unchanged(model, before):
  for variable, value in zip(model.weights, before):
    np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


def test_wrong_shape_fails_naming_the_key_and_assigns_nothing():
  model = resnet3d.ResNet3D(depth=50, stage_filters=(8, 16, 32, 32))
  model.build()
  before = snapshot(model)
  with pytest.raises(backbone_checkpoint.CheckpointMismatchError) as error:
    backbone_checkpoint.load_model_garden_checkpoint(model, NARROW_PREFIX)
  message = str(error.value)
  # res5's first block is the first layer whose shape differs.
  assert "backbone/layer_with_weights-15/_temporal_conv/kernel" in message
  assert "[3, 1, 1, 128, 64]" in message and "[3, 1, 1, 128, 32]" in message
  assert "'stage_filters': [8, 16, 32, 64]" in message
  assert_unchanged(model, before)


def test_missing_key_fails_naming_it(tmp_path):
  values = narrow_values()
  missing = "backbone/layer_with_weights-7/_norm2/moving_variance/.ATTRIBUTES/VARIABLE_VALUE"
  del values[missing]
  write_checkpoint(str(tmp_path / "ckpt"), values)
  model = resnet3d.ResNet3D(depth=50, stage_filters=NARROW_FILTERS)
  model.build()
  before = snapshot(model)
  with pytest.raises(backbone_checkpoint.CheckpointMismatchError, match="has no key '" + missing):
    backbone_checkpoint.load_model_garden_checkpoint(model, str(tmp_path / "ckpt"))
  assert_unchanged(model, before)


def test_extra_variable_fails(tmp_path):
  model = resnet3d.ResNet3D(depth=50, stage_filters=NARROW_FILTERS)
  # Blocks are layers 2..17: a self-gating kernel in the last one has no place in ours.
  values = narrow_values()
  extra = "backbone/layer_with_weights-17/_self_gating/kernel/.ATTRIBUTES/VARIABLE_VALUE"
  values[extra] = np.zeros([1, 1, 1, 256, 256], np.float32)
  write_checkpoint(str(tmp_path / "ckpt"), values)
  with pytest.raises(backbone_checkpoint.CheckpointMismatchError,
                     match="1 checkpoint variables have no place .* first '" + extra):
    backbone_checkpoint.load_model_garden_checkpoint(model, str(tmp_path / "ckpt"))
  # A 17th block: the block count is checked first.
  del values[extra]
  values[extra.replace("-17", "-18")] = np.zeros([1, 1, 1, 256, 256], np.float32)
  write_checkpoint(str(tmp_path / "ckpt2"), values)
  with pytest.raises(backbone_checkpoint.CheckpointMismatchError, match="holds 17 residual blocks"):
    backbone_checkpoint.load_model_garden_checkpoint(model, str(tmp_path / "ckpt2"))


def test_wrong_architecture_fails_before_any_key():
  model = tiny(depth=101)
  with pytest.raises(backbone_checkpoint.CheckpointMismatchError,
                     match=r"holds 16 residual blocks .* has 33: wrong depth"):
    backbone_checkpoint.load_model_garden_checkpoint(model, NARROW_PREFIX)
  with pytest.raises(backbone_checkpoint.CheckpointMismatchError, match="bottleneck ResNet3Ds only"):
    backbone_checkpoint.load_model_garden_checkpoint(tiny(depth=18), NARROW_PREFIX)
  with pytest.raises(FileNotFoundError, match="no checkpoint at"):
    backbone_checkpoint.load_model_garden_checkpoint(model, NARROW_PREFIX + "-nope")


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": 42}, r"depth must be one of \[10, 18, 34, 50, 101, 152, 200\], got 42"),
    ({"stage_filters": (8, 16, 32)}, r"stage_filters must be 4 positive ints .* got \(8, 16, 32\)"),
    ({"temporal_kernels": (1, 3, 3)}, r"temporal_kernels must have 4 entries .* got \(1, 3, 3\)"),
    ({"temporal_kernels": (1, 1, (3, 3), 3)},
     r"temporal_kernels for res4 must be a positive int or 6 positive ints .* got \(3, 3\)"),
    ({"width_multiplier": 0}, "width_multiplier must be a positive number, got 0"),
    ({"stem_filters": 0}, r"stem_filters must be a positive int, got \(0,\)"),
])
def test_bad_arguments_are_echoed(kwargs, match):
  with pytest.raises(ValueError, match=match):
    resnet3d.ResNet3D(**kwargs)


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (1, 2, 16, 16, 1)])
def test_bad_input_shape_is_echoed(shape):
  with pytest.raises(ValueError, match=r"\[batch, time, height, width, 3\].*got shape " +
                     str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
    tiny()(tf.zeros(shape))


def test_get_config_round_trip():
  model = tiny(depth=50, temporal_kernels=(1, (1, 3, 1, 3), 3, 3), bn_momentum=0.99,
               stem_temporal_stride=1, name="encoder")
  x = tf.random.uniform([1, 4, 16, 16, 3], seed=1)
  y = model(x, training=False)
  config = json.loads(json.dumps(model.get_config()))  # JSON-safe
  clone = resnet3d.ResNet3D.from_config(config)
  assert clone.get_config() == model.get_config()
  clone.build()
  clone.set_weights(model.get_weights())
  np.testing.assert_array_equal(clone(x, training=False)["pooled"], y["pooled"])
  assert config["temporal_kernels"] == [[1, 1, 1], [1, 3, 1, 3], [3] * 6, [3, 3, 3]]
  assert y["stem"].shape[1] == 4  # stem_temporal_stride=1 keeps every frame


def test_saved_model_round_trip(tmp_path, narrow, expected):
  path = str(tmp_path / "saved")
  serve = tf.function(lambda x: narrow(x, training=False),
                      input_signature=[tf.TensorSpec([None, None, None, None, 3], tf.float32)])
  module = tf.Module()
  module.backbone = narrow
  module.serve = serve
  tf.saved_model.save(module, path, signatures={"serving_default": serve})
  loaded = tf.saved_model.load(path)
  out = loaded.signatures["serving_default"](tf.constant(expected["input"]))
  np.testing.assert_allclose(out["pooled"], expected["pooled"], atol=1e-4, rtol=0)
  # Other clip sizes go through the same function.
  assert loaded.serve(tf.zeros([1, 4, 32, 32, 3]))["res5"].shape == (1, 2, 1, 1, 256)


def test_mixed_bfloat16_matches_float32(narrow, expected):
  model = resnet3d.ResNet3D(depth=50, stage_filters=NARROW_FILTERS, dtype="mixed_bfloat16")
  model.build()
  model.set_weights(narrow.get_weights())
  assert all(v.dtype == "float32" for v in model.weights)  # variables stay float32
  out = model(tf.constant(expected["input"]), training=False)
  assert out["res5"].dtype == tf.bfloat16 and out["pooled"].dtype == tf.float32
  # bfloat16 keeps 8 bits of mantissa: a few percent through 50 layers.
  np.testing.assert_allclose(out["pooled"], expected["pooled"], rtol=0.1, atol=0.1)
  assert np.corrcoef(np.ravel(out["pooled"]), np.ravel(expected["pooled"]))[0, 1] > 0.99


def test_training_mode_uses_batch_statistics_and_updates_moving_ones():
  model = tiny(depth=50, bn_momentum=0.5)
  x = tf.random.uniform([2, 2, 8, 8, 3], seed=3)
  model(x, training=False)
  conv = tf.nn.conv3d(x, model.stem_conv.kernel, [1, 2, 2, 2, 1], "SAME")
  model(x, training=True)
  mean = tf.reduce_mean(conv, axis=[0, 1, 2, 3])
  # moving = momentum · moving + (1 − momentum) · batch, from moving_mean = 0.
  np.testing.assert_allclose(model.stem_norm.moving_mean, 0.5 * mean, atol=1e-5)


_SYNC_BN_SCRIPT = textwrap.dedent("""
    import json
    import keras
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from cvrl_tf import resnet3d

    # 4 × 4 × 64² gives res5 32 positions per channel: well-conditioned batch statistics.
    x = tf.random.stateless_uniform([4, 4, 64, 64, 3], seed=[3, 4])
    keras.utils.set_random_seed(0)
    # Make the two halves differ, so per-replica statistics differ from global ones.
    x = tf.concat([x[:2], 3.0 * x[2:] + 1.0], axis=0)

    def stats(model):
      return {"mean": model.stem_norm.moving_mean.numpy().tolist(),
              "var": model.stem_norm.moving_variance.numpy().tolist(),
              "res5_mean": model.res5_block1.norm3.moving_mean.numpy().tolist()}

    def make(sync):
      return resnet3d.ResNet3D(depth=50, stem_filters=4, stage_filters=(2, 3, 4, 5),
                               sync_batch_norm=sync, bn_momentum=0.0)

    single = make(True)
    single.build()
    weights = single.get_weights()
    single_out = single(x, training=True)["pooled"].numpy()
    result = {"single": stats(single)}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    for sync in (True, False):
      with strategy.scope():
        model = make(sync)
        model.build()
        model.set_weights(weights)
      dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)
      batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
      out = strategy.run(lambda b: model(b, training=True)["pooled"], args=(batch,))
      out = np.concatenate([t.numpy() for t in strategy.experimental_local_results(out)])
      result["sync" if sync else "local"] = stats(model)
      result[("sync" if sync else "local") + "_out_err"] = float(
          np.abs(out - single_out).max() / np.abs(single_out).max())
    print("RESULT" + json.dumps(result))
""")


def test_sync_batch_norm_across_two_replicas_equals_one_device():
  # Logical devices must exist before TF initialises: a fresh interpreter.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  run = subprocess.run([*python_c(_SYNC_BN_SCRIPT)], capture_output=True, text=True,
                       env=env, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.split("RESULT", 1)[1])
  single, sync, local = result["single"], result["sync"], result["local"]
  # bn_momentum 0: the moving statistics are the last batch's statistics. The stem's agree to
  # float32 rounding; res5's carry 50 layers of differently-ordered sums (≈1e-4).
  np.testing.assert_allclose(sync["mean"], single["mean"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sync["var"], single["var"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sync["res5_mean"], single["res5_mean"], rtol=1e-3, atol=1e-4)
  assert result["sync_out_err"] < 1e-3, result
  # Without synchronisation each replica sees half the batch: the test can tell the difference.
  assert not np.allclose(local["var"], single["var"], rtol=1e-2)
  assert result["local_out_err"] > 1e-2, result
