r"""Throughput of the dataset builder against a DMVR-style ffmpeg command-line baseline.

  python benchmarks/build_tfrecords.py [--videos=mix|h264] [--repeats=3] [--breakdown] [--copies=N]

Every side turns the same videos into SequenceExample TFRecords of JPEG frames at 25 fps with
short side 256, using the same cores, in one run:
- ffmpeg_cli (the baseline): what DMVR's `generate_from_file.py` does per video — run the ffmpeg
  command line with the `fps` and `scale` filters writing MJPEG to a pipe, split the JPEGs, write
  the record; one ffmpeg process per core at a time;
- local: `dataset_tools.builder.build` (PyAV decode in worker processes, libjpeg-turbo JPEG).
- beam_direct: `--runner=beam` on this machine (Beam's FnApiRunner, one worker process per core;
  2 shards per worker, since Beam spreads shards over its workers).
`SIDES` lists them.

Videos (`--videos`):
- mix (default): 18 videos in 12 codecs and 9 containers, 2-80 s, 176x144 to 1280x720, as a
  new user's folder holds them (`MIX`): H.264 incl. 59.94 fps with B-frames, HEVC 720p, VP8, VP9,
  AV1, ProRes 4:2:2 10-bit, MPEG-1/2, MPEG-4 and Xvid, MJPEG, Theora; one 80 s video holds ~40 %
  of the frames. Encoded once by the ffmpeg command line (its encoders are a superset of PyAV's:
  Xvid, Theora) and cached in the temp dir under a key of their parameters. Listed 4 times
  (`--copies`, below) unless told otherwise.
- h264: `--num_videos` generated H.264 clips of `--seconds`, 480x360 at 30 fps (issue 2's set).
Content: a camera panning over a multi-scale noise texture with film grain and a moving test
pattern: motion and texture cost a codec what real footage does (flat colour would not).

The ffmpeg binary is the one on PATH, else the static build that imageio-ffmpeg ships. Each side
runs `--repeats` times, alternating; the best time of each counts. Our time includes starting the
worker pool (~0.35 CPU s; the first decode starts ~0.3 s in). Last line:
`ratio <local/ffmpeg_cli>` (throughput ratio, > 1: ours is faster).
`--breakdown` first times each video alone, in CPU seconds: the ffmpeg command line against our
decode, scaling, JPEG encoding and serialisation.

`--copies=N` lists every video N times (symbolic links). The mix's default is 4: 72 videos, a
~20 s build. A dataset build is thousands of videos, so what it costs per video is what decides
its time; the 18 videos alone make a 5 s build in which our worker pool's start-up (~0.35 CPU s,
~0.3 s before the first decode) and the writer's fixed work weigh ~4x as much as in the 72 (the
baseline pays per video only: one ffmpeg process each). `--copies=1` measures the 18 alone
(RESULTS.md has both).
"""

import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
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
flags.DEFINE_enum("videos", "mix", ["mix", "h264"], "The input set (see the docstring).")
flags.DEFINE_integer("num_videos", 24, "--videos=h264: clips to build.")
flags.DEFINE_float("seconds", 8.0, "--videos=h264: length of each clip.")
flags.DEFINE_integer("repeats", 2, "Runs of each side; the best counts.")
flags.DEFINE_integer("num_workers", None, "Processes per side (default: all cores).")
flags.DEFINE_list("sides", ["ffmpeg_cli", "local", "beam_direct"],
                  "Sides to run; the first is the baseline.")
flags.DEFINE_bool("breakdown", False, "First time each video alone, per stage (CPU seconds).")
flags.DEFINE_integer("copies", None, "List every video this many times (symbolic links under "
                     "other names): a longer build, over which each side's start-up costs spread "
                     "as over a real dataset's. Default: 4 for the mix, 1 for h264.", lower_bound=1)
flags.DEFINE_string("cache_dir", None, "Where generated videos are kept (default: the temp dir).")
flags.DEFINE_list("other_checkouts", [], "Also run the builder of these checkouts of the "
                  "repository (sides `at:<folder name>`), e.g. main's, for a before/after in one "
                  "run.")

FPS, SHORT_SIDE, QUALITY = 25, 256, 90
SOURCE_FPS, WIDTH, HEIGHT = 30, 480, 360


@dataclasses.dataclass(frozen=True)
class Source:
  """One generated video: the ffmpeg command line's output options and the picture."""
  name: str          # file name; its extension picks the container
  codec: tuple       # ffmpeg output options, e.g. ("-c:v", "libx264", "-crf", "23")
  width: int
  height: int
  fps: str           # as ffmpeg reads it: "30", "30000/1001"
  seconds: float
  pix_fmt: str = "yuv420p"


_X264 = ("-c:v", "libx264", "-preset", "veryfast", "-crf", "23")
MIX = (
    Source("h264_360p.mp4", _X264, 480, 360, "30", 10),
    Source("h264_720p5994_bframes.mp4", ("-c:v", "libx264", "-preset", "medium", "-crf", "21",
                                         "-bf", "3", "-b_strategy", "2"), 1280, 720,
           "60000/1001", 8),
    Source("h264_240p.mkv", _X264, 320, 240, "25", 6),
    Source("h264_480p_long.mp4", _X264, 640, 480, "30", 80),
    Source("hevc_720p.mp4", ("-c:v", "libx265", "-preset", "fast", "-crf", "26", "-tag:v", "hvc1",
                             "-x265-params", "log-level=error"), 1280, 720, "30", 8),
    Source("hevc_360p.mkv", ("-c:v", "libx265", "-preset", "fast", "-crf", "26",
                             "-x265-params", "log-level=error"), 640, 360, "24", 5),
    Source("vp8_360p.webm", ("-c:v", "libvpx", "-b:v", "1M", "-deadline", "realtime",
                             "-cpu-used", "8"), 640, 360, "30", 10),
    Source("vp9_480p.webm", ("-c:v", "libvpx-vp9", "-b:v", "1M", "-deadline", "realtime",
                             "-cpu-used", "8", "-row-mt", "1"), 854, 480, "30", 8),
    Source("vp9_720p.webm", ("-c:v", "libvpx-vp9", "-b:v", "2M", "-deadline", "realtime",
                             "-cpu-used", "8", "-row-mt", "1"), 1280, 720, "25", 4),
    Source("av1_360p.mp4", ("-c:v", "libsvtav1", "-preset", "10", "-crf", "35",
                            "-svtav1-params", "lp=2"), 640, 360, "30", 6),
    Source("av1_480p.mkv", ("-c:v", "libsvtav1", "-preset", "10", "-crf", "35",
                            "-svtav1-params", "lp=2"), 854, 480, "24", 2),
    Source("prores_720p_10bit.mov", ("-c:v", "prores_ks", "-profile:v", "2"), 1280, 720, "25", 4,
           "yuv422p10le"),
    Source("mpeg1_sif.mpg", ("-c:v", "mpeg1video", "-q:v", "4", "-f", "mpeg"), 352, 240,
           "30000/1001", 10),
    Source("mpeg2_480p.ts", ("-c:v", "mpeg2video", "-q:v", "4", "-bf", "2"), 720, 480,
           "30000/1001", 8),
    Source("xvid_480p.avi", ("-c:v", "libxvid", "-q:v", "4"), 640, 480, "25", 12),
    Source("mpeg4_qcif.3gp", ("-c:v", "mpeg4", "-q:v", "5"), 176, 144, "15", 20),
    Source("mjpeg_480p.avi", ("-c:v", "mjpeg", "-q:v", "5"), 640, 480, "15", 6, "yuvj420p"),
    Source("theora_360p.ogv", ("-c:v", "libtheora", "-q:v", "6"), 480, 360, "25", 8),
)


def link_copies(paths: list, copies: int, folder: str) -> list:
  """`paths` listed `copies` times, as symbolic links named copy<k>_<name> in `folder`."""
  os.makedirs(folder)
  linked = []
  for k in range(copies):
    for path in paths:
      linked.append(os.path.join(folder, f"copy{k}_{os.path.basename(path)}"))
      os.symlink(path, linked[-1])
  return linked


def ffmpeg_binary() -> str:
  found = shutil.which("ffmpeg")
  if found:
    return found
  import imageio_ffmpeg  # the dev extra installs it: a static ffmpeg build in a wheel
  return imageio_ffmpeg.get_ffmpeg_exe()


def texture(seed: int, height: int = 1440, width: int = 2560) -> np.ndarray:
  """Multi-scale smooth noise (blobs of 160 px down to 2 px): [H, W, 3] uint8."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  image = np.zeros((height, width, 3), np.float32)
  for cell, amplitude in ((160, 1.0), (40, 0.5), (10, 0.3), (2, 0.2)):
    coarse = rng.normal(size=(height // cell + 2, width // cell + 2, 3)).astype(np.float32)
    for c in range(3):
      up = Image.fromarray(coarse[..., c]).resize((width + 2 * cell, height + 2 * cell),
                                                  Image.BICUBIC)
      image[..., c] += amplitude * np.asarray(up)[:height, :width]
  return np.clip(128 + 45 * image, 0, 255).astype(np.uint8)


def encode_source(ffmpeg: str, texture_png: str, source: Source, path: str, seed: int) -> None:
  """Pans a `source.width` x `source.height` window over the texture (sinusoidal, so the speed
  varies), adds per-frame grain and a moving test pattern, and encodes it as `source` says."""
  w, h = source.width, source.height
  graph = (
      f"[0:v]scale={2 * w}:{2 * h},loop=loop=-1:size=1,setpts=N/(({source.fps})*TB),"
      f"crop={w}:{h}:x='(iw-ow)/2*(1+sin(t*0.7+{seed}))':y='(ih-oh)/2*(1+sin(t*0.45))',"
      f"noise=alls=10:allf=t+u:all_seed={seed}[bg];"
      f"[bg][1:v]overlay=x='(W-w)*(0.5+0.45*sin(t*1.3))':y='(H-h)*(0.5+0.45*cos(t*0.9))',"
      f"format={source.pix_fmt}")
  pattern = f"testsrc2=s={max(16, w // 4 // 2 * 2)}x{max(16, h // 4 // 2 * 2)}:r={source.fps}"
  command = [ffmpeg, "-v", "error", "-y", "-i", texture_png, "-f", "lavfi", "-i", pattern,
             "-filter_complex", graph, "-t", str(source.seconds), "-r", source.fps,
             *source.codec, path]
  subprocess.run(command, check=True, capture_output=True)


def make_mix(ffmpeg: str, cache_root: str) -> list:
  """The MIX videos' paths, encoded once into a folder keyed by their parameters."""
  version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout
  key = hashlib.sha256(json.dumps([[dataclasses.astuple(s) for s in MIX],
                                   version.splitlines()[0], 1]).encode()).hexdigest()[:12]
  folder = os.path.join(cache_root, f"cvrl_bench_codec_mix_{key}")
  paths = [os.path.join(folder, s.name) for s in MIX]
  if os.path.isdir(folder):
    return paths
  from PIL import Image
  staging = tempfile.mkdtemp(prefix="cvrl_bench_codec_mix_staging_", dir=cache_root)
  png = os.path.join(staging, "texture.png")
  Image.fromarray(texture(seed=1)).save(png)
  for seed, source in enumerate(MIX):
    start = time.perf_counter()
    encode_source(ffmpeg, png, source, os.path.join(staging, source.name), seed)
    print(f"  encoded {source.name} in {time.perf_counter() - start:.1f} s", flush=True)
  os.remove(png)
  os.replace(staging, folder)  # complete or absent: a killed run re-encodes
  return paths


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


_OTHER_CHECKOUT = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
_cpu = lambda: sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF,
                   resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
__import__("tensorflow")
from dataset_tools import annotations, builder
paths, out_dir, num_workers = json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
entries = [annotations.VideoEntry(split="train", key=os.path.basename(p), path=p,
                                  relative_path=os.path.basename(p), label=None) for p in paths]
start, cpu = time.perf_counter(), _cpu()
report = builder.build(entries, out_dir, builder.BuildSettings(25, 256, 90), num_shards=1,
                       num_workers=num_workers, timeout_s=600, label_map=None, overwrite=True,
                       progress=False)
shards = report.summaries["train"]
print(json.dumps([time.perf_counter() - start, _cpu() - cpu, sum(s.frames for s in shards),
                  sum(s.bytes for s in shards)]))
"""


def run_other_checkout(root: str, paths: list, out_dir: str, num_workers: int) -> tuple:
  """The builder of another checkout (`git worktree add /tmp/x main`), timed as `run_ours`:
  in a process of its own that has imported TensorFlow. Returns (seconds, CPU seconds, frames,
  bytes)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run([sys.executable, "-c", _OTHER_CHECKOUT, root, json.dumps(paths), out_dir,
                        str(num_workers)], capture_output=True, text=True, check=True, env=env)
  return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def run_beam(paths: list, out_dir: str, num_workers: int) -> tuple:
  """`build_tfrecords.py --runner=beam` on this machine: Beam's FnApiRunner with `num_workers`
  worker processes, each decoding through one helper process (the per-video timeout). Beam
  spreads shards, not videos, over its workers: 2 shards per worker here (the local side writes
  one shard; the frames are the same)."""
  from dataset_tools import annotations, beam_options, beam_runner, builder
  entries = [annotations.VideoEntry(split="train", key=os.path.basename(p), path=p,
                                    relative_path=os.path.basename(p), label=None) for p in paths]
  report = beam_runner.build(entries, out_dir, builder.BuildSettings(FPS, SHORT_SIDE, QUALITY),
                             num_shards=2 * num_workers, num_decoders=1, timeout_s=600,
                             label_map=None, overwrite=True,
                             options=beam_options.pipeline_options("", num_workers),
                             progress=False)
  shards = report.summaries["train"]
  return sum(s.frames for s in shards), sum(s.bytes for s in shards)


# name -> fn(ffmpeg, paths, out_dir, num_workers) -> (frames, bytes), or (seconds, CPU seconds,
# frames, bytes) when the side times itself.
SIDES = {
    "ffmpeg_cli": run_baseline,
    "local": lambda ffmpeg, paths, out_dir, num_workers: run_ours(paths, out_dir, num_workers),
    "beam_direct": lambda ffmpeg, paths, out_dir, num_workers: run_beam(paths, out_dir,
                                                                        num_workers),
}


def _children_cpu() -> float:
  import resource
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _cpu() -> float:
  """CPU seconds of this process and of its finished children (ffmpeg, the pool's workers)."""
  import resource
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime + _children_cpu()


def breakdown_ours(path: str) -> dict:
  """CPU seconds of one `decode_video(path)` in this process, by stage, with one decoding thread
  (what the builder's workers use while they fill the cores).

  decode: a pass with the scaling and the JPEG encoder stubbed out (decoding, skipped frames
  included, and the grid); scale, jpeg: the swscale and libjpeg-turbo calls of the real run;
  other: the rest of the real run (plane copies); serialize: `schema.serialize_video` of the
  result.
  """
  from cvrl_tf import schema
  from dataset_tools import video_decode
  clock = {"scale": 0.0, "jpeg": 0.0}
  saved = video_decode.VideoReformatter, video_decode.simplejpeg
  tiny = av.VideoFrame(2, 2, "yuv420p")

  class TimedScaler:
    def __init__(self):
      self._inner = saved[0]()

    def reformat(self, *args, **kwargs):
      start = time.thread_time()
      out = self._inner.reformat(*args, **kwargs)
      clock["scale"] += time.thread_time() - start
      return out

  class TimedJpeg:
    @staticmethod
    def encode_jpeg_yuv_planes(*args, **kwargs):
      start = time.thread_time()
      out = saved[1].encode_jpeg_yuv_planes(*args, **kwargs)
      clock["jpeg"] += time.thread_time() - start
      return out

  class NoScaler:
    def reformat(self, *args, **kwargs):
      return tiny

  class NoJpeg:
    @staticmethod
    def encode_jpeg_yuv_planes(*args, **kwargs):
      return b""

  def run(scaler, jpeg) -> tuple:
    video_decode.VideoReformatter, video_decode.simplejpeg = scaler, jpeg
    try:
      start, wall = time.process_time(), time.perf_counter()
      video = video_decode.decode_video(path, fps=FPS, short_side=SHORT_SIDE,
                                        jpeg_quality=QUALITY, threads=1)
      return video, time.process_time() - start, time.perf_counter() - wall
    finally:
      video_decode.VideoReformatter, video_decode.simplejpeg = saved

  _, decode, _ = run(NoScaler, NoJpeg)
  video, total, wall = run(TimedScaler, TimedJpeg)
  start = time.process_time()
  schema.serialize_video(video.jpegs, video_id="x", filename=path, fps=FPS, height=video.height,
                         width=video.width, start_us=0, end_us=0)
  serialize = time.process_time() - start
  return {"frames_in": video.source_frames, "frames_out": len(video.jpegs),
          "encoded": len(set(map(id, video.jpegs))), "decode": decode, "scale": clock["scale"],
          "jpeg": clock["jpeg"], "other": total - decode - clock["scale"] - clock["jpeg"],
          "serialize": serialize, "total": total + serialize, "wall": wall}


def breakdown(ffmpeg: str, paths: list) -> None:
  """Prints, per video, CPU seconds of the ffmpeg command line and of our stages."""
  print(f"{'video':28s} {'in':>5s} {'out':>5s} {'ffmpeg':>7s} | {'decode':>6s} {'scale':>6s} "
        f"{'jpeg':>6s} {'other':>6s} {'serial':>6s} {'ours':>6s} | {'ratio':>5s}")
  sums = {}
  for path in paths:
    start = _children_cpu()
    baseline_extract(ffmpeg, path)
    ffmpeg_cpu = _children_cpu() - start
    ours = breakdown_ours(path)
    row = {"ffmpeg": ffmpeg_cpu, **ours}
    for key, value in row.items():
      sums[key] = sums.get(key, 0) + value
    print(f"{os.path.basename(path)[:28]:28s} {row['frames_in']:5d} {row['frames_out']:5d} "
          f"{ffmpeg_cpu:7.3f} | {row['decode']:6.3f} {row['scale']:6.3f} {row['jpeg']:6.3f} "
          f"{row['other']:6.3f} {row['serialize']:6.3f} {row['total']:6.3f} | "
          f"{ffmpeg_cpu / row['total']:5.2f}", flush=True)
  print(f"{'all (CPU s)':28s} {sums['frames_in']:5d} {sums['frames_out']:5d} "
        f"{sums['ffmpeg']:7.3f} | {sums['decode']:6.3f} {sums['scale']:6.3f} {sums['jpeg']:6.3f} "
        f"{sums['other']:6.3f} {sums['serialize']:6.3f} {sums['total']:6.3f} | "
        f"{sums['ffmpeg'] / sums['total']:5.2f}")


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # TensorFlow is imported once before any timing, and not at the top: the builder's spawned
  # workers re-import this script and must not load it.
  __import__("tensorflow")
  import machine
  for root in map(os.path.abspath, FLAGS.other_checkouts):
    name = "at:" + os.path.basename(root)
    SIDES[name] = (lambda root: lambda ffmpeg, paths, out_dir, n: run_other_checkout(
        root, paths, out_dir, n))(root)
    FLAGS.sides = FLAGS.sides + [name]
  unknown = sorted(set(FLAGS.sides) - set(SIDES))
  if unknown:
    raise app.UsageError(f"--sides: unknown {unknown}; known: {sorted(SIDES)}")
  if "beam_direct" in FLAGS.sides and importlib.util.find_spec("apache_beam") is None:
    raise app.UsageError("--sides has beam_direct, which needs Apache Beam: pip install -e "
                         "'.[beam]', or --sides=ffmpeg_cli,local")
  num_workers = FLAGS.num_workers or len(os.sched_getaffinity(0))
  ffmpeg = ffmpeg_binary()
  work = tempfile.mkdtemp(prefix="bench_build_")
  try:
    if FLAGS.videos == "mix":
      paths = make_mix(ffmpeg, FLAGS.cache_dir or tempfile.gettempdir())
      print(f"{len(paths)} videos of the codec mix in {os.path.dirname(paths[0])}")
    else:
      paths = []
      for i in range(FLAGS.num_videos):
        paths.append(os.path.join(work, f"clip{i:03d}.mp4"))
        make_clip(paths[-1], i, FLAGS.seconds)
      print(f"{len(paths)} clips of {FLAGS.seconds} s, {WIDTH}x{HEIGHT} H.264 at {SOURCE_FPS} fps")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine.cpu_description()}; "
          f"load {os.getloadavg()[0]:.1f}; {num_workers} worker(s); ffmpeg {ffmpeg}", flush=True)
    if FLAGS.breakdown:
      breakdown(ffmpeg, paths)  # each video once
    copies = FLAGS.copies or (4 if FLAGS.videos == "mix" else 1)
    if copies > 1:
      paths = link_copies(paths, copies, os.path.join(work, "copies"))
      print(f"each listed {copies} times: {len(paths)} videos")
    best = {name: float("inf") for name in FLAGS.sides}
    best_cpu = dict(best)
    sizes = {}
    for repeat in range(FLAGS.repeats):
      for name in FLAGS.sides:
        out = os.path.join(work, f"{name}{repeat}")
        os.makedirs(out)
        start, cpu = time.perf_counter(), _cpu()
        result = SIDES[name](ffmpeg, paths, out, num_workers)
        seconds, cpu = time.perf_counter() - start, _cpu() - cpu
        if len(result) == 4:
          seconds, cpu, *result = result
        frames, size = result
        best[name] = min(best[name], seconds)
        best_cpu[name] = min(best_cpu[name], cpu)
        sizes[name] = (frames, size)
        print(f"{name:14s} run {repeat}: {seconds:6.2f} s ({cpu:5.2f} CPU s)  "
              f"{len(paths) / seconds:6.2f} videos/s  {frames / seconds:7.1f} frames/s  "
              f"({frames} frames, {size / 2**20:.1f} MB)", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    for name in FLAGS.sides:
      frames, size = sizes[name]
      print(f"{name:14s} best: {best[name]:.2f} s ({best_cpu[name]:.2f} CPU s), "
            f"{len(paths) / best[name]:.2f} videos/s, {frames / best[name]:.1f} frames/s, "
            f"{size / frames / 1024:.1f} KB/frame")
    baseline = FLAGS.sides[0]
    for name in FLAGS.sides[1:]:
      print(f"ratio {name}/{baseline} {best[baseline] / best[name]:.3f} "
            f"(CPU seconds: {best_cpu[baseline] / best_cpu[name]:.3f})")
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
