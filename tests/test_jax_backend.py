"""The backbone and heads under Keras's JAX backend: the same network, the same weights, the same
outputs as under TensorFlow, in a process that cannot import TensorFlow.

Run as a script (`python tests/test_jax_backend.py WORKDIR DEPTH...`), this file is the JAX side:
the test starts it with KERAS_BACKEND=jax.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np

if __name__ == "__main__":
  # As on a machine that has JAX and no TensorFlow: any `import tensorflow` raises ImportError.
  sys.modules["tensorflow"] = None

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position

from cvrl_tf import convolutions  # pylint: disable=g-import-not-at-top,wrong-import-position
from cvrl_tf import heads  # pylint: disable=g-import-not-at-top,wrong-import-position
from cvrl_tf import resnet3d  # pylint: disable=g-import-not-at-top,wrong-import-position

DEPTHS = (18, 50)
CLIP_SHAPE = (8, 4, 32, 32, 3)  # [B, T, H, W, 3]: res5 is [8, 2, 1, 1, C]


class Network(keras.Model):
  """R3D at 1/8 width, the projection head (16 -> 8) and a linear classifier (5 classes): one
  Keras model, so that one weights file holds all three."""

  def __init__(self, depth: int, **kwargs):
    super().__init__(**kwargs)
    self.backbone = resnet3d.ResNet3D(depth=depth, width_multiplier=0.125)
    self.head = heads.ProjectionHead(hidden_sizes=(16,), output_size=8)
    self.classifier = heads.LinearClassifier(num_classes=5)

  def build(self, input_shape):
    self.backbone.build(input_shape)
    self.head.build((None, self.backbone.output_channels))
    self.classifier.build((None, self.backbone.output_channels))

  def call(self, clips, training=False):  # -> every endpoint, [B, 8] projection, [B, 5] logits
    outputs = dict(self.backbone(clips, training=training))
    outputs["projection"] = self.head(outputs["pooled"], training=training)
    outputs["logits"] = self.classifier(outputs["pooled"], training=training)
    return outputs


def run(network: Network, clips: np.ndarray) -> dict:
  """{name: array} of the outputs in inference mode, then in training mode (batch statistics,
  which also updates the moving ones), then every non-trainable variable after that update."""
  result = {}
  for mode, training in (("inference", False), ("training", True)):
    for name, value in network(clips, training=training).items():
      result[f"{mode}/{name}"] = keras.ops.convert_to_numpy(value)
  for variable in network.non_trainable_variables:
    result[f"variable/{variable.path}"] = keras.ops.convert_to_numpy(variable)
  return result


def jax_side(workdir: str, depths) -> None:
  """Builds each Network under JAX, loads the TensorFlow side's weights, writes its outputs."""
  assert keras.backend.backend() == "jax", keras.backend.backend()
  for depth in depths:
    network = Network(depth, name=f"r3d{depth}")
    # Keras draws no initial values for variables built in this scope (load_weights assigns
    # every one): XLA on CPU compiles JAX's sampler once per kernel shape, 1–6 s each here.
    with keras.StatelessScope(initialize_variables=False):
      network.build(CLIP_SHAPE)
    network.load_weights(os.path.join(workdir, f"r3d{depth}.weights.h5"))
    clips = np.load(os.path.join(workdir, "clips.npy"))
    np.savez(os.path.join(workdir, f"r3d{depth}_jax.npz"), **run(network, clips))
  # "auto" is keras.ops.conv off TensorFlow, on any device, and asks TensorFlow nothing.
  conv = network.backbone.stem_conv
  assert conv.implementation(CLIP_SHAPE) == "conv3d", conv.implementation(CLIP_SHAPE)
  assert convolutions.device_type() == "CPU"
  assert sys.modules["tensorflow"] is None  # nothing imported it (an import would have failed)
  print("ok")


def test_jax_backend_equals_tensorflow(tmp_path):
  if importlib.util.find_spec("jax") is None:
    import pytest  # pylint: disable=g-import-not-at-top
    pytest.skip("jax is not installed (the dev extra installs it): the JAX-backend test needs it")
  assert keras.backend.backend() == "tensorflow"
  clips = np.random.default_rng(0).uniform(size=CLIP_SHAPE).astype(np.float32)
  np.save(tmp_path / "clips.npy", clips)
  expected = {}
  for depth in DEPTHS:
    keras.utils.set_random_seed(depth)
    network = Network(depth, name=f"r3d{depth}")  # conv_implementation "auto": the CPU folds
    network.build(CLIP_SHAPE)
    # Moving statistics away from their (0, 1) start, so that inference mode tests them too.
    network(clips, training=True)
    network.save_weights(str(tmp_path / f"r3d{depth}.weights.h5"))
    expected[depth] = run(network, clips)

  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  script = os.path.abspath(__file__)
  job = subprocess.run([sys.executable, script, str(tmp_path), *map(str, DEPTHS)],
                       capture_output=True, text=True, env=env, timeout=600)
  assert job.returncode == 0 and job.stdout.strip().endswith("ok"), job.stderr[-3000:]

  for depth in DEPTHS:
    actual = dict(np.load(tmp_path / f"r3d{depth}_jax.npz"))
    assert sorted(actual) == sorted(expected[depth])
    # 6 endpoints + projection + logits in each mode, and the BNs' moving statistics.
    assert sum(name.startswith("training/") for name in actual) == 8
    for name, value in expected[depth].items():
      assert actual[name].shape == value.shape, name
      if depth == 50 and name.startswith("training/"):
        # 16 bottleneck blocks normalised by batch statistics amplify float32 rounding, more
        # with each block (relative error 1e-6 at res2, 7e-5 at res5): TensorFlow's own folds
        # and its conv3d differ here by as much as XLA does (up to 8e-5 relative, measured at
        # 4×4×64²). Measured against XLA: ≤ 1.5e-4, the projection head's.
        error = np.linalg.norm(actual[name] - value) / np.linalg.norm(value)
        assert error <= 1e-3, f"R3D-50 {name}: relative error {error:.2e}"
      else:
        # Inference outputs, the moving statistics, R3D-18 in training mode: measured ≤ 3e-5.
        np.testing.assert_allclose(actual[name], value, rtol=1e-4, atol=1e-4,
                                   err_msg=f"R3D-{depth} {name}")
    # The training-mode outputs are not the inference-mode ones: batch statistics were used.
    assert not np.allclose(actual["training/pooled"], actual["inference/pooled"], atol=1e-3)


if __name__ == "__main__":
  jax_side(sys.argv[1], [int(d) for d in sys.argv[2:]])
