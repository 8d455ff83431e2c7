"""The pretraining network: a 3D-ResNet backbone and its projection head, built for a clip shape.

  build_backbone  ModelConfig -> resnet3d.ResNet3D, variables created for [B, T, S, S, 3] clips
  build_model     ModelConfig -> Model(backbone, head)

Shared by pretraining (the online network, and the momentum network of cvrl_tf.objectives),
evaluation, kNN, export and the checks before a run.
"""

import dataclasses

from cvrl_tf import config as cfg
from cvrl_tf import heads
from cvrl_tf import resnet3d


@dataclasses.dataclass
class Model:
  """The online network of a pretraining run (or a momentum copy of it)."""
  backbone: resnet3d.ResNet3D
  head: heads.ProjectionHead

  @property
  def trainable_variables(self):
    return self.backbone.trainable_variables + self.head.trainable_variables


def build_backbone(model: cfg.ModelConfig, num_frames: int, crop_size: int) -> resnet3d.ResNet3D:
  """The backbone of `model`, built (variables created) for [B, T, S, S, 3] clips."""
  backbone = resnet3d.ResNet3D(
      depth=model.depth, width_multiplier=model.width_multiplier,
      stem_filters=model.stem_filters, stage_filters=model.stage_filters,
      stem_temporal_kernel=model.stem_temporal_kernel,
      stem_temporal_stride=model.stem_temporal_stride, temporal_kernels=model.temporal_kernels,
      sync_batch_norm=model.sync_batch_norm, bn_momentum=model.bn_momentum,
      bn_epsilon=model.bn_epsilon, conv_implementation=model.conv_implementation)
  backbone.build((None, num_frames, crop_size, crop_size, 3))
  return backbone


def build_model(model: cfg.ModelConfig, num_frames: int, crop_size: int) -> Model:
  """Backbone + projection head, built (variables created) for [B, T, S, S, 3] clips."""
  backbone = build_backbone(model, num_frames, crop_size)
  head = heads.ProjectionHead(
      hidden_sizes=model.head_hidden_sizes, output_size=model.head_output_size,
      bn_momentum=model.head_bn_momentum, bn_epsilon=model.bn_epsilon,
      sync_batch_norm=model.sync_batch_norm, batch_norm=model.head_batch_norm)
  head.build((None, backbone.output_channels))
  return Model(backbone, head)
