"""Export end to end: train tiny runs, export them, load the SavedModels without cvrl_tf.

One module-scoped fixture runs the subprocesses in three waves (the two trainings, the export
command, then the fresh-process checks beside extract_features); the tests
compare what the fresh process got with the in-process Keras models within 1e-5.
"""

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import deterministic_run_env
from cvrl_tf import backbone_checkpoint
from cvrl_tf import config as cfg
from cvrl_tf import evaluate
from cvrl_tf import export
from cvrl_tf import extract_features
from cvrl_tf import heads
from cvrl_tf import input_pipeline
from cvrl_tf import networks
from cvrl_tf import pretrain
from cvrl_tf import schema
from cvrl_tf import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5

MODEL = ("cfg.ModelConfig(depth=10, stem_filters=4, stage_filters=(4, 8, 8, 8), "
         "sync_batch_norm=True, head_hidden_sizes=(16,), head_output_size=8)")

PRETRAIN = f'''
"""A tiny pretraining experiment."""
from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline


def get_config():
  return cfg.ExperimentConfig(
      data=input_pipeline.PretrainDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern={{train!r}}, shuffle_buffer_size=16,
                                             cycle_length=2),
          num_frames=4, stride=2, crop_size=32, use_xla=False),
      model={MODEL},
      optimizer=cfg.OptimizerConfig(name="lars", base_learning_rate=0.32 * 32, warmup_epochs=1),
      train=cfg.TrainConfig(global_batch_size=8, epochs=1, num_train_examples=16,
                            steps_per_loop=2, log_every_steps=2, checkpoint_every_steps=2,
                            seed=1, deterministic=True))
'''

# Fine-tuning with dropout: the export must switch it off in inference and on in training.
FINETUNE = f'''
"""A tiny fine-tuning experiment (from a random backbone)."""
from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline


def get_config():
  return cfg.ClassificationExperimentConfig(
      task="finetune",
      train_data=input_pipeline.ClassificationTrainDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern={{train!r}}, shuffle_buffer_size=16,
                                             cycle_length=2),
          num_frames=4, stride=2, crop_size=32, use_xla=False),
      eval_data=input_pipeline.EvalDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern={{val!r}}, per_replica_batch_size=2),
          num_frames=4, stride=2, num_clips=2, num_crops=3, short_side=32, crop_size=32),
      model={MODEL},
      classifier=cfg.ClassifierConfig(normalize=False, dropout_rate=0.5),
      optimizer=cfg.OptimizerConfig(name="sgd", base_learning_rate=0.01, reference_batch_size=8,
                                    warmup_epochs=0, weight_decay=1e-4),
      train=cfg.TrainConfig(global_batch_size=8, epochs=1, num_train_examples=16,
                            steps_per_loop=2, log_every_steps=2, checkpoint_every_steps=2,
                            seed=1, deterministic=True),
      evaluation=cfg.EvaluationConfig(num_classes=3, allow_random_backbone=True))
'''

# Runs in a fresh interpreter that cannot import cvrl_tf: everything it calls is in the export.
FRESH = r'''
import json
import sys

sys.modules["cvrl_tf"] = None  # `import cvrl_tf` now raises ImportError
import keras
import numpy as np
import tensorflow as tf

inputs = dict(np.load(sys.argv[1]))
exports, records_path, output = json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
records = next(iter(tf.data.TFRecordDataset(records_path).batch(100)))
arrays, facts = {}, {}


def error_of(call):
  try:
    call()
  except Exception as e:  # the message is what the test checks
    return f"{type(e).__name__}: {e}"
  return "no error"


for name, path in exports.items():
  loaded = tf.saved_model.load(path)
  signatures = loaded.signatures
  def keep(kind, outputs):
    for key, value in outputs.items():
      value = value.numpy()
      if value.dtype == object:  # tf.string: bytes, stored as str (np.load refuses objects)
        value = np.array([v.decode() for v in value])
      arrays[f"{name}/{kind}/{key}"] = value
  keep("float", signatures["serving_default"](video=tf.constant(inputs["video"])))
  keep("float_other_shape", signatures["serving_default"](video=tf.constant(inputs["video_other"])))
  keep("uint8", signatures["serve_uint8"](video=tf.constant(inputs["video_uint8"])))
  keep("examples", signatures["serve_examples"](examples=records))
  keep("call", loaded(tf.constant(inputs["video"])))
  serve = signatures["serving_default"]
  # Training mode last: it moves the BN statistics. Both ways in normalise by batch statistics.
  if name == "pretrain":
    keep("call_training", loaded(tf.constant(inputs["video"]), training=True))
    keep("training_endpoint", loaded.call_training(tf.constant(inputs["video"])))
  facts[name] = {
      "signatures": sorted(signatures),
      "variables": len(loaded.variables),
      "trainable_variables": len(loaded.trainable_variables),
      "all_marked_trainable": all(v.trainable for v in loaded.trainable_variables),
      "regularization_losses": len(loaded.regularization_losses),
      "assets": {key: getattr(loaded, key).asset_path.numpy().decode()
                 for key in ("config_file", "info_file", "label_map_file") if hasattr(loaded, key)},
      # What saved_model_cli, TF Serving's metadata and Keras read: {input: [shape, dtype]}.
      "inputs": {signature: {key: [spec.shape.as_list(), spec.dtype.name] for key, spec in
                             function.structured_input_signature[1].items()}
                 for signature, function in signatures.items()},
      "errors": {
          "dtype": error_of(lambda: serve(video=tf.constant(inputs["video_uint8"]))),
          "rank": error_of(lambda: serve(video=tf.constant(inputs["video"][0]))),
          "channels": error_of(lambda: serve(video=tf.constant(inputs["video"][..., :2]))),
          "range": error_of(lambda: serve(video=tf.constant(inputs["video"] * 255))),
          "uint8_rank": error_of(lambda: signatures["serve_uint8"](
              video=tf.constant(inputs["video_uint8"][0]))),
          "examples_rank": error_of(lambda: signatures["serve_examples"](examples=records[0])),
          # The restored functions, as TFSMLayer and Reusable SavedModel wrappers call them.
          "function_rank": error_of(lambda: loaded.serve(tf.constant(inputs["video"][0]))),
          "call_rank": error_of(lambda: loaded(tf.constant(inputs["video"][0]))),
      },
  }

# Transfer learning: the pretraining export as a layer of a new model, one SGD step.
layer = keras.layers.TFSMLayer(exports["pretrain"], call_endpoint="serving_default",
                               call_training_endpoint="call_training", trainable=True)
video = keras.Input(inputs["video"].shape[1:])
logits = keras.layers.Dense(2, name="new_head")(layer(video)["features"])
model = keras.Model(video, logits)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
x, y = tf.constant(inputs["video"]), tf.constant(inputs["labels"])
before = [w.numpy() for w in model.weights]
with tf.GradientTape() as tape:  # the gradient train_on_batch will take (BN on batch statistics)
  value = loss(y, model(x, training=True))
gradients = {id(w): g for w, g in zip(model.trainable_weights,
                                      tape.gradient(value, model.trainable_weights))}
model.train_on_batch(x, y)
for key, weight in enumerate(model.weights):
  arrays[f"tfsm/before/{key}"] = before[key]
  arrays[f"tfsm/after/{key}"] = weight.numpy()
  if id(weight) in gradients:
    arrays[f"tfsm/gradient/{key}"] = gradients[id(weight)].numpy()
facts["tfsm"] = {"trainable": [w.trainable for w in model.weights],
                 "layer_trainable_weights": len(layer.trainable_weights),
                 "layer_weights": len(layer.weights)}
facts["imported_cvrl_tf"] = sys.modules.get("cvrl_tf") is not None
np.savez(output + ".npz", **arrays)
with open(output + ".json", "w") as f:
  json.dump(facts, f)
'''


def _jpeg(value, rng, height, width):
  frame = np.clip(value + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
  return tf.io.encode_jpeg(frame, quality=90).numpy()


def _video(rng, index, label, height=40, width=48, frames=20):
  base = rng.uniform(40, 200)
  return schema.serialize_video(
      [_jpeg(base + 3 * t, rng, height, width) for t in range(frames)], video_id=f"v{index}",
      filename=f"v{index}.mp4", fps=25.0, height=height, width=width, start_us=0,
      end_us=frames * 40_000, label_index=label, label_text=f"class{label}")


def _write_data(root):
  """Two labelled training shards, a validation shard of 3 unlike videos, label_map.txt."""
  rng = np.random.default_rng(0)
  for shard in range(2):
    with tf.io.TFRecordWriter(os.path.join(root, f"train-{shard:05d}-of-00002.tfrecord")) as w:
      for i in range(8):
        w.write(_video(rng, 8 * shard + i, (8 * shard + i) % 3))
  with tf.io.TFRecordWriter(os.path.join(root, "val-00000-of-00001.tfrecord")) as w:
    w.write(_video(rng, 100, 0))
    w.write(_video(rng, 101, 1, height=48, width=40, frames=9))     # portrait, short
    w.write(_video(rng, 102, 2, height=36, width=64, frames=30))    # wide
  with open(os.path.join(root, schema.LABEL_MAP_FILE), "w") as f:
    f.write("class0\nclass1\nclass2\n")


def _start(*args):
  # The trainings are deterministic (see deterministic_run_env); the rest run as users run them.
  env = (deterministic_run_env() if args[:2] == ("-m", "cvrl_tf.train")
         else dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process, expect=0):
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == expect, f"{process.args}\n{stdout}\n{stderr}"
  return types.SimpleNamespace(stdout=stdout, stderr=stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("export"))
  _write_data(root)
  patterns = dict(train=os.path.join(root, "train-*.tfrecord"),
                  val=os.path.join(root, "val-*.tfrecord"))
  paths = {name: os.path.join(root, name) for name in
           ("pretrain", "finetune", "pretrain_export", "finetune_export", "features.npz",
            "fresh", "inputs.npz")}
  for name, text in (("pretrain", PRETRAIN), ("finetune", FINETUNE)):
    with open(paths[name] + ".py", "w") as f:
      f.write(text.format(**patterns))
  # 1) Both trainings at once (the fine-tuning starts from a random backbone).
  trainings = [_start("-m", "cvrl_tf.train", f"--experiment={paths[name]}.py",
                      f"--workdir={paths[name]}") for name in ("pretrain", "finetune")]
  for process in trainings:
    _finish(process)
  # 2) The command on the pretraining run; the library call on the fine-tuning run meanwhile.
  command = _start("-m", "cvrl_tf.export", f"--workdir={paths['pretrain']}",
                   f"--export_dir={paths['pretrain_export']}", "--num_clips=2")
  finetune_config = cfg.read_workdir_config(paths["finetune"])
  logged = []
  export.export(finetune_config, os.path.join(paths["finetune"], "checkpoints"),
                paths["finetune_export"], log=logged.append)
  exported = _finish(command)
  # 3) Fresh-process checks and feature extraction, at once.
  rng = np.random.default_rng(1)
  inputs = {"video": rng.random((2, 4, 32, 32, 3), dtype=np.float32),
            "video_other": rng.random((1, 6, 40, 36, 3), dtype=np.float32),
            "video_uint8": rng.integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8),
            "labels": np.array([0, 1], np.int32)}
  np.savez(paths["inputs.npz"], **inputs)
  exports = {"pretrain": paths["pretrain_export"], "finetune": paths["finetune_export"]}
  fresh = _start("-c", FRESH, paths["inputs.npz"], json.dumps(exports),
                 os.path.join(root, "val-00000-of-00001.tfrecord"), paths["fresh"])
  extract = _start("-m", "cvrl_tf.extract_features", f"--saved_model={paths['finetune_export']}",
                   f"--tfrecords={patterns['val']}", f"--output={paths['features.npz']}",
                   "--batch_size=2")
  _finish(fresh)
  extracted = _finish(extract)
  with open(paths["fresh"] + ".json") as f:
    facts = json.load(f)
  return types.SimpleNamespace(
      root=root, paths=paths, patterns=patterns, inputs=inputs, facts=facts,
      arrays=dict(np.load(paths["fresh"] + ".npz")), exported=exported, logged=logged,
      extracted=extracted)


def _reference(workdir, sync_batch_norm=None):
  """The run's Keras layers with the latest checkpoint, built the way training builds them."""
  config = cfg.read_workdir_config(workdir)
  if sync_batch_norm is not None:
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, sync_batch_norm=sync_batch_norm))
  prefix = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  if isinstance(config, cfg.ClassificationExperimentConfig):
    backbone = networks.build_backbone(config.model, 4, 32)
    top = heads.LinearClassifier(config.evaluation.num_classes,
                                 normalize=config.classifier.normalize,
                                 dropout_rate=config.classifier.dropout_rate)
    top.build((None, backbone.output_channels))
    objects = {"backbone": backbone, "classifier": top}
  else:
    model = networks.build_model(config.model, 4, 32)
    backbone, top = model.backbone, model.head
    objects = {"backbone": backbone, "head": top}
  tf.train.Checkpoint(**objects).restore(prefix).expect_partial().assert_existing_objects_matched()

  def outputs(video):  # what the export promises for serving_default
    pooled = backbone(video, training=False)["pooled"]
    if "head" in objects:
      return {"features": pooled, "projection": top(pooled, training=False)}
    logits = top(pooled, training=False)
    return {"features": pooled, "logits": logits, "probabilities": tf.nn.softmax(logits)}

  return types.SimpleNamespace(config=config, prefix=prefix, objects=objects, outputs=outputs)


@pytest.fixture(scope="module")
def references(runs):
  return {name: _reference(runs.paths[name]) for name in ("pretrain", "finetune")}


def _assert_close(got, expected, what):
  np.testing.assert_allclose(got, np.asarray(expected), rtol=0, atol=TOLERANCE, err_msg=what)


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_video_signatures_equal_the_keras_model(runs, references, name):
  assert runs.facts["imported_cvrl_tf"] is False
  assert runs.facts[name]["signatures"] == ["serve_examples", "serve_uint8", "serving_default"]
  reference = references[name]
  inputs = runs.inputs
  cases = {"float": inputs["video"], "float_other_shape": inputs["video_other"],
           "call": inputs["video"],
           "uint8": tf.cast(inputs["video_uint8"], tf.float32) * (1.0 / 255.0)}
  expected_keys = ({"features", "projection"} if name == "pretrain"
                   else {"features", "logits", "probabilities"})
  for kind, video in cases.items():
    expected = reference.outputs(tf.constant(video))
    got = {key.split("/")[2]: value for key, value in runs.arrays.items()
           if key.startswith(f"{name}/{kind}/")}
    assert set(got) == expected_keys, kind
    for key in expected_keys:
      _assert_close(got[key], expected[key], f"{name} {kind} {key}")
  # Not trivially equal: the two frame sizes give different features.
  assert runs.arrays[f"{name}/float/features"].shape == (2, 8)
  assert runs.arrays[f"{name}/float_other_shape/features"].shape == (1, 8)


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_examples_signature_equals_the_multi_view_evaluation(runs, references, name):
  reference = references[name]
  if name == "pretrain":
    # The documented defaults of a pretraining run: data's clip, short side = crop = 32,
    # 3 crops; --num_clips=2 was passed.
    views = input_pipeline.EvalDataConfig(num_frames=4, stride=2, num_clips=2, num_crops=3,
                                          short_side=32, crop_size=32)
  else:
    views = reference.config.eval_data
  views = dataclasses.replace(views, reader=input_pipeline.ReaderConfig(
      file_pattern=runs.patterns["val"], per_replica_batch_size=2))

  def model_outputs(clips):  # as classify.Trainer.model_outputs: logits -> averaged softmax
    outputs = reference.outputs(clips)
    outputs.pop("probabilities", None)
    return outputs

  expected = evaluate.predict(model_outputs, input_pipeline.eval_dataset(views))
  got = {key.split("/")[2]: value for key, value in runs.arrays.items()
         if key.startswith(f"{name}/examples/")}
  assert list(got["video_id"]) == list(expected["video_id"]) == ["v100", "v101", "v102"]
  np.testing.assert_array_equal(got["label"], [0, 1, 2])
  np.testing.assert_array_equal(got["label"], expected["label"])
  outputs = ["features", "projection"] if name == "pretrain" else ["features", "probabilities"]
  assert sorted(got) == sorted(outputs + ["label", "video_id"])
  for key in outputs:
    _assert_close(got[key], expected[key], f"{name} examples {key}")
  if name == "finetune":
    np.testing.assert_allclose(got["probabilities"].sum(axis=1), 1.0, atol=1e-6)
  # Different videos, different features: the signature did not average across videos.
  assert np.abs(got["features"][0] - got["features"][1]).max() > 1e-4


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_variables_stay_trainable_and_assets_are_there(runs, references, name):
  facts = runs.facts[name]
  objects = references[name].objects.values()
  assert facts["trainable_variables"] == sum(len(o.trainable_variables) for o in objects)
  assert facts["variables"] == sum(len(o.variables) for o in objects)
  assert facts["all_marked_trainable"] and facts["regularization_losses"] == 0
  export_dir = runs.paths[f"{name}_export"]
  with open(os.path.join(export_dir, "assets", export.CONFIG_ASSET)) as f:
    assert json.load(f) == json.loads(cfg.to_json(references[name].config))
  with open(os.path.join(export_dir, "assets", export.INFO_ASSET)) as f:
    info = json.load(f)
  assert info["step"] == 2 and info["checkpoint"].endswith("ckpt-2")
  assert info["feature_size"] == 8
  views = info["examples_views"]
  assert (views["num_clips"], views["num_crops"], views["num_frames"], views["crop_size"]) == \
      (2, 3, 4, 32)
  expected_assets = {"config_file", "info_file"}
  if name == "finetune":
    expected_assets.add("label_map_file")
    assert schema.read_label_map(os.path.join(export_dir, "assets", "label_map.txt")) == \
        ["class0", "class1", "class2"]
    assert info["num_classes"] == 3 and info["label_map"] == "label_map.txt"
  else:
    assert info["projection_size"] == 8 and info["label_map"] is None
  assert set(facts["assets"]) == expected_assets
  # No temporary directories left beside the exports.
  assert not [n for n in os.listdir(runs.root) if n.startswith(".")]


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_signatures_declare_their_shapes(runs, name):
  video = [[None, None, None, None, 3]]
  assert runs.facts[name]["inputs"] == {"serving_default": {"video": video + ["float32"]},
                                        "serve_uint8": {"video": video + ["uint8"]},
                                        "serve_examples": {"examples": [[None], "string"]}}


def test_wrong_dtype_rank_channels_or_range_give_clear_errors(runs):
  errors = runs.facts["pretrain"]["errors"]
  assert "expected to be a float tensor but is a uint8 tensor" in errors["dtype"]
  # A rank-4 video passes the declared [None, None, None, None, 3] (TensorFlow checks a
  # signature's dtype only) and reaches our check.
  for kind in ("rank", "channels"):
    assert ("serving_default: `video` must be float32 [batch, time, height, width, 3]"
            in errors[kind]), errors[kind]
  assert "got shape] [4 32 32 3]" in errors["rank"]
  assert "got shape] [2 4 32 32 2]" in errors["channels"]
  # A restored function matches the call against the declared shape first: TensorFlow's
  # message, as the module docstring quotes it.
  assert ("Can not cast TensorSpec(shape=(4, 32, 32, 3), dtype=tf.float32, name='video') to "
          "TensorSpec(shape=(None, None, None, None, 3)") in errors["function_rank"]
  assert "Could not find matching concrete function" in errors["call_rank"]
  assert "TensorSpec(shape=(None, None, None, None, 3)" in errors["call_rank"]
  assert "serve_uint8: `video` must be uint8 [batch, time, height, width, 3]" in \
      errors["uint8_rank"]
  assert "values must lie in [0, 1]" in errors["range"] and "serve_uint8" in errors["range"]
  assert "serve_examples: `examples` must be a [batch] string tensor" in errors["examples_rank"]


def test_training_mode_uses_batch_statistics(runs):
  # A reference of its own (training mode moves its BN statistics), with the export's plain BN:
  # TF's fused kernel and Keras's synchronized moments differ in rounding, which dividing by the
  # standard deviation of 2 clips' activations magnifies beyond 1e-5.
  backbone, head = _reference(runs.paths["pretrain"], sync_batch_norm=False).objects.values()
  video = tf.constant(runs.inputs["video"])
  pooled = backbone(video, training=True)["pooled"]   # in-process: batch statistics as well
  expected = {"features": pooled, "projection": head(pooled, training=True)}
  for kind in ("call_training", "training_endpoint"):
    for key, value in expected.items():
      _assert_close(runs.arrays[f"pretrain/{kind}/{key}"], value, f"{kind} {key}")
  inference = runs.arrays["pretrain/float/features"]
  assert np.abs(runs.arrays["pretrain/call_training/features"] - inference).max() > 1e-3


def test_tfsm_layer_in_a_new_model_trains_a_step(runs, references):
  facts, arrays = runs.facts["tfsm"], runs.arrays
  objects = references["pretrain"].objects.values()
  trainable = sum(len(o.trainable_variables) for o in objects)
  assert facts["layer_trainable_weights"] == trainable
  assert facts["layer_weights"] == sum(len(o.variables) for o in objects)
  assert sum(facts["trainable"]) == trainable + 2        # + the new head's kernel and bias
  updated = 0
  for index, is_trainable in enumerate(facts["trainable"]):
    before, after = arrays[f"tfsm/before/{index}"], arrays[f"tfsm/after/{index}"]
    if is_trainable:  # one plain SGD step (learning rate 0.1) on the exported weights too
      _assert_close(after, before - 0.1 * arrays[f"tfsm/gradient/{index}"], f"weight {index}")
      updated += bool(np.abs(arrays[f"tfsm/gradient/{index}"]).max() > 0)
    else:  # BN moving statistics: the training endpoint normalised with batch statistics
      assert np.abs(after - before).max() > 0, f"moving statistic {index} did not move"
  assert updated > trainable // 2


def test_extract_features_writes_every_video(runs):
  assert "wrote 3 videos" in runs.extracted.stdout
  with np.load(runs.paths["features.npz"]) as data:
    saved = dict(data)
  assert sorted(saved) == ["features", "label", "label_names", "probabilities", "video_id"]
  assert list(saved["video_id"]) == ["v100", "v101", "v102"]
  np.testing.assert_array_equal(saved["label"], [0, 1, 2])
  assert list(saved["label_names"]) == ["class0", "class1", "class2"]
  # Batches of 2 videos give what one call on all 3 gave in the fresh process.
  for key in ("features", "probabilities"):
    _assert_close(saved[key], runs.arrays[f"finetune/examples/{key}"], key)


def test_an_existing_export_is_not_replaced_without_overwrite(runs, tmp_path):
  assert "exported to" in runs.exported.stdout
  export_dir = runs.paths["pretrain_export"]
  before = sorted(os.listdir(export_dir))
  config = cfg.read_workdir_config(runs.paths["pretrain"])
  with pytest.raises(export.ExportError, match="already exists and is not empty.*--overwrite"):
    export.export(config, os.path.join(runs.paths["pretrain"], "checkpoints"), export_dir)
  assert sorted(os.listdir(export_dir)) == before
  # The replacement itself, with a tiny object to save.
  target = tmp_path / "export"
  target.mkdir()
  (target / "mine.txt").write_text("keep")

  class Tiny(tf.Module):
    def __init__(self, fail=False):
      self.fail = fail
      self.v = tf.Variable(1.0)

    def signatures(self):
      if self.fail:
        raise RuntimeError("tracing failed")
      return {}

  with pytest.raises(export.ExportError, match="already exists"):
    export.write_saved_model(Tiny(), str(target))
  with pytest.raises(RuntimeError, match="tracing failed"):
    export.write_saved_model(Tiny(fail=True), str(target), overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["export"] and (target / "mine.txt").exists()
  export.write_saved_model(Tiny(), str(target), overwrite=True)
  assert tf.saved_model.contains_saved_model(str(target))
  assert not (target / "mine.txt").exists() and sorted(os.listdir(tmp_path)) == ["export"]


def test_refuses_runs_it_cannot_export(runs, tmp_path):
  with pytest.raises(export.ExportError, match="kNN evaluation: it trains nothing"):
    export.export(cfg.KnnExperimentConfig(name="knn"), runs.paths["pretrain"], str(tmp_path / "e"))
  with pytest.raises(FileNotFoundError, match="is not a directory: expected the --workdir"):
    export.resolve_run(workdir=str(tmp_path / "missing"))
  with pytest.raises(export.ExportError, match="needs --checkpoint"):
    export.resolve_run(experiment=runs.paths["pretrain"] + ".py")
  with pytest.raises(export.ExportError, match="either --workdir"):
    export.resolve_run(workdir=runs.paths["pretrain"], experiment="demo")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*empty"):
    export.find_checkpoint(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match=r"pass the prefix, without \.index"):
    export.find_checkpoint(os.path.join(runs.paths["pretrain"], "checkpoints", "ckpt-2.index"))
  # A pretraining checkpoint has no classifier: the fine-tuning config cannot take it.
  config = cfg.read_workdir_config(runs.paths["finetune"])
  prefix = os.path.join(runs.paths["pretrain"], "checkpoints", "ckpt-2")
  with pytest.raises(backbone_checkpoint.CheckpointMismatchError, match="does not hold every variable of "
                     "the classifier"):
    export.restore_modules(export.build_modules(config), prefix)


def test_a_mixed_precision_run_exports_in_float32(runs):
  config = cfg.read_workdir_config(runs.paths["finetune"])
  config = dataclasses.replace(config, train=dataclasses.replace(
      config.train, mixed_precision="mixed_bfloat16"))
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("mixed_bfloat16")   # as the training process had it
  try:
    modules = export.build_modules(config)
  finally:
    keras.config.set_dtype_policy(previous)
  assert {layer.compute_dtype for layer in modules.values()} == {"float32"}
  assert not modules["backbone"].sync_batch_norm and config.model.sync_batch_norm


def test_a_moved_workdir_still_finds_its_latest_checkpoint(runs, tmp_path):
  moved = tmp_path / "moved"
  shutil.copytree(os.path.join(runs.paths["pretrain"], "checkpoints"), moved)
  # The state file still names the old absolute paths.
  assert export.find_checkpoint(str(moved)) == str(moved / "ckpt-2")
  config, prefix = export.resolve_run(experiment=runs.paths["pretrain"] + ".py",
                                      checkpoint=str(moved))
  assert prefix == str(moved / "ckpt-2") and config.data.crop_size == 32


# ---- on a non-local file system (ram://, TensorFlow's in-memory one, behaves like gs://)

TINY_MODEL = cfg.ModelConfig(depth=18, stem_filters=4, stage_filters=(4, 8, 8, 8),
                             head_hidden_sizes=(16,), head_output_size=8)

TINY_PRETRAIN = '''
"""A tiny pretraining experiment (its data are never read by export)."""
from cvrl_tf import config as cfg
from cvrl_tf import input_pipeline


def get_config():
  return cfg.ExperimentConfig(
      data=input_pipeline.PretrainDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern="/nowhere/train-*"),
          num_frames=4, stride=2, crop_size=32),
      model=cfg.ModelConfig(depth=18, stem_filters=4, stage_filters=(4, 8, 8, 8),
                            head_hidden_sizes=(16,), head_output_size=8),
      train=cfg.TrainConfig(global_batch_size=2, epochs=1, num_train_examples=2))
'''


def _tiny_finetune(data_dir):
  reader = input_pipeline.ReaderConfig(file_pattern=f"{data_dir}/val-*.tfrecord",
                                       per_replica_batch_size=2)
  return cfg.ClassificationExperimentConfig(
      name="tiny_finetune", task="finetune",
      train_data=input_pipeline.ClassificationTrainDataConfig(
          reader=reader, num_frames=4, stride=2, crop_size=32),
      eval_data=input_pipeline.EvalDataConfig(reader=reader, num_frames=4, stride=2, num_clips=1,
                                              num_crops=1, short_side=32, crop_size=32),
      model=TINY_MODEL, classifier=cfg.ClassifierConfig(normalize=False),
      train=cfg.TrainConfig(global_batch_size=2, epochs=1, num_train_examples=2),
      evaluation=cfg.EvaluationConfig(num_classes=3, allow_random_backbone=True))


def _save_training_checkpoint(modules, directory, step):
  """What a training run leaves: DIR/ckpt-N and the `checkpoint` state file naming it."""
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(**modules), directory, max_to_keep=2)
  return manager.save(checkpoint_number=step)


def test_export_features_and_init_checkpoint_on_ram_leave_no_local_files(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a relative local path would land here
  root = f"ram://export_test_{os.getpid()}_{np.random.default_rng().integers(1 << 30)}"
  data = f"{root}/data"
  rng = np.random.default_rng(2)
  storage.makedirs(data)
  with tf.io.TFRecordWriter(f"{data}/val-00000-of-00001.tfrecord") as writer:
    for index in range(3):
      writer.write(_video(rng, 200 + index, index, frames=8))
  storage.atomic_write_text(f"{data}/{schema.LABEL_MAP_FILE}", "class0\nclass1\nclass2\n")
  config = _tiny_finetune(data)
  modules = export.build_modules(config)
  _save_training_checkpoint(modules, f"{root}/run/checkpoints", step=3)

  # 1) Export from the checkpoint folder; the label map is found beside the shards.
  path = export.export(config, f"{root}/run/checkpoints", f"{root}/export", log=lambda _: None)
  assert path == f"{root}/export" and tf.saved_model.contains_saved_model(path)
  assert storage.listdir(f"{path}/assets") == ["config.json", "export_info.json", "label_map.txt"]
  info = storage.read_json(f"{path}/assets/export_info.json")
  assert info["checkpoint"] == f"{root}/run/checkpoints/ckpt-3" and info["step"] == 3
  assert [n for n in storage.listdir(root) if n.startswith(".")] == []  # no temporary left

  # 2) Loaded from ram://, it computes what the Keras layers compute.
  loaded = tf.saved_model.load(path)
  video = tf.constant(rng.random((2, 4, 32, 32, 3), dtype=np.float32))
  got = loaded.signatures["serving_default"](video=video)
  pooled = modules["backbone"](video, training=False)["pooled"]
  _assert_close(got["features"], pooled, "features")
  _assert_close(got["logits"], modules["classifier"](pooled, training=False), "logits")
  spec = loaded.signatures["serving_default"].structured_input_signature[1]["video"]
  assert spec.shape.as_list() == [None, None, None, None, 3] and spec.dtype == tf.float32

  # 3) Features of every record to a ram:// .npz, label names from the export's asset.
  arrays = extract_features.extract_features(path, f"{data}/val-*.tfrecord", batch_size=2)
  extract_features.write_npz(f"{root}/features.npz", arrays)
  with np.load(io.BytesIO(storage.read_bytes(f"{root}/features.npz"))) as saved:
    assert list(saved["video_id"]) == ["v200", "v201", "v202"]
    assert list(saved["label_names"]) == ["class0", "class1", "class2"]
    np.testing.assert_array_equal(saved["label"], [0, 1, 2])
    assert saved["features"].shape == (3, 8)

  # 4) --init_checkpoint=ram://.../checkpoints, the folder form; also once the folder moved
  # (its state file still names the old paths).
  for folder in (f"{root}/run/checkpoints", f"{root}/moved"):
    if folder.endswith("moved"):
      for name in storage.listdir(f"{root}/run/checkpoints"):
        storage.copy(f"{root}/run/checkpoints/{name}", f"{folder}/{name}")
      storage.remove(f"{root}/run")
      assert backbone_checkpoint.latest_checkpoint(folder) == f"{folder}/ckpt-3"
    backbone = networks.build_backbone(config.model, 4, 32)
    message = pretrain.restore_initial_backbone(backbone, folder)
    assert message.startswith("restored ") and folder in message
    for ours, theirs in zip(modules["backbone"].weights, backbone.weights):
      np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  storage.remove(root)
  assert os.listdir(tmp_path) == []


def test_the_export_command_writes_to_ram_and_leaves_no_local_folder(tmp_path):
  experiment = tmp_path / "tiny_pretrain.py"
  experiment.write_text(TINY_PRETRAIN)
  config = cfg.load_experiment(str(experiment))
  _save_training_checkpoint(export.build_modules(config), str(tmp_path / "checkpoints"), step=1)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  run = subprocess.run(
      [sys.executable, "-m", "cvrl_tf.export", f"--experiment={experiment}",
       f"--checkpoint={tmp_path / 'checkpoints'}", "--export_dir=ram://cli_export/tiny",
       "--num_clips=1", "--num_crops=1"],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "exported to ram://cli_export/tiny" in run.stdout
  assert os.listdir(cwd) == []  # no ./ram: folder
