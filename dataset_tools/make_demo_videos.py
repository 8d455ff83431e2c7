r"""Generates the embedded demo dataset: small labelled H.264 clips laid out like Kinetics.

  python dataset_tools/make_demo_videos.py --output_dir=demo_out/videos

writes `train/` and `val/` folders of `{youtube_id}_{start:06d}_{end:06d}.mp4` clips plus
`train.csv` and `validate.csv` (`label,youtube_id,time_start,time_end,split`), so the demo runs
the same builder command as Kinetics does. --output_dir may be on any file system of tf.io.gfile
(`gs://...`): clips are encoded in a local scratch folder and copied.

Every clip shows the same kinds of things — a textured sprite (disc, square or triangle with
stripes or checks, random colours and size) over the set's one textured background, all colours
drifting in hue over the clip — and its class is only how the sprite moves: left / right / up /
down, clockwise / counter-clockwise rotation, growing / shrinking. Classes come in time-reversed
pairs, so no single frame tells them apart: a model needs spatiotemporal features, which is what
CVRL's pretraining is meant to learn.
"""

import csv
import dataclasses
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # local-only: ours

import av
import numpy as np
from absl import app
from absl import flags

from cvrl_tf import storage

# Labels carry spaces and parentheses on purpose: Kinetics labels do, and must survive CSV quoting.
CLASSES = (
    "moving left", "moving right", "moving up", "moving down",
    "rotating (clockwise)", "rotating (counter-clockwise)", "growing", "shrinking",
)
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclasses.dataclass(frozen=True)
class DemoSpec:
  width: int = 128
  height: int = 96
  fps: int = 25
  seconds: float = 2.4
  train_per_class: int = 32
  val_per_class: int = 8
  seed: int = 0
  noise: float = 0.015   # std of the per-pixel sensor noise, in [0, 1] units
  # Largest hue drift over a clip, in turns (its size is U(0.5, 1) of this, its sign random): colours wander like lighting does, so the two clips
  # of a video (CVRL's positives) match by how things move more than by their colours.
  hue_drift: float = 1.5
  # One sprite per clip over one background for the whole set (recoloured by the drift): with
  # less to tell clips apart by, the contrastive task rewards features of the motion.
  sprites: int = 1
  background_seed: int = 1234


def youtube_id(rng: np.random.Generator) -> str:
  return "".join(rng.choice(list(ID_ALPHABET), size=11))


def _background(rng, height, width) -> np.ndarray:
  """A low-contrast static texture: a few random plane waves in a random tint. [H, W, 3] float."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  texture = np.zeros((height, width), np.float32)
  for _ in range(4):
    angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.02, 0.15), rng.uniform(0, 2 * np.pi)
    texture += np.sin(freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
  base = rng.uniform(0.2, 0.6, size=3).astype(np.float32)
  return np.clip(base + 0.06 * texture[..., None], 0, 1)


@dataclasses.dataclass(frozen=True)
class Sprite:
  shape: int          # 0 disc, 1 square, 2 triangle
  pattern: int        # 0 stripes, 1 checks
  colors: np.ndarray  # [2, 3] float
  radius: float       # pixels
  frequency: float    # pattern cycles per radius
  angle0: float


def _random_sprite(rng, spec: DemoSpec) -> Sprite:
  return Sprite(shape=int(rng.integers(3)), pattern=int(rng.integers(2)),
                colors=rng.uniform(0, 1, size=(2, 3)).astype(np.float32),
                # Big, coarsely patterned sprites: their motion must survive a 32² crop.
                radius=float(rng.uniform(0.2, 0.3) * spec.height),
                frequency=float(rng.uniform(1.0, 2.0)), angle0=float(rng.uniform(0, 2 * np.pi)))


def _draw(frame, sprite: Sprite, cx, cy, angle, scale, grid) -> None:
  """Paints `sprite` centred at (cx, cy), rotated by `angle` (counter-clockwise on screen)."""
  r = sprite.radius * scale
  # Only the sprite's bounding box is computed: a tenth of the frame, ten times faster.
  height, width = frame.shape[:2]
  top, bottom = max(0, int(cy - r) - 1), min(height, int(cy + r) + 2)
  left, right = max(0, int(cx - r) - 1), min(width, int(cx + r) + 2)
  if top >= bottom or left >= right:
    return
  frame = frame[top:bottom, left:right]
  y, x = grid[0][top:bottom, left:right], grid[1][top:bottom, left:right]
  # Sprite coordinates (u, v) in [-1, 1]; screen y points down, so negate for a CCW angle.
  dx, dy = (x - cx) / r, -(y - cy) / r
  cos, sin = np.cos(-angle), np.sin(-angle)
  u, v = cos * dx - sin * dy, sin * dx + cos * dy
  if sprite.shape == 0:
    mask = u * u + v * v <= 1
  elif sprite.shape == 1:
    mask = (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
  else:
    mask = (v >= -0.6) & (v <= 0.9 - 1.7 * np.abs(u))
  if sprite.pattern == 0:
    which = np.sin(np.pi * sprite.frequency * u) > 0
  else:
    which = (np.sin(np.pi * sprite.frequency * u) > 0) ^ (np.sin(np.pi * sprite.frequency * v) > 0)
  color = np.where(which[..., None], sprite.colors[0], sprite.colors[1])
  frame[mask] = color[mask]


def _hue_rotation(turns: float) -> np.ndarray:
  """[3, 3] RGB matrix rotating colours by `turns` about the grey axis (a hue shift)."""
  cos, sin = np.cos(2 * np.pi * turns), np.sin(2 * np.pi * turns)
  grey = np.full((3, 3), 1 / 3)
  cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3)
  return (cos * (np.eye(3) - grey) + sin * cross + grey).astype(np.float32)


def render_clip(label: int, rng: np.random.Generator, spec: DemoSpec) -> np.ndarray:
  """One clip of class `label`. Returns [T, H, W, 3] uint8."""
  num_frames = int(round(spec.seconds * spec.fps))
  grid = np.mgrid[0:spec.height, 0:spec.width].astype(np.float32)
  background = _background(np.random.default_rng(spec.background_seed), spec.height, spec.width)
  sprites = [_random_sprite(rng, spec) for _ in range(spec.sprites)]
  # Start points chosen so that each sprite stays mostly inside the frame for the whole clip.
  travel = rng.uniform(0.35, 0.5) * spec.width
  spin = rng.uniform(0.8, 1.4) * np.pi / spec.seconds        # radians per clip second
  starts = [(rng.uniform(0.25, 0.75) * spec.width, rng.uniform(0.3, 0.7) * spec.height)
            for _ in sprites]
  # The drift runs backwards in the second class of each pair, keeping the pairs time reversals;
  # its sign is random, so its distribution is the same for every class.
  drift = rng.choice((-1, 1)) * rng.uniform(0.5, 1.0) * spec.hue_drift * (-1 if label % 2 else 1)
  frames = np.empty((num_frames, spec.height, spec.width, 3), np.float32)
  for t in range(num_frames):
    progress = t / max(1, num_frames - 1)     # 0 -> 1 over the clip
    frame = background.copy()
    for sprite, (x0, y0) in zip(sprites, starts):
      shift = (progress - 0.5) * travel
      cx, cy, angle, scale = x0, y0, sprite.angle0, 1.0
      if label == 0:
        cx = x0 - shift
      elif label == 1:
        cx = x0 + shift
      elif label == 2:
        cy = y0 - shift * spec.height / spec.width
      elif label == 3:
        cy = y0 + shift * spec.height / spec.width
      elif label == 4:
        angle = sprite.angle0 - spin * (progress - 0.5) * spec.seconds
      elif label == 5:
        angle = sprite.angle0 + spin * (progress - 0.5) * spec.seconds
      elif label == 6:
        scale = 0.6 + 0.8 * progress
      else:
        scale = 1.4 - 0.8 * progress
      _draw(frame, sprite, cx, cy, angle, scale, grid)
    frames[t] = frame @ _hue_rotation(drift * (progress - 0.5)).T
  frames += rng.normal(0, spec.noise, size=frames.shape).astype(np.float32)  # sensor noise
  return np.clip(frames * 255 + 0.5, 0, 255).astype(np.uint8)


def write_h264(path: str, frames: np.ndarray, fps: int) -> None:
  """Encodes [T, H, W, 3] uint8 frames as an H.264 MP4 at `path`, which appears whole or not at all.

  The MP4 muxer seeks back to write its index, which an upload to an object store cannot: the
  clip is encoded in a local scratch folder, then copied.
  """
  with storage.local_scratch() as scratch:
    local = storage.join(scratch, "clip.mp4")
    _encode_h264(local, frames, fps)
    storage.atomic_write_bytes(path, storage.read_bytes(local))


def _encode_h264(local_path: str, frames: np.ndarray, fps: int) -> None:
  with av.open(local_path, "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    # cpu-independent: without it x264's assembly on AVX-512 CPUs gave other bytes from run to run
    # for the same frames (2 to 4 versions of a clip in 5 encodes, 2026-11-30); the demo set must
    # be the same bytes for one seed on any machine.
    stream.options = {"preset": "veryfast", "crf": "20", "x264-params": "cpu-independent=1"}
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def make_demo_videos(output_dir: str, spec: DemoSpec = DemoSpec()) -> dict:
  """Writes the demo set; returns {split: number of clips}. Deterministic in `spec.seed`."""
  rng = np.random.default_rng(spec.seed)
  counts = {}
  seen_ids = set()
  for split, csv_name, per_class in (("train", "train.csv", spec.train_per_class),
                                     ("val", "validate.csv", spec.val_per_class)):
    storage.makedirs(storage.join(output_dir, split))
    rows = []
    for label in range(len(CLASSES)):
      for _ in range(per_class):
        vid = youtube_id(rng)
        while vid in seen_ids:
          vid = youtube_id(rng)
        seen_ids.add(vid)
        start = int(rng.integers(0, 300))
        end = start + int(np.ceil(spec.seconds))
        clip_seed = int(rng.integers(2**31))
        frames = render_clip(label, np.random.default_rng(clip_seed), spec)
        write_h264(storage.join(output_dir, split, f"{vid}_{start:06d}_{end:06d}.mp4"),
                   frames, spec.fps)
        rows.append((CLASSES[label], vid, start, end, split))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
    writer.writerows(rows)
    storage.atomic_write_text(storage.join(output_dir, csv_name), text.getvalue())
    counts[split] = len(rows)
  return counts


FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined by the script only: importing this module (the tests do) must not claim flag names
  # that other entry points use.
  flags.DEFINE_string("output_dir", "demo_out/videos", "Where to write the clips and CSVs.")
  flags.DEFINE_integer("seed", DemoSpec.seed, "Random seed: the same seed gives the same clips.")
  flags.DEFINE_integer("train_per_class", DemoSpec.train_per_class, "Training clips per class.")
  flags.DEFINE_integer("val_per_class", DemoSpec.val_per_class, "Validation clips per class.")
  flags.DEFINE_float("seconds", DemoSpec.seconds, "Clip length in seconds.")


def main(argv):
  del argv
  spec = DemoSpec(seed=FLAGS.seed, train_per_class=FLAGS.train_per_class,
                  val_per_class=FLAGS.val_per_class, seconds=FLAGS.seconds)
  # The spec file is written last: its presence means a complete set made with these settings.
  marker = storage.join(FLAGS.output_dir, "demo_spec.json")
  wanted = json.dumps(dataclasses.asdict(spec), sort_keys=True)
  if storage.exists(marker):
    if storage.read_text(marker) == wanted:
      print(f"{FLAGS.output_dir} already holds these demo videos")
      return 0
    raise app.UsageError(f"{FLAGS.output_dir} holds demo videos made with other settings "
                         f"({marker}); delete the folder or choose another --output_dir")
  if storage.isdir(FLAGS.output_dir) and storage.listdir(FLAGS.output_dir):
    raise app.UsageError(f"{FLAGS.output_dir} is not empty and holds no demo set "
                         f"(no demo_spec.json); choose an empty or new --output_dir")
  counts = make_demo_videos(FLAGS.output_dir, spec)
  storage.atomic_write_text(marker, wanted)
  print(f"wrote {counts['train']} training and {counts['val']} validation clips of "
        f"{len(CLASSES)} classes to {FLAGS.output_dir}")
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
