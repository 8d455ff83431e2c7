"""The import command and the cvrl_tf backbone checkpoint it writes."""

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import backbone_checkpoint
from cvrl_tf import resnet3d
from cvrl_tf import storage

REFERENCE = "/work/shared/reference"
if not os.path.isdir(REFERENCE):
  REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference")
NARROW = os.path.join(REFERENCE, "model_garden_r3d50_narrow")
NARROW_PREFIX = os.path.join(NARROW, "backbone")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_import(*args, cwd=REPO):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, "-m", "cvrl_tf.import_checkpoint", *args],
                        capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp("import") / "r3d50_narrow")
  run = run_import(f"--model_garden_checkpoint={NARROW_PREFIX}", f"--output_dir={output_dir}")
  assert run.returncode == 0, run.stderr[-3000:]
  return output_dir, run


def test_import_writes_a_checkpoint_with_reference_outputs(imported):
  output_dir, run = imported
  assert sorted(os.listdir(output_dir)) == [
      "backbone.data-00000-of-00001", "backbone.index", "backbone_config.json"]
  assert "imported 265 variables (549,344 trainable parameters)" in run.stdout
  with open(os.path.join(output_dir, "backbone_config.json")) as f:
    info = json.load(f)
  assert info["format"] == backbone_checkpoint.CHECKPOINT_FORMAT and info["class"] == "ResNet3D"
  assert info["config"]["stage_filters"] == [8, 16, 32, 64]
  assert NARROW_PREFIX in info["source"]
  backbone = backbone_checkpoint.backbone_from_checkpoint(output_dir)
  expected = np.load(os.path.join(NARROW, "expected.npz"))
  out = backbone(tf.constant(expected["input"]), training=False)
  np.testing.assert_allclose(out["pooled"], expected["pooled"], atol=1e-4, rtol=0)
  # No temporary directory is left beside the output.
  assert os.listdir(os.path.dirname(output_dir)) == [os.path.basename(output_dir)]


def test_existing_output_is_not_overwritten_without_the_flag(imported):
  output_dir, _ = imported
  index = os.path.join(output_dir, "backbone.index")
  with open(index, "rb") as f:
    before = f.read()
  run = run_import(f"--model_garden_checkpoint={NARROW_PREFIX}", f"--output_dir={output_dir}")
  assert run.returncode != 0
  assert "refusing to overwrite" in run.stderr and "--overwrite" in run.stderr
  assert "Traceback" not in run.stderr
  with open(index, "rb") as f:
    assert f.read() == before


def test_wrong_architecture_flag_fails_and_writes_nothing(tmp_path):
  output_dir = str(tmp_path / "out")
  run = run_import(f"--model_garden_checkpoint={NARROW_PREFIX}", f"--output_dir={output_dir}",
                   "--stage_filters=8,16,32,32")
  assert run.returncode != 0
  assert "layer_with_weights-15/_temporal_conv/kernel" in run.stderr
  assert "[3, 1, 1, 128, 64]" in run.stderr
  assert not os.path.exists(output_dir) and os.listdir(tmp_path) == []


def test_explicit_flags_and_overwrite(tmp_path):
  output_dir = str(tmp_path / "out")
  os.makedirs(output_dir)
  with open(os.path.join(output_dir, "stale.txt"), "w") as f:
    f.write("old")
  run = run_import(f"--model_garden_checkpoint={NARROW_PREFIX}", f"--output_dir={output_dir}",
                   "--depth=50", "--stage_filters=8,16,32,64", "--temporal_kernels=1,1,3,3",
                   "--stem_filters=64", "--overwrite")
  assert run.returncode == 0, run.stderr[-3000:]
  assert "stale.txt" not in os.listdir(output_dir)
  assert backbone_checkpoint.read_backbone_config(output_dir)["temporal_kernels"] == [
      [1, 1, 1], [1, 1, 1, 1], [3] * 6, [3, 3, 3]]


def tiny(**kwargs):
  return resnet3d.ResNet3D(depth=50, stem_filters=4, stage_filters=(2, 3, 4, 5), **kwargs)


def test_save_restore_round_trip(tmp_path):
  model = tiny()
  model.build()
  for variable in model.weights:
    variable.assign(np.random.default_rng(len(variable.path)).uniform(
        0.5, 1.5, variable.shape).astype(np.float32))
  prefix = backbone_checkpoint.save_backbone_checkpoint(model, str(tmp_path / "ckpt"), source="test")
  assert prefix == str(tmp_path / "ckpt" / "backbone")
  # The written keys are the documented ones, every variable once.
  written = {k for k, _ in tf.train.list_variables(prefix) if k.endswith("VARIABLE_VALUE")}
  assert written == set(backbone_checkpoint.checkpoint_keys(model)) and len(written) == len(model.weights)
  assert "backbone/res3_block1/spatial_conv/kernel/.ATTRIBUTES/VARIABLE_VALUE" in written
  for source in (str(tmp_path / "ckpt"), prefix):  # directory or prefix
    clone = tiny()
    assert backbone_checkpoint.restore_backbone_checkpoint(clone, source) == len(model.weights)
    for ours, theirs in zip(model.weights, clone.weights):
      np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  # Settings that do not change the architecture may differ.
  restored = backbone_checkpoint.backbone_from_checkpoint(str(tmp_path / "ckpt"), sync_batch_norm=True,
                                               dtype="mixed_bfloat16")
  assert restored.sync_batch_norm and restored.dtype_policy.name == "mixed_bfloat16"
  with pytest.raises(ValueError, match="stage_filters is fixed by the checkpoint"):
    backbone_checkpoint.backbone_from_checkpoint(str(tmp_path / "ckpt"), stage_filters=(2, 3, 4, 6))


def test_restore_reads_the_backbone_of_a_training_checkpoint(tmp_path):
  from cvrl_tf import heads
  import keras
  model, head = tiny(), heads.ProjectionHead(hidden_sizes=(4,), output_size=2)
  model.build()
  head.build((None, model.output_channels))
  optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(model.trainable_variables + head.trainable_variables)
  checkpoint = tf.train.Checkpoint(backbone=model, head=head, optimizer=optimizer,
                                   step=tf.Variable(7))
  prefix = checkpoint.save(str(tmp_path / "train" / "ckpt"))
  clone = tiny()
  # The directory (via its `checkpoint` file) or the prefix; head and optimizer are ignored.
  for source in (str(tmp_path / "train"), prefix):
    assert backbone_checkpoint.restore_backbone_checkpoint(clone, source) == len(model.weights)
  for ours, theirs in zip(model.weights, clone.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  # Something without a backbone is refused by name.
  prefix = tf.train.Checkpoint(head=head).write(str(tmp_path / "head_only"))
  with pytest.raises(backbone_checkpoint.CheckpointMismatchError, match=r"no variables under 'backbone/'"):
    backbone_checkpoint.restore_backbone_checkpoint(clone, prefix)


def test_restore_refuses_a_different_backbone(tmp_path):
  model = tiny()
  backbone_checkpoint.save_backbone_checkpoint(model, str(tmp_path / "ckpt"))
  other = resnet3d.ResNet3D(depth=50, stem_filters=4, stage_filters=(2, 3, 4, 6))
  other.build()
  before = [v.numpy().copy() for v in other.weights]
  with pytest.raises(backbone_checkpoint.CheckpointMismatchError,
                     match=r"stage_filters=\[2, 3, 4, 5\] in .* but stage_filters=\[2, 3, 4, 6\]"):
    backbone_checkpoint.restore_backbone_checkpoint(other, str(tmp_path / "ckpt"))
  # Without the JSON, the per-key check still catches it, and nothing is assigned.
  os.remove(tmp_path / "ckpt" / "backbone_config.json")
  with pytest.raises(backbone_checkpoint.CheckpointMismatchError,
                     match=r"res5_block1/shortcut_conv/kernel.* \[1, 1, 1, 16, 20\]"):
    backbone_checkpoint.restore_backbone_checkpoint(other, str(tmp_path / "ckpt"))
  for variable, value in zip(other.weights, before):
    np.testing.assert_array_equal(variable.numpy(), value)


def test_restore_fails_loudly_on_nothing_or_the_wrong_kind(tmp_path):
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    backbone_checkpoint.restore_backbone_checkpoint(tiny(), str(tmp_path))
  with pytest.raises(FileNotFoundError, match="is not a cvrl_tf backbone checkpoint"):
    backbone_checkpoint.backbone_from_checkpoint(str(tmp_path))
  # A reference-release checkpoint is not ours: the first key is missing.
  with pytest.raises(backbone_checkpoint.CheckpointMismatchError, match="has no key 'backbone/stem_conv"):
    backbone_checkpoint.restore_backbone_checkpoint(
        resnet3d.ResNet3D(depth=50, stage_filters=(8, 16, 32, 64)), NARROW_PREFIX)


def test_save_refuses_to_overwrite(tmp_path):
  model = tiny()
  backbone_checkpoint.save_backbone_checkpoint(model, str(tmp_path / "ckpt"))
  with pytest.raises(FileExistsError, match="refusing to overwrite"):
    backbone_checkpoint.save_backbone_checkpoint(model, str(tmp_path / "ckpt"))
  backbone_checkpoint.save_backbone_checkpoint(model, str(tmp_path / "ckpt"), overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_save_and_restore_on_ram_leave_no_local_files(tmp_path, monkeypatch):
  # ram:// (TensorFlow's in-memory file system) behaves like gs:// and fails like it for open().
  monkeypatch.chdir(tmp_path)  # a relative local path would land here
  root = f"ram://backbone_test_{uuid.uuid4().hex[:8]}"
  model = tiny()
  model.build()
  prefix = backbone_checkpoint.save_backbone_checkpoint(model, f"{root}/ckpt", source="test")
  assert prefix == f"{root}/ckpt/backbone" and storage.listdir(root) == ["ckpt"]
  assert storage.listdir(f"{root}/ckpt") == [
      "backbone.data-00000-of-00001", "backbone.index", "backbone_config.json"]
  assert backbone_checkpoint.read_backbone_config(f"{root}/ckpt")["stage_filters"] == [2, 3, 4, 5]
  from_directory = backbone_checkpoint.backbone_from_checkpoint(f"{root}/ckpt")
  from_prefix = tiny()
  assert backbone_checkpoint.restore_backbone_checkpoint(from_prefix, prefix) == len(model.weights)
  for restored in (from_directory, from_prefix):
    for ours, theirs in zip(model.weights, restored.weights):
      np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  with pytest.raises(FileExistsError, match="refusing to overwrite"):
    backbone_checkpoint.save_backbone_checkpoint(model, f"{root}/ckpt")
  backbone_checkpoint.save_backbone_checkpoint(model, f"{root}/ckpt", overwrite=True)
  assert storage.listdir(root) == ["ckpt"]  # no temporary or old copy left
  storage.remove(root)
  assert os.listdir(tmp_path) == []


def test_the_import_command_writes_to_ram_and_leaves_no_local_folder(tmp_path):
  run = run_import(f"--model_garden_checkpoint={NARROW_PREFIX}",
                   "--output_dir=ram://imported/r3d50_narrow", cwd=str(tmp_path))
  assert run.returncode == 0, run.stderr[-3000:]
  # Written, then read back bit-exactly from ram:// by the command itself.
  assert "into ram://imported/r3d50_narrow/backbone" in run.stdout
  assert os.listdir(tmp_path) == []  # no ./ram: folder
