"""The dataset builder end to end: real videos in, TFRecord shards out."""

import csv
import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import tensorflow as tf
import simplejpeg

import worker_tasks
from conftest import (coded_frame, frame_index, local_folders_named_like_urls, write_audio_only,
                      write_video)
from cvrl_tf import schema
from cvrl_tf import storage
from dataset_tools import annotations, builder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "dataset_tools", "build_tfrecords.py")
LABELS = ("abseiling", "cooking egg", "tying knot (not on a tie)")


def _kinetics(root, per_label=3, frames=8, size=(48, 64)):
  """A Kinetics-like download: CSVs plus clips, some of them broken. Returns (csvs, video_dir)."""
  videos = os.path.join(root, "videos")
  rows = {"train": [], "val": []}
  for split in rows:
    os.makedirs(os.path.join(videos, split), exist_ok=True)
  count = 0
  for li, label in enumerate(LABELS):
    for split, n in (("train", per_label), ("val", 1)):
      for _ in range(n):
        vid = f"{'-' if count % 4 == 0 else 'v'}{count:010d}"
        start = 10 * count
        name = f"{vid}_{start:06d}_{start + 10:06d}.mp4"
        code = [coded_frame(li * 5 + j, *size) for j in range(frames)]
        write_video(os.path.join(videos, split, name), code)
        rows[split].append([label, vid, start, start + 10, split])
        count += 1
  # Broken inputs, each listed in the training CSV.
  broken = os.path.join(videos, "train")
  open(os.path.join(broken, "zerobytes00_000000_000010.mp4"), "wb").close()
  with open(os.path.join(broken, "textfile000_000000_000010.mp4"), "w") as f:
    f.write("<html>not a video</html>\n" * 10)
  write_audio_only(os.path.join(broken, "audioonly00_000000_000010.mp4"))
  rows["train"] += [["abseiling", "zerobytes00", 0, 10, "train"],
                    ["abseiling", "textfile000", 0, 10, "train"],
                    ["cooking egg", "audioonly00", 0, 10, "train"],
                    ["cooking egg", "notdownload", 0, 10, "train"]]
  csvs = []
  for split, name in (("train", "train.csv"), ("val", "validate.csv")):
    path = os.path.join(root, name)
    with open(path, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
      writer.writerows(rows[split])
    csvs.append(path)
  return csvs, videos


def _entries(csvs, video_dir):
  index = annotations.index_videos(video_dir)
  return annotations.mark_duplicates(
      [e for c in csvs for e in annotations.read_kinetics_csv(c, video_dir, index)])


def _build(entries, out, **overrides):
  kwargs = dict(num_shards=None, num_workers=2, timeout_s=60, label_map=None, overwrite=False,
                progress=False)
  kwargs.update(overrides)
  return builder.build(entries, str(out), builder.BuildSettings(fps=25, short_side=32), **kwargs)


def _read_split(out, split):
  records = []
  for path in sorted(glob.glob(os.path.join(out, schema.shard_pattern(split)))):
    for raw in tf.data.TFRecordDataset(path):
      records.append(tf.train.SequenceExample.FromString(raw.numpy()))
  return records


def _tree_bytes(out):
  """Every file under `out`, hidden ones included (a leftover temporary file is a difference)."""
  files = {}
  for root, _, names in os.walk(out):
    for name in names:
      path = os.path.join(root, name)
      files[os.path.relpath(path, out)] = open(path, "rb").read()
  return files


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("kinetics")
  return _kinetics(str(root))


@pytest.fixture(scope="module")
def built(dataset, tmp_path_factory):
  out = tmp_path_factory.mktemp("built") / "out"
  report = _build(_entries(*dataset), out, num_shards=3)
  return out, report


def test_outputs_match_the_inputs(built):
  out, report = built
  assert schema.read_label_map(str(out / "label_map.txt")) == sorted(LABELS)
  info = json.loads((out / "dataset_info.json").read_text())
  assert info["splits"]["train"]["videos"] == 9 and info["splits"]["val"]["videos"] == 3
  assert info["splits"]["train"]["failures"] == {
      "audio_only": 1, "empty_file": 1, "missing_file": 1, "unreadable": 1}
  assert info["splits"]["train"]["frames"] == 9 * 8
  assert info["settings"]["fps"] == 25 and info["settings"]["short_side"] == 32
  assert info["num_classes"] == 3
  assert sorted(os.listdir(out)) == [
      ".build_state", "dataset_info.json", "failures.csv", "label_map.txt",
      "train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord",
      "train-00002-of-00003.tfrecord", "val-00000-of-00003.tfrecord",
      "val-00001-of-00003.tfrecord", "val-00002-of-00003.tfrecord"]
  rows = list(csv.reader(open(out / "failures.csv")))
  assert rows[0] == ["split", "id_or_path", "reason", "detail"]
  assert sorted((r[1], r[2]) for r in rows[1:]) == [
      ("audioonly00_000000_000010", "audio_only"), ("notdownload_000000_000010", "missing_file"),
      ("textfile000_000000_000010", "unreadable"), ("zerobytes00_000000_000010", "empty_file")]
  assert report.failure_fraction == pytest.approx(4 / 16)


def test_records_hold_labels_frames_and_metadata(built):
  out, _ = built
  label_map = schema.read_label_map(str(out / "label_map.txt"))
  for split, n in (("train", 9), ("val", 3)):
    records = _read_split(str(out), split)
    assert len(records) == n
    for example in records:
      context = example.context.feature
      label = context["clip/label/text"].bytes_list.value[0].decode()
      label_index = context["clip/label/index"].int64_list.value[0]
      assert label_map[label_index] == label
      frames = [simplejpeg.decode_jpeg(f.bytes_list.value[0])
                for f in example.feature_lists.feature_list["image/encoded"].feature]
      assert frames[0].shape == (32, 42, 3)   # 48x64 with short side 32: 64 * 32 / 48 = 42.7
      base = LABELS.index(label) * 5
      assert [frame_index(f) for f in frames] == [base + j for j in range(8)]
      key = context["video/id"].bytes_list.value[0].decode()
      filename = context["video/filename"].bytes_list.value[0].decode()
      assert filename == f"{split}/{key}.mp4"
      start = int(key.split("_")[1]) * 1_000_000
      assert context["clip/start/timestamp"].int64_list.value[0] == start
      assert context["clip/end/timestamp"].int64_list.value[0] == start + 10_000_000


def test_same_bytes_whatever_the_worker_count(dataset, built, tmp_path):
  out, _ = built
  _build(_entries(*dataset), tmp_path / "one", num_shards=3, num_workers=1)
  assert _tree_bytes(str(tmp_path / "one")) == _tree_bytes(str(out))
  _build(_entries(*dataset), tmp_path / "in_process", num_shards=3, num_workers=0)
  assert _tree_bytes(str(tmp_path / "in_process")) == _tree_bytes(str(out))


def test_rerun_skips_complete_shards(dataset, tmp_path):
  entries = _entries(*dataset)
  _build(entries, tmp_path / "o", num_shards=2)
  before = _tree_bytes(str(tmp_path / "o"))
  report = _build(entries, tmp_path / "o", num_shards=2)
  assert report.skipped_shards == 4 and report.videos_decoded == 0
  assert _tree_bytes(str(tmp_path / "o")) == before


def test_existing_outputs_are_not_overwritten(dataset, tmp_path):
  entries = _entries(*dataset)
  out = tmp_path / "o"
  _build(entries, out, num_shards=2)
  (out / "my_notes.txt").write_text("mine")
  before = _tree_bytes(str(out))
  with pytest.raises(builder.BuildError, match="was built with"):
    builder.build(entries, str(out), builder.BuildSettings(fps=10, short_side=32), num_shards=2,
                  num_workers=1, timeout_s=60, label_map=None, overwrite=False, progress=False)
  with pytest.raises(builder.BuildError, match="another --num_shards"):
    _build(entries, out, num_shards=3)
  assert _tree_bytes(str(out)) == before
  _build(entries, out, num_shards=3, overwrite=True)
  assert (out / "my_notes.txt").read_text() == "mine"
  assert not glob.glob(str(out / "train-*-of-00002.tfrecord"))
  assert len(glob.glob(str(out / "train-*-of-00003.tfrecord"))) == 3


def test_foreign_files_with_our_names_are_not_overwritten(dataset, tmp_path):
  out = tmp_path / "o"
  out.mkdir()
  (out / "label_map.txt").write_text("someone else's\n")
  with pytest.raises(builder.BuildError, match="already holds label_map.txt"):
    _build(_entries(*dataset), out)
  assert (out / "label_map.txt").read_text() == "someone else's\n"


def test_label_map_is_reused_across_splits(dataset, built, tmp_path):
  out, _ = built
  label_map = schema.read_label_map(str(out / "label_map.txt"))
  val_only = [e for e in _entries(*dataset) if e.split == "val"]
  _build(val_only, tmp_path / "val", label_map=label_map, num_shards=3)
  assert _tree_bytes(str(tmp_path / "val"))["val-00001-of-00003.tfrecord"] == (
      _tree_bytes(str(out))["val-00001-of-00003.tfrecord"])
  with pytest.raises(builder.BuildError, match="not in the label map"):
    _build(val_only, tmp_path / "bad", label_map=["abseiling"])


def test_a_rebuild_killed_before_its_rename_is_rebuilt_again(tmp_path, monkeypatch):
  paths = [write_video(str(tmp_path / f"v{i}.mp4"), [coded_frame(j) for j in range(3)])
           for i in range(2)]
  entries = [annotations.VideoEntry(split="train", key=f"k{i}", path=p, relative_path=p,
                                    label="a") for i, p in enumerate(paths)]
  out = tmp_path / "out"
  _build(entries, out, num_shards=1, num_workers=0)
  write_video(paths[1], [coded_frame(j) for j in range(5)])
  rename = builder.storage.rename

  def killed_at_the_shard(source, target, overwrite=False):
    if target.endswith(".tfrecord"):
      raise OSError("killed")
    rename(source, target, overwrite)

  monkeypatch.setattr(builder.storage, "rename", killed_at_the_shard)
  with pytest.raises(OSError, match="killed"):
    _build(entries, out, num_shards=1, num_workers=0)
  monkeypatch.undo()
  # The old shard must not pass for the new videos' one (summary saved before the rename).
  shard, = builder.read_plan(str(out), "train")
  assert builder.shard_state(str(out), shard)[0] == builder.CHANGED
  assert _build(entries, out, num_shards=1, num_workers=0).rebuilt_names == [shard.name]
  _build(entries, tmp_path / "fresh", num_shards=1, num_workers=0)
  assert (out / shard.name).read_bytes() == (tmp_path / "fresh" / shard.name).read_bytes()


def test_shard_outcomes_from_the_summaries_before_and_after():
  # a: unchanged; b: other videos; c: new; d: written before fingerprints existed; e: not in
  # this build; f: in this build, still not complete (a failed run).
  before = {"a": "x", "b": "y1", "d": "", "e": "q"}
  after = {"a": "x", "b": "y2", "c": "z", "d": "w", "e": "q"}
  assert builder.shard_outcomes(before, after, ["a", "b", "c", "d", "f"]) == (1, ["b", "d"])


def test_a_summary_without_a_fingerprint_reads_as_written_before_them(tmp_path):
  summary = builder.ShardSummary(name="train-00000-of-00001.tfrecord", split="train", videos=1)
  legacy = {k: v for k, v in dataclasses.asdict(summary).items() if k != "inputs"}
  os.makedirs(tmp_path / builder.STATE_DIR)
  (tmp_path / builder.STATE_DIR / (summary.name + ".json")).write_text(json.dumps(legacy))
  complete = lambda: builder.written_from(builder.load_summaries(str(tmp_path)))
  assert complete() == {}   # no shard file: not complete
  (tmp_path / summary.name).write_bytes(b"")
  assert complete() == {summary.name: ""}


def test_label_map_comes_from_training_labels_only():
  entry = lambda split, label: annotations.VideoEntry(split=split, key=label, path="p",
                                                      relative_path="p", label=label)
  entries = [entry("train", "b"), entry("train", "a"), entry("val", "a")]
  assert builder.make_label_map(entries, None) == ["a", "b"]
  with pytest.raises(builder.BuildError, match="outside the training split"):
    builder.make_label_map(entries + [entry("val", "c")], None)


def test_plan_is_deterministic_and_mixes_classes():
  entries = [annotations.VideoEntry(split="train", key=f"{label}{i:02d}", path="p",
                                    relative_path="p", label=label)
             for label in "ab" for i in range(20)]
  plans = builder.plan_split(entries, 4)
  assert plans == builder.plan_split(list(reversed(entries)), 4)
  assert sorted(e.key for s in plans for e in s.entries) == sorted(e.key for e in entries)
  assert [len(s.entries) for s in plans] == [10, 10, 10, 10]
  for shard in plans:
    assert {e.label for e in shard.entries} == {"a", "b"}


def test_hung_decode_is_stopped_and_reported(tmp_path):
  entries = [annotations.VideoEntry(split="train", key=f"k{i}", path=str(tmp_path / "x.mp4"),
                                    relative_path="x.mp4", label="a") for i in range(2)]
  decoder = builder.Decoder(builder.BuildSettings(), num_workers=1, timeout_s=1.0,
                             task=worker_tasks.hang)
  start = time.monotonic()
  try:
    results = list(decoder.decode_in_order(entries))
  finally:
    decoder.close()
  assert [r.reason for _, r in results] == ["timeout", "timeout"]
  assert time.monotonic() - start < 30


def test_crashed_worker_is_reported(tmp_path):
  entries = [annotations.VideoEntry(split="train", key="k", path=str(tmp_path / "x.mp4"),
                                    relative_path="x.mp4", label="a")]
  decoder = builder.Decoder(builder.BuildSettings(), num_workers=1, timeout_s=30,
                             task=worker_tasks.crash)
  try:
    (_, result), = decoder.decode_in_order(entries)
  finally:
    decoder.close()
  assert result.reason == "worker_crashed" and "exit code 11" in result.detail


def _start_order(tmp_path, entries, **decoder_kwargs) -> list:
  """[(file name, FFmpeg threads)] in the order a Decoder's workers started `entries`; checks
  that the results came back in the entries' order."""
  log = tmp_path / "start_order.txt"
  if log.exists():
    log.unlink()
  decoder = builder.Decoder(builder.BuildSettings(), timeout_s=60, task=worker_tasks.record_start,
                            **decoder_kwargs)
  try:
    results = [(entry.key, result) for entry, result in decoder.decode_in_order(entries)]
  finally:
    decoder.close()
  assert results == [(e.key, os.path.basename(e.path)) for e in entries]
  return [tuple(line.split(":")) for line in log.read_text().split()]


def test_costliest_videos_start_first_and_results_keep_their_order(tmp_path, monkeypatch):
  # Frames per video, in plan order: the 40-frame one comes last but must start first.
  lengths = [4, 8, 2, 6, 40]
  paths = [write_video(str(tmp_path / f"v{i}.mp4"), [coded_frame(j) for j in range(n)])
           for i, n in enumerate(lengths)]
  entries = [annotations.VideoEntry(split="train", key=f"k{i}", path=p, relative_path=p,
                                    label="a") for i, p in enumerate(paths)]
  # One worker on a one-core machine, two tasks in flight: the first video (the writer waits for
  # it) and the costliest go first; the rest as the worker frees up. Each decodes on one thread
  # except the last, which runs alone.
  monkeypatch.setattr(builder, "usable_cores", lambda: 1)
  started = _start_order(tmp_path, entries, num_workers=1)
  assert started[:2] == [("v0.mp4", "1"), ("v4.mp4", "1")]
  assert sorted(name for name, _ in started) == [f"v{i}.mp4" for i in range(5)]
  assert [threads for _, threads in started] == ["1", "1", "1", "1", "0"]
  # Each video is prepared (write_shard's serialisation) once, as soon as it is decoded: the
  # costliest, last in the plan, before the writer gets the second video.
  events = []
  decoder = builder.Decoder(builder.BuildSettings(), num_workers=1, timeout_s=60,
                            task=worker_tasks.record_start)
  try:
    for entry, result in decoder.decode_in_order(
        entries, lambda entry, result: events.append(("prepared", entry.key)) or result):
      events.append(("yielded", entry.key))
  finally:
    decoder.close()
  assert events.index(("prepared", "k4")) < events.index(("yielded", "k1"))
  assert sorted(key for event, key in events if event == "prepared") == [f"k{i}" for i in range(5)]
  assert [key for event, key in events if event == "yielded"] == [f"k{i}" for i in range(5)]
  # An exception of `prepare` (for k4, decoded second) comes out at k4's turn, after k0-k3.
  def failing(entry, result):
    if entry.key == "k4":
      raise RuntimeError("cannot serialise k4")
    return result

  got = []
  decoder = builder.Decoder(builder.BuildSettings(), num_workers=1, timeout_s=60,
                            task=worker_tasks.record_start)
  try:
    with pytest.raises(RuntimeError, match="k4"):
      for entry, _ in decoder.decode_in_order(entries, failing):
        got.append(entry.key)
  finally:
    decoder.close()
  assert got == ["k0", "k1", "k2", "k3"]
  # A pool smaller than the machine leaves cores free: FFmpeg's threads for every video.
  monkeypatch.setattr(builder, "usable_cores", lambda: 2)
  assert {t for _, t in _start_order(tmp_path, entries, num_workers=1)} == {"0"}
  # A runner that fixes the threads (Beam: one per video) gets them for the tail too.
  assert {t for _, t in _start_order(tmp_path, entries, num_workers=1, threads=1)} == {"1"}
  # And the shards hold the same bytes as a build in this process, in plan order.
  _build(entries, tmp_path / "workers", num_shards=2, num_workers=2)
  _build(entries, tmp_path / "in_process", num_shards=2, num_workers=0)
  assert _tree_bytes(str(tmp_path / "workers")) == _tree_bytes(str(tmp_path / "in_process"))


def test_writer_busy_tells_who_set_the_pace(tmp_path):
  entries = [annotations.VideoEntry(split="train", key=f"k{i}", path=str(tmp_path / f"v{i}.mp4"),
                                    relative_path=f"v{i}.mp4", label="a") for i in range(8)]

  def busy(task, num_workers, prepare_s):
    def prepare(entry, result):
      time.sleep(prepare_s)
      return result
    decoder = builder.Decoder(builder.BuildSettings(), num_workers=num_workers, timeout_s=60,
                              task=task)
    try:
      assert decoder.writer_busy() is None   # nothing decoded yet
      keys = [entry.key for entry, _ in decoder.decode_in_order(entries, prepare)]
      assert keys == [e.key for e in entries]
      return decoder.writer_busy()
    finally:
      decoder.close()

  # Decodes that take no time and a writer that takes 0.15 s a video: the writer sets the pace.
  assert busy(worker_tasks.record_start, 2, 0.15) > 0.75
  # One worker taking 0.2 s a video and a writer that takes none: it waits most of the time.
  assert busy(worker_tasks.nap, 1, 0.0) < 0.3
  # In this process there is nothing to wait for.
  in_process = builder.Decoder(builder.BuildSettings(), num_workers=0, timeout_s=None,
                               task=worker_tasks.nap)
  assert [e.key for e, _ in in_process.decode_in_order(entries[:1])] == ["k0"]
  assert in_process.writer_busy() is None


def test_cli_summary_says_when_the_writer_set_the_pace():
  # _print_summary on made-up reports, in a process of its own (the CLI defines absl flags).
  script = (
      "import types\n"
      "from dataset_tools import build_tfrecords as cli\n"
      "for busy, videos in ((0.95, 50), (0.95, 49), (0.85, 500), (None, 500)):\n"
      "  cli._print_summary(types.SimpleNamespace(\n"
      "      summaries={}, counters={}, skipped_shards=0, rebuilt_shards=0, rebuilt_names=[],\n"
      "      videos_decoded=videos, seconds=1.0, writer_busy=busy), 'out')\n"
      "  print('@@')\n")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=REPO, timeout=120, check=True).stdout
  said = ["the writer was busy" in part for part in out.split("@@")[:4]]
  assert said == [True, False, False, False]
  assert "the writer was busy 95% of the time: it set the pace" in out


def _cli(*args, **kwargs):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        env=env, timeout=300, **kwargs)


def test_cli_file_list_with_escaping_paths_and_exit_status(tmp_path):
  root = tmp_path / "root"
  os.makedirs(root / "jump")
  for i in range(3):
    write_video(str(root / "jump" / f"v{i}.mkv"), [coded_frame(j) for j in range(4)])
  (tmp_path / "secret.mp4").write_bytes(b"outside")
  (root / "list.csv").write_text(
      "path,label\njump/v0.mkv,jump\njump/v1.mkv,jump\njump/v2.mkv,jump\n../secret.mp4,jump\n")
  out = tmp_path / "out"
  strict = _cli(f"--file_list={root / 'list.csv'}", f"--output_dir={out}", "--short_side=0",
                "--max_failure_fraction=0.2")
  assert strict.returncode == 1, strict.stderr
  assert "1 of 4 videos failed (25.0%), more than --max_failure_fraction=0.2" in strict.stderr
  rows = list(csv.reader(open(out / "failures.csv")))
  assert rows[1][:3] == ["train", "../secret.mp4", "path_escapes_root"]
  lenient = _cli(f"--file_list={root / 'list.csv'}", f"--output_dir={out}", "--short_side=0",
                 "--max_failure_fraction=0.5")
  assert lenient.returncode == 0, lenient.stderr
  assert "resumed: 1 shard(s) were already complete" in lenient.stdout
  assert "train" in lenient.stdout and "videos" in lenient.stdout
  # A replaced video: its shard is rebuilt, and the summary names it.
  write_video(str(root / "jump" / "v1.mkv"), [coded_frame(j) for j in range(6)])
  rebuilt = _cli(f"--file_list={root / 'list.csv'}", f"--output_dir={out}", "--short_side=0",
                 "--max_failure_fraction=0.5")
  assert rebuilt.returncode == 0, rebuilt.stderr
  assert ("rebuilt: 1 shard(s) whose videos changed since they were written (paths, sizes or "
          "modification times): train-00000-of-00001.tfrecord\n") in rebuilt.stdout
  assert "resumed:" not in rebuilt.stdout


def test_cli_usage_errors_name_the_problem(tmp_path):
  none = _cli(f"--output_dir={tmp_path}")
  assert none.returncode != 0 and "give exactly one of --csv, --class_dirs, --file_list" in (
      none.stderr)
  no_dir = _cli(f"--csv={tmp_path}/train.csv", f"--output_dir={tmp_path}")
  assert no_dir.returncode != 0 and "--csv needs --video_dir" in no_dir.stderr
  (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
  bad = _cli(f"--csv={tmp_path}/bad.csv", f"--video_dir={tmp_path}", f"--output_dir={tmp_path}/o")
  assert bad.returncode == 2 and "not a Kinetics annotation CSV" in bad.stderr
  quality = _cli(f"--class_dirs={tmp_path}", "--jpeg_quality=0", f"--output_dir={tmp_path}/o")
  assert quality.returncode == 2


def test_cli_dry_run_writes_nothing(dataset, tmp_path):
  csvs, video_dir = dataset
  out = tmp_path / "never"
  result = _cli(f"--csv={','.join(csvs)}", f"--video_dir={video_dir}", f"--output_dir={out}",
                "--dry_run", "--short_side=32")
  assert result.returncode == 0, result.stderr
  assert "estimated output" in result.stdout and "frames per video        8" in result.stdout
  assert not out.exists()


def test_resume_after_sigkill_gives_the_same_bytes(tmp_path):
  csvs, video_dir = _kinetics(str(tmp_path / "data"), per_label=8, frames=40, size=(96, 128))
  args = [f"--csv={','.join(csvs)}", f"--video_dir={video_dir}", "--num_shards=8",
          "--num_workers=1", "--short_side=96", "--max_failure_fraction=0.5"]
  reference = _cli(*args, f"--output_dir={tmp_path / 'reference'}")
  assert reference.returncode == 0, reference.stderr

  out = tmp_path / "killed"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  process = subprocess.Popen([sys.executable, SCRIPT, *args, f"--output_dir={out}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             start_new_session=True)
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline and len(glob.glob(str(out / "train-*.tfrecord"))) < 2:
    time.sleep(0.005)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  done = glob.glob(str(out / "*-of-00008.tfrecord"))
  assert 2 <= len(done) < 16, "the kill should land mid-build"

  resumed = _cli(*args, f"--output_dir={out}")
  assert resumed.returncode == 0, resumed.stderr
  assert "resumed:" in resumed.stdout
  assert _tree_bytes(str(out)) == _tree_bytes(str(tmp_path / "reference"))


def _ucf101(root, classes=("YoYo", "ApplyEyeMakeup"), train=2, test=1, frames=6):
  """UCF-101 in miniature: (split folder, video folder). classInd.txt lists the classes out of
  alphabetical order; class i's videos show frame codes 5 i, 5 i + 1, ...; one test video is
  listed but absent."""
  splits = os.path.join(root, "ucfTrainTestlist")
  videos = os.path.join(root, "UCF-101")
  os.makedirs(splits)
  rows = {"train": [], "test": []}
  for i, name in enumerate(classes):
    os.makedirs(os.path.join(videos, name))
    for split, n in (("train", train), ("test", test)):
      for g in range(n):
        relative = f"{name}/v_{name}_g{g + (1 if split == 'test' else 8):02d}_c01.avi"
        write_video(os.path.join(videos, relative),
                    [coded_frame(5 * i + j) for j in range(frames)], codec="mjpeg")
        rows[split].append(f"{relative} {i + 1}" if split == "train" else relative)
  rows["test"].append(f"{classes[0]}/v_{classes[0]}_g07_c01.avi")
  for name, lines in (("classInd.txt", [f"{i + 1} {c}" for i, c in enumerate(classes)]),
                      ("trainlist01.txt", rows["train"]), ("testlist01.txt", rows["test"])):
    with open(os.path.join(splits, name), "w", newline="") as f:
      f.write("".join(line + "\r\n" for line in lines))
  return splits, videos


def _copy_tree(local, target):
  for directory, _, names in os.walk(local):
    for name in names:
      path = os.path.join(directory, name)
      storage.atomic_write_bytes(storage.join(target, os.path.relpath(path, local)),
                                 open(path, "rb").read())


def _records(paths):
  return [tf.train.SequenceExample.FromString(raw.numpy())
          for raw in tf.data.TFRecordDataset(paths)]


def _ucf101_on_ram(tmp_path, monkeypatch):
  """_ucf101 copied to a fresh ram:// folder, and the run moved to an empty folder `cwd`:
  (ram root, cwd, entries, label map)."""
  _ucf101(str(tmp_path / "made_locally"))
  root = f"ram://builder_test_{uuid.uuid4().hex[:8]}"
  _copy_tree(str(tmp_path / "made_locally"), root)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  entries, label_map = annotations.read_ucf101_splits(
      storage.join(root, "ucfTrainTestlist"), storage.join(root, "UCF-101"), 1)
  return root, cwd, entries, label_map


def test_build_from_ram_to_ram_in_one_process(tmp_path, monkeypatch):
  # ram:// stands for gs://: the inputs (split files, videos) and every output live there, and
  # nothing may reach the local disk (os.makedirs("ram://x") would make a folder "./ram:").
  root, cwd, entries, label_map = _ucf101_on_ram(tmp_path, monkeypatch)
  out = storage.join(root, "tfrecords")
  with pytest.raises(builder.BuildError, match="worker processes cannot read it; pass "
                                               "--num_workers=0"):
    _build(entries, out, num_workers=1, label_map=label_map)

  report = _build(entries, out, num_workers=0, label_map=label_map, num_shards=2)
  assert storage.read_text(storage.join(out, "label_map.txt")) == "YoYo\nApplyEyeMakeup\n"
  info = storage.read_json(storage.join(out, "dataset_info.json"))
  assert {split: (v["videos"], v["frames"], v["failures"]) for split, v in info["splits"].items()} \
      == {"train": (4, 24, {}), "test": (2, 12, {"missing_file": 1})}
  assert report.failures_this_run == 1
  for split, expected in (("train", 4), ("test", 2)):
    shards = storage.glob(storage.join(out, schema.shard_pattern(split)))
    assert [storage.basename(p) for p in shards] == [
        f"{split}-00000-of-00002.tfrecord", f"{split}-00001-of-00002.tfrecord"]
    records = _records(shards)
    assert len(records) == expected
    for example in records:
      context = example.context.feature
      label = context["clip/label/text"].bytes_list.value[0].decode()
      index = context["clip/label/index"].int64_list.value[0]
      assert ["YoYo", "ApplyEyeMakeup"][index] == label      # classInd.txt order, 0-based
      assert context["video/filename"].bytes_list.value[0].decode().startswith(label + "/")
      frames = [frame_index(simplejpeg.decode_jpeg(f.bytes_list.value[0]))
                for f in example.feature_lists.feature_list["image/encoded"].feature]
      assert frames == [5 * index + j for j in range(6)]
  rerun = _build(entries, out, num_workers=0, label_map=label_map, num_shards=2)
  assert rerun.skipped_shards == 4 and rerun.videos_decoded == 0
  assert os.listdir(cwd) == []
  assert local_folders_named_like_urls(str(tmp_path)) == []


def test_cli_file_list_of_absolute_paths_to_ram(tmp_path):
  # The most common file list: `find /abs/data -name '*.mp4'` plus a label, no --video_dir.
  data = tmp_path / "data"
  rows = []
  for label in ("jump", "run"):
    os.makedirs(data / label)
    for i in range(2):
      path = str(data / label / f"{label}{i}.mp4")
      write_video(path, [coded_frame(j) for j in range(4)])
      rows.append(f"{path},{label}\n")
  os.makedirs(tmp_path / "lists")
  (tmp_path / "lists" / "all.csv").write_text("".join(rows))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  result = _cli(f"--file_list={tmp_path / 'lists' / 'all.csv'}", "--short_side=0",
                "--num_workers=1", f"--output_dir=ram://cli_test_{uuid.uuid4().hex[:8]}/out",
                cwd=str(cwd))
  assert result.returncode == 0, result.stderr
  train = next(line.split() for line in result.stdout.splitlines() if line.startswith("train"))
  assert train[:5] == ["train", "4", "0", "0", "16"]    # videos, failed, partial, frames
  assert os.listdir(cwd) == [] and local_folders_named_like_urls(str(tmp_path)) == []


def _hmdb51(root):
  """HMDB-51 in miniature: (split folder, video folder) as pathlib paths; classes "wave" and
  "brush_hair", videos a (train), b (test), c (unused) of split 1."""
  splits, videos = root / "testTrainMulti_7030_splits", root / "hmdb51_org"
  os.makedirs(splits)
  for i, label in enumerate(("wave", "brush_hair")):
    os.makedirs(videos / label)
    for name in ("a.avi", "b.avi", "c.avi"):
      write_video(str(videos / label / f"{label}_{name}"),
                  [coded_frame(5 * i + j) for j in range(4)], codec="mjpeg")
    (splits / f"{label}_test_split1.txt").write_text(
        f"{label}_a.avi 1 \n{label}_b.avi 2 \n{label}_c.avi 0 \n")
  return splits, videos


def test_cli_hmdb51_official_splits(tmp_path):
  splits, videos = _hmdb51(tmp_path)
  out = tmp_path / "out"
  result = _cli(f"--hmdb51_splits={splits}", "--split_id=1", f"--video_dir={videos}",
                f"--output_dir={out}", "--short_side=0", "--num_workers=0")
  assert result.returncode == 0, result.stderr
  assert schema.read_label_map(str(out / "label_map.txt")) == ["brush_hair", "wave"]
  for split, name in (("train", "a.avi"), ("test", "b.avi")):
    records = _records(sorted(glob.glob(str(out / schema.shard_pattern(split)))))
    assert sorted((e.context.feature["video/id"].bytes_list.value[0].decode(),
                   e.context.feature["clip/label/index"].int64_list.value[0]) for e in records) \
        == [(f"brush_hair/brush_hair_{name}", 0), (f"wave/wave_{name}", 1)]
  conflict = _cli(f"--hmdb51_splits={splits}", f"--video_dir={videos}", f"--output_dir={out}",
                  f"--label_map={out / 'label_map.txt'}")
  assert conflict.returncode != 0 and "drop --label_map" in conflict.stderr
  no_videos = _cli(f"--ucf101_splits={splits}", f"--output_dir={out}")
  assert no_videos.returncode != 0 and "--ucf101_splits needs --video_dir" in no_videos.stderr
