"""ResNet3D, the CVRL encoder (the "slow" pathway of SlowFast); its checkpoints; and the import of
the reference release's checkpoints.

Architecture (SPEC.md §2), for an input clip [B, T, H, W, 3] in [0, 1]:

  stem    conv kt×7×7 (kt = stem_temporal_kernel), stride (stem_temporal_stride, 2, 2), BN, ReLU,
          max-pool 1×3×3 stride (1, 2, 2)                            -> "stem" [B, T/2, H/4, W/4, C]
  res2..5 residual stages of BLOCKS[depth] blocks; the first block of res3..res5 has spatial stride 2
                                                                     -> "res2" .. "res5"
  pooled  mean of res5 over T, H, W, in float32                      -> "pooled" [B, C5]

Every convolution has "same" padding in TensorFlow's sense (with stride 2, the extra padding goes
at the end) and no bias. A bottleneck block is t×1×1 -> 1×3×3 (stride) -> 1×1×1 (×4 channels); a
basic block (depth 18 / 34) is t×3×3 (stride) -> 1×3×3, as in SlowFast's basic transform. The
shortcut is a 1×1×1 conv + BN when the channel count changes, else the identity, subsampled when
the block is strided. These are the reference release's semantics, checked against its outputs in
tests/test_resnet3d.py.

Checkpoints:
  - `save_backbone_checkpoint` / `restore_backbone_checkpoint` / `backbone_from_checkpoint`: the
    cvrl_tf backbone checkpoint, a directory holding
        backbone.index, backbone.data-00000-of-00001   tf.train.Checkpoint(backbone=model).write
        backbone_config.json                           {"format", "class", "config", "source"}
    Its keys are `backbone/<layer>/<sublayer>/<variable>/.ATTRIBUTES/VARIABLE_VALUE`, e.g.
    `backbone/res3_block1/spatial_conv/kernel/...`; `checkpoint_keys(model)` lists them.
  - `load_model_garden_checkpoint`: the reference release's backbone checkpoints (its published
    `r3d_1x_k600_800ep_backbone-1` and the like), keys `backbone/layer_with_weights-N/...`.
  Both loaders check every key and shape before they assign anything: a checkpoint loads whole or
  not at all, and the error names the first mismatch.
"""

import functools
import json
import re
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from cvrl_tf import schema
from cvrl_tf import storage

# Residual blocks per stage (res2, res3, res4, res5).
BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
STEM_FILTERS = 64
# Inner width of each stage's blocks; a bottleneck block outputs 4× that, a basic block 1×.
STAGE_FILTERS = (64, 128, 256, 512)
# CVRL's temporal kernels, one per stage, for every block of the stage.
TEMPORAL_KERNELS = (1, 1, 3, 3)
ENDPOINTS = ("stem", "res2", "res3", "res4", "res5", "pooled")

CONFIG_FILE = "backbone_config.json"
CHECKPOINT_PREFIX = "backbone"
CHECKPOINT_FORMAT = "cvrl_tf.backbone_checkpoint.v1"
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the backbone; nothing was assigned."""


def _triple(value, name: str) -> Tuple[int, int, int]:
  if isinstance(value, int):
    return (value, value, value)
  value = tuple(value)
  if len(value) != 3 or not all(isinstance(v, int) and v > 0 for v in value):
    raise ValueError(f"{name} must be a positive int or 3 positive ints, got {value!r}")
  return value


@tf.custom_gradient
def _conv2d_same_unit_stride(x, kernel):
  """`tf.nn.conv2d(x, kernel, 1, "SAME")` for an odd kernel, input gradient by a forward conv.

  With stride 1 and an odd kernel the padding is symmetric, so the input gradient is the "SAME"
  conv of dy with the kernel flipped in space and its channel axes swapped. TF's CPU
  Conv2DBackpropInput (Eigen) takes 1.25–2× as long for the same gradient on the res4 / res5
  shapes of R3D-50 (about the same on res2 / res3); the kernel gradient stays TF's.
  """
  def grad(dy):
    dx = tf.nn.conv2d(dy, tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2]), 1, "SAME")
    dkernel = tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=tf.shape(kernel), out_backprop=dy, strides=[1, 1, 1, 1],
        padding="SAME")
    return dx, dkernel
  return tf.nn.conv2d(x, kernel, 1, "SAME"), grad


def _conv2d(x, kernel, strides):
  """"SAME" conv2d of [N, H, W, C] by [kh, kw, C, F] with (sh, sw) strides."""
  if strides == (1, 1) and kernel.shape[0] % 2 == 1 and kernel.shape[1] % 2 == 1:
    return _conv2d_same_unit_stride(x, kernel)
  return tf.nn.conv2d(x, kernel, [1, *strides, 1], "SAME")


# The ways FoldedConv3D computes a "same", bias-free conv3d of x [B, T, H, W, C] by a kernel
# [kt, kh, kw, C, F] -> [B, T', H', W', F]. Each gives conv3d's result and gradients up to float
# rounding (the order of the sums differs; tests/test_resnet3d.py); they differ in speed, which
# depends on the shape and on whether TensorFlow runs oneDNN or Eigen kernels
# (`choose_implementation`).

def _matmul_conv(x, kernel, strides):
  """1×1×1 kernels: subsample by the strides (TF's "same" keeps positions 0, s, 2s, ...), then
  one 2-D [N, C] × [C, F] matmul.

  On the 5-D tensor TF would broadcast a BatchMatMul whose kernel gradient is one small matmul per
  position, summed (10× slower training on CPU). The kernel is reshaped, never sliced: a slice's
  gradient is a StridedSliceGrad copy per step.
  """
  st, sh, sw = strides
  if strides != (1, 1, 1):
    x = x[:, ::st, ::sh, ::sw, :]
  shape = tf.shape(x)
  c, filters = kernel.shape[-2:]
  y = tf.linalg.matmul(tf.reshape(x, [-1, c]), tf.reshape(kernel, [c, filters]))
  return tf.reshape(y, tf.concat([shape[:4], [filters]], axis=0))


def _spatial_conv(x, kernel, strides):
  """1×kh×kw kernels with temporal stride 1: a conv2d on [B·T, H, W, C]."""
  _, kh, kw, c, filters = kernel.shape
  shape = tf.shape(x)
  b, t = shape[0], shape[1]
  y = _conv2d(tf.reshape(x, [b * t, shape[2], shape[3], c]),
              tf.reshape(kernel, [kh, kw, c, filters]), strides[1:])
  y_shape = tf.shape(y)
  return tf.reshape(y, [b, t, y_shape[1], y_shape[2], filters])


def _temporal_conv(x, kernel, strides):
  """kt×1×1 kernels with spatial stride 1: a conv2d on [B, T, H·W, C] with a kt×1 kernel."""
  kt, _, _, c, filters = kernel.shape
  shape = tf.shape(x)
  b, h, w = shape[0], shape[2], shape[3]
  y = _conv2d(tf.reshape(x, [b, shape[1], h * w, c]), tf.reshape(kernel, [kt, 1, c, filters]),
              (strides[0], 1))
  return tf.reshape(y, [b, tf.shape(y)[1], h, w, filters])


def _same_padding(size, kernel: int, stride: int):
  """TF's "same" along one axis of `size` (an int or a scalar tensor): (output size, padding
  before, padding after); ceil(size / stride) outputs, the odd padding element at the end."""
  out_size = (size + stride - 1) // stride
  total = tf.maximum((out_size - 1) * stride + kernel - size, 0)
  return out_size, total // 2, total - total // 2


def _stacked_time_conv(x, kernel, strides):
  """Any kernel, meant for the stem on RGB: the kt taps of each output frame stacked as kt·C
  channels, one conv2d on [B·T', H, W, kt·C]."""
  kt, kh, kw, c, filters = kernel.shape
  st, sh, sw = strides
  shape = tf.shape(x)
  b, t, h, w = shape[0], shape[1], shape[2], shape[3]
  t_out, before, after = _same_padding(t, kt, st)
  x = tf.pad(x, [[0, 0], [before, after], [0, 0], [0, 0], [0, 0]])
  # One gather + transpose: kt strided slices of the 5-D clip cost 4× more on CPU.
  taps = tf.reshape(tf.range(t_out)[:, None] * st + tf.range(kt), [-1])  # [T'·kt]
  stacked = tf.reshape(tf.gather(x, taps, axis=1), [b, t_out, kt, h, w, c])
  stacked = tf.reshape(tf.transpose(stacked, [0, 1, 3, 4, 2, 5]), [b * t_out, h, w, kt * c])
  # [kt, kh, kw, C, F] -> [kh, kw, kt·C, F], tap-major like the stacked channels.
  kernel = tf.reshape(tf.transpose(kernel, [1, 2, 0, 3, 4]), [kh, kw, kt * c, filters])
  y = tf.nn.conv2d(stacked, kernel, [1, sh, sw, 1], "SAME")
  y_shape = tf.shape(y)
  return tf.reshape(y, [b, t_out, y_shape[1], y_shape[2], filters])


def _conv3d(x, kernel, strides):
  """TensorFlow's own conv3d."""
  return tf.nn.conv3d(x, kernel, [1, *strides, 1], "SAME")


def _patches(x, kernel_size, strides):
  """The "same"-padded patches of conv3d: [B, T, H, W, C] -> [B, T', H', W', kt·kh·kw·C], taps in
  the kernel's [kt, kh, kw] order, then channels.

  Strided slices of the padded input, concatenated: equal to tf.extract_volume_patches, which
  XLA cannot compile, and 1.6–1.9× faster than it at unit stride (slower strided).
  """
  shape = tf.shape(x)
  paddings, out_sizes = [[0, 0]], []
  for axis, (k, s) in enumerate(zip(kernel_size, strides), start=1):
    out_size, before, after = _same_padding(shape[axis], k, s)
    paddings.append([before, after])
    out_sizes.append(out_size)
  padded = tf.pad(x, paddings + [[0, 0]])
  taps = []
  for offsets in np.ndindex(*kernel_size):  # (dt, dh, dw), row-major like the kernel
    begin = [0, *offsets, 0]
    end = [shape[0]] + [o + (n - 1) * s + 1 for o, n, s in zip(offsets, out_sizes, strides)]
    taps.append(tf.strided_slice(padded, begin, end + [shape[4]], [1, *strides, 1]))
  return tf.concat(taps, axis=-1)


def _conv3d_patch_kernel_grad(x, kernel, strides):
  """conv3d whose kernel gradient is one matmul: the input's patches [N', kt·kh·kw·C] against
  dy [N', F], N' = B·T'·H'·W'.

  oneDNN's backward-weights convolution runs at a third of the matmul's speed when the output
  has few positions for a large kernel (R3D-50's res5 on 8×112² clips: 256 positions for a
  3×1×1×2048×512 kernel). The patches are a copy of x per kernel tap, which pays only there.
  """
  conv_strides = [1, *strides, 1]
  kernel_size, (c, filters) = tuple(kernel.shape[:3]), kernel.shape[3:]
  kernel = tf.convert_to_tensor(kernel)  # a tensor: custom_gradient must not see the variable

  @tf.custom_gradient
  def conv(x, kernel):
    def grad(dy):
      dx = tf.raw_ops.Conv3DBackpropInputV2(input_sizes=tf.shape(x), filter=kernel,
                                            out_backprop=dy, strides=conv_strides,
                                            padding="SAME")
      patches = _patches(x, kernel_size, strides)
      dkernel = tf.linalg.matmul(tf.reshape(patches, [-1, int(np.prod(kernel_size)) * c]),
                                 tf.reshape(dy, [-1, filters]), transpose_a=True)
      return dx, tf.reshape(dkernel, kernel.shape)
    return tf.nn.conv3d(x, kernel, conv_strides, "SAME"), grad

  return conv(x, kernel)


# Thresholds of choose_implementation, measured (its docstring).
_FOLD_SPATIAL_MAX_CHANNELS = 512  # 1×k×k as conv2d below this many input channels
_STACK_TIME_MAX_CHANNELS = 4  # the stem's stacked-frames conv2d up to this many (RGB)
_ONEDNN_SUBSAMPLE_MIN_CHANNELS = 1024  # strided 1×1×1 as subsample + matmul from this many
_PATCH_GRAD_POSITIONS_PER_KERNEL = 1 / 500  # patch kernel gradient while positions / (C·F) < this

IMPLEMENTATIONS = {
    "matmul": _matmul_conv,
    "spatial_conv2d": _spatial_conv,
    "temporal_conv2d": _temporal_conv,
    "stacked_time_conv2d": _stacked_time_conv,
    "conv3d": _conv3d,
    "conv3d_patch_kernel_grad": _conv3d_patch_kernel_grad,
}


def applicable_implementations(kernel_size, strides) -> Tuple[str, ...]:
  """The keys of IMPLEMENTATIONS that can compute a conv of `kernel_size` with `strides`, each a
  (t, h, w) tuple of ints."""
  (kt, kh, kw), (st, sh, sw) = kernel_size, strides
  names = []
  if (kt, kh, kw) == (1, 1, 1):
    names.append("matmul")
  if kt == 1 and st == 1:
    names.append("spatial_conv2d")
  if kh == kw == 1 and sh == sw == 1:
    names.append("temporal_conv2d")
  return tuple(names) + ("stacked_time_conv2d", "conv3d", "conv3d_patch_kernel_grad")


def choose_implementation(kernel_size, strides, in_channels: int, filters: int,
                          output_positions: Optional[int], onednn: bool) -> str:
  """The fastest IMPLEMENTATIONS entry for a conv, by forward + backward time on CPU.

  Args:
    kernel_size, strides: (t, h, w) ints.
    in_channels, filters: C and F.
    output_positions: B·T'·H'·W' when the input's shape is static, else None.
    onednn: whether TensorFlow rewrites ops to oneDNN kernels in this process
      (`onednn_enabled()`; true by default on Intel CPUs, GPU or not).

  Returns:
    A key of IMPLEMENTATIONS, always one of `applicable_implementations(kernel_size, strides)`.

  Measured per layer on R3D-50's shapes on CPU (2-core AVX2, TF 2.21, batch 4 × 8×112², also
  224²; figures in benchmarks/RESULTS.md):
    - 1×1×1, unit stride: a matmul, up to 2× faster than conv3d with either backend.
    - 1×1×1, spatial stride 2 (projection shortcuts): Eigen's conv3d from 512 channels
      (a strided conv2d is 2–4× slower there); with oneDNN, subsample + matmul from 1024 channels
      (2.5× faster than conv3d), a strided conv2d below.
    - 1×k×k: a conv2d on folded time below 512 input channels; at 512 and above Eigen's conv2d
      backward is 2× slower than conv3d (and oneDNN's no faster).
    - k×1×1: Eigen runs it 1.3× faster as a conv2d on [B, T, H·W, C]; oneDNN's conv3d is
      1.2–1.6× faster than that fold.
    - The stem's kt×7×7 on RGB: Eigen's conv3d is 1.7× slower than a conv2d on the kt taps
      stacked into channels; oneDNN's conv3d is 1.2× faster than that conv2d.
    - What would run as oneDNN's conv3d at unit stride, when the output has fewer than
      C·F / 500 positions (res5 of short, small clips): the kernel gradient as a matmul of
      patches is 1.2–2× faster for the whole layer; with more positions (res4) it is 1.4× slower.
  Shapes R3D does not have (1×1×1 with a temporal stride, say) get the nearest measured rule.
  """
  (kt, kh, kw), (st, sh, sw) = kernel_size, strides
  pointwise = (kt, kh, kw) == (1, 1, 1)
  unit_stride = (st, sh, sw) == (1, 1, 1)
  if pointwise and unit_stride:
    return "matmul"
  if onednn:
    if pointwise:
      if st == 1 and in_channels < _ONEDNN_SUBSAMPLE_MIN_CHANNELS:
        return "spatial_conv2d"
      return "matmul"
    if kt == 1 and st == 1 and in_channels < _FOLD_SPATIAL_MAX_CHANNELS:
      return "spatial_conv2d"
    if (unit_stride and output_positions is not None
        and output_positions < _PATCH_GRAD_POSITIONS_PER_KERNEL * in_channels * filters):
      return "conv3d_patch_kernel_grad"
    return "conv3d"
  if kt == 1 and st == 1 and in_channels < _FOLD_SPATIAL_MAX_CHANNELS:
    return "spatial_conv2d"
  if kh == kw == 1 and sh == sw == 1:
    return "temporal_conv2d"
  if in_channels <= _STACK_TIME_MAX_CHANNELS:
    return "stacked_time_conv2d"
  return "conv3d"


@functools.lru_cache(maxsize=None)
def onednn_enabled() -> bool:
  """Whether TensorFlow runs oneDNN kernels in this process (TF_ENABLE_ONEDNN_OPTS, read by
  TensorFlow when it loads; TF 2.21 leaves them off on AMD CPUs unless the variable is 1)."""
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  except ImportError:  # A TensorFlow without the query: Eigen's choices are the safe ones.
    return False
  return bool(_pywrap_util_port.IsMklEnabled())


class FoldedConv3D(keras.layers.Layer):
  """Bias-free Conv3D, "same" padding, computed by the fastest equivalent TF op on CPU.

  The kernel is stored as [kt, kh, kw, C_in, filters], like `keras.layers.Conv3D`, so checkpoints
  do not depend on how it is computed. `choose_implementation` picks among IMPLEMENTATIONS by
  kernel, strides, channels, output size and backend (oneDNN or Eigen): matmuls for most 1×1×1
  kernels, conv2d on folded tensors for 1×k×k and (with Eigen) k×1×1 kernels and the stem, conv3d
  (with oneDNN, on res5, with a patch-matmul kernel gradient) for the rest. The stride-1 conv2d
  folds take their input gradient from a forward conv2d (`_conv2d_same_unit_stride`); kernels
  are reshaped, never sliced. Each way keeps TF's "same" padding per axis, so results and
  gradients equal conv3d's up to float rounding (tests/test_resnet3d.py).
  """

  def __init__(self, filters: int, kernel_size, strides=1, kernel_initializer="variance_scaling",
               **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = _triple(kernel_size, "kernel_size")
    self.strides = _triple(strides, "strides")
    # VarianceScaling(1, fan_in, truncated normal): the reference release's and SimCLR's default.
    self.kernel_initializer = keras.initializers.get(kernel_initializer)

  def build(self, input_shape):
    self.kernel = self.add_weight(
        name="kernel", shape=(*self.kernel_size, input_shape[-1], self.filters),
        initializer=self.kernel_initializer)

  def implementation(self, input_shape) -> str:
    """The IMPLEMENTATIONS key this layer runs in this process on inputs of `input_shape`
    ([B, T, H, W, C], dimensions but C may be None)."""
    input_shape = tuple(input_shape)
    output_shape = self.compute_output_shape(input_shape)
    positions = None if None in output_shape[:4] else int(np.prod(output_shape[:4]))
    return choose_implementation(self.kernel_size, self.strides, input_shape[-1], self.filters,
                                 positions, onednn_enabled())

  def call(self, x):  # [B, T, H, W, C] -> [B, T', H', W', filters]
    return IMPLEMENTATIONS[self.implementation(x.shape)](x, self.kernel, self.strides)

  def compute_output_shape(self, input_shape):
    def out(n, s):
      return None if n is None else -(-n // s)
    _, t, h, w, _ = input_shape
    st, sh, sw = self.strides
    return (input_shape[0], out(t, st), out(h, sh), out(w, sw), self.filters)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
    return config


class FusedBatchNorm(keras.layers.BatchNormalization):
  """`keras.layers.BatchNormalization` over the last axis that trains through TF's fused kernel.

  Keras 3 normalises with separate moments / subtract / scale ops; TF's FusedBatchNormV3 does it
  in one pass and is 1.3–1.8× faster forward + backward here. Same variables, same outputs, and
  the same moving-average update (from the biased batch variance, as Keras). Synchronized BN,
  masks and inference keep Keras's own path.
  """

  def call(self, inputs, training=None, mask=None):
    if self.synchronized or mask is not None or not (training and self.trainable):
      return super().call(inputs, training=training, mask=mask)
    if self.axis not in (-1, len(inputs.shape) - 1) or len(inputs.shape) not in (4, 5):
      return super().call(inputs, training=training, mask=mask)
    # The fused kernel wants NHWC: fold time into the batch (statistics are per channel anyway).
    # It takes float32 scale / offset with float32, bfloat16 or float16 inputs.
    shape = tf.shape(inputs)
    y, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
        tf.reshape(inputs, tf.concat([[-1], shape[-3:]], axis=0)),
        tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
        epsilon=self.epsilon, is_training=True)[:3]
    y = tf.reshape(y, shape)
    count = tf.cast(tf.size(inputs) // inputs.shape[-1], tf.float32)
    variance = unbiased_variance * tf.maximum(count - 1.0, 0.0) / count
    self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
    self.moving_variance.assign(
        self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
    return tf.cast(y, self.compute_dtype)


def _batch_norm(name, momentum, epsilon, synchronized, dtype):
  return FusedBatchNorm(axis=-1, momentum=momentum, epsilon=epsilon, synchronized=synchronized,
                        name=name, dtype=dtype)


class _ResidualBlock(keras.layers.Layer):
  """What bottleneck and basic blocks share: arguments, shortcut, build by channel counts.

  The shortcut is a 1×1×1 conv + BN when the channel count changes and the identity otherwise,
  subsampled when the block is strided: the reference release's rule (it projects only on a
  channel change), so its checkpoints have `_shortcut_conv` exactly where ours do.
  """

  expansion = 1

  def __init__(self, filters: int, temporal_kernel: int, spatial_stride: int, in_channels: int,
               bn_momentum: float, bn_epsilon: float, sync_batch_norm: bool, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.temporal_kernel = temporal_kernel
    self.spatial_stride = spatial_stride
    self.in_channels = in_channels
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.sync_batch_norm = sync_batch_norm
    self.out_channels = self.expansion * filters
    self.use_projection = in_channels != self.out_channels
    if self.use_projection:
      self.shortcut_conv = self._conv("shortcut_conv", self.out_channels, 1, spatial_stride)
      self.norm0 = self._norm("norm0")

  def _conv(self, name, filters, kernel, spatial_stride=1):
    return FoldedConv3D(filters, kernel, (1, spatial_stride, spatial_stride), name=name,
                        dtype=self.dtype_policy)

  def _norm(self, name):
    return _batch_norm(name, self.bn_momentum, self.bn_epsilon, self.sync_batch_norm,
                       self.dtype_policy)

  def sublayers(self) -> Dict[str, keras.layers.Layer]:
    """{attribute name: layer} of the weight-owning sublayers, shortcut first."""
    names = (["shortcut_conv", "norm0"] if self.use_projection else []) + list(self._names)
    return {name: getattr(self, name) for name in names}

  def build(self, input_shape):
    # Sublayers come in (conv, its BN) pairs; the shortcut and the first conv read the block's
    # input, the other convs the `filters`-wide inner tensor.
    channels = None
    for name, layer in self.sublayers().items():
      if isinstance(layer, FoldedConv3D):
        reads_input = name in ("shortcut_conv", self._names[0])
        layer.build((None, None, None, None, self.in_channels if reads_input else self.filters))
        channels = layer.filters
      else:
        layer.build((None, None, None, None, channels))

  def call(self, x, training=None):
    if self.use_projection:
      shortcut = self.norm0(self.shortcut_conv(x), training=training)
    elif self.spatial_stride > 1:
      shortcut = x[:, :, ::self.spatial_stride, ::self.spatial_stride, :]
    else:
      shortcut = x
    return tf.nn.relu(self._residual(x, training) + shortcut)

  def compute_output_shape(self, input_shape):
    def out(n):
      return None if n is None else -(-n // self.spatial_stride)
    b, t, h, w, _ = input_shape
    return (b, t, out(h), out(w), self.out_channels)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, temporal_kernel=self.temporal_kernel,
                  spatial_stride=self.spatial_stride, in_channels=self.in_channels,
                  bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  sync_batch_norm=self.sync_batch_norm)
    return config


class BottleneckBlock3D(_ResidualBlock):
  """t×1×1 -> 1×3×3 (spatial stride) -> 1×1×1 (4·filters), each with BN; + shortcut; ReLU.

  The temporal kernel sits on the first 1×1 conv, the stride on the 3×3 conv (SPEC.md §2).
  """

  expansion = 4
  _names = ("temporal_conv", "norm1", "spatial_conv", "norm2", "expand_conv", "norm3")

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.temporal_conv = self._conv("temporal_conv", self.filters, (self.temporal_kernel, 1, 1))
    self.norm1 = self._norm("norm1")
    self.spatial_conv = self._conv("spatial_conv", self.filters, (1, 3, 3), self.spatial_stride)
    self.norm2 = self._norm("norm2")
    self.expand_conv = self._conv("expand_conv", self.out_channels, 1)
    self.norm3 = self._norm("norm3")

  def _residual(self, x, training):
    y = tf.nn.relu(self.norm1(self.temporal_conv(x), training=training))
    y = tf.nn.relu(self.norm2(self.spatial_conv(y), training=training))
    return self.norm3(self.expand_conv(y), training=training)


class BasicBlock3D(_ResidualBlock):
  """t×3×3 (spatial stride) -> 1×3×3, each with BN; + shortcut; ReLU (SlowFast's basic transform).

  The reference release has no basic 3D block; this one serves R3D-18 / 34.
  """

  expansion = 1
  _names = ("conv1", "norm1", "conv2", "norm2")

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.conv1 = self._conv("conv1", self.filters, (self.temporal_kernel, 3, 3),
                            self.spatial_stride)
    self.norm1 = self._norm("norm1")
    self.conv2 = self._conv("conv2", self.filters, (1, 3, 3))
    self.norm2 = self._norm("norm2")

  def _residual(self, x, training):
    y = tf.nn.relu(self.norm1(self.conv1(x), training=training))
    return self.norm2(self.conv2(y), training=training)


BLOCK_CLASS = {18: BasicBlock3D, 34: BasicBlock3D, 50: BottleneckBlock3D,
               101: BottleneckBlock3D, 152: BottleneckBlock3D, 200: BottleneckBlock3D}


def _positive_ints(value, length: int, name: str, accepted: str) -> Tuple[int, ...]:
  try:
    value = tuple(value)
  except TypeError:
    value = None
  if (value is None or len(value) != length
      or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                 for v in value)):
    raise ValueError(f"{name} must be {accepted}, got {value!r}")
  return tuple(int(v) for v in value)


class ResNet3D(keras.Model):
  """3D ResNet backbone returning named endpoints.

  Args:
    depth: one of BLOCKS (18, 34 basic blocks; 50, 101, 152, 200 bottlenecks).
    width_multiplier: scales the stem and every stage's filters (1×, 2×, 4× in the paper).
    stem_filters: int, overrides 64 × width_multiplier.
    stage_filters: 4 ints, inner width of res2..res5; overrides STAGE_FILTERS × width_multiplier.
    stem_temporal_kernel, stem_temporal_stride: of the stem conv (5, 2).
    temporal_kernels: 4 entries, one per stage: an int for every block of the stage, or a tuple
      with one int per block (the reference release's per-block form).
    sync_batch_norm: synchronise BN batch statistics across replicas (pretraining).
    bn_momentum, bn_epsilon: of every BN; momentum 1 keeps the moving statistics as they are (a
      momentum network, cvrl_tf.objectives.momentum).
    **kwargs: keras.Model arguments (name, dtype, e.g. dtype="mixed_bfloat16").

  Call: clip [B, T, H, W, 3] -> {"stem", "res2", .., "res5": [B, T', H', W', C] in the compute
  dtype, "pooled": [B, C5] float32}. T' = ceil(T / stem_temporal_stride); res5 has H / 32.
  """

  def __init__(self, depth: int = 50, width_multiplier: float = 1.0,
               stem_filters: Optional[int] = None,
               stage_filters: Optional[Sequence[int]] = None, stem_temporal_kernel: int = 5,
               stem_temporal_stride: int = 2,
               temporal_kernels: Sequence[Union[int, Sequence[int]]] = TEMPORAL_KERNELS,
               sync_batch_norm: bool = False, bn_momentum: float = 0.9, bn_epsilon: float = 1e-5,
               **kwargs):
    kwargs.setdefault("name", "resnet3d")
    super().__init__(**kwargs)
    if depth not in BLOCKS:
      raise ValueError(f"depth must be one of {sorted(BLOCKS)}, got {depth!r}")
    if not isinstance(width_multiplier, (int, float)) or width_multiplier <= 0:
      raise ValueError(f"width_multiplier must be a positive number, got {width_multiplier!r}")
    if stem_filters is None:
      stem_filters = max(1, round(STEM_FILTERS * width_multiplier))
    (stem_filters,) = _positive_ints([stem_filters], 1, "stem_filters", "a positive int")
    if stage_filters is None:
      stage_filters = [max(1, round(f * width_multiplier)) for f in STAGE_FILTERS]
    stage_filters = _positive_ints(stage_filters, 4, "stage_filters",
                                   "4 positive ints (res2, res3, res4, res5)")
    (stem_temporal_kernel, stem_temporal_stride) = _positive_ints(
        [stem_temporal_kernel, stem_temporal_stride], 2, "stem_temporal_kernel/stride",
        "positive ints")
    blocks = BLOCKS[depth]
    if isinstance(temporal_kernels, (int, str)) or len(temporal_kernels) != 4:
      raise ValueError(f"temporal_kernels must have 4 entries (res2, res3, res4, res5), got "
                       f"{temporal_kernels!r}")
    per_block = []
    for stage, (kernels, count) in enumerate(zip(tuple(temporal_kernels), blocks), start=2):
      if isinstance(kernels, (int, np.integer)):
        kernels = (int(kernels),) * count
      per_block.append(_positive_ints(
          kernels, count, f"temporal_kernels for res{stage}",
          f"a positive int or {count} positive ints (depth {depth} has {count} blocks there)"))
    bn_momentum, bn_epsilon = float(bn_momentum), float(bn_epsilon)
    if not 0.0 <= bn_momentum <= 1.0 or bn_epsilon <= 0.0:
      raise ValueError(f"need 0 <= bn_momentum <= 1 and bn_epsilon > 0, got bn_momentum="
                       f"{bn_momentum!r}, bn_epsilon={bn_epsilon!r}")

    self.depth = depth
    self.width_multiplier = width_multiplier
    self.stem_filters = stem_filters
    self.stage_filters = stage_filters
    self.stem_temporal_kernel = stem_temporal_kernel
    self.stem_temporal_stride = stem_temporal_stride
    self.temporal_kernels = tuple(per_block)
    self.sync_batch_norm = bool(sync_batch_norm)
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon

    self.stem_conv = FoldedConv3D(stem_filters, (stem_temporal_kernel, 7, 7),
                                  (stem_temporal_stride, 2, 2), name="stem_conv",
                                  dtype=self.dtype_policy)
    self.stem_norm = _batch_norm("stem_norm", bn_momentum, bn_epsilon, self.sync_batch_norm,
                                 self.dtype_policy)
    # Blocks are attributes, not a list: tf.train.Checkpoint does not descend into the lists
    # Keras 3 tracks, and would silently skip every block.
    block_names = []  # per stage: ("res2_block1", "res2_block2", ...)
    channels = stem_filters
    block_class = BLOCK_CLASS[depth]
    for stage, (filters, kernels) in enumerate(zip(stage_filters, per_block), start=2):
      names = []
      for index, kernel in enumerate(kernels, start=1):
        name = f"res{stage}_block{index}"
        block = block_class(
            filters=filters, temporal_kernel=kernel,
            spatial_stride=2 if stage > 2 and index == 1 else 1, in_channels=channels,
            bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
            sync_batch_norm=self.sync_batch_norm, name=name, dtype=self.dtype_policy)
        setattr(self, name, block)
        names.append(name)
        channels = block_class.expansion * filters
      block_names.append(tuple(names))
    self.block_names = tuple(block_names)
    self.output_channels = channels

  def blocks(self):
    """[(name, block)] of every residual block in order."""
    return [(name, getattr(self, name)) for names in self.block_names for name in names]

  def build(self, input_shape=(None, None, None, None, 3)):
    """Creates every variable; only the channel count of `input_shape` matters."""
    self._check_input_shape(input_shape)
    self.stem_conv.build(input_shape)
    self.stem_norm.build((None, None, None, None, self.stem_filters))
    for _, block in self.blocks():
      block.build((None, None, None, None, block.in_channels))
      block.built = True
    self.built = True

  def _check_input_shape(self, shape):
    shape = tuple(shape)
    if len(shape) != 5 or shape[-1] != 3:
      raise ValueError(
          f"ResNet3D expects clips of shape [batch, time, height, width, 3] (RGB, channels "
          f"last), got shape {shape}")
    if any(n is not None and n < 1 for n in shape[1:4]):
      raise ValueError(f"ResNet3D needs time, height and width >= 1, got shape {shape}")

  def call(self, inputs, training=None):
    self._check_input_shape(inputs.shape)
    endpoints = {}
    x = tf.nn.relu(self.stem_norm(self.stem_conv(inputs), training=training))
    # Max-pool 1×3×3, stride (1, 2, 2), "same": folded into 2D like FoldedConv3D.
    shape = tf.shape(x)
    y = tf.nn.max_pool2d(tf.reshape(x, [shape[0] * shape[1], shape[2], shape[3], x.shape[-1]]),
                         ksize=3, strides=2, padding="SAME")
    y_shape = tf.shape(y)
    x = tf.reshape(y, [shape[0], shape[1], y_shape[1], y_shape[2], x.shape[-1]])
    endpoints["stem"] = x
    for stage, names in enumerate(self.block_names, start=2):
      for name in names:
        x = getattr(self, name)(x, training=training)
      endpoints[f"res{stage}"] = x
    # Averaged in float32: under mixed_bfloat16 a bf16 mean over T·H·W positions loses digits.
    endpoints["pooled"] = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2, 3])
    return endpoints

  def get_config(self):
    config = {"name": self.name, "trainable": self.trainable,
              "dtype": keras.saving.serialize_keras_object(self.dtype_policy)}
    config.update(
        depth=self.depth, width_multiplier=self.width_multiplier,
        stem_filters=self.stem_filters, stage_filters=list(self.stage_filters),
        stem_temporal_kernel=self.stem_temporal_kernel,
        stem_temporal_stride=self.stem_temporal_stride,
        temporal_kernels=[list(k) for k in self.temporal_kernels],
        sync_batch_norm=self.sync_batch_norm, bn_momentum=self.bn_momentum,
        bn_epsilon=self.bn_epsilon)
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    if isinstance(config.get("dtype"), dict):
      config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
    return cls(**config)


# The architecture fields of get_config: two backbones with equal values here share checkpoints.
_ARCHITECTURE_FIELDS = ("depth", "stem_filters", "stage_filters", "stem_temporal_kernel",
                        "temporal_kernels")


def _variable_map(backbone: ResNet3D, root: str, named_layers) -> Dict[str, object]:
  """{checkpoint key: variable} for the (path, layer) pairs of `named_layers(backbone)`."""
  if not backbone.built:
    backbone.build()
  mapping = {}
  def add(prefix, layer):
    if isinstance(layer, FoldedConv3D):
      mapping[f"{root}/{prefix}/kernel{_VALUE_SUFFIX}"] = layer.kernel
    else:
      for name in _BN_VARIABLES:
        mapping[f"{root}/{prefix}/{name}{_VALUE_SUFFIX}"] = getattr(layer, name)
  for prefix, layer in named_layers(backbone):
    add(prefix, layer)
  return mapping


def _cvrl_layers(backbone):
  yield "stem_conv", backbone.stem_conv
  yield "stem_norm", backbone.stem_norm
  for name, block in backbone.blocks():
    for sub, layer in block.sublayers().items():
      yield f"{name}/{sub}", layer


def checkpoint_keys(backbone: ResNet3D) -> Dict[str, object]:
  """{key in a cvrl_tf backbone checkpoint: variable of `backbone`}, built if needed."""
  return _variable_map(backbone, CHECKPOINT_PREFIX, _cvrl_layers)


def _model_garden_layers(backbone):
  # The reference release's Keras-2 functional model numbers its weight-owning layers in
  # construction order: stem conv 0, stem BN 1, then one per residual block.
  if not isinstance(backbone, ResNet3D) or BLOCK_CLASS[backbone.depth] is not BottleneckBlock3D:
    raise CheckpointMismatchError(
        f"the reference release has bottleneck ResNet3Ds only (depth 50, 101, 152, 200); this "
        f"backbone has depth {getattr(backbone, 'depth', None)!r}")
  yield "layer_with_weights-0", backbone.stem_conv
  yield "layer_with_weights-1", backbone.stem_norm
  for number, (_, block) in enumerate(backbone.blocks(), start=2):
    for sub, layer in block.sublayers().items():
      yield f"layer_with_weights-{number}/_{sub}", layer


def model_garden_keys(backbone: ResNet3D) -> Dict[str, object]:
  """{key in a reference-release backbone checkpoint: variable of `backbone`}."""
  return _variable_map(backbone, "backbone", _model_garden_layers)


def _describe(backbone: ResNet3D) -> str:
  return (f"ResNet3D(depth={backbone.depth}, stem_filters={backbone.stem_filters}, "
          f"stage_filters={backbone.stage_filters}, "
          f"temporal_kernels={[list(k) for k in backbone.temporal_kernels]})")


def latest_checkpoint(directory: str) -> Optional[str]:
  """The newest training checkpoint prefix (DIR/ckpt-N) in `directory` (any file system), or None.

  The one its `checkpoint` state file names, taken from `directory` itself: the state file of a
  copied or moved workdir (another bucket, another machine) holds the old absolute paths. Else
  the highest-numbered ckpt-N there.
  """
  state = tf.train.get_checkpoint_state(directory)
  if state and state.model_checkpoint_path:
    here = storage.join(directory, storage.basename(state.model_checkpoint_path))
    if storage.exists(here + ".index"):
      return here
  numbered = [(int(m.group(1)), name[:-len(".index")]) for name in storage.listdir(directory)
              for m in [re.fullmatch(r"ckpt-(\d+)\.index", name)] if m]
  return storage.join(directory, max(numbered)[1]) if numbered else None


def checkpoint_reader(prefix: str):
  """A reader (get_tensor, has_tensor, get_variable_to_shape_map) of the checkpoint `prefix`.

  Not tf.train.load_checkpoint, which takes any path that passes for a directory as a folder of
  checkpoints: ram:// calls every leading part of a file name a directory, `DIR/ckpt-3` too.
  """
  return tf.compat.v1.train.NewCheckpointReader(prefix)


def _resolve_prefix(checkpoint: str, kind: str) -> str:
  """A checkpoint prefix from a prefix or a directory holding one (a backbone checkpoint's
  DIR/backbone, else the latest training checkpoint)."""
  # The prefix test first: ram:// calls any leading part of a file name a directory.
  if storage.exists(checkpoint + ".index"):
    return checkpoint
  if storage.isdir(checkpoint):
    for candidate in (storage.join(checkpoint, CHECKPOINT_PREFIX), latest_checkpoint(checkpoint)):
      if candidate and storage.exists(candidate + ".index"):
        return candidate
    raise FileNotFoundError(
        f"{kind}: the directory {checkpoint!r} holds no checkpoint (no '{CHECKPOINT_PREFIX}.index', "
        "no 'checkpoint' state file, no ckpt-N.index); pass the checkpoint prefix, e.g. DIR/backbone for "
        "DIR/backbone.index")
  hint = " (pass the prefix, without .index)" if checkpoint.endswith(".index") else ""
  raise FileNotFoundError(f"{kind}: no checkpoint at {checkpoint!r}: "
                          f"{checkpoint + '.index'!r} does not exist{hint}")


def _backbone_keys(reader, paths) -> Tuple[Dict[str, str], set]:
  """Finds `paths` (keys as a backbone-only checkpoint names them) in any checkpoint.

  A checkpoint names each variable by one of the paths TF's object graph has to it. Written as
  tf.train.Checkpoint(backbone=model) that is `backbone/<layer>/.../<variable>`; a training
  checkpoint that also holds the optimizer may name the trainable ones
  `optimizer/_trainable_variables/N/...` instead. Following each path through the object graph
  finds the variable either way.

  Returns:
    ({path: actual key} for the paths found, {actual keys of every variable under `backbone`}).
  """
  if not reader.has_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"):  # a TF1-style name-based checkpoint
    present = {k for k in reader.get_variable_to_shape_map() if k.startswith("backbone/")}
    return {p: p for p in paths if p in present}, present
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  children = [{c.local_name: c.node_id for c in node.children} for node in graph.nodes]
  def value_key(node_id):
    return next((a.checkpoint_key for a in graph.nodes[node_id].attributes
                 if a.name == "VARIABLE_VALUE"), None)
  found = {}
  for path in paths:
    node_id = 0
    for name in path[:-len(_VALUE_SUFFIX)].split("/"):
      node_id = children[node_id].get(name)
      if node_id is None:
        break
    if node_id is not None and value_key(node_id):
      found[path] = value_key(node_id)
  present, stack = set(), [children[0]["backbone"]] if "backbone" in children[0] else []
  seen = set(stack)
  while stack:
    node_id = stack.pop()
    if value_key(node_id):
      present.add(value_key(node_id))
    for child in children[node_id].values():
      if child not in seen:
        seen.add(child)
        stack.append(child)
  return found, present


def _read_checked(prefix: str, mapping: Mapping[str, object],
                  description: str) -> Dict[str, np.ndarray]:
  """Reads every value of `mapping` from `prefix` after checking keys and shapes.

  Only the variables of the `backbone` object count: a training checkpoint may hold a head, an
  optimizer and a step counter beside it. Inside it, a variable the backbone has no place for is
  an error like a missing one.

  Raises:
    CheckpointMismatchError naming the first missing key, wrong shape or unused key.
  """
  reader = checkpoint_reader(prefix)
  found, present = _backbone_keys(reader, list(mapping))
  shapes = reader.get_variable_to_shape_map()
  if not present:
    raise CheckpointMismatchError(
        f"{prefix!r} holds no variables under 'backbone/': it was not written as "
        f"tf.train.Checkpoint(backbone=...); its keys start with "
        f"{sorted({k.split('/')[0] for k in shapes})}")
  for key, variable in mapping.items():
    if key not in found:
      nearby = sorted(k for k in present if k.rsplit("/", 3)[0] == key.rsplit("/", 3)[0])
      raise CheckpointMismatchError(
          f"{prefix!r} does not fit {description}: it has no key {key!r} (for variable "
          f"{variable.path}, shape {tuple(variable.shape)})."
          + (f" Keys of that layer in the checkpoint: {nearby}" if nearby else ""))
    shape = tuple(shapes[found[key]])
    if shape != tuple(variable.shape):
      raise CheckpointMismatchError(
          f"{prefix!r} does not fit {description}: {key!r} has shape {list(shape)} in the "
          f"checkpoint but {list(variable.shape)} in the backbone ({variable.path})")
  unused = sorted(present - set(found.values()))
  if unused:
    raise CheckpointMismatchError(
        f"{prefix!r} does not fit {description}: {len(unused)} checkpoint variables have no place "
        f"in the backbone (self-gating and squeeze-excitation are not supported), first "
        f"{unused[0]!r} with shape {list(shapes[unused[0]])}")
  return {key: reader.get_tensor(found[key]) for key in mapping}


def _assign_all(mapping: Mapping[str, object], values: Mapping[str, np.ndarray]) -> None:
  for key, variable in mapping.items():
    variable.assign(values[key])


def _model_garden_shapes(prefix: str) -> Dict[str, Tuple[int, ...]]:
  reader = checkpoint_reader(prefix)
  return {k: tuple(s) for k, s in reader.get_variable_to_shape_map().items()
          if k.endswith(_VALUE_SUFFIX)}


def _layer_number(key: str) -> int:
  return int(key.split("/")[1].split("-")[1])


def model_garden_architecture(checkpoint_prefix: str) -> dict:
  """ResNet3D arguments read off a reference-release backbone checkpoint's shapes.

  Everything but the stem's temporal stride shows in the shapes; stages are told apart by their
  inner width, so this fails (asking for explicit arguments) when two stages have equal widths.

  Returns:
    {"depth", "stem_filters", "stage_filters", "stem_temporal_kernel", "temporal_kernels"}.
  """
  prefix = _resolve_prefix(checkpoint_prefix, "model_garden_architecture")
  shapes = _model_garden_shapes(prefix)
  stem = shapes.get(f"backbone/layer_with_weights-0/kernel{_VALUE_SUFFIX}")
  spatial = {_layer_number(k): s for k, s in shapes.items()
             if k.endswith(f"/_spatial_conv/kernel{_VALUE_SUFFIX}")}
  temporal = {_layer_number(k): s for k, s in shapes.items()
              if k.endswith(f"/_temporal_conv/kernel{_VALUE_SUFFIX}")}
  if stem is None or not spatial or sorted(spatial) != list(range(2, 2 + len(spatial))):
    raise CheckpointMismatchError(
        f"{prefix!r} is not a bottleneck ResNet3D backbone checkpoint of the reference release: "
        f"expected keys backbone/layer_with_weights-0/kernel and "
        f"backbone/layer_with_weights-N/_spatial_conv/kernel for N = 2, 3, ..")
  stages = []  # [(inner width, [temporal kernel per block])]
  for number in sorted(spatial):
    width, kernel = spatial[number][-1], temporal[number][0]
    if stages and stages[-1][0] == width:
      stages[-1][1].append(kernel)
    else:
      stages.append((width, [kernel]))
  counts = tuple(len(kernels) for _, kernels in stages)
  depths = [d for d, c in BLOCKS.items() if c == counts and BLOCK_CLASS[d] is BottleneckBlock3D]
  if not depths:
    raise CheckpointMismatchError(
        f"{prefix!r}: its blocks group into stages of {list(counts)} blocks by width "
        f"{[w for w, _ in stages]}, which is no depth in BLOCKS "
        f"({ {d: c for d, c in BLOCKS.items() if BLOCK_CLASS[d] is BottleneckBlock3D} }); give "
        "the architecture explicitly")
  return {"depth": depths[0], "stem_filters": stem[-1],
          "stage_filters": [w for w, _ in stages], "stem_temporal_kernel": stem[0],
          "temporal_kernels": [k for _, k in stages]}


def _check_model_garden_layout(prefix: str, backbone: ResNet3D, shapes) -> None:
  """Fails on a different block count first: per-key errors would point at a shifted layer."""
  numbers = {_layer_number(k) for k in shapes if k.startswith("backbone/layer_with_weights-")}
  if not numbers:
    raise CheckpointMismatchError(
        f"{prefix!r} is not a backbone checkpoint of the reference release: no key starts with "
        f"'backbone/layer_with_weights-' (first key: {min(shapes)!r})")
  ours = len(backbone.blocks())
  if max(numbers) - 1 != ours:
    try:
      found = model_garden_architecture(prefix)
    except CheckpointMismatchError:
      found = "unknown"
    raise CheckpointMismatchError(
        f"{prefix!r} holds {max(numbers) - 1} residual blocks (architecture {found}), but "
        f"{_describe(backbone)} has {ours}: wrong depth")


def load_model_garden_checkpoint(backbone: ResNet3D, checkpoint_prefix: str) -> int:
  """Loads a reference-release backbone checkpoint into `backbone`, whole or not at all.

  The reference release writes its backbones as `tf.train.Checkpoint(backbone=model)`; keys are
  `backbone/layer_with_weights-N/...` with N numbering stem conv 0, stem BN 1, then one per
  residual block, and `_temporal_conv`, `_spatial_conv`, `_expand_conv`, `_shortcut_conv`,
  `_norm0`..`_norm3` inside a block.

  Args:
    backbone: a bottleneck ResNet3D of the checkpoint's architecture (built here if needed).
    checkpoint_prefix: e.g. ".../r3d_1x_k600_800ep_backbone-1", or a directory holding one.

  Returns:
    The number of variables loaded.

  Raises:
    FileNotFoundError: no checkpoint there.
    CheckpointMismatchError: a missing key, a wrong shape, or a checkpoint variable without a
      place in the backbone (wrong depth / width / temporal kernels, self-gating, SE), named in
      the message. Nothing is assigned then.
  """
  prefix = _resolve_prefix(checkpoint_prefix, "load_model_garden_checkpoint")
  mapping = model_garden_keys(backbone)
  _check_model_garden_layout(prefix, backbone, _model_garden_shapes(prefix))
  try:
    values = _read_checked(prefix, mapping, _describe(backbone))
  except CheckpointMismatchError as error:
    try:
      found = f"the checkpoint's architecture is {model_garden_architecture(prefix)}"
    except CheckpointMismatchError:
      found = "its architecture could not be read off the shapes"
    raise CheckpointMismatchError(f"{error}; {found}") from None
  _assign_all(mapping, values)
  return len(mapping)


def save_backbone_checkpoint(backbone: ResNet3D, output_dir: str, *, overwrite: bool = False,
                             source: Optional[str] = None) -> str:
  """Writes a cvrl_tf backbone checkpoint to `output_dir`, atomically.

  Layout: `output_dir/backbone.index`, `backbone.data-*` (tf.train.Checkpoint(backbone=model))
  and `backbone_config.json` = {"format": CHECKPOINT_FORMAT, "class": "ResNet3D",
  "config": backbone.get_config(), "source": source}. The files are written into a temporary
  sibling directory that is then renamed (storage.replace_directory): on a local disk a reader
  never sees half a checkpoint; on an object store the files are copied into place one by one.

  Args:
    backbone: a built ResNet3D.
    output_dir: the checkpoint directory (local, gs://, ...); must be empty unless `overwrite`.
    overwrite: replace an existing checkpoint in `output_dir`.
    source: free text recorded in the JSON (e.g. the imported checkpoint's path).

  Returns:
    The checkpoint prefix, `output_dir/backbone`.
  """
  output_dir = storage.absolute(output_dir)
  try:
    contents = storage.directory_contents(output_dir)
  except NotADirectoryError:
    raise FileExistsError(f"{output_dir!r} exists and is not a directory") from None
  if contents and not overwrite:
    raise FileExistsError(
        f"{output_dir!r} is not empty (it holds {contents}); refusing to overwrite it: pass "
        "overwrite=True (--overwrite) or choose a new directory")
  keys = checkpoint_keys(backbone)
  # A sibling, so the final rename stays on one file system; makedirs honours the umask (mkdtemp
  # would leave the checkpoint readable by its owner only).
  tmp = storage.temporary_directory_for(output_dir)
  storage.makedirs(tmp)
  try:
    prefix = tf.train.Checkpoint(backbone=backbone).write(storage.join(tmp, CHECKPOINT_PREFIX))
    written = {k for k in checkpoint_reader(prefix).get_variable_to_shape_map()
               if k.endswith(_VALUE_SUFFIX)}
    if written != set(keys):
      # Keras changed how it names tracked attributes: the checkpoint would not restore.
      raise RuntimeError(
          f"the written checkpoint's keys differ from checkpoint_keys(): missing "
          f"{sorted(set(keys) - written)[:3]}, unexpected {sorted(written - set(keys))[:3]}")
    storage.atomic_write_json(storage.join(tmp, CONFIG_FILE), {
        "format": CHECKPOINT_FORMAT, "class": "ResNet3D", "config": backbone.get_config(),
        "source": source}, indent=1)
    storage.replace_directory(tmp, output_dir)
  except BaseException:
    storage.remove(tmp)
    raise
  return storage.join(output_dir, CHECKPOINT_PREFIX)


def read_backbone_config(checkpoint_dir: str) -> dict:
  """The `config` of a cvrl_tf backbone checkpoint's backbone_config.json."""
  path = storage.join(checkpoint_dir, CONFIG_FILE)
  if not storage.exists(path):
    raise FileNotFoundError(
        f"{path} does not exist: {checkpoint_dir!r} is not a cvrl_tf backbone checkpoint "
        "(make one with `python -m cvrl_tf.import_checkpoint` or save_backbone_checkpoint)")
  info = storage.read_json(path)
  if info.get("format") != CHECKPOINT_FORMAT:
    raise ValueError(f"{path}: format {info.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
  return info["config"]


def restore_backbone_checkpoint(backbone: ResNet3D, checkpoint: str) -> int:
  """Restores a cvrl_tf backbone checkpoint into `backbone`, whole or not at all.

  Args:
    backbone: a ResNet3D (built here if needed) of the checkpoint's architecture.
    checkpoint: a backbone checkpoint directory or its prefix `DIR/backbone`; or a training
      checkpoint prefix `DIR/ckpt-N` or its folder (the latest there). Any file system.

  Returns:
    The number of variables restored.

  Also reads a training checkpoint written as tf.train.Checkpoint(backbone=..., <anything>=...):
  only the `backbone/` variables are read.

  Raises:
    FileNotFoundError: nothing there.
    CheckpointMismatchError: the architecture in backbone_config.json differs (the field is
      named), or a key is missing, a shape differs, a backbone variable is left over.
  """
  prefix = _resolve_prefix(checkpoint, "restore_backbone_checkpoint")
  config_path = storage.join(storage.dirname(prefix), CONFIG_FILE)
  if storage.exists(config_path):
    saved = read_backbone_config(storage.dirname(prefix))
    ours = backbone.get_config()
    for field in _ARCHITECTURE_FIELDS:
      if json.loads(json.dumps(ours[field])) != saved.get(field):
        raise CheckpointMismatchError(
            f"{prefix!r} holds a different backbone: {field}={saved.get(field)!r} in "
            f"{config_path}, but {field}={ours[field]!r} in the backbone to restore into. "
            "Build it with ResNet3D.from_config(read_backbone_config(DIR)) or "
            "backbone_from_checkpoint(DIR).")
  mapping = checkpoint_keys(backbone)
  values = _read_checked(prefix, mapping, _describe(backbone))
  _assign_all(mapping, values)
  return len(mapping)


def backbone_from_checkpoint(checkpoint_dir: str, **overrides) -> ResNet3D:
  """A ResNet3D built from a checkpoint's backbone_config.json, with its weights restored.

  Args:
    checkpoint_dir: a cvrl_tf backbone checkpoint directory.
    **overrides: non-architecture settings to change, e.g. sync_batch_norm=True,
      dtype="mixed_bfloat16", bn_momentum=0.99.
  """
  config = read_backbone_config(checkpoint_dir)
  for field in set(overrides) & set(_ARCHITECTURE_FIELDS + ("width_multiplier",)):
    raise ValueError(f"{field} is fixed by the checkpoint ({config.get(field)!r}); "
                     f"only non-architecture settings can be overridden, got {field}="
                     f"{overrides[field]!r}")
  config.update(overrides)
  backbone = ResNet3D.from_config(config)
  restore_backbone_checkpoint(backbone, checkpoint_dir)
  return backbone
