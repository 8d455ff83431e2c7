"""train.jit_compile: whole training steps through XLA on CPU, the suite's stand-in for what
TPUStrategy compiles (its own file, so that pytest-xdist runs it beside test_train.py).

Each test runs one loop call (one step, with the gradient norm) of a fresh trainer twice, plain and
compiled, from the same seed, and compares the returned values and the state after it."""

import uuid

import numpy as np
import pytest
import tensorflow as tf

from test_train import _jpeg
from test_train import experiment  # noqa: F401  (the fixture: tiny records and experiment)


def _one_step(trainer, state_of):
  """(the loop's values of one step, [the state after it as arrays])."""
  trainer.restore_initial()
  values = trainer._loop(iter(trainer.dataset(0)), tf.constant(1))[0].numpy()
  return values, [v.numpy() for v in state_of(trainer)]


def _assert_same_step(runs, state_rtol=1e-3, state_atol=1e-4):
  (plain, plain_state), (compiled, compiled_state) = runs[False], runs[True]
  # float32 summation order differs between XLA's and TensorFlow's kernels. The values, then
  # the gradient norm, which sums ~10^4 squared gradients (MoCo on grey, blurred views: measured
  # 2.2e-4 apart).
  np.testing.assert_allclose(compiled[:-1], plain[:-1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(compiled[-1], plain[-1], rtol=1e-3)
  assert len(compiled_state) == len(plain_state)
  for a, b in zip(compiled_state, plain_state):
    np.testing.assert_allclose(a, b, rtol=state_rtol, atol=state_atol)


def _pretraining_runs(experiment, overrides, state_of, check_clips=None):
  """{jit: _one_step(...)} for the plain and the compiled step; check_clips(clips) -> op: an
  assertion on the [ρB, T, S, S, 3] clips the network gets, added to the plain step."""
  import keras
  from cvrl_tf import config as cfg
  from cvrl_tf import pretrain
  from cvrl_tf import storage
  runs = {}
  for jit in (False, True):
    keras.utils.set_random_seed(1)
    config = cfg.load_experiment(experiment, [*overrides, f"train.jit_compile={jit}"])
    workdir = storage.join(f"ram://xla_{uuid.uuid4().hex[:8]}", str(jit))
    trainer = pretrain.Trainer(config, workdir, tf.distribute.get_strategy(), log=lambda _: None)
    if check_clips and not jit:
      clips_of = trainer._clips

      def checked_clips(features, clips_of=clips_of):
        clips = clips_of(features)
        with tf.control_dependencies([check_clips(clips)]):
          return tf.identity(clips)
      trainer._clips = checked_clips
    runs[jit] = _one_step(trainer, state_of)
  return runs


# Every in-step op of the recipe with no random parameter: grey, a blur of fixed σ on both views,
# view 2 solarized. XLA's stateless RNG differs from TensorFlow's kernels, so the random colour
# jitter (and a random σ) would draw other, equally distributed, values in the compiled step.
FIXED_AUGMENTATION = [
    "data.augmentation.color_jitter_probability=0", "data.augmentation.grayscale_probability=1",
    "data.augmentation.blur_probability_view_1=1", "data.augmentation.blur_probability_view_2=1",
    "data.augmentation.blur_sigma_range=1.0,1.0",
    "data.augmentation.solarize_probability_view_2=1"]


def test_the_compiled_pretraining_step_equals_the_plain_one(experiment):
  # The whole replica step: the uint8 views coloured, blurred and solarized in the step
  # (augment_in_step), forward, loss, backward, LARS, and MoCo's momentum network and queue
  # updated through merge_call. MoCo has every part SimCLR's step has, and state; the step
  # without augment_in_step is this graph with a part left out.
  # [loss, regularization, accuracy, entropy, spread, gradient norm].
  overrides = ["objective.name=moco", "objective.queue_size=64", "data.augment_in_step=true"]

  def grey(clips):  # the augmentation ran in the step: the network sees grey views
    return tf.debugging.assert_near(clips[..., 0], clips[..., 2], atol=1e-6,
                                    message="the views reaching the network are not grey")
  runs = _pretraining_runs(
      experiment, overrides + FIXED_AUGMENTATION,
      lambda trainer: (trainer.model.backbone.weights + trainer.model.head.weights
                       + [trainer.objective.queue]
                       + trainer.objective.encoder.model.backbone.weights), check_clips=grey)
  _assert_same_step(runs)


def test_the_compiled_microbatched_step_equals_the_plain_one(experiment):
  # The gradient cache in two chunks (SyncBN statistics per chunk, the moving statistics reset
  # between the passes), whole step. SimCLR: with MoCo and augment_in_step in the same compiled
  # graph XLA's compile alone took 3 minutes of the suite.
  runs = _pretraining_runs(experiment, ["train.microbatches=2"],
                           lambda trainer: trainer.model.backbone.weights
                           + trainer.model.head.weights)
  _assert_same_step(runs)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
  """8 labelled videos of 3 classes in one shard: the records' file pattern."""
  from cvrl_tf import schema
  root = tmp_path_factory.mktemp("labelled")
  rng = np.random.default_rng(0)
  with tf.io.TFRecordWriter(str(root / "train-00000-of-00001.tfrecord")) as writer:
    for i in range(8):
      base = rng.uniform(40, 200)
      frames = [_jpeg(base + 3 * t, rng) for t in range(12)]
      writer.write(schema.serialize_video(
          frames, video_id=f"v{i}", filename=f"v{i}.mp4", fps=25.0, height=40, width=48,
          start_us=0, end_us=480_000, label_index=i % 3, label_text=f"class {i % 3}"))
  return str(root / "train-*.tfrecord")


def _finetuning(pattern: str, microbatches: int, jit: bool):
  from cvrl_tf import config as cfg
  from cvrl_tf import input_pipeline
  return cfg.ClassificationExperimentConfig(
      task="finetune",
      train_data=input_pipeline.ClassificationTrainDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern=pattern, shuffle_buffer_size=8,
                                             cycle_length=1),
          num_frames=4, stride=2, crop_size=32, use_xla=False),
      eval_data=input_pipeline.EvalDataConfig(
          reader=input_pipeline.ReaderConfig(file_pattern=pattern)),
      model=cfg.ModelConfig(depth=10, stem_filters=4, stage_filters=(4, 8, 8, 8),
                            sync_batch_norm=True),
      # No dropout: its mask would come from XLA's RNG in the compiled step.
      classifier=cfg.ClassifierConfig(normalize=False, dropout_rate=0.0),
      optimizer=cfg.OptimizerConfig(name="sgd", base_learning_rate=0.1, reference_batch_size=8,
                                    warmup_epochs=0, weight_decay=1e-4),
      train=cfg.TrainConfig(global_batch_size=8, epochs=1, num_train_examples=8, steps_per_loop=1,
                            seed=1, deterministic=True, microbatches=microbatches,
                            jit_compile=jit),
      evaluation=cfg.EvaluationConfig(num_classes=3, allow_random_backbone=True))


def test_the_compiled_fine_tuning_step_equals_the_plain_one(labelled):
  # The classification step: backbone in training mode, SGD with its L2 term, and two
  # microbatches whose gradients are summed (microbatch.accumulate; each chunk's forward is the
  # step without microbatches).
  microbatches = 2
  import keras
  from cvrl_tf import classify
  from cvrl_tf import storage
  runs = {}
  for jit in (False, True):
    keras.utils.set_random_seed(1)
    trainer = classify.Trainer(_finetuning(labelled, microbatches, jit),
                               storage.join("ram://xla_finetune", f"{microbatches}_{jit}"),
                               tf.distribute.get_strategy(), log=lambda _: None)
    runs[jit] = _one_step(trainer, lambda t: t.backbone.weights + t.classifier.weights)
  _assert_same_step(runs)
  # [cross-entropy, regularization, top-1, gradient norm]: a real step of 3 classes.
  cross_entropy, regularization, _, norm = runs[False][0]
  assert 0.5 < cross_entropy < 3.0 and regularization > 0 and norm > 0
