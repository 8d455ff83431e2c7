"""Plans and writes TFRecord shards from `VideoEntry` lists: deterministic, resumable, robust.

1) Plan: per split, entries sorted by key, shuffled with a fixed seed (so a shard mixes classes
   even when the annotations are sorted by label) and cut into `num_shards` contiguous chunks.
   The plan depends only on the inputs and flags, never on timing or worker count.
2) Decode: PyAV in `num_workers` spawned processes (pebble kills a worker whose video overruns
   `timeout_s`), or in this process when `num_workers` is 0 (no timeout then: nothing can stop a
   stuck decode; the way to read `ram://` videos, which exist in this process only). Results are
   consumed in plan order, so the bytes are the same whatever finishes first.
3) Write: each shard goes to a hidden temporary file and is renamed when complete; then its
   summary (counts, failures, a fingerprint of its videos) is saved under `.build_state/`. A
   re-run skips every shard whose file and summary exist and whose videos are unchanged (same
   paths, sizes, modification times), rebuilds the shards whose videos changed, and says so; a
   killed run leaves at worst a temporary file, or a shard without its new summary: either is
   rebuilt next time.

Two runners share every step but the scheduling: `build` here (a worker pool on this machine)
and `beam_runner.build` (an Apache Beam pipeline, one shard per DoFn call). Both call `prepare`,
`write_shard` and `finish`, so they write the same bytes.

Inputs and outputs go through `cvrl_tf.storage`, so `--output_dir=gs://...` works like a local
folder; on an object store a shard's rename is a server-side copy (all-or-nothing still: the
shard appears complete or not at all).
"""

import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import re
import sys
import time
from typing import Dict, List, Optional, Sequence, Set, Tuple

import pebble
import tensorflow as tf
import tqdm

import cvrl_tf
from cvrl_tf import schema
from cvrl_tf import storage
from dataset_tools.annotations import VideoEntry
from dataset_tools.video_decode import (DecodedVideo, VideoDecodeError, decode_video,
                                       duration_us_at, estimate_decode_cost,
                                       timed_decode_video, usable_cores)

STATE_DIR = ".build_state"
PLAN_SEED = 20210619
TARGET_SHARD_BYTES = 150 * 2**20   # TF's guidance: shards of 100-200 MB read well
MAX_VIDEO_BYTES = 1 << 30           # a SequenceExample must stay well under protobuf's 2 GB
# Measured on Kinetics-like clips at quality 90: ~0.2 bytes of JPEG per pixel.
JPEG_BYTES_PER_PIXEL = 0.2
DEFAULT_CLIP_SECONDS = 10.0


class BuildError(Exception):
  """A problem with the inputs or the output directory; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class BuildSettings:
  """Everything that changes the bytes of a shard."""
  fps: float = 25.0
  short_side: int = 256
  jpeg_quality: int = 90

  def validate(self) -> None:
    if not self.fps > 0:
      raise BuildError(f"--fps must be > 0, got {self.fps}")
    if self.short_side < 0:
      raise BuildError(f"--short_side must be >= 0 (0 keeps the source size), got {self.short_side}")
    if not 1 <= self.jpeg_quality <= 100:
      raise BuildError(f"--jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  split: str
  index: int
  num_shards: int
  entries: tuple

  @property
  def name(self) -> str:
    return schema.shard_name(self.split, self.index, self.num_shards)


@dataclasses.dataclass
class ShardSummary:
  """What a shard holds; saved beside it so that a resumed run can report the whole build."""
  name: str
  split: str
  videos: int = 0
  frames: int = 0
  bytes: int = 0
  failures: list = dataclasses.field(default_factory=list)   # [key, reason, detail]
  partial: list = dataclasses.field(default_factory=list)    # [key, detail]
  inputs: str = ""   # input_fingerprint of its videos when written ("" before it was kept)


def estimate_video_bytes(entry: VideoEntry, settings: BuildSettings) -> float:
  seconds = DEFAULT_CLIP_SECONDS
  if entry.end_us is not None and entry.end_us > entry.start_us:
    seconds = (entry.end_us - entry.start_us) / 1e6
  short = settings.short_side or 256
  return seconds * settings.fps * short * short * 16 / 9 * JPEG_BYTES_PER_PIXEL


def default_num_shards(entries: Sequence[VideoEntry], settings: BuildSettings) -> int:
  """About TARGET_SHARD_BYTES per shard, estimated from clip durations; at most one per video."""
  estimate = sum(estimate_video_bytes(e, settings) for e in entries)
  return max(1, min(len(entries), math.ceil(estimate / TARGET_SHARD_BYTES)))


def plan_split(entries: Sequence[VideoEntry], num_shards: int) -> List[ShardPlan]:
  """Cuts one split's entries into shards; the same entries always give the same shards."""
  ordered = sorted(entries, key=lambda e: e.key)
  random.Random(PLAN_SEED).shuffle(ordered)
  n = len(ordered)
  return [ShardPlan(ordered[0].split if ordered else "", i, num_shards,
                    tuple(ordered[i * n // num_shards:(i + 1) * n // num_shards]))
          for i in range(num_shards)]


def make_label_map(entries: Sequence[VideoEntry], given: Optional[Sequence[str]]) -> List[str]:
  """The label map: `given` if any (checked to cover every label), else sorted training labels.

  Labels come from the "train" split when it has labels, otherwise from every labelled entry; one
  map is used for every split (a map per split would give the same class different indices).
  """
  labels = {e.label for e in entries if e.label is not None}
  if given is not None:
    unknown = sorted(labels - set(given))
    if unknown:
      raise BuildError(
          f"{len(unknown)} label(s) are not in the label map given with --label_map, e.g. "
          f"{unknown[:5]}; add them to the map or drop --label_map to build a new one")
    return list(given)
  train = {e.label for e in entries if e.label is not None and e.split == "train"}
  label_map = schema.build_label_map(train or labels)
  missing = sorted(labels - set(label_map))
  if missing:
    raise BuildError(
        f"label(s) {missing[:5]} occur outside the training split but not in it; build the "
        "training split first and pass its label_map.txt with --label_map, or fix the annotations")
  return label_map


def _digest(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _plan_fingerprint(shards: Sequence[ShardPlan]) -> str:
  return _digest([[s.name, [[e.key, e.relative_path, e.label, e.start_us, e.end_us, e.problem]
                            for e in s.entries]] for s in shards])


def _video_facts(entry: VideoEntry) -> list:
  if entry.problem is not None or entry.path is None:
    return [entry.key, entry.problem]
  try:
    size, mtime_ns = storage.size_and_mtime_ns(entry.path)
  except (tf.errors.NotFoundError, FileNotFoundError):   # gone since it was listed
    return [entry.key, entry.relative_path, "missing"]
  return [entry.key, entry.relative_path, size, mtime_ns]


def input_fingerprint(entries: Sequence[VideoEntry]) -> str:
  """A digest of the videos' relative paths, sizes and modification times (ram:// keeps no
  times: its sizes only); changes when a video is replaced, re-downloaded or appears."""
  # One stat per video; threads, because on gs:// each stat is a round trip.
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    return _digest(list(pool.map(_video_facts, entries)))


COMPLETE, CHANGED, MISSING = "complete", "changed", "missing"


def shard_state(output_dir: str, shard: ShardPlan) -> Tuple[str, str]:
  """(state, input_fingerprint of the shard's videos): COMPLETE (file and summary there,
  written from these videos), CHANGED (written from other videos: rebuild it) or MISSING. Both
  runners ask this before building a shard; the fingerprint goes into its summary."""
  inputs = input_fingerprint(shard.entries)
  summary_path = _state_path(output_dir, shard.name + ".json")
  if not (storage.exists(storage.join(output_dir, shard.name)) and storage.exists(summary_path)):
    return MISSING, inputs
  written_from = storage.read_json(summary_path).get("inputs")
  return (COMPLETE if written_from == inputs else CHANGED), inputs


def _state_path(output_dir: str, name: str) -> str:
  return storage.join(output_dir, STATE_DIR, name)


def _write_json(path: str, obj, indent: Optional[int] = 2) -> None:
  storage.atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def _write_plan(output_dir: str, split: str, shards: Sequence[ShardPlan]) -> None:
  # The entries of every shard, so that a Beam worker can rebuild its shard from its name
  # (a pipeline graph holding 650k entries would be too large to submit to Dataflow).
  # Compact: Kinetics's plan is ~100 MB of JSON with an indent.
  _write_json(_state_path(output_dir, f"{split}.plan.json"),
              {"fingerprint": _plan_fingerprint(shards), "num_shards": len(shards),
               "shards": [[dataclasses.astuple(e) for e in s.entries] for s in shards]},
              indent=None)


def read_plan(output_dir: str, split: str) -> List[ShardPlan]:
  """The shards of `split` as `prepare` saved them in `output_dir`."""
  saved = storage.read_json(_state_path(output_dir, f"{split}.plan.json"))
  n = saved["num_shards"]
  return [ShardPlan(split, i, n, tuple(VideoEntry(*row) for row in rows))
          for i, rows in enumerate(saved["shards"])]


def _our_outputs(output_dir: str) -> List[str]:
  names = [schema.LABEL_MAP_FILE, schema.DATASET_INFO_FILE, schema.FAILURES_FILE, STATE_DIR]
  paths = [storage.join(output_dir, n) for n in names]
  paths = [p for p in paths if storage.exists(p)]
  paths += storage.glob(storage.join(output_dir, "*-?????-of-?????.tfrecord"))
  paths += storage.glob(storage.join(output_dir, ".*-?????-of-?????.tfrecord.*.tmp"))
  for name in names[:3]:  # atomic_write leftovers of a killed run
    paths += storage.glob(storage.join(output_dir, f".{name}.*.tmp"))
  return sorted(paths)


def remove_outputs(output_dir: str) -> None:
  """--overwrite: removes the builder's own files only; anything else in the folder stays."""
  for path in _our_outputs(output_dir):
    storage.remove(path)


def check_output_dir(output_dir: str, settings: BuildSettings, label_map: Sequence[str],
                     plans: Dict[str, List[ShardPlan]]) -> None:
  """Refuses to mix this build with a different one already in `output_dir`.

  A folder holding the same build (same settings, label map and per-split plan) is resumed; one
  holding anything else of ours needs --overwrite or another --output_dir.
  """
  hint = "pass --overwrite to replace it, or choose another --output_dir"
  settings_path = _state_path(output_dir, "settings.json")
  ours = _our_outputs(output_dir)
  if ours and not storage.exists(settings_path):
    raise BuildError(f"{output_dir} already holds {storage.basename(ours[0])} from another "
                     f"build or tool; {hint}")
  if storage.exists(settings_path):
    stored = storage.read_json(settings_path)
    if stored != dataclasses.asdict(settings):
      raise BuildError(f"{output_dir} was built with {stored}, not {dataclasses.asdict(settings)}; "
                       f"{hint}")
  label_path = storage.join(output_dir, schema.LABEL_MAP_FILE)
  if storage.exists(label_path) and schema.read_label_map(label_path) != list(label_map):
    raise BuildError(f"{label_path} differs from this build's label map; reuse it with "
                     f"--label_map={label_path}, or {hint}")
  for split, shards in plans.items():
    plan_path = _state_path(output_dir, f"{split}.plan.json")
    if storage.exists(plan_path):
      if storage.read_json(plan_path)["fingerprint"] != _plan_fingerprint(shards):
        raise BuildError(f"split {split!r} in {output_dir} was built from other videos or with "
                         f"another --num_shards; {hint}")
    else:
      # Split names are [A-Za-z0-9_.]: nothing to escape in the pattern.
      stray = storage.glob(storage.join(output_dir, split + "-?????-of-?????.tfrecord"))
      if stray:
        raise BuildError(f"{output_dir} already holds {storage.basename(stray[0])}; {hint}")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


# storage.temporary_name's ".{name}.{pid}.{8 hex digits}.tmp".
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def remove_stale_temporaries(output_dir: str) -> None:
  """Deletes the half-written files of builds that were killed (their process is gone).

  The pid is this machine's: run one build of a folder at a time (on an object store a killed
  writer mostly leaves nothing, as an object appears only when its upload completes).
  """
  for directory in (output_dir, storage.join(output_dir, STATE_DIR)):
    if not storage.isdir(directory):
      continue
    for name in storage.listdir(directory):
      match = _TEMPORARY.match(name)
      if match and not _pid_alive(int(match.group(1))):
        storage.remove(storage.join(directory, name))


class _InProcess:
  """The future of a call made in this process, when its result is asked for."""

  def __init__(self, task, path: str, kwargs: dict):
    self._call = lambda: task(path, **kwargs)

  def result(self):
    return self._call()


class Decoder:
  """Decodes entries in a worker pool (in this process when `num_workers` is 0), handing
  results back in submission order.

  Workers start the video the writer waits for, then the costliest videos of a look-ahead window
  (header estimate, local files): a long video that the plan puts last would otherwise run alone
  while the other cores idle. Results still come back in the order of the entries, so the
  shards' bytes do not change.
  """

  def __init__(self, settings: BuildSettings, num_workers: int, timeout_s: Optional[float],
               task=decode_video, threads: Optional[int] = None):
    """`threads`: FFmpeg threads per video (decode_video's), or None to choose per video.

    None: one thread per video while the workers fill the cores, the least CPU per frame; the
    last videos submitted (fewer left than workers), and every video of a pool smaller than the
    machine, get FFmpeg's own threads (0), so a long video left alone still has every core.
    A runner whose workers already fill the cores and whose tail is not this pool's (Beam) fixes 1.
    """
    # Workers get plain values and a function of video_decode.py: unpickling anything of this
    # module would import TensorFlow in every worker.
    self._task = task
    self._kwargs = dataclasses.asdict(settings)
    self._timeout = timeout_s if timeout_s and timeout_s > 0 else None
    # spawn: workers must not inherit TensorFlow's threads (the parent writes TFRecords).
    self._pool = pebble.ProcessPool(max_workers=num_workers,
                                    context=multiprocessing.get_context("spawn")
                                    ) if num_workers else None
    self._num_workers = num_workers
    self._threads = threads
    self._fills_cores = num_workers >= usable_cores()
    # Two tasks per worker in flight (one running, one queued: no worker waits on this process);
    # the look-ahead bounds the finished results held here until their turn.
    self._in_flight = 2 * num_workers
    self._lookahead = max(1, 8 * num_workers)
    # Of the latest decode_in_order, from its first decoded video on: when that came, and how
    # long this process then waited for the next one (writer_busy).
    self._first_result_at: Optional[float] = None
    self._waited_s = 0.0

  def close(self) -> None:
    if self._pool is not None:
      self._pool.stop()
      self._pool.join()

  def writer_busy(self) -> Optional[float]:
    """The fraction of the time since the latest decode_in_order's first decoded video that this
    process spent on anything but waiting for the next decode (serialising and writing): near
    1, it, not the workers, set the pace. Wall-clock time: on a crowded machine it includes
    waiting for a core. None before a result, or without worker processes."""
    if self._pool is None or self._first_result_at is None:
      return None
    elapsed = time.monotonic() - self._first_result_at
    return 1.0 - self._waited_s / elapsed if elapsed > 0 else None

  def _threads_for(self, left_after: int) -> int:
    """FFmpeg threads for a video submitted with `left_after` videos still to submit."""
    if self._threads is not None:
      return self._threads
    return 1 if self._fills_cores and left_after >= self._num_workers else 0

  def _submit(self, path: str, left_after: int):
    kwargs = dict(self._kwargs, threads=self._threads_for(left_after))
    if self._pool is None:
      return _InProcess(self._task, path, kwargs)
    return self._pool.schedule(self._task, args=(path,), kwargs=kwargs, timeout=self._timeout)

  def _futures_in_order(self, entries: Sequence[VideoEntry], on_done):
    """Yields once for each entry without a known problem, in the order of `entries`, when its
    video is decoded; submits from the window [index, index + look-ahead), the awaited video
    first, then the costliest.

    Each finished future goes to `on_done(index, future)` (in the order they finish, whenever
    this process looks: while it waits for the awaited video) and is dropped here, so that a
    result is held once; the yield is then None. In this process (no pool) it is a future to
    resolve.
    """
    futures, costs, handed = {}, {}, set()
    left = sum(entry.problem is None for entry in entries)  # not submitted yet
    self._first_result_at, self._waited_s = None, 0.0

    def hand_over_finished():
      for j in [j for j, future in futures.items() if future.done()]:
        if self._first_result_at is None:
          self._first_result_at = time.monotonic()
        handed.add(j)
        on_done(j, futures.pop(j))

    for i, entry in enumerate(entries):
      if entry.problem is not None:
        continue
      if self._pool is None:  # in this process: decoded when its result is asked for
        left -= 1
        yield self._submit(entry.path, left)
        continue
      while i not in handed:
        window = [j for j in range(i, min(i + self._lookahead, len(entries)))
                  if j not in futures and j not in handed and entries[j].problem is None]
        for j in window:
          if j not in costs:
            costs[j] = estimate_decode_cost(entries[j].path)
        busy = [f for f in futures.values() if not f.done()]
        # The video the writer waits for, then the costliest; equal costs (unknown: 0.0) keep
        # the plan's order. (Costliest first alone left a cheap video early in the plan to the
        # end of the build, and the writer's backlog behind it with one core busy.)
        for j in sorted(window, key=lambda j: (j != i, -costs[j], j))[
            :self._in_flight - len(busy)]:
          left -= 1
          futures[j] = self._submit(entries[j].path, left)
          busy.append(futures[j])
        hand_over_finished()
        if i not in handed:
          waiting_since = time.monotonic()
          concurrent.futures.wait(busy, return_when=concurrent.futures.FIRST_COMPLETED)
          if self._first_result_at is not None:
            self._waited_s += time.monotonic() - waiting_since
      hand_over_finished()  # what finished before `i` did, seen late, goes first
      costs.pop(i, None)
      handed.discard(i)
      yield None

  def _outcome(self, entry: VideoEntry, future):
    """The DecodedVideo of a finished future, or the VideoDecodeError that says why not."""
    try:
      return future.result()
    except VideoDecodeError as e:
      return e
    except concurrent.futures.TimeoutError:
      return VideoDecodeError("timeout", f"{entry.path}: decoding took over {self._timeout} s "
                                         "(--timeout_s)")
    except pebble.ProcessExpired as e:
      return VideoDecodeError("worker_crashed", f"{entry.path}: the decoder process died "
                                                f"(exit code {e.exitcode})")
    except Exception as e:  # a bug or an FFmpeg error we did not foresee: report, go on
      return VideoDecodeError("decode_error", f"{entry.path}: {type(e).__name__}: {e}")

  def decode_in_order(self, entries: Sequence[VideoEntry], prepare=lambda entry, result: result):
    """Yields (entry, prepare(entry, DecodedVideo | VideoDecodeError)) in the order of `entries`.

    `prepare` runs in this process as soon as each video is decoded, in whatever order they
    finish: its work (write_shard's serialisation) keeps pace with the workers instead of piling
    up behind the video the writer waits for. An exception it raises comes out at its own entry.
    """
    ready = {}  # index -> (prepared, None) or (None, the exception prepare raised)

    def on_done(j, future):
      try:
        ready[j] = prepare(entries[j], self._outcome(entries[j], future)), None
      except Exception as e:  # raised at j's turn, not at the entry being waited for
        ready[j] = None, e

    futures = self._futures_in_order(entries, on_done)
    for i, entry in enumerate(entries):
      if entry.problem is not None:
        yield entry, prepare(entry, VideoDecodeError(entry.problem, entry.detail))
        continue
      in_process = next(futures)
      if in_process is not None:
        yield entry, prepare(entry, self._outcome(entry, in_process))
        continue
      prepared, error = ready.pop(i)
      if error is not None:
        raise error
      yield entry, prepared


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """A decoded video as write_shard stores it: its serialized SequenceExample."""
  record: bytes
  frames: int
  partial_error: Optional[str]


def _serialize(entry: VideoEntry, video: DecodedVideo, settings: BuildSettings,
               label_map: Dict[str, int]) -> bytes:
  duration = duration_us_at(len(video.jpegs), settings.fps)
  end_us = entry.end_us if entry.end_us is not None else entry.start_us + duration
  labelled = entry.label is not None
  return schema.serialize_video(
      video.jpegs, video_id=entry.key, filename=entry.relative_path, fps=settings.fps,
      height=video.height, width=video.width, start_us=entry.start_us, end_us=end_us,
      label_index=label_map[entry.label] if labelled else None,
      label_text=entry.label if labelled else None)


def record_maker(settings: BuildSettings, label_map: Dict[str, int]):
  """The `prepare` of Decoder.decode_in_order for write_shard: (entry, DecodedVideo |
  VideoDecodeError) -> VideoRecord | VideoDecodeError; a video over MAX_VIDEO_BYTES of JPEG
  frames becomes a too_large failure."""
  def prepare(entry: VideoEntry, result):
    if isinstance(result, VideoDecodeError):
      return result
    if sum(map(len, result.jpegs)) > MAX_VIDEO_BYTES:
      return VideoDecodeError("too_large", f"{entry.path}: over {MAX_VIDEO_BYTES >> 20} MB of "
                                           "JPEG frames; lower --fps or trim the video")
    return VideoRecord(record=_serialize(entry, result, settings, label_map),
                       frames=len(result.jpegs), partial_error=result.partial_error)
  return prepare


def write_shard(output_dir: str, shard: ShardPlan, results, inputs: str,
                on_video=None) -> ShardSummary:
  """Writes one shard from (entry, VideoRecord | VideoDecodeError) pairs (decode_in_order with
  record_maker); renames it into place only when complete.

  `inputs` (input_fingerprint of the shard's videos) is kept in its summary; `on_video(result)`
  is called with each VideoRecord or VideoDecodeError as it is written.
  """
  summary = ShardSummary(name=shard.name, split=shard.split, inputs=inputs)
  # Unique per process: two builds of one folder (a retried job) must not write one file; both
  # produce the same bytes, so whichever rename lands last is right.
  tmp_path = storage.temporary_name(storage.join(output_dir, shard.name))
  with tf.io.TFRecordWriter(tmp_path) as writer:
    for entry, result in results:
      if isinstance(result, VideoDecodeError):
        summary.failures.append([entry.key, result.reason, result.detail])
      else:
        writer.write(result.record)
        summary.videos += 1
        summary.frames += result.frames
        if result.partial_error:
          summary.partial.append([entry.key, result.partial_error])
      if on_video:
        on_video(result)
  summary.bytes = storage.size(tmp_path)
  # The shard, then its summary: a run killed in between leaves the new shard beside the old
  # summary (or none), which reads as changed (or missing) and is rebuilt. The other order
  # could leave the old shard beside the new fingerprint, complete for good.
  storage.rename(tmp_path, storage.join(output_dir, shard.name), overwrite=True)
  _write_json(_state_path(output_dir, shard.name + ".json"), dataclasses.asdict(summary))
  return summary


def dataset_info(settings: BuildSettings, label_map: Sequence[str],
                 summaries: Dict[str, List[ShardSummary]]) -> dict:
  """The content of dataset_info.json (no timings: equal builds give equal files)."""
  splits = {}
  for split, shards in sorted(summaries.items()):
    failures: Dict[str, int] = {}
    for shard in shards:
      for _, reason, _ in shard.failures:
        failures[reason] = failures.get(reason, 0) + 1
    splits[split] = {
        "num_shards": len(shards),
        "shard_pattern": schema.shard_pattern(split),
        "videos": sum(s.videos for s in shards),
        "frames": sum(s.frames for s in shards),
        "bytes": sum(s.bytes for s in shards),
        "failures": dict(sorted(failures.items())),
        "partial_decodes": sorted(p for s in shards for p in s.partial),
    }
  return {
      "format": schema.FORMAT_NAME,
      "library_version": cvrl_tf.__version__,
      "settings": {**dataclasses.asdict(settings), "image_format": "jpeg",
                   "frame_grid": "constant rate: stored frame i shows time i / fps"},
      "label_map": schema.LABEL_MAP_FILE,
      "num_classes": len(label_map),
      "splits": splits,
  }


def failures_csv(summaries: Dict[str, List[ShardSummary]]) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["split", "id_or_path", "reason", "detail"])
  for split, shards in sorted(summaries.items()):
    for shard in shards:
      for key, reason, detail in shard.failures:
        writer.writerow([split, key, reason, detail])
  return buffer.getvalue()


def _summary_paths(output_dir: str) -> List[str]:
  """The shards' summaries under `output_dir`: one listing."""
  return storage.glob(_state_path(output_dir, "*.tfrecord.json"))


def _shard_of(summary_path: str) -> str:
  return storage.basename(summary_path)[:-len(".json")]


def summarised_shards(output_dir: str) -> Set[str]:
  """Names of the shards that have a summary in `output_dir`: one listing, cheap on gs:// (a
  summary is saved once its shard is in place)."""
  return {_shard_of(path) for path in _summary_paths(output_dir)}


def _complete_summary(output_dir: str, path: str) -> Optional[ShardSummary]:
  """The summary at `path` if its shard is in `output_dir`, else None."""
  if not storage.exists(storage.join(output_dir, _shard_of(path))):
    return None
  return ShardSummary(**storage.read_json(path))


def load_summaries(output_dir: str) -> Dict[str, List[ShardSummary]]:
  """Summaries of every complete shard in `output_dir`, all splits (earlier runs included)."""
  paths = _summary_paths(output_dir)
  # Threads, as for input_fingerprint: on gs:// each read is a round trip, and Kinetics has
  # thousands of shards.
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    found = pool.map(functools.partial(_complete_summary, output_dir), paths)
    summaries = [s for s in found if s is not None]
  by_split: Dict[str, List[ShardSummary]] = {}
  for summary in summaries:
    by_split.setdefault(summary.split, []).append(summary)
  return by_split


def written_from(summaries: Dict[str, List[ShardSummary]]) -> Dict[str, str]:
  """{shard name: input_fingerprint it was written from} of `summaries` (load_summaries; ""
  for a shard written before fingerprints)."""
  return {s.name: s.inputs for shards in summaries.values() for s in shards}


def shard_outcomes(before: Dict[str, str], after: Dict[str, str],
                   names: Sequence[str]) -> Tuple[int, List[str]]:
  """(skipped, rebuilt names) among the shards `names`, from written_from before and after a
  run: skipped were complete and kept their videos, rebuilt were complete and were written
  again from other ones. Taken from the files, not from a runner's counters: Beam counts the
  work of a retried shard once it succeeds, and a retry finds a rebuilt shard complete."""
  skipped = sum(name in before and before[name] == after.get(name) for name in names)
  rebuilt = sorted(name for name in names
                   if name in before and name in after and before[name] != after[name])
  return skipped, rebuilt


@dataclasses.dataclass
class BuildReport:
  summaries: Dict[str, List[ShardSummary]]
  entries_this_run: int        # entries of the splits named in this build
  failures_this_run: int
  videos_decoded: int          # decoded by this run (0 when everything was resumed)
  seconds: float
  skipped_shards: int          # complete and unchanged: not rewritten
  rebuilt_shards: int = 0      # complete but written from videos that changed since
  rebuilt_names: List[str] = dataclasses.field(default_factory=list)   # those shards
  # Decoder.writer_busy at the end of the local runner's decoding (None: Beam, no workers).
  writer_busy: Optional[float] = None
  counters: Dict[str, int] = dataclasses.field(default_factory=dict)  # the Beam pipeline's

  @property
  def failure_fraction(self) -> float:
    return self.failures_this_run / max(1, self.entries_this_run)


@dataclasses.dataclass(frozen=True)
class BuildPlan:
  """What `prepare` decided: the label map and every split's shards."""
  labels: List[str]
  splits: Dict[str, List[ShardPlan]]

  @property
  def shards(self) -> List[ShardPlan]:
    return [s for shards in self.splits.values() for s in shards]

  @property
  def label_index(self) -> Dict[str, int]:
    return {label: i for i, label in enumerate(self.labels)}


def check_workers(entries: Sequence[VideoEntry], num_workers: int) -> None:
  """Raises BuildError for a negative --num_workers, or ram:// videos with decoding processes."""
  if num_workers < 0:
    raise BuildError(f"--num_workers must be >= 0 (0: decode in this process), got {num_workers}")
  in_memory = next((e.path for e in entries if e.path and e.path.startswith("ram://")), None)
  if in_memory and num_workers:
    raise BuildError(f"{in_memory} is on ram://, which lives in this process only: worker "
                     "processes cannot read it; pass --num_workers=0 to decode in this process")


def prepare(entries: Sequence[VideoEntry], output_dir: str, settings: BuildSettings, *,
            num_shards: Optional[int], label_map: Optional[Sequence[str]],
            overwrite: bool) -> BuildPlan:
  """Checks the inputs and `output_dir`, plans the shards and saves the plan, the settings and
  the label map there (the runners then write the shards, `finish` the rest).

  Raises:
    BuildError naming the problem with the inputs or with what `output_dir` already holds.
  """
  settings.validate()
  if num_shards is not None and num_shards < 1:
    raise BuildError(f"--num_shards must be >= 1, got {num_shards}")
  if not entries:
    raise BuildError("the inputs list no videos")
  for split in {e.split for e in entries}:
    if not re.fullmatch(r"[A-Za-z0-9_.]+", split):
      raise BuildError(f"split name {split!r} cannot name shard files; use letters, digits, "
                       "'_' or '.'")
  labels = make_label_map(entries, label_map)
  by_split: Dict[str, List[VideoEntry]] = {}
  for entry in entries:
    by_split.setdefault(entry.split, []).append(entry)
  # A shard per video at most: an empty shard would leave a host that reads only it idle.
  plans = {split: plan_split(group, min(len(group), num_shards or
                                        default_num_shards(group, settings)))
           for split, group in sorted(by_split.items())}

  storage.makedirs(output_dir)
  if overwrite:
    remove_outputs(output_dir)
  check_output_dir(output_dir, settings, labels, plans)
  remove_stale_temporaries(output_dir)
  storage.makedirs(storage.join(output_dir, STATE_DIR))
  _write_json(_state_path(output_dir, "settings.json"), dataclasses.asdict(settings))
  storage.atomic_write_text(storage.join(output_dir, schema.LABEL_MAP_FILE),
                            schema.format_label_map(labels))
  for split, shards in plans.items():
    _write_plan(output_dir, split, shards)
  return BuildPlan(labels, plans)


def finish(output_dir: str, settings: BuildSettings, plan: BuildPlan, *, entries_this_run: int,
           videos_decoded: int, seconds: float, skipped_shards: int,
           rebuilt_shards: int, rebuilt_names: Sequence[str] = (),
           writer_busy: Optional[float] = None,
           summaries: Optional[Dict[str, List[ShardSummary]]] = None) -> BuildReport:
  """Writes dataset_info.json and failures.csv from every complete shard's summary
  (`summaries`: load_summaries(output_dir) when the caller has just read them)."""
  if summaries is None:
    summaries = load_summaries(output_dir)
  _write_json(storage.join(output_dir, schema.DATASET_INFO_FILE),
              dataset_info(settings, plan.labels, summaries))
  storage.atomic_write_text(storage.join(output_dir, schema.FAILURES_FILE), failures_csv(summaries))
  this_run = [s for split in plan.splits for s in summaries.get(split, [])]
  return BuildReport(
      summaries=summaries,
      entries_this_run=entries_this_run,
      failures_this_run=sum(len(s.failures) for s in this_run),
      videos_decoded=videos_decoded,
      seconds=seconds,
      skipped_shards=skipped_shards,
      rebuilt_shards=rebuilt_shards,
      rebuilt_names=list(rebuilt_names),
      writer_busy=writer_busy)


def build(entries: Sequence[VideoEntry], output_dir: str, settings: BuildSettings, *,
          num_shards: Optional[int], num_workers: int, timeout_s: Optional[float],
          label_map: Optional[Sequence[str]], overwrite: bool,
          progress: bool = True) -> BuildReport:
  """Builds (or resumes) the shards of every split in `entries` under `output_dir`.

  Args:
    entries: every split's videos (from annotations.read_*).
    output_dir: a local folder or a URL of any file system of tf.io.gfile (gs://, ram://).
    num_shards: shards per split; None: about TARGET_SHARD_BYTES each.
    num_workers: decoding processes; 0 decodes in this process (no timeout; `ram://` inputs).
    timeout_s: per video, in worker processes; None or 0: no limit.
    label_map: the labels in index order; None: the sorted training labels.
    overwrite: replace an earlier build in `output_dir` (the builder's files only).
    progress: show a progress bar on stderr.

  Raises:
    BuildError naming the problem with the inputs or with what `output_dir` already holds.
  """
  check_workers(entries, num_workers)
  plan = prepare(entries, output_dir, settings, num_shards=num_shards, label_map=label_map,
                 overwrite=overwrite)
  states = {s.name: shard_state(output_dir, s) for s in plan.shards}  # name -> (state, inputs)
  todo = [s for s in plan.shards if states[s.name][0] != COMPLETE]
  rebuilt = [s.name for s in todo if states[s.name][0] == CHANGED]
  label_index = plan.label_index
  start = time.monotonic()
  decoded = 0
  writer_busy = None
  if todo:
    # In a log file (CI, nohup) a bar redrawn ten times a second is noise: redraw every 15 s.
    interactive = sys.stderr.isatty()
    bar = tqdm.tqdm(total=sum(len(s.entries) for s in todo), unit="video", disable=not progress,
                    dynamic_ncols=True, desc="building", mininterval=0.2 if interactive else 15)
    failed = 0

    def on_video(result):
      nonlocal failed, decoded
      decoded += 1
      failed += isinstance(result, VideoDecodeError)
      bar.update(1)
      bar.set_postfix(failed=failed, refresh=False)

    decoder = Decoder(settings, num_workers, timeout_s)
    try:
      results = decoder.decode_in_order([e for s in todo for e in s.entries],
                                        record_maker(settings, label_index))
      for shard in todo:
        shard_results = (next(results) for _ in shard.entries)
        write_shard(output_dir, shard, shard_results, states[shard.name][1], on_video)
      writer_busy = decoder.writer_busy()
    finally:
      decoder.close()
      bar.close()
  return finish(output_dir, settings, plan, entries_this_run=len(entries),
                videos_decoded=decoded, seconds=time.monotonic() - start,
                skipped_shards=len(plan.shards) - len(todo), rebuilt_shards=len(rebuilt),
                rebuilt_names=rebuilt, writer_busy=writer_busy)


def dry_run(entries: Sequence[VideoEntry], settings: BuildSettings, *, num_workers: int,
            timeout_s: Optional[float], sample_size: int = 8) -> dict:
  """Decodes an evenly spread sample and extrapolates size and time; writes nothing."""
  settings.validate()
  check_workers(entries, num_workers)
  candidates = sorted((e for e in entries if e.problem is None), key=lambda e: (e.split, e.key))
  step = max(1, len(candidates) // max(1, sample_size))
  sample = candidates[::step][:sample_size]
  # One thread per video, as a build's workers decode until its last few videos.
  decoder = Decoder(settings, num_workers, timeout_s, task=timed_decode_video, threads=1)
  sizes, frames, seconds, failures = [], [], [], 0
  try:
    for _, result in decoder.decode_in_order(sample):
      if isinstance(result, VideoDecodeError):
        failures += 1
        continue
      result, decode_seconds = result
      seconds.append(decode_seconds)
      # Serialized size ~ JPEG bytes plus a few dozen bytes of framing per frame.
      sizes.append(sum(map(len, result.jpegs)) + 32 * len(result.jpegs))
      frames.append(len(result.jpegs))
  finally:
    decoder.close()
  usable = sum(e.problem is None for e in entries)
  ok_fraction = (len(sizes) / len(sample)) if sample else 0.0
  expected_ok = usable * ok_fraction
  mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
  return {
      "videos_listed": len(entries),
      "videos_unusable_before_decoding": len(entries) - usable,
      "sampled": len(sample),
      "sample_failures": failures,
      "mean_frames_per_video": mean(frames),
      "mean_bytes_per_video": mean(sizes),
      "estimated_total_bytes": mean(sizes) * expected_ok,
      "estimated_total_frames": mean(frames) * expected_ok,
      "seconds_per_video_one_worker": mean(seconds),
      "estimated_seconds": mean(seconds) * usable / max(1, num_workers),
  }
