"""Shared test helpers: real video files made with PyAV, small enough to encode in milliseconds;
free loopback ports for multi-worker tests."""

import fractions
import os
import socket
import sys
from typing import Optional, Sequence

import av
import numpy as np
import pytest

# TensorFlow turns its oneDNN kernels on by itself on CPUs with AVX-512 VNNI and leaves them off on
# others (the AVX2 machines this suite was written on): the tests in this process would compute
# with other kernels, and other rounding, on another machine kind. So this process loads
# TensorFlow with them off, as cvrl_tf's deterministic runs have it (TensorFlow reads the variable
# once, when it loads). The tests' own subprocesses get the caller's environment back: each test
# that starts one says what it needs.
_CALLER_ONEDNN = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
from tensorflow.python.util import _pywrap_util_port  # noqa: E402  pylint: disable=g-import-not-at-top

_pywrap_util_port.IsMklEnabled()  # read now, whatever the environment says later
if _CALLER_ONEDNN is None:
  del os.environ["TF_ENABLE_ONEDNN_OPTS"]


def coded_frame(index: int, height: int = 48, width: int = 64) -> np.ndarray:
  """A flat grey frame whose level encodes `index` (survives lossy codecs): [H, W, 3] uint8."""
  return np.full((height, width, 3), 16 + 12 * (index % 20), np.uint8)


def frame_index(rgb: np.ndarray) -> int:
  """Inverse of `coded_frame`, from the mean level of a decoded frame."""
  return int(round((float(np.mean(rgb)) - 16) / 12))


def write_video(path: str, frames: Sequence[np.ndarray], *, fps: int = 25,
                codec: str = "libx264", times: Optional[Sequence[float]] = None,
                rotation: int = 0, container_format: Optional[str] = None) -> str:
  """Encodes [H, W, 3] uint8 frames; `times` (seconds) gives each frame's pts (variable rate)."""
  height, width = frames[0].shape[:2]
  with av.open(path, "w", format=container_format) as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    if codec == "libx264":
      stream.options = {"qp": "0", "preset": "ultrafast"}  # lossless luma: exact frame codes
    if times is not None:
      stream.codec_context.time_base = fractions.Fraction(1, 1000)
    if rotation:
      stream.set_display_rotation(rotation)
    for i, rgb in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
      if times is not None:
        frame.pts = int(round(times[i] * 1000))
        frame.time_base = fractions.Fraction(1, 1000)
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


def write_audio_only(path: str) -> str:
  """An AAC-in-MP4 file with no video stream."""
  with av.open(path, "w") as container:
    stream = container.add_stream("aac", rate=16000)
    samples = np.zeros((1, 1024), np.float32)
    for i in range(8):
      frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
      frame.sample_rate = 16000
      frame.pts = i * 1024
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


@pytest.fixture
def coded_video(tmp_path):
  """Factory: a video of `n` coded frames at `fps`, returns its path."""
  def make(name="clip.mp4", n=10, fps=25, **kwargs):
    return write_video(os.path.join(tmp_path, name), [coded_frame(i) for i in range(n)],
                       fps=fps, **kwargs)
  return make


def python_c(code: str) -> list:
  """[python, -c, code] for a test's TensorFlow script, which then ends by freezing its heap as
  the commands do (cvrl_tf.cli): its exit skips ~2 s of CPU of finalisation garbage collection
  (benchmarks/command_exit.py)."""
  return [sys.executable, "-c", f"{code}\nimport gc\ngc.freeze()\n"]


def deterministic_run_env(**extra) -> dict:
  """The environment of a test's `python -m cvrl_tf.*` process for a train.deterministic run:
  TensorFlow quiet, and oneDNN off as such a run has it. Without TF_ENABLE_ONEDNN_OPTS,
  cvrl_tf.train imports TensorFlow with oneDNN on and then re-executes itself to turn it off: a
  second TensorFlow import in every run (test_train's first test keeps that path)."""
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0", **extra)


def free_ports(count: int) -> list:
  """`count` TCP ports on 127.0.0.1 that were free a moment ago (for TF_CONFIG clusters)."""
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def local_folders_named_like_urls(*roots) -> list:
  """Folders below `roots` named like a URL's scheme ("ram:", "gs:"): what a remote path leaves
  behind when it reaches os.makedirs instead of tf.io.gfile. .git and .venv are not searched."""
  found = []
  for root in roots:
    for directory, subdirectories, _ in os.walk(root):
      subdirectories[:] = [d for d in subdirectories if d not in (".git", ".venv")]
      found += [os.path.join(directory, d) for d in subdirectories if d.endswith(":")]
  return found


# The files whose tests take longest, first. `make test` runs pytest-xdist with --dist loadfile,
# which hands whole files to the two workers in collection order: a long file handed out last
# runs alone while the other worker idles.
_LONGEST_FIRST = ("test_train.py", "test_jit_compile.py", "test_train_replicas.py",
                  "test_classify.py", "test_export.py", "test_cloud_storage.py",
                  "test_build_tfrecords.py", "test_beam_runner.py", "test_input_pipeline.py",
                  "test_resnet3d.py", "test_evaluate.py", "test_objectives.py", "test_microbatch.py",
                  "test_import_checkpoint.py", "test_loss_scale.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: order within kept
