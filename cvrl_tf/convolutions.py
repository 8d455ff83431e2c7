"""Bias-free 3D convolutions with TensorFlow's "same" padding, and the equivalent TF ops that
compute them fastest on a CPU.

  FoldedConv3D              the layer: a Conv3D kernel [kt, kh, kw, C, F], computed by one of
  IMPLEMENTATIONS           matmul, conv2d on folded time or space, stacked-time conv2d, conv3d,
                            conv3d with a patch-matmul kernel gradient (TensorFlow ops)
  keras_conv3d              conv3d through keras.ops: what the layer runs under JAX or torch
  choose_implementation     which one, by device type, kernel, strides, channels, output size and
                            CPU backend
  device_type               where this process's convolutions run: "CPU", "GPU" or "TPU"
  onednn_enabled            whether this process runs oneDNN kernels

The folds are CPU tunings: on a GPU or a TPU every convolution is conv3d (cuDNN's, XLA's), which
is what those compilers are built for; nothing measured the folds there. `implementation=` forces
one (model.conv_implementation for the whole network).

Every implementation equals `tf.nn.conv3d` with "same" padding, forward and gradient, up to float
rounding (tests/test_resnet3d.py); checkpoints hold the kernel only, so they do not depend on the
implementation. resnet3d.py builds the network from these layers.

Under another Keras backend (KERAS_BACKEND=jax or torch) every convolution is
`keras.ops.conv(..., padding="same")` (XLA's or torch's Conv3D, "same" split as TensorFlow splits
it), the IMPLEMENTATIONS above are never called, and TensorFlow is not imported: this module, and
the backbone built from it, run where JAX is installed and TensorFlow is not
(tests/test_jax_backend.py).
"""

import functools
from typing import Optional, Tuple

import keras
import numpy as np

# The folds are TensorFlow ops, run only when TensorFlow is Keras's backend; under JAX or torch
# nothing here needs it, so it is imported only then (a JAX-only machine has no TensorFlow).
TF_BACKEND = keras.backend.backend() == "tensorflow"
if TF_BACKEND:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

def _triple(value, name: str) -> Tuple[int, int, int]:
  if isinstance(value, int):
    return (value, value, value)
  value = tuple(value)
  if len(value) != 3 or not all(isinstance(v, int) and v > 0 for v in value):
    raise ValueError(f"{name} must be a positive int or 3 positive ints, got {value!r}")
  return value


def _conv2d_same_unit_stride(x, kernel):
  """`tf.nn.conv2d(x, kernel, 1, "SAME")` for an odd kernel, input gradient by a forward conv.

  With stride 1 and an odd kernel the padding is symmetric, so the input gradient is the "SAME"
  conv of dy with the kernel flipped in space and its channel axes swapped. TF's CPU
  Conv2DBackpropInput (Eigen) takes 1.25–2× as long for the same gradient on the res4 / res5
  shapes of R3D-50 (about the same on res2 / res3); the kernel gradient stays TF's.
  """
  # Decorated here, not at module level, so that importing the module needs no TensorFlow.
  @tf.custom_gradient
  def conv(x, kernel):
    def grad(dy):
      dx = tf.nn.conv2d(dy, tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2]), 1, "SAME")
      dkernel = tf.raw_ops.Conv2DBackpropFilter(
          input=x, filter_sizes=tf.shape(kernel), out_backprop=dy, strides=[1, 1, 1, 1],
          padding="SAME")
      return dx, dkernel
    return tf.nn.conv2d(x, kernel, 1, "SAME"), grad

  return conv(x, kernel)


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


def keras_conv3d(x, kernel, strides):
  """conv3d under any Keras backend (what FoldedConv3D runs when TensorFlow is not the backend):
  `keras.ops.conv` with "same" padding, which JAX (lax.conv_general_dilated) and torch split as
  TensorFlow does, the odd element at the end. [B, T, H, W, C] -> [B, T', H', W', F]."""
  return keras.ops.conv(x, kernel, strides, padding="same", data_format="channels_last")


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


DEVICE_TYPES = ("CPU", "GPU", "TPU")
# The implementations that compute every convolution of a ResNet3D, so the ones a whole network
# can be forced to (model.conv_implementation); "auto" chooses per layer.
NETWORK_IMPLEMENTATIONS = ("auto", "conv3d", "conv3d_patch_kernel_grad", "stacked_time_conv2d")


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
                          output_positions: Optional[int], onednn: bool,
                          device: str = "CPU") -> str:
  """The IMPLEMENTATIONS entry for a conv: conv3d on accelerators, the fastest measured on CPU.

  Args:
    kernel_size, strides: (t, h, w) ints.
    in_channels, filters: C and F.
    output_positions: B·T'·H'·W' when the input's shape is static, else None.
    onednn: whether TensorFlow rewrites ops to oneDNN kernels in this process
      (`onednn_enabled()`; true by default on Intel CPUs, GPU or not). Matters on CPU only.
    device: "CPU", "GPU" or "TPU" (`device_type()`), where the convolution runs.

  On "GPU" and "TPU": conv3d for every shape. cuDNN and XLA pick their own algorithms for a
  Conv3D; the folds below reshape around conv2d / matmul to suit CPU kernels and were never
  measured on an accelerator (a GPU host with an Intel CPU has oneDNN on, which used to send
  the oneDNN choices, patch-matmul kernel gradients included, to ops running on the GPU).

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
  if device not in DEVICE_TYPES:
    raise ValueError(f"device must be one of {', '.join(DEVICE_TYPES)}, got {device!r}")
  if device != "CPU":
    return "conv3d"
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


def device_type() -> str:
  """Where this process's convolutions run: "TPU" when it sees a TPU, else "GPU" when it sees a
  GPU (TensorFlow places convolutions there), else "CPU".

  Asked of Keras's backend: TensorFlow's logical devices, JAX's default platform, torch's CUDA;
  TensorFlow is consulted only when it is the backend.
  """
  backend = keras.backend.backend()
  if backend == "tensorflow":
    for kind in ("TPU", "GPU"):
      if tf.config.list_logical_devices(kind):
        return kind
    return "CPU"
  if backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    # "gpu" for CUDA and ROCm alike; "cuda" / "rocm" from plugins that name the platform.
    platform = jax.default_backend()
    return {"tpu": "TPU", "gpu": "GPU", "cuda": "GPU", "rocm": "GPU"}.get(platform, "CPU")
  if backend == "torch":
    import torch  # pylint: disable=g-import-not-at-top
    return "GPU" if torch.cuda.is_available() else "CPU"
  return "CPU"


@functools.lru_cache(maxsize=None)
def onednn_enabled() -> bool:
  """Whether TensorFlow runs oneDNN kernels in this process (TF_ENABLE_ONEDNN_OPTS, read by
  TensorFlow when it loads; TF 2.21 leaves them off on AVX2-only CPUs unless the variable is 1)."""
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  except ImportError:  # A TensorFlow without the query: Eigen's choices are the safe ones.
    return False
  return bool(_pywrap_util_port.IsMklEnabled())


class FoldedConv3D(keras.layers.Layer):
  """Bias-free Conv3D, "same" padding: conv3d on accelerators, the fastest equivalent TF op on CPU.

  The kernel is stored as [kt, kh, kw, C_in, filters], like `keras.layers.Conv3D`, so checkpoints
  do not depend on how it is computed. With implementation="auto", `choose_implementation` picks
  among IMPLEMENTATIONS by device type (conv3d on GPU and TPU) and, on CPU, by kernel, strides,
  channels, output size and backend (oneDNN or Eigen): matmuls for most 1×1×1
  kernels, conv2d on folded tensors for 1×k×k and (with Eigen) k×1×1 kernels and the stem, conv3d
  (with oneDNN, on res5, with a patch-matmul kernel gradient) for the rest. The stride-1 conv2d
  folds take their input gradient from a forward conv2d (`_conv2d_same_unit_stride`); kernels
  are reshaped, never sliced. Each way keeps TF's "same" padding per axis, so results and
  gradients equal conv3d's up to float rounding (tests/test_resnet3d.py).

  implementation: "auto", or a key of IMPLEMENTATIONS that can compute this kernel and stride
  (`applicable_implementations`) to run it everywhere.

  Under a Keras backend other than TensorFlow the layer is `keras_conv3d` (keras.ops.conv) on every
  device, whatever the device: "auto" and "conv3d" mean that; the other IMPLEMENTATIONS are TF ops
  and are refused there.
  """

  def __init__(self, filters: int, kernel_size, strides=1, kernel_initializer="variance_scaling",
               implementation: str = "auto", **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = _triple(kernel_size, "kernel_size")
    self.strides = _triple(strides, "strides")
    applicable = applicable_implementations(self.kernel_size, self.strides)
    if implementation != "auto" and implementation not in applicable:
      raise ValueError(
          f"implementation={implementation!r} cannot compute a {self.kernel_size} convolution "
          f"with strides {self.strides}; use 'auto' or one of {', '.join(applicable)}")
    if not TF_BACKEND and implementation not in ("auto", "conv3d"):
      raise ValueError(
          f"implementation={implementation!r} is a TensorFlow fold; under the "
          f"{keras.backend.backend()} backend use 'auto' or 'conv3d' (keras.ops.conv)")
    self.forced_implementation = implementation
    # VarianceScaling(1, fan_in, truncated normal): the reference release's and SimCLR's default.
    self.kernel_initializer = keras.initializers.get(kernel_initializer)

  def build(self, input_shape):
    self.kernel = self.add_weight(
        name="kernel", shape=(*self.kernel_size, input_shape[-1], self.filters),
        initializer=self.kernel_initializer)

  def implementation(self, input_shape) -> str:
    """The IMPLEMENTATIONS key this layer runs in this process on inputs of `input_shape`
    ([B, T, H, W, C], dimensions but C may be None): "conv3d" (`keras_conv3d`) under any backend
    but TensorFlow."""
    if not TF_BACKEND:
      return "conv3d"
    if self.forced_implementation != "auto":
      return self.forced_implementation
    input_shape = tuple(input_shape)
    output_shape = self.compute_output_shape(input_shape)
    positions = None if None in output_shape[:4] else int(np.prod(output_shape[:4]))
    return choose_implementation(self.kernel_size, self.strides, input_shape[-1], self.filters,
                                 positions, onednn_enabled(), device_type())

  def call(self, x):  # [B, T, H, W, C] -> [B, T', H', W', filters]
    if not TF_BACKEND:
      return keras_conv3d(x, self.kernel, self.strides)
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
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                  implementation=self.forced_implementation)
    return config
