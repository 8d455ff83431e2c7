"""ResNet3D, the CVRL encoder (the "slow" pathway of SlowFast).

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

Its convolutions are convolutions.FoldedConv3D (how each is computed on a CPU), its BNs
batch_norm.FusedBatchNorm (fused kernel; one all-reduce per layer when synchronized); its
checkpoints, and the import of the reference release's, are backbone_checkpoint.py's.

Any Keras backend runs it: under JAX or torch every convolution is keras.ops.conv, every BN Keras's
own, and the rest keras.ops, with the same variables, so weights saved under TensorFlow
(`save_weights("x.weights.h5")`) load there and give the same outputs (tests/test_jax_backend.py).
TensorFlow is imported only when it is the backend.
"""

from typing import Dict, Optional, Sequence, Tuple, Union

import keras
import numpy as np

from cvrl_tf import batch_norm
from cvrl_tf import convolutions

# The stem's folded max-pool is a TensorFlow op, used only when TensorFlow is Keras's backend.
TF_BACKEND = keras.backend.backend() == "tensorflow"
if TF_BACKEND:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

# Residual blocks per stage (res2, res3, res4, res5).
BLOCKS = {
    10: (1, 1, 1, 1),      # ResNet-10 (Hara et al.'s 3D-ResNets): quick studies and tests
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


def _batch_norm(name, momentum, epsilon, synchronized, dtype):
  return batch_norm.FusedBatchNorm(axis=-1, momentum=momentum, epsilon=epsilon,
                                  synchronized=synchronized, name=name, dtype=dtype)


class _ResidualBlock(keras.layers.Layer):
  """What bottleneck and basic blocks share: arguments, shortcut, build by channel counts.

  The shortcut is a 1×1×1 conv + BN when the channel count changes and the identity otherwise,
  subsampled when the block is strided: the reference release's rule (it projects only on a
  channel change), so its checkpoints have `_shortcut_conv` exactly where ours do.
  """

  expansion = 1

  def __init__(self, filters: int, temporal_kernel: int, spatial_stride: int, in_channels: int,
               bn_momentum: float, bn_epsilon: float, sync_batch_norm: bool,
               conv_implementation: str = "auto", **kwargs):
    super().__init__(**kwargs)
    self.conv_implementation = conv_implementation
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
    return convolutions.FoldedConv3D(filters, kernel, (1, spatial_stride, spatial_stride),
                                     implementation=self.conv_implementation, name=name,
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
      if isinstance(layer, convolutions.FoldedConv3D):
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
    return keras.ops.relu(self._residual(x, training) + shortcut)

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
                  sync_batch_norm=self.sync_batch_norm,
                  conv_implementation=self.conv_implementation)
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
    y = keras.ops.relu(self.norm1(self.temporal_conv(x), training=training))
    y = keras.ops.relu(self.norm2(self.spatial_conv(y), training=training))
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
    y = keras.ops.relu(self.norm1(self.conv1(x), training=training))
    return self.norm2(self.conv2(y), training=training)


BLOCK_CLASS = {10: BasicBlock3D, 18: BasicBlock3D, 34: BasicBlock3D, 50: BottleneckBlock3D,
               101: BottleneckBlock3D, 152: BottleneckBlock3D, 200: BottleneckBlock3D}


def _max_pool_stem(x):
  """Max-pool 1×3×3, stride (1, 2, 2), "same" (padded with -inf): [B, T, H, W, C] ->
  [B, T, ceil(H / 2), ceil(W / 2), C].

  Under TensorFlow folded into 2D like FoldedConv3D (a max_pool2d on [B·T, H, W, C]); under other
  backends keras.ops.max_pool, whose "same" pads as TensorFlow's does.
  """
  if not TF_BACKEND:
    return keras.ops.max_pool(x, (1, 3, 3), (1, 2, 2), padding="same",
                              data_format="channels_last")
  shape = tf.shape(x)
  y = tf.nn.max_pool2d(tf.reshape(x, [shape[0] * shape[1], shape[2], shape[3], x.shape[-1]]),
                       ksize=3, strides=2, padding="SAME")
  y_shape = tf.shape(y)
  return tf.reshape(y, [shape[0], shape[1], y_shape[1], y_shape[2], x.shape[-1]])


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
    depth: one of BLOCKS (10, 18, 34 basic blocks; 50, 101, 152, 200 bottlenecks).
    width_multiplier: scales the stem and every stage's filters (1×, 2×, 4× in the paper).
    stem_filters: int, overrides 64 × width_multiplier.
    stage_filters: 4 ints, inner width of res2..res5; overrides STAGE_FILTERS × width_multiplier.
    stem_temporal_kernel, stem_temporal_stride: of the stem conv (5, 2).
    temporal_kernels: 4 entries, one per stage: an int for every block of the stage, or a tuple
      with one int per block (the reference release's per-block form).
    sync_batch_norm: synchronise BN batch statistics across replicas (pretraining).
    bn_momentum, bn_epsilon: of every BN; momentum 1 keeps the moving statistics as they are (a
      momentum network, cvrl_tf.objectives.momentum).
    conv_implementation: "auto" (each convolution computed as convolutions.choose_implementation
      says for this process's device) or one of convolutions.NETWORK_IMPLEMENTATIONS for all.
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
               conv_implementation: str = "auto", **kwargs):
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
    if conv_implementation not in convolutions.NETWORK_IMPLEMENTATIONS:
      raise ValueError(f"conv_implementation must be one of "
                       f"{', '.join(convolutions.NETWORK_IMPLEMENTATIONS)}, got "
                       f"{conv_implementation!r}")

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
    self.conv_implementation = conv_implementation

    self.stem_conv = convolutions.FoldedConv3D(stem_filters, (stem_temporal_kernel, 7, 7),
                                               (stem_temporal_stride, 2, 2),
                                               implementation=conv_implementation,
                                               name="stem_conv", dtype=self.dtype_policy)
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
            sync_batch_norm=self.sync_batch_norm, conv_implementation=conv_implementation,
            name=name, dtype=self.dtype_policy)
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
    x = keras.ops.relu(self.stem_norm(self.stem_conv(inputs), training=training))
    x = _max_pool_stem(x)
    endpoints["stem"] = x
    for stage, names in enumerate(self.block_names, start=2):
      for name in names:
        x = getattr(self, name)(x, training=training)
      endpoints[f"res{stage}"] = x
    # Averaged in float32: under mixed_bfloat16 a bf16 mean over T·H·W positions loses digits.
    endpoints["pooled"] = keras.ops.mean(keras.ops.cast(x, "float32"), axis=(1, 2, 3))
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
        bn_epsilon=self.bn_epsilon, conv_implementation=self.conv_implementation)
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    if isinstance(config.get("dtype"), dict):
      config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
    return cls(**config)
