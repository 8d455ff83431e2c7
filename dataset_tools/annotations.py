"""Turns what users have (Kinetics CSVs, class folders, file lists) into a list of `VideoEntry`.

Nothing here decodes video. An entry that cannot be built (no file, bad id, a path outside the
video root) still becomes an entry, with `problem` set, so that it is reported in failures.csv and
the shard plan does not depend on which files happen to be present.
"""

import csv
import dataclasses
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ogv", ".ogg",
    ".3gp", ".wmv", ".ts", ".mts", ".m2ts", ".vob", ".gif"})
YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
KINETICS_REQUIRED = ("youtube_id", "time_start", "time_end")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split", "is_cc")


@dataclasses.dataclass(frozen=True)
class VideoEntry:
  """One video to build. `key` is unique within its split and names the video in outputs."""
  split: str
  key: str                        # Kinetics: "{id}_{start:06d}_{end:06d}"; else relative path
  path: Optional[str]             # the file to decode; None when `problem` says why not
  relative_path: str              # `path` relative to the video root (stored as video/filename)
  label: Optional[str]            # None for unlabelled (test) videos
  start_us: int = 0               # the clip's span in its source (Kinetics time_start/time_end)
  end_us: Optional[int] = None    # None: the decoded duration
  problem: Optional[str] = None   # failure reason code when the entry cannot be decoded
  detail: str = ""


def is_video_file(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def index_videos(video_dir: str) -> Dict[str, List[str]]:
  """Maps file stem -> sorted paths of every video file under `video_dir` (recursively)."""
  if not os.path.isdir(video_dir):
    raise FileNotFoundError(f"--video_dir={video_dir!r} is not a directory")
  index: Dict[str, List[str]] = {}
  for root, dirs, files in os.walk(video_dir, followlinks=True):
    dirs.sort()
    for name in files:
      if is_video_file(name) and not name.startswith("."):
        index.setdefault(os.path.splitext(name)[0], []).append(os.path.join(root, name))
  for paths in index.values():
    paths.sort()
  return index


def _parse_seconds(value: str, column: str, where: str) -> int:
  try:
    seconds = float(value)
  except ValueError:
    raise ValueError(f"{where}: column {column!r} must be a number of seconds, got {value!r}")
  if seconds < 0 or seconds != seconds:
    raise ValueError(f"{where}: column {column!r} must be >= 0, got {value!r}")
  return int(round(seconds * 1_000_000))


def _relative(path: str, root: str) -> str:
  return os.path.relpath(path, root).replace(os.sep, "/")


def _pick(paths: Sequence[str], split: str) -> str:
  # The same clip may be present twice (e.g. re-downloads): prefer a non-empty file in a folder
  # named after the split, then any non-empty one; ties broken by path for determinism.
  def rank(path):
    in_split = split in path.replace(os.sep, "/").split("/")[:-1]
    return (os.path.getsize(path) == 0, not in_split, path)
  return min(paths, key=rank)


def read_kinetics_csv(csv_path: str, video_dir: str, index: Dict[str, List[str]]) -> List[VideoEntry]:
  """Reads one Kinetics annotation CSV (`label,youtube_id,time_start,time_end,split[,is_cc]`).

  Test CSVs without `label` give unlabelled entries; a CSV without `split` takes its split from
  the file name (`validate.csv` -> "validate"). Clips are found in `index` by the downloaders'
  name `{youtube_id}_{time_start:06d}_{time_end:06d}` or, failing that, by the bare id.

  Raises:
    ValueError naming the file and line for a malformed CSV (missing columns, bad numbers).
  """
  try:
    return _read_kinetics_csv(csv_path, video_dir, index)
  except UnicodeDecodeError as e:
    raise ValueError(f"{csv_path}: not UTF-8 text ({e}); expected a Kinetics annotation CSV")


def _read_kinetics_csv(csv_path, video_dir, index):
  entries = []
  default_split = os.path.splitext(os.path.basename(csv_path))[0]
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    header = [name.strip() for name in (reader.fieldnames or [])]
    missing = [name for name in KINETICS_REQUIRED if name not in header]
    if missing:
      raise ValueError(
          f"{csv_path}: not a Kinetics annotation CSV: missing column(s) {missing}; found "
          f"{header or 'no header'}; expected header {','.join(KINETICS_COLUMNS[:5])}[,is_cc] "
          "(test CSVs may omit label)")
    reader.fieldnames = header
    for line, row in enumerate(reader, start=2):
      where = f"{csv_path}:{line}"
      if None in row or any(row.get(name) is None for name in KINETICS_REQUIRED):
        raise ValueError(f"{where}: expected {len(header)} fields ({','.join(header)}), "
                         f"got {sum(v is not None for v in row.values())}")
      youtube_id = row["youtube_id"].strip()
      start_us = _parse_seconds(row["time_start"].strip(), "time_start", where)
      end_us = _parse_seconds(row["time_end"].strip(), "time_end", where)
      split = (row.get("split") or "").strip() or default_split
      label = (row.get("label") or "").strip() or None
      key = f"{youtube_id}_{start_us // 1_000_000:06d}_{end_us // 1_000_000:06d}"
      common = dict(split=split, key=key, label=label, start_us=start_us, end_us=end_us)
      if not YOUTUBE_ID.match(youtube_id):
        entries.append(VideoEntry(
            path=None, relative_path=key, problem="invalid_id",
            detail=f"{where}: youtube_id {youtube_id!r} is not 11 characters of [A-Za-z0-9_-]",
            **common))
        continue
      paths = index.get(key) or index.get(youtube_id)
      if not paths:
        entries.append(VideoEntry(
            path=None, relative_path=key, problem="missing_file",
            detail=f"no file named {key}.<video extension> or {youtube_id}.<...> under {video_dir}",
            **common))
        continue
      path = _pick(paths, split)
      entries.append(VideoEntry(path=path, relative_path=_relative(path, video_dir), **common))
  return entries


def read_class_dirs(class_dirs: str, split: str) -> List[VideoEntry]:
  """Reads `DIR/<label>/<video>` (videos may sit in sub-folders of their label's folder).

  Raises:
    FileNotFoundError / ValueError when `class_dirs` is not a folder of label folders.
  """
  if not os.path.isdir(class_dirs):
    raise FileNotFoundError(f"--class_dirs={class_dirs!r} is not a directory")
  labels = sorted(name for name in os.listdir(class_dirs)
                  if os.path.isdir(os.path.join(class_dirs, name)) and not name.startswith("."))
  if not labels:
    raise ValueError(f"--class_dirs={class_dirs!r} holds no label folders; expected "
                     "DIR/<label>/<video file>")
  entries = []
  for label in labels:
    for root, dirs, files in os.walk(os.path.join(class_dirs, label), followlinks=True):
      dirs.sort()
      for name in sorted(files):
        if is_video_file(name) and not name.startswith("."):
          path = os.path.join(root, name)
          relative = _relative(path, class_dirs)
          entries.append(VideoEntry(split=split, key=relative, path=path,
                                    relative_path=relative, label=label))
  return entries


def _escapes(relative: str) -> bool:
  normal = os.path.normpath(relative)
  return os.path.isabs(relative) or normal == ".." or normal.startswith(".." + os.sep)


def read_file_list(list_path: str, video_root: str, default_split: str) -> List[VideoEntry]:
  """Reads a CSV of `path,label[,split]` rows (an optional header row of those names).

  Paths are relative to `video_root`; an absolute path is accepted when it lies inside it. A path
  that leads outside the root is not opened: its entry carries problem "path_escapes_root".
  """
  entries = []
  root = os.path.abspath(video_root)
  with open(list_path, newline="", encoding="utf-8-sig") as f:
    rows = list(csv.reader(f))
  if rows and [cell.strip().lower() for cell in rows[0]][:2] == ["path", "label"]:
    start, rows = 2, rows[1:]
  else:
    start = 1
  for line, row in enumerate(rows, start=start):
    if not row or not any(cell.strip() for cell in row):
      continue
    if len(row) not in (2, 3):
      raise ValueError(f"{list_path}:{line}: expected 'path,label[,split]', got {len(row)} "
                       f"field(s): {row!r}")
    given = row[0].strip()
    label = row[1].strip() or None
    split = (row[2].strip() if len(row) == 3 else "") or default_split
    candidate = os.path.normpath(given if os.path.isabs(given) else os.path.join(root, given))
    relative = os.path.relpath(candidate, root)
    if _escapes(relative) or (not os.path.isabs(given) and _escapes(given)):
      entries.append(VideoEntry(
          split=split, key=given, path=None, relative_path=given, label=label,
          problem="path_escapes_root",
          detail=f"{list_path}:{line}: {given!r} is outside the video root {root}"))
      continue
    relative = relative.replace(os.sep, "/")
    if not os.path.isfile(candidate):
      entries.append(VideoEntry(
          split=split, key=relative, path=None, relative_path=relative, label=label,
          problem="missing_file", detail=f"{candidate} does not exist"))
      continue
    entries.append(VideoEntry(split=split, key=relative, path=candidate,
                              relative_path=relative, label=label))
  return entries


def mark_duplicates(entries: Iterable[VideoEntry]) -> List[VideoEntry]:
  """Keeps the first entry of each (split, key); later copies become "duplicate_entry" failures."""
  seen = set()
  result = []
  for entry in entries:
    if (entry.split, entry.key) in seen:
      entry = dataclasses.replace(entry, path=None, problem="duplicate_entry",
                                  detail=f"{entry.key!r} is listed more than once in split "
                                         f"{entry.split!r}; the first listing was built")
    seen.add((entry.split, entry.key))
    result.append(entry)
  return result
