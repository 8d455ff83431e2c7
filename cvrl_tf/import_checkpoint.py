"""Converts a reference-release backbone checkpoint into a cvrl_tf backbone checkpoint.

  python -m cvrl_tf.import_checkpoint \\
      --model_garden_checkpoint=r3d_1x_k600_800ep_backbone-1 --output_dir=ckpt/r3d50_k600

The architecture is read off the checkpoint's shapes (depth, stem and stage filters, temporal
kernels); architecture flags, when given, must agree with it or the import stops with the first
mismatch. The stem's temporal stride does not show in the shapes: --stem_temporal_stride (2, the
CVRL value) sets it. The output directory holds (see
cvrl_tf.backbone_checkpoint.save_backbone_checkpoint)

  backbone.index, backbone.data-00000-of-00001   tf.train.Checkpoint(backbone=ResNet3D)
  backbone_config.json                           the ResNet3D config and the source checkpoint

and is read back by `backbone_checkpoint.restore_backbone_checkpoint(model, DIR)` or
`backbone_checkpoint.backbone_from_checkpoint(DIR)`. It is written to a temporary directory and
renamed, and an existing checkpoint is replaced only with --overwrite. Both paths may be on any
file system TensorFlow reads (local, gs://, ram://): --output_dir=gs://bucket/ckpt/r3d50_k600 writes there.
"""

import sys

from absl import app
from absl import flags

from cvrl_tf import cli

_CHECKPOINT = flags.DEFINE_string(
    "model_garden_checkpoint", None,
    "Prefix of the reference release's backbone checkpoint, e.g. DIR/r3d_1x_k600_800ep_backbone-1 "
    "(the name without .index), or a directory holding one.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory of the cvrl_tf checkpoint "
                                  "(local or gs://...).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a checkpoint already in output_dir.")
_DEPTH = flags.DEFINE_integer("depth", None, "ResNet depth (50, 101, 152, 200); default: read "
                              "off the checkpoint.")
_WIDTH = flags.DEFINE_float("width_multiplier", None, "Width multiplier (1, 2, 4); sets stem and "
                            "stage filters unless those are given. Default: read off the "
                            "checkpoint.")
_STEM_FILTERS = flags.DEFINE_integer("stem_filters", None, "Default: read off the checkpoint.")
_STAGE_FILTERS = flags.DEFINE_list("stage_filters", None, "4 ints, inner widths of res2..res5. "
                                   "Default: read off the checkpoint.")
_STEM_TEMPORAL_KERNEL = flags.DEFINE_integer("stem_temporal_kernel", None,
                                             "Default: read off the checkpoint.")
_STEM_TEMPORAL_STRIDE = flags.DEFINE_integer("stem_temporal_stride", 2,
                                             "Temporal stride of the stem conv (invisible in the "
                                             "checkpoint).")
_TEMPORAL_KERNELS = flags.DEFINE_list(
    "temporal_kernels", None, "4 entries, one per stage: an int for the whole stage or ints "
    "joined by ':' for each block, e.g. 1,1,3,3 or 3:3:3,3:1:3:1,1,1:3:1. Default: read off the "
    "checkpoint.")


def _parse_temporal_kernels(entries):
  try:
    return [int(e) if ":" not in e else [int(k) for k in e.split(":")] for e in entries]
  except ValueError:
    raise app.UsageError(f"--temporal_kernels: expected ints or ':'-joined ints, got "
                         f"{','.join(entries)!r}") from None


def architecture_from_flags(found: dict) -> dict:
  """ResNet3D arguments: the checkpoint's (`found`), replaced by every flag given."""
  arguments = dict(found)
  if _WIDTH.value is not None:
    # A width multiplier stands for the filter counts: drop the ones read off the checkpoint.
    arguments.pop("stem_filters")
    arguments.pop("stage_filters")
    arguments["width_multiplier"] = _WIDTH.value
  for flag, key in ((_DEPTH, "depth"), (_STEM_FILTERS, "stem_filters"),
                    (_STEM_TEMPORAL_KERNEL, "stem_temporal_kernel")):
    if flag.value is not None:
      arguments[key] = flag.value
  if _STAGE_FILTERS.value is not None:
    try:
      arguments["stage_filters"] = [int(f) for f in _STAGE_FILTERS.value]
    except ValueError:
      raise app.UsageError(f"--stage_filters: expected 4 ints, got "
                           f"{','.join(_STAGE_FILTERS.value)!r}") from None
  if _TEMPORAL_KERNELS.value is not None:
    arguments["temporal_kernels"] = _parse_temporal_kernels(_TEMPORAL_KERNELS.value)
  elif _DEPTH.value is not None and _DEPTH.value != found["depth"]:
    arguments["temporal_kernels"] = [1, 1, 3, 3]
  arguments["stem_temporal_stride"] = _STEM_TEMPORAL_STRIDE.value
  return arguments


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here so that `--help` answers without loading TensorFlow.
  import numpy as np
  from cvrl_tf import backbone_checkpoint
  from cvrl_tf import resnet3d

  try:
    found = backbone_checkpoint.model_garden_architecture(_CHECKPOINT.value)
    arguments = architecture_from_flags(found)
    backbone = resnet3d.ResNet3D(**arguments)
    count = backbone_checkpoint.load_model_garden_checkpoint(backbone, _CHECKPOINT.value)
    prefix = backbone_checkpoint.save_backbone_checkpoint(
        backbone, _OUTPUT_DIR.value, overwrite=_OVERWRITE.value,
        source=f"reference-release checkpoint {_CHECKPOINT.value}")
  except (ValueError, FileNotFoundError, FileExistsError) as error:
    # A person's mistake (wrong path, wrong architecture flag, existing output): the message
    # says what to change; a traceback would bury it.
    sys.exit(f"import_checkpoint: error: {error}")
  # Read back what was written: the import is only done when the output restores bit-exactly.
  restored = backbone_checkpoint.backbone_from_checkpoint(_OUTPUT_DIR.value)
  for ours, theirs in zip(backbone.weights, restored.weights):
    if not np.array_equal(ours.numpy(), theirs.numpy()):
      raise RuntimeError(f"{prefix}: {theirs.path} differs after reading the checkpoint back")
  params = sum(int(np.prod(v.shape)) for v in backbone.trainable_weights)
  print(f"imported {count} variables ({params:,} trainable parameters) from "
        f"{_CHECKPOINT.value}\n  into {prefix}\n  architecture: {arguments}")


def run():
  flags.mark_flags_as_required(["model_garden_checkpoint", "output_dir"])
  cli.run(main)


if __name__ == "__main__":
  sys.exit(run())
