"""The demo dataset: deterministic, Kinetics-shaped, and only separable by motion."""

import csv
import dataclasses
import os

import numpy as np

from dataset_tools import annotations
from dataset_tools import make_demo_videos as demo
from dataset_tools.video_decode import decode_video

SPEC = demo.DemoSpec(width=64, height=48, seconds=0.8, train_per_class=2, val_per_class=1)


def _mae(a, b):
  return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


def test_same_seed_same_clip_other_seed_other_clip():
  a = demo.render_clip(3, np.random.default_rng(7), SPEC)
  assert a.shape == (20, 48, 64, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, demo.render_clip(3, np.random.default_rng(7), SPEC))
  assert _mae(a, demo.render_clip(3, np.random.default_rng(8), SPEC)) > 5


def test_paired_classes_are_time_reversals():
  # With the same random draws, "moving left" played backwards is "moving right", and likewise
  # for the other pairs: the frames are the same set, only their order differs.
  quiet = dataclasses.replace(SPEC, noise=0.0)
  for first, second in ((0, 1), (2, 3), (4, 5), (6, 7)):
    forward = demo.render_clip(first, np.random.default_rng(11), quiet)
    backward = demo.render_clip(second, np.random.default_rng(11), quiet)
    assert _mae(forward[::-1], backward) < 0.01, (first, second)
    assert _mae(forward, backward) > 0.5, (first, second)


def test_sprites_move_over_the_clip():
  clip = demo.render_clip(0, np.random.default_rng(5), SPEC)
  assert _mae(clip[0], clip[-1]) > 5


def test_written_set_reads_like_kinetics(tmp_path):
  counts = demo.make_demo_videos(str(tmp_path), SPEC)
  assert counts == {"train": 16, "val": 8}
  with open(tmp_path / "train.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert set(rows[0]) == {"label", "youtube_id", "time_start", "time_end", "split"}
  assert {r["label"] for r in rows} == set(demo.CLASSES)
  index = annotations.index_videos(str(tmp_path))
  entries = annotations.read_kinetics_csv(str(tmp_path / "train.csv"), str(tmp_path), index)
  assert len(entries) == 16 and all(e.problem is None for e in entries)
  video = decode_video(entries[0].path, fps=25, short_side=0, jpeg_quality=90)
  assert len(video.jpegs) == 20 and (video.height, video.width) == (48, 64)
  second = tmp_path / "again"
  demo.make_demo_videos(str(second), SPEC)
  for split in ("train", "val"):
    names = sorted(os.listdir(tmp_path / split))
    assert sorted(os.listdir(second / split)) == names
    for name in names:   # the same seed gives the same encoded bytes
      assert (second / split / name).read_bytes() == (tmp_path / split / name).read_bytes()
