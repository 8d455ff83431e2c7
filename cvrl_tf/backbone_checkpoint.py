"""The backbone's checkpoints, and the import of the reference release's.

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

import json
import re
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from cvrl_tf import convolutions
from cvrl_tf import resnet3d
from cvrl_tf import storage

CONFIG_FILE = "backbone_config.json"
CHECKPOINT_PREFIX = "backbone"
CHECKPOINT_FORMAT = "cvrl_tf.backbone_checkpoint.v1"
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the backbone; nothing was assigned."""


# The architecture fields of get_config: two backbones with equal values here share checkpoints.
_ARCHITECTURE_FIELDS = ("depth", "stem_filters", "stage_filters", "stem_temporal_kernel",
                        "temporal_kernels")


def _variable_map(backbone: resnet3d.ResNet3D, root: str, named_layers) -> Dict[str, object]:
  """{checkpoint key: variable} for the (path, layer) pairs of `named_layers(backbone)`."""
  if not backbone.built:
    backbone.build()
  mapping = {}
  def add(prefix, layer):
    if isinstance(layer, convolutions.FoldedConv3D):
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


def checkpoint_keys(backbone: resnet3d.ResNet3D) -> Dict[str, object]:
  """{key in a cvrl_tf backbone checkpoint: variable of `backbone`}, built if needed."""
  return _variable_map(backbone, CHECKPOINT_PREFIX, _cvrl_layers)


def _model_garden_layers(backbone):
  # The reference release's Keras-2 functional model numbers its weight-owning layers in
  # construction order: stem conv 0, stem BN 1, then one per residual block.
  if (not isinstance(backbone, resnet3d.ResNet3D)
      or resnet3d.BLOCK_CLASS[backbone.depth] is not resnet3d.BottleneckBlock3D):
    raise CheckpointMismatchError(
        f"the reference release has bottleneck ResNet3Ds only (depth 50, 101, 152, 200); this "
        f"backbone has depth {getattr(backbone, 'depth', None)!r}")
  yield "layer_with_weights-0", backbone.stem_conv
  yield "layer_with_weights-1", backbone.stem_norm
  for number, (_, block) in enumerate(backbone.blocks(), start=2):
    for sub, layer in block.sublayers().items():
      yield f"layer_with_weights-{number}/_{sub}", layer


def model_garden_keys(backbone: resnet3d.ResNet3D) -> Dict[str, object]:
  """{key in a reference-release backbone checkpoint: variable of `backbone`}."""
  return _variable_map(backbone, "backbone", _model_garden_layers)


def _describe(backbone: resnet3d.ResNet3D) -> str:
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
  bottlenecks = {d: c for d, c in resnet3d.BLOCKS.items()
                 if resnet3d.BLOCK_CLASS[d] is resnet3d.BottleneckBlock3D}
  depths = [d for d, c in bottlenecks.items() if c == counts]
  if not depths:
    raise CheckpointMismatchError(
        f"{prefix!r}: its blocks group into stages of {list(counts)} blocks by width "
        f"{[w for w, _ in stages]}, which is no depth in BLOCKS ({bottlenecks}); give "
        "the architecture explicitly")
  return {"depth": depths[0], "stem_filters": stem[-1],
          "stage_filters": [w for w, _ in stages], "stem_temporal_kernel": stem[0],
          "temporal_kernels": [k for _, k in stages]}


def _check_model_garden_layout(prefix: str, backbone: resnet3d.ResNet3D, shapes) -> None:
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


def load_model_garden_checkpoint(backbone: resnet3d.ResNet3D, checkpoint_prefix: str) -> int:
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


def save_backbone_checkpoint(backbone: resnet3d.ResNet3D, output_dir: str, *,
                             overwrite: bool = False, source: Optional[str] = None) -> str:
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


def restore_backbone_checkpoint(backbone: resnet3d.ResNet3D, checkpoint: str) -> int:
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


def backbone_from_checkpoint(checkpoint_dir: str, **overrides) -> resnet3d.ResNet3D:
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
  backbone = resnet3d.ResNet3D.from_config(config)
  restore_backbone_checkpoint(backbone, checkpoint_dir)
  return backbone
