"""What the network costs: multiply-adds of the backbone and head, counted from the architecture.

  conv3d_macs            one bias-free "same" convolution: MACs and output size
  backbone_forward_macs  a resnet3d.ResNet3D (built or not) on one clip of [T, H, W]
  head_forward_macs      a heads.ProjectionHead or heads.LinearClassifier on its D-d input
  forward_flops          backbone + head, one clip: 2 × MACs

Counted: every convolution and every Dense kernel, at "same" padding (padded positions count, as
TensorFlow's profiler counts Conv3D / MatMul). Not counted: batch norm, ReLU, max-pool, the
residual adds, the global mean, biases, the loss: for R3D-50 at 16×224² TensorFlow's profiler
counts 91.27 GFLOP for the whole inference graph (built with conv3d), 91.03 for its Conv3D ops
alone — exactly this module's count — so they are 0.26%, well inside any MFU estimate's error.

A training step costs ≈ TRAINING_FLOPS_PER_FORWARD × the forward: the backward pass computes an
input gradient and a kernel gradient per layer, each as many MACs as the forward.

R3D-50 (CVRL's: 5×7×7 stem with stride (2, 2, 2), TEMPORAL_KERNELS) at 16×224²: 91.03 GFLOP
forward per clip for the backbone (the stem 9.44 of it; a 1×7×7 SlowOnly stem gives 83.48),
0.026 GFLOP for the 3 × 2048 head.
"""

import math
from typing import Tuple, Union

from cvrl_tf import convolutions
from cvrl_tf import heads
from cvrl_tf import resnet3d

TRAINING_FLOPS_PER_FORWARD = 3
# The stem's max-pool: 1×3×3, stride (1, 2, 2), "same" (resnet3d.ResNet3D.call).
STEM_POOL_STRIDES = (1, 2, 2)

Shape = Tuple[int, int, int]


def _same_output(size: Shape, strides) -> Shape:
  # TensorFlow's "same": ceil(n / stride) on every axis.
  return tuple(math.ceil(n / s) for n, s in zip(size, strides))


def conv3d_macs(size: Shape, in_channels: int, filters: int, kernel_size: Shape,
                strides: Shape) -> Tuple[int, Shape]:
  """MACs of one "same" conv on one clip, and its output size.

  Args:
    size: (T, H, W) of the input.
    in_channels, filters: C and F.
    kernel_size, strides: (kt, kh, kw) and (st, sh, sw).

  Returns:
    (T'·H'·W' · kt·kh·kw · C · F, (T', H', W')).
  """
  out = _same_output(size, strides)
  return math.prod(out) * math.prod(kernel_size) * in_channels * filters, out


def _folded_conv_macs(layer: convolutions.FoldedConv3D, size: Shape,
                      in_channels: int) -> Tuple[int, Shape]:
  return conv3d_macs(size, in_channels, layer.filters, layer.kernel_size, layer.strides)


def _block_macs(block, size: Shape) -> Tuple[int, Shape]:
  """A residual block: the shortcut conv reads the block's input, every other conv the output
  of the conv before it (bottleneck t×1×1 → 1×3×3 → 1×1×1, basic t×3×3 → 1×3×3)."""
  macs, chain_size, chain_channels = 0, size, block.in_channels
  for name, layer in block.sublayers().items():
    if not isinstance(layer, convolutions.FoldedConv3D):
      continue  # batch norm
    if name == "shortcut_conv":
      macs += _folded_conv_macs(layer, size, block.in_channels)[0]
    else:
      layer_macs, chain_size = _folded_conv_macs(layer, chain_size, chain_channels)
      macs += layer_macs
      chain_channels = layer.filters
  return macs, chain_size


def backbone_forward_macs(backbone: resnet3d.ResNet3D, clip_size: Shape) -> int:
  """Multiply-adds of `backbone`'s forward pass on one clip of `clip_size` = (T, H, W).

  Reads the layers' kernel sizes, strides and filters: the network need not be built.
  """
  macs, size = _folded_conv_macs(backbone.stem_conv, tuple(clip_size), 3)
  size = _same_output(size, STEM_POOL_STRIDES)
  for _, block in backbone.blocks():
    block_macs, size = _block_macs(block, size)
    macs += block_macs
  return macs


def head_forward_macs(head: Union[heads.ProjectionHead, heads.LinearClassifier],
                      in_features: int) -> int:
  """Multiply-adds of a head's Dense kernels on one D-d feature (`in_features` = D)."""
  if isinstance(head, heads.ProjectionHead):
    widths = (in_features, *head.hidden_sizes, head.output_size)
  elif isinstance(head, heads.LinearClassifier):
    widths = (in_features, head.num_classes)
  else:
    raise TypeError(f"head must be a heads.ProjectionHead or heads.LinearClassifier, got "
                    f"{type(head).__name__}")
  return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def forward_flops(backbone: resnet3d.ResNet3D,
                  head: Union[heads.ProjectionHead, heads.LinearClassifier, None],
                  clip_size: Shape) -> int:
  """FLOPs (2 × MACs) of backbone + head on one clip of (T, H, W); head None: backbone only."""
  macs = backbone_forward_macs(backbone, clip_size)
  if head is not None:
    macs += head_forward_macs(head, backbone.output_channels)
  return 2 * macs
