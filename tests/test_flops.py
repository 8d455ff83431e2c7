"""The FLOP count against hand counts, CVRL's 91 GFLOP figure and TensorFlow's own profiler."""

import keras
import pytest
import tensorflow as tf

from cvrl_tf import flops
from cvrl_tf import heads
from cvrl_tf import resnet3d


def test_conv3d_macs_by_hand():
  # ceil(4/2) × ceil(9/2) × ceil(9/2) = 2 × 5 × 5 outputs, each 5·7·7 taps × 3 in × 8 out.
  macs, size = flops.conv3d_macs((4, 9, 9), 3, 8, (5, 7, 7), (2, 2, 2))
  assert size == (2, 5, 5)
  assert macs == 50 * 245 * 3 * 8 == 294_000


def test_heads_by_hand():
  head = heads.ProjectionHead((16, 12), 8)
  assert flops.head_forward_macs(head, 32) == 32 * 16 + 16 * 12 + 12 * 8
  assert flops.head_forward_macs(heads.LinearClassifier(10), 32) == 320
  with pytest.raises(TypeError, match="Dense"):
    flops.head_forward_macs(keras.layers.Dense(3), 32)


def test_r3d50_at_16x224_is_cvrl_91_gflop():
  # CVRL's R3D-50: 5×7×7 stem, stride (2, 2, 2) -> 8 × 112² positions, then max-pool to 56².
  backbone = resnet3d.ResNet3D(depth=50)  # not built: the count reads the layers' attributes
  stem = 8 * 112 * 112 * (5 * 7 * 7 * 3) * 64
  assert stem == 4_720_558_080
  assert flops.forward_flops(backbone, None, (16, 224, 224)) == 91_032_911_872
  # A 1×7×7 stem (SlowOnly's) removes 4/5 of the stem's MACs: 83.48 GFLOP.
  slow_only_stem = resnet3d.ResNet3D(depth=50, stem_temporal_kernel=1)
  assert (flops.forward_flops(slow_only_stem, None, (16, 224, 224))
          == 91_032_911_872 - 2 * stem * 4 // 5)
  # 8 frames without the stem's temporal stride reach the same 8 positions at the same cost.
  no_stride = resnet3d.ResNet3D(depth=50, stem_temporal_stride=1)
  assert flops.forward_flops(no_stride, None, (8, 224, 224)) == 91_032_911_872
  # The head adds 2 × (3 × 2048² + 2048 × 128) = 0.026 GFLOP.
  head = heads.ProjectionHead()
  assert (flops.forward_flops(backbone, head, (16, 224, 224))
          == 91_032_911_872 + 2 * (3 * 2048 * 2048 + 2048 * 128))


def _profiler_flops(function, spec, op_types):
  graph = tf.function(function).get_concrete_function(spec).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options.update(account_type_regexes=op_types, output="none")
  return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


@pytest.mark.parametrize("depth", [18, 50])
def test_tiny_network_equals_tensorflow_profiler(depth):
  # Odd sizes exercise "same" padding with stride 2 (ceil); depth 50 has bottlenecks with a
  # projection shortcut at each stage's first block, depth 18 basic blocks with strided 3×3s.
  backbone = resnet3d.ResNet3D(depth=depth, stem_filters=4, stage_filters=(4, 6, 8, 10),
                               conv_implementation="conv3d")
  head = heads.ProjectionHead((12,), 5)
  clip = (5, 19, 21)
  backbone.build((None, *clip, 3))
  head.build((None, backbone.output_channels))
  spec = tf.TensorSpec([1, *clip, 3])
  network = lambda x: head(backbone(x, training=False)["pooled"], training=False)
  ours = flops.forward_flops(backbone, head, clip)
  assert ours == _profiler_flops(network, spec, ["Conv3D", "MatMul"])
  # Everything else in the graph (BN, ReLU, pooling, adds) is 0.6% (depth 18) and 2.2% (depth 50)
  # on networks this narrow, 0.26% on R3D-50 at 16×224².
  everything = _profiler_flops(network, spec, [".*"])
  assert ours < everything < 1.03 * ours
