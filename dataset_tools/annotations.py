"""Turns what users have (Kinetics CSVs, class folders, file lists, the UCF-101 and HMDB-51 split
files) into a list of `VideoEntry`.

Nothing here decodes video. An entry that cannot be built (no file, bad id, a path outside the
video root) still becomes an entry, with `problem` set, so that it is reported in failures.csv and
the shard plan does not depend on which files happen to be present.

Every file is read through `cvrl_tf.storage`: inputs may be local or on `gs://` / `s3://`. On an
object store every stat is a request, so existence is learned from folder listings (one per
folder) rather than asked file by file.
"""

import csv
import dataclasses
import io
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from cvrl_tf import storage

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
  return storage.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _video_files(directory: str) -> List[str]:
  """Every video file below `directory`: its own (sorted), then each sub-folder's, by name.

  A name with a video extension is taken for a file without asking: on an object store each
  `isdir` is a request, and a Kinetics folder holds 650k clips. Hidden files are skipped.
  """
  paths, folders = [], []
  for name in storage.listdir(directory):
    path = storage.join(directory, name)
    if is_video_file(name):
      if not name.startswith("."):
        paths.append(path)
    elif storage.isdir(path):
      folders.append(path)
  for folder in folders:
    paths += _video_files(folder)
  return paths


def _existing(paths: Iterable[str]) -> set:
  """The subset of `paths` that exist, from one listing of each parent folder."""
  found = set()
  for folder in sorted({storage.dirname(p) for p in paths}):
    if storage.isdir(folder):
      found.update(storage.join(folder, name) for name in storage.listdir(folder))
  return found


def index_videos(video_dir: str) -> Dict[str, List[str]]:
  """Maps file stem -> sorted paths of every video file under `video_dir` (recursively)."""
  if not storage.isdir(video_dir):
    raise FileNotFoundError(f"--video_dir={video_dir!r} is not a directory")
  index: Dict[str, List[str]] = {}
  for path in _video_files(video_dir):
    index.setdefault(storage.splitext(storage.basename(path))[0], []).append(path)
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


def _pick(paths: Sequence[str], split: str) -> str:
  # The same clip may be present twice (e.g. re-downloads): prefer a non-empty file in a folder
  # named after the split, then any non-empty one; ties broken by path for determinism.
  if len(paths) == 1:
    return paths[0]
  def rank(path):
    in_split = split in path.split("/")[:-1]
    return (storage.size(path) == 0, not in_split, path)
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
  default_split = storage.splitext(storage.basename(csv_path))[0]
  with io.StringIO(storage.read_text(csv_path), newline="") as f:
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
      entries.append(VideoEntry(path=path, relative_path=storage.relative_to(path, video_dir),
                                **common))
  return entries


def read_class_dirs(class_dirs: str, split: str) -> List[VideoEntry]:
  """Reads `DIR/<label>/<video>` (videos may sit in sub-folders of their label's folder).

  Raises:
    FileNotFoundError / ValueError when `class_dirs` is not a folder of label folders.
  """
  if not storage.isdir(class_dirs):
    raise FileNotFoundError(f"--class_dirs={class_dirs!r} is not a directory")
  labels = [name for name in storage.listdir(class_dirs)
            if not name.startswith(".") and storage.isdir(storage.join(class_dirs, name))]
  if not labels:
    raise ValueError(f"--class_dirs={class_dirs!r} holds no label folders; expected "
                     "DIR/<label>/<video file>")
  entries = []
  for label in labels:
    for path in _video_files(storage.join(class_dirs, label)):
      relative = storage.relative_to(path, class_dirs)
      entries.append(VideoEntry(split=split, key=relative, path=path, relative_path=relative,
                                label=label))
  return entries


def _inside(relative: str) -> Optional[str]:
  """`relative` ("/"-separated) with "." and ".." resolved, or None when it leads outside its
  root (or is absolute). Purely lexical: a path is judged before anything is opened."""
  if relative.startswith("/") or "://" in relative:
    return None
  parts = []
  for part in relative.split("/"):
    if part == "..":
      if not parts:
        return None
      parts.pop()
    elif part not in ("", "."):
      parts.append(part)
  return "/".join(parts) if parts else None


def _is_absolute(path: str) -> bool:
  return path.startswith("/") or not storage.is_local(path)


def _read_rows(path: str) -> List[str]:
  """The lines of a text file (any line ending), with a message naming it when not UTF-8."""
  try:
    return storage.read_text(path).splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e})") from None


def read_file_list(list_path: str, video_dir: Optional[str], default_split: str) -> List[VideoEntry]:
  """Reads a CSV of `path,label[,split]` rows (an optional header row of those names).

  With `video_dir`, every path must lie inside it: relative paths resolve against it, absolute
  ones must lead into it. Without, relative paths resolve against the list's folder (and must
  stay inside it) and absolute paths are taken as written: a list made with
  `find /data -name '*.mp4'` builds. A path that leads outside its root is not opened: its
  entry carries problem "path_escapes_root". Keys (and stored filenames) are paths relative to
  the root; an absolute path outside the list's folder keeps its absolute form.
  """
  root = storage.absolute(video_dir or storage.dirname(storage.absolute(list_path)))
  with io.StringIO(storage.read_text(list_path), newline="") as f:
    rows = list(csv.reader(f))
  if rows and [cell.strip().lower() for cell in rows[0]][:2] == ["path", "label"]:
    start, rows = 2, rows[1:]
  else:
    start = 1
  entries = []
  for line, row in enumerate(rows, start=start):
    if not row or not any(cell.strip() for cell in row):
      continue
    if len(row) not in (2, 3):
      raise ValueError(f"{list_path}:{line}: expected 'path,label[,split]', got {len(row)} "
                       f"field(s): {row!r}")
    given = row[0].strip()
    common = dict(label=row[1].strip() or None,
                  split=(row[2].strip() if len(row) == 3 else "") or default_split)
    relative = _inside(storage.relative_to(given, root) if _is_absolute(given) else given)
    if relative is not None:
      key, path = relative, storage.join(root, relative)
    elif _is_absolute(given) and not video_dir:
      key = path = storage.absolute(given)
    else:
      entries.append(VideoEntry(
          key=given, path=None, relative_path=given, problem="path_escapes_root",
          detail=f"{list_path}:{line}: {given!r} is outside the video root {root}", **common))
      continue
    entries.append(VideoEntry(key=key, path=path, relative_path=key, **common))
  return _mark_missing(entries)


def _mark_missing(entries: List[VideoEntry]) -> List[VideoEntry]:
  """Entries whose file is absent get problem "missing_file" (one listing per folder)."""
  existing = _existing(e.path for e in entries if e.path is not None)
  return [e if e.path is None or e.path in existing else dataclasses.replace(
              e, path=None, problem="missing_file", detail=f"{e.path} does not exist")
          for e in entries]


def _split_entry(video_dir: str, relative: str, split: str, label: str,
                 where: str) -> VideoEntry:
  """The entry of a row of an official split file (path checked lexically, not yet on disk)."""
  inside = _inside(relative)
  if inside is None:
    return VideoEntry(split=split, key=relative, path=None, relative_path=relative, label=label,
                      problem="path_escapes_root",
                      detail=f"{where}: {relative!r} is outside --video_dir={video_dir}")
  return VideoEntry(split=split, key=inside, path=storage.join(video_dir, inside),
                    relative_path=inside, label=label)


def _require_file(path: str, what: str) -> None:
  if not storage.isfile(path):
    raise FileNotFoundError(f"{path} does not exist; expected {what}")


def read_ucf101_splits(split_dir: str, video_dir: str,
                       split_id: int) -> Tuple[List[VideoEntry], List[str]]:
  """Reads split `split_id` of UCF-101's official lists (the folder ucfTrainTestlist/).

  classInd.txt ("1 ApplyEyeMakeup" per line) is the label map: its 1-based index minus one is
  the stored label index. trainlist0N.txt rows are "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
  (the path under `video_dir` and the 1-based class); testlist0N.txt rows the path alone, whose
  folder names the class.

  Returns:
    (entries of splits "train" and "test", label map in classInd.txt order).

  Raises:
    FileNotFoundError naming a missing list; ValueError naming the file and line of a row that
    does not parse or whose class disagrees with classInd.txt.
  """
  class_file = storage.join(split_dir, "classInd.txt")
  _require_file(class_file, "UCF-101's class list ('1 ApplyEyeMakeup' per line)")
  numbered = {}
  for line, text in enumerate(_read_rows(class_file), start=1):
    fields = text.split()
    if not fields:
      continue
    if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) in numbered:
      raise ValueError(f"{class_file}:{line}: expected '<class number> <class name>' with a new "
                       f"number, got {text.strip()!r}")
    numbered[int(fields[0])] = fields[1]
  if sorted(numbered) != list(range(1, len(numbered) + 1)):
    raise ValueError(f"{class_file}: class numbers must run 1..{len(numbered)}, got "
                     f"{sorted(numbered)[:5]}...")
  label_map = [numbered[i] for i in range(1, len(numbered) + 1)]

  entries = []
  for split, name in (("train", f"trainlist{split_id:02d}.txt"),
                      ("test", f"testlist{split_id:02d}.txt")):
    list_file = storage.join(split_dir, name)
    _require_file(list_file, f"UCF-101's official {split} list of split {split_id} "
                  "(--split_id is 1, 2 or 3)")
    for line, text in enumerate(_read_rows(list_file), start=1):
      fields = text.split()
      if not fields:
        continue
      where = f"{list_file}:{line}"
      folder = fields[0].split("/")[0]
      if len(fields) > 2 or (len(fields) == 2 and not fields[1].isdigit()) or "/" not in fields[0]:
        raise ValueError(f"{where}: expected '<Class>/<video file>[ <class number>]', got "
                         f"{text.strip()!r}")
      if folder not in label_map:
        raise ValueError(f"{where}: class folder {folder!r} is not in {class_file}")
      if len(fields) == 2 and numbered.get(int(fields[1])) != folder:
        raise ValueError(f"{where}: class number {fields[1]} is "
                         f"{numbered.get(int(fields[1]), 'not in classInd.txt')!r} in "
                         f"{class_file}, but the video's folder is {folder!r}")
      entries.append(_split_entry(video_dir, fields[0], split, folder, where))
  return _mark_missing(entries), label_map


HMDB51_USES = {"0": None, "1": "train", "2": "test"}   # the id in a split file -> split


def read_hmdb51_splits(split_dir: str, video_dir: str,
                       split_id: int) -> Tuple[List[VideoEntry], List[str]]:
  """Reads split `split_id` of HMDB-51's official lists (the folder testTrainMulti_7030_splits/).

  One file per class, `<class>_test_split<N>.txt`, rows "<video.avi> <use>": 1 = train,
  2 = test, 0 = not used in this split. Videos are `video_dir/<class>/<video.avi>`, as the
  per-class archives of hmdb51_org.rar extract. HMDB-51 ships no class index: the label map is
  the class names sorted, the usual convention (torchvision's HMDB51 and mmaction2 sort too).

  Returns:
    (entries of splits "train" and "test", label map).

  Raises:
    FileNotFoundError when no list of split `split_id` is in `split_dir`; ValueError naming the
    file and line of a row that does not parse.
  """
  suffix = f"_test_split{split_id}.txt"
  if not storage.isdir(split_dir):
    raise FileNotFoundError(f"--hmdb51_splits={split_dir!r} is not a directory")
  names = [n for n in storage.listdir(split_dir) if n.endswith(suffix) and len(n) > len(suffix)]
  if not names:
    found = sorted({m.group(1) for m in map(re.compile(r".+_test_split(\w+)\.txt$").match,
                                             storage.listdir(split_dir)) if m})
    raise FileNotFoundError(f"{split_dir} holds no '<class>{suffix}' file (split {split_id}); "
                            f"it holds split(s) {found}, expected 1, 2 or 3")
  entries = []
  for name in names:
    label = name[:-len(suffix)]
    list_file = storage.join(split_dir, name)
    for line, text in enumerate(_read_rows(list_file), start=1):
      fields = text.split()
      if not fields:
        continue
      where = f"{list_file}:{line}"
      if len(fields) != 2 or fields[1] not in HMDB51_USES:
        raise ValueError(f"{where}: expected '<video file> <0|1|2>' (0 unused, 1 train, "
                         f"2 test), got {text.strip()!r}")
      split = HMDB51_USES[fields[1]]
      if split is not None:
        entries.append(_split_entry(video_dir, f"{label}/{fields[0]}", split, label, where))
  return _mark_missing(entries), sorted(n[:-len(suffix)] for n in names)


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
