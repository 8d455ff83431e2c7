r"""Throughput of the dataset builder against a DMVR-style ffmpeg command-line baseline.

  python benchmarks/build_tfrecords.py [--num_videos=12] [--seconds=8] [--repeats=2]

Both sides turn the same H.264 clips (Kinetics-like: 30 fps, 480x360, generated here) into
SequenceExample TFRecords of JPEG frames at 25 fps with short side 256, using all cores:
- baseline: what DMVR's `generate_from_file.py` does per video — run the ffmpeg command line with
  the `fps` and `scale` filters writing MJPEG to a pipe, split the JPEGs, write the record; one
  ffmpeg process per core at a time;
- ours: `dataset_tools.builder.build` (PyAV decode in worker processes, Pillow JPEG).
The ffmpeg binary is the one on PATH, else the static build that imageio-ffmpeg ships. Each side
runs `--repeats` times, alternating; the best time of each counts. Our time includes starting the
worker pool (~0.5 s). Last line: `ratio <ours/baseline>` (throughput ratio, > 1: ours is faster).
"""

import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import av
import numpy as np
from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_videos", 24, "Clips to build.")
flags.DEFINE_float("seconds", 8.0, "Length of each clip.")
flags.DEFINE_integer("repeats", 2, "Runs of each side; the best counts.")
flags.DEFINE_integer("num_workers", None, "Processes per side (default: all cores).")

FPS, SHORT_SIDE, QUALITY = 25, 256, 90
SOURCE_FPS, WIDTH, HEIGHT = 30, 480, 360


def ffmpeg_binary() -> str:
  found = shutil.which("ffmpeg")
  if found:
    return found
  import imageio_ffmpeg  # the dev extra installs it: a static ffmpeg build in a wheel
  return imageio_ffmpeg.get_ffmpeg_exe()


def make_clip(path: str, seed: int, seconds: float) -> None:
  """A panning camera over a smooth random scene with a moving object: H.264, yuv420p."""
  rng = np.random.default_rng(seed)
  scene = rng.normal(size=(HEIGHT // 8 + 40, WIDTH // 8 + 80, 3)).astype(np.float32)
  scene = np.kron(scene, np.ones((8, 8, 1), np.float32))          # blocky -> smooth below
  for axis in (0, 1):
    scene = (scene + np.roll(scene, 4, axis) + np.roll(scene, -4, axis)) / 3
  scene = np.clip(128 + 60 * scene, 0, 255).astype(np.uint8)
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=SOURCE_FPS)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.options = {"preset": "veryfast", "crf": "23"}
    for t in range(int(seconds * SOURCE_FPS)):
      x, y = t % 600, (t // 2) % 300
      frame = np.ascontiguousarray(scene[y % 320:y % 320 + HEIGHT, x % 640:x % 640 + WIDTH])
      frame = np.pad(frame, ((0, HEIGHT - frame.shape[0]), (0, WIDTH - frame.shape[1]), (0, 0)))
      cx = 40 + (7 * t) % (WIDTH - 80)
      frame[150:210, cx - 30:cx + 30] = (200, 60, 40)
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def baseline_extract(ffmpeg: str, path: str) -> list:
  """DMVR-style: the ffmpeg CLI with fps + scale filters, MJPEG frames on a pipe."""
  scale = (f"scale='if(lt(iw,ih),{SHORT_SIDE},-2)':'if(lt(iw,ih),-2,{SHORT_SIDE})'")
  command = [ffmpeg, "-v", "error", "-i", path, "-vf", f"fps={FPS},{scale}",
             "-f", "image2pipe", "-vcodec", "mjpeg", "-q:v", "3", "pipe:"]
  data = subprocess.run(command, capture_output=True, check=True).stdout
  marker = b"\xff\xd8\xff"
  return [marker + part for part in data.split(marker)[1:]]


def run_baseline(ffmpeg: str, paths: list, out_dir: str, num_workers: int) -> tuple:
  import tensorflow as tf
  from cvrl_tf import schema
  frames = 0
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool, \
       tf.io.TFRecordWriter(os.path.join(out_dir, "baseline.tfrecord")) as writer:
    for path, jpegs in zip(paths, pool.map(lambda p: baseline_extract(ffmpeg, p), paths)):
      writer.write(schema.serialize_video(
          jpegs, video_id=os.path.basename(path), filename=path, fps=FPS, height=SHORT_SIDE,
          width=SHORT_SIDE, start_us=0, end_us=0))
      frames += len(jpegs)
  return frames, os.path.getsize(os.path.join(out_dir, "baseline.tfrecord"))


def run_ours(paths: list, out_dir: str, num_workers: int) -> tuple:
  from dataset_tools import annotations, builder
  entries = [annotations.VideoEntry(split="train", key=os.path.basename(p), path=p,
                                    relative_path=os.path.basename(p), label=None) for p in paths]
  report = builder.build(entries, out_dir, builder.BuildSettings(FPS, SHORT_SIDE, QUALITY),
                         num_shards=1, num_workers=num_workers, timeout_s=600, label_map=None,
                         overwrite=True, progress=False)
  shards = report.summaries["train"]
  return sum(s.frames for s in shards), sum(s.bytes for s in shards)


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # TensorFlow is imported once before any timing, and not at the top: the builder's spawned
  # workers re-import this script and must not load it.
  __import__("tensorflow")
  num_workers = FLAGS.num_workers or len(os.sched_getaffinity(0))
  ffmpeg = ffmpeg_binary()
  work = tempfile.mkdtemp(prefix="bench_build_")
  try:
    paths = []
    for i in range(FLAGS.num_videos):
      paths.append(os.path.join(work, f"clip{i:03d}.mp4"))
      make_clip(paths[-1], i, FLAGS.seconds)
    print(f"{len(paths)} clips of {FLAGS.seconds} s, {WIDTH}x{HEIGHT} H.264 at {SOURCE_FPS} fps; "
          f"{num_workers} worker(s); ffmpeg {ffmpeg}")
    best = {"baseline": float("inf"), "ours": float("inf")}
    sizes = {}
    for repeat in range(FLAGS.repeats):
      for name in ("baseline", "ours"):
        out = os.path.join(work, f"{name}{repeat}")
        os.makedirs(out)
        start = time.perf_counter()
        if name == "baseline":
          frames, size = run_baseline(ffmpeg, paths, out, num_workers)
        else:
          frames, size = run_ours(paths, out, num_workers)
        seconds = time.perf_counter() - start
        best[name] = min(best[name], seconds)
        sizes[name] = (frames, size)
        print(f"{name:9s} run {repeat}: {seconds:6.2f} s  {len(paths) / seconds:6.2f} videos/s  "
              f"{frames / seconds:7.1f} frames/s  ({frames} frames, {size / 2**20:.1f} MB)")
    for name in ("baseline", "ours"):
      frames, size = sizes[name]
      print(f"{name:9s} best: {len(paths) / best[name]:.2f} videos/s, "
            f"{frames / best[name]:.1f} frames/s, {size / frames / 1024:.1f} KB/frame")
    print(f"ratio {best['baseline'] / best['ours']:.3f}")
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
