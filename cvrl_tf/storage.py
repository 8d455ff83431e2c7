"""File access for every path a user gives: local disks, `gs://`, `ram://`, alike.

Everything goes through `tf.io.gfile`, so a workdir, a dataset, a label map, a checkpoint or an
export on Google Cloud Storage behaves exactly as on a local disk. TensorFlow 2.21 knows local
paths, `gs://` and `ram://`; `s3://` and `hdfs://` came from tensorflow-io's plugins, which do not
load with 2.21 (BUILD.md): mount such a store as a local path. Any scheme a future TensorFlow
registers works here unchanged. Python's `open()`, `os.path`,
`os.replace`, `shutil` and `tempfile` only understand local paths: `os.makedirs("gs://b/run")`
silently makes a local folder `./gs:/b/run` whose files die with the VM. No other module of the
library calls them on a user path (tests/test_storage.py scans the source).

Writes are all-or-nothing: a file is written under a temporary sibling name and renamed over its
target, so a reader (or a resumed run) sees the old file or the whole new one. On a local disk the
rename is atomic and the data are fsync'ed first. On an object store (GCS, S3) a rename is a
server-side copy plus a delete: still all-or-nothing for a file (an object appears only when its
upload completes), but it costs a copy of the bytes, and a directory "rename" is one copy per
object, not atomic as a whole (see `replace_directory`).

Paths are strings throughout; `join`, `dirname` and `basename` keep a URL's scheme intact where
`os.path.normpath` would turn `gs://b` into `gs:/b`.
"""

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Iterator, List, Optional, Tuple

import tensorflow as tf

gfile = tf.io.gfile


def is_local(path: str) -> bool:
  """Whether `path` is on this machine's file system (no scheme, or file://)."""
  return "://" not in path or path.startswith("file://")


def join(*parts: str) -> str:
  """`os.path.join` that keeps URLs intact (`join("gs://b", "run")` is "gs://b/run")."""
  return os.path.join(*parts)


def dirname(path: str) -> str:
  """The folder that holds `path` ("gs://b/run/x" -> "gs://b/run")."""
  return os.path.dirname(path.rstrip("/")) if path.rstrip("/") else path


def basename(path: str) -> str:
  return os.path.basename(path.rstrip("/"))


def splitext(path: str):
  return os.path.splitext(path)


def absolute(path: str) -> str:
  """A local path made absolute (the run may chdir); a URL unchanged."""
  return os.path.abspath(path) if is_local(path) else path


def same_path(a: str, b: str) -> bool:
  return absolute(a).rstrip("/") == absolute(b).rstrip("/")


def relative_to(path: str, root: str) -> str:
  """`path` relative to `root`, "/"-separated; may start with ".." when `path` is outside."""
  if is_local(path) and is_local(root):
    return os.path.relpath(path, root).replace(os.sep, "/")
  root, path = root.rstrip("/"), path.rstrip("/")
  if path == root:
    return ""
  return path[len(root) + 1:] if path.startswith(root + "/") else "../" + path


def exists(path: str) -> bool:
  return gfile.exists(path)


def isdir(path: str) -> bool:
  return gfile.isdir(path)


def isfile(path: str) -> bool:
  return gfile.exists(path) and not gfile.isdir(path)


def size(path: str) -> int:
  """Bytes in the file `path`."""
  return gfile.stat(path).length


def mtime_ns(path: str) -> int:
  """Modification time in ns (0 on file systems that keep none, such as ram://)."""
  return gfile.stat(path).mtime_nsec


def size_and_mtime_ns(path: str) -> Tuple[int, int]:
  """(bytes, modification time in ns) of the file `path`, from one stat (one request on gs://)."""
  stat = gfile.stat(path)
  return stat.length, stat.mtime_nsec


def listdir(path: str) -> List[str]:
  """Sorted entry names of a directory (without trailing slashes)."""
  return sorted(name.rstrip("/") for name in gfile.listdir(path))


def glob(pattern: str) -> List[str]:
  """Sorted paths matching a glob pattern (`*`, `?`, `[...]`) on any file system."""
  return sorted(gfile.glob(pattern))


def walk(top: str) -> Iterator:
  """(directory, subdirectories, files) below `top`, as os.walk; sorted, symlinks followed."""
  for directory, subdirectories, files in gfile.walk(top):
    subdirectories.sort()
    yield directory.rstrip("/") or directory, subdirectories, sorted(files)


def makedirs(path: str) -> None:
  """Creates `path` and its parents; no error when it exists."""
  gfile.makedirs(path)


def remove(path: str) -> None:
  """Deletes a file, or a directory with everything in it; nothing when it is absent."""
  if gfile.isdir(path):
    gfile.rmtree(path)
  elif gfile.exists(path):
    gfile.remove(path)


def rename(source: str, target: str, overwrite: bool = False) -> None:
  """Moves `source` to `target` (on an object store: copy + delete)."""
  gfile.rename(source, target, overwrite=overwrite)


def _move_directory(source: str, target: str) -> None:
  """Moves a directory. A local rename is one atomic step; elsewhere each file moves on its own
  (object stores have no directories to rename, and ram:// renames only the folder's own entry).
  The deepest files move first and the top-level files last, so a reader that waits for a
  top-level file (a SavedModel's saved_model.pb) finds the rest already there."""
  if is_local(source):
    gfile.rename(source, target)
    return
  for directory, _, files in reversed(list(walk(source))):
    destination = join(target, relative_to(directory, source))
    gfile.makedirs(destination)
    for name in files:
      gfile.rename(join(directory, name), join(destination, name), overwrite=True)
  gfile.rmtree(source)


def copy(source: str, target: str, overwrite: bool = False) -> None:
  gfile.copy(source, target, overwrite=overwrite)


def open_file(path: str, mode: str = "r"):
  """A file object on any file system (tf.io.gfile.GFile: read, write, seek, tell)."""
  return gfile.GFile(path, mode)


def read_bytes(path: str) -> bytes:
  with gfile.GFile(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  """The file decoded as UTF-8; a leading byte-order mark is dropped (spreadsheet CSVs)."""
  text = read_bytes(path).decode("utf-8")
  return text[1:] if text.startswith("\ufeff") else text


def read_json(path: str):
  return json.loads(read_text(path))


def temporary_name(path: str) -> str:
  """A fresh sibling name for writing `path` before renaming it into place.

  Hidden (a leading dot), with this process's pid so a later run can tell a dead writer's
  leftover, and a random part so concurrent writers never collide.
  """
  return join(dirname(path), f".{basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` so that readers see the old file or the whole new one, never a part.

  Creates the parent folder when it is missing.
  """
  parent = dirname(path)
  if parent and not gfile.isdir(parent):
    gfile.makedirs(parent)
  tmp = temporary_name(path)
  try:
    if is_local(path):  # fsync: a power cut must not leave a renamed but empty file
      with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    else:
      with gfile.GFile(tmp, "wb") as f:
        f.write(data)
      gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if gfile.exists(tmp):
      gfile.remove(tmp)
    raise


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, value, indent: Optional[int] = 2) -> None:
  """`value` as JSON with a final newline, written atomically."""
  atomic_write_text(path, json.dumps(value, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_output(path: str, mode: str = "wb"):
  """A file object whose contents appear at `path` only when the block ends without error.

    with storage.atomic_output(path) as f:
      f.write(...)
  """
  parent = dirname(path)
  if parent and not gfile.isdir(parent):
    gfile.makedirs(parent)
  tmp = temporary_name(path)
  try:
    with gfile.GFile(tmp, mode) as f:
      yield f
    gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if gfile.exists(tmp):
      gfile.remove(tmp)
    raise


def directory_contents(path: str) -> Optional[list]:
  """What a directory about to be replaced holds: None when `path` is absent or an empty
  directory (free to write), else its first five entries, sorted.

  Raises:
    NotADirectoryError naming `path` when it exists and is not a directory.
  """
  if not gfile.exists(path):
    return None
  if not gfile.isdir(path):
    raise NotADirectoryError(f"{path!r} exists and is not a directory")
  return listdir(path)[:5] or None


def temporary_directory_for(target: str) -> str:
  """A fresh hidden sibling of `target` (same file system, so the final rename is cheap)."""
  parent = dirname(absolute(target))
  if parent and not gfile.isdir(parent):
    gfile.makedirs(parent)
  return join(parent, f".{basename(target)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def replace_directory(temporary: str, target: str) -> None:
  """Moves the finished directory `temporary` to `target`, replacing what is there.

  Both must be on one file system (make `temporary` with `temporary_directory_for`). An old
  `target` is renamed aside first and deleted last. On a local disk `target` is therefore always
  either the old or the new complete directory. On an object store each rename copies every
  object, so for the moment of the copy `target` can be partial; a reader that needs a complete
  export should check for its last-written file (a SavedModel's saved_model.pb).
  """
  if gfile.exists(target):
    old = join(dirname(absolute(target)),
               f".{basename(target)}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    _move_directory(target, old)
    _move_directory(temporary, target)
    gfile.rmtree(old)
  else:
    _move_directory(temporary, target)


def check_writable(directory: str) -> None:
  """Fails now, naming `directory`, when a run could not write there later.

  Creates `directory` when missing, writes and deletes a probe file.

  Raises:
    PermissionError naming the directory and the file system's message.
  """
  try:
    gfile.makedirs(directory)
    probe = join(directory, f".write_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    with gfile.GFile(probe, "wb") as f:
      f.write(b"")
    gfile.remove(probe)
  except (tf.errors.OpError, OSError) as e:
    message = getattr(e, "message", None) or str(e)
    raise PermissionError(f"cannot write to {directory!r}: {message.strip()[:300]}") from None


@contextlib.contextmanager
def local_scratch(prefix: str = "cvrl_"):
  """A private local folder for intermediate files, deleted with everything in it on exit."""
  directory = tempfile.mkdtemp(prefix=prefix)
  try:
    yield directory
  finally:
    shutil.rmtree(directory, ignore_errors=True)


def make_local_scratch(prefix: str = "cvrl_") -> str:
  """A private local folder the caller deletes with `remove` (non-chief checkpoint copies)."""
  return tempfile.mkdtemp(prefix=prefix)


def open_for_decoding(path: str):
  """What a decoder such as PyAV should open: the path itself when local (FFmpeg reads it with
  its own buffered I/O), else a seekable binary file object through tf.io.gfile."""
  return path if is_local(path) else gfile.GFile(path, "rb")
