"""cvrl_tf.storage on local disks and on ram:// (TensorFlow's in-memory file system, which behaves
like gs:// for tf.io.gfile and fails like it for open() / os.*), and the source scan that keeps
local-only file access out of the rest of the library."""

import ast
import os
import uuid

import pytest
import tensorflow as tf

from cvrl_tf import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The library and the dataset tools: every module that may touch a path a user gave.
SCANNED = ("cvrl_tf", "dataset_tools")
OWNER = os.path.join("cvrl_tf", "storage.py")
# Calls that only understand local paths. A line may still use one on a path that is local by
# construction (the package's own files, a freshly made local scratch folder) when it says why in
# a `# local-only: <why>` comment.
LOCAL_ONLY_MODULES = {"shutil", "tempfile", "glob", "pathlib"}
LOCAL_ONLY_OS = {"replace", "rename", "remove", "unlink", "makedirs", "mkdir", "listdir", "walk",
                 "scandir", "stat", "rmdir", "removedirs", "fdopen"}
MARKER = "# local-only:"


def ram_dir() -> str:
  return f"ram://storage_test_{uuid.uuid4().hex[:8]}"


def _dotted(node) -> str:
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name):
    parts.append(node.id)
  return ".".join(reversed(parts))


def local_only_calls(source: str):
  """(line number, what) of every local-only file access in `source` not marked `# local-only:`."""
  lines = source.splitlines()
  found = []
  for node in ast.walk(ast.parse(source)):
    what = None
    if isinstance(node, ast.Call):
      name = _dotted(node.func)
      if name == "open":
        what = "open()"
      elif name.startswith("os.path."):
        what = name
      elif name.split(".")[0] == "os" and name.split(".")[-1] in LOCAL_ONLY_OS and \
          name.count(".") == 1:
        what = name
      elif name.split(".")[0] in LOCAL_ONLY_MODULES:
        what = name
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
      bad = [n for n in names if n.split(".")[0] in LOCAL_ONLY_MODULES]
      what = f"import {bad[0]}" if bad else None
    if what and MARKER not in lines[node.lineno - 1]:
      found.append((node.lineno, what))
  return sorted(found)


def test_scan_finds_what_it_must():
  source = ("import os\nimport shutil\nopen('x')\nos.path.join('a', 'b')\nos.replace('a', 'b')\n"
            "shutil.rmtree('x')\nos.path.exists('y')  # local-only: the package's own file\n"
            "os.environ.get('A')\nav.open('x')\n")
  assert local_only_calls(source) == [(2, "import shutil"), (3, "open()"), (4, "os.path.join"),
                                      (5, "os.replace"), (6, "shutil.rmtree")]


def test_library_accesses_files_only_through_storage():
  offenders = []
  for package in SCANNED:
    for name in sorted(os.listdir(os.path.join(ROOT, package))):
      relative = os.path.join(package, name)
      if not name.endswith(".py") or relative == OWNER:
        continue
      with open(os.path.join(ROOT, relative), encoding="utf-8") as f:
        offenders += [f"{relative}:{line}: {what}" for line, what in local_only_calls(f.read())]
  assert not offenders, (
      "file access outside cvrl_tf/storage.py (use storage.*, or mark a path that is local by "
      "construction with '# local-only: why'):\n" + "\n".join(offenders))


def test_url_paths_keep_their_scheme():
  assert storage.join("gs://bucket/run", "checkpoints") == "gs://bucket/run/checkpoints"
  assert storage.dirname("gs://bucket/run/config.json") == "gs://bucket/run"
  assert storage.dirname("gs://bucket/run/") == "gs://bucket"
  assert storage.basename("gs://bucket/run/") == "run"
  assert storage.absolute("gs://bucket/a/../b") == "gs://bucket/a/../b"
  assert storage.absolute("rel") == os.path.join(os.getcwd(), "rel")
  assert storage.is_local("/data/x") and storage.is_local("file:///data/x")
  assert not storage.is_local("gs://b/x") and not storage.is_local("ram://x")
  assert storage.relative_to("gs://b/videos/a/x.mp4", "gs://b/videos") == "a/x.mp4"
  assert storage.relative_to("/data/v/a/x.mp4", "/data/v/") == "a/x.mp4"
  assert storage.relative_to("/data/w/x.mp4", "/data/v").startswith("..")


@pytest.mark.parametrize("where", ["local", "ram"])
def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(where, tmp_path):
  directory = str(tmp_path) if where == "local" else ram_dir()
  path = storage.join(directory, "sub", "metrics.json")
  storage.atomic_write_json(path, {"top1": 0.5})
  storage.atomic_write_json(path, {"top1": 0.75})
  assert storage.read_json(path) == {"top1": 0.75}
  assert storage.listdir(storage.join(directory, "sub")) == ["metrics.json"]
  with storage.atomic_output(storage.join(directory, "sub", "a.bin")) as f:
    f.write(b"\x00\x01")
  assert storage.read_bytes(storage.join(directory, "sub", "a.bin")) == b"\x00\x01"
  with pytest.raises(RuntimeError):
    with storage.atomic_output(storage.join(directory, "sub", "b.bin")) as f:
      f.write(b"partial")
      raise RuntimeError("writer died")
  assert storage.listdir(storage.join(directory, "sub")) == ["a.bin", "metrics.json"]


def test_read_text_drops_a_byte_order_mark():
  path = storage.join(ram_dir(), "list.csv")
  storage.atomic_write_bytes(path, "\ufeffa,b\n".encode("utf-8"))
  assert storage.read_text(path) == "a,b\n"


@pytest.mark.parametrize("where", ["local", "ram"])
def test_replace_directory(where, tmp_path):
  directory = str(tmp_path) if where == "local" else ram_dir()
  target = storage.join(directory, "export")
  for version in (b"one", b"two"):
    temporary = storage.temporary_directory_for(target)
    storage.atomic_write_bytes(storage.join(temporary, "saved_model.pb"), version)
    storage.replace_directory(temporary, target)
    assert storage.read_bytes(storage.join(target, "saved_model.pb")) == version
  assert storage.listdir(directory) == ["export"]
  assert storage.directory_contents(target) == ["saved_model.pb"]
  assert storage.directory_contents(storage.join(directory, "absent")) is None
  with pytest.raises(NotADirectoryError, match="saved_model.pb"):
    storage.directory_contents(storage.join(target, "saved_model.pb"))


def test_check_writable_names_the_directory(tmp_path):
  storage.check_writable(storage.join(ram_dir(), "new", "workdir"))
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(PermissionError, match="cannot write to .*file/run"):
    storage.check_writable(str(blocker / "run"))


def test_walk_glob_size_and_remove_on_ram():
  directory = ram_dir()
  for name in ("a/x.mp4", "a/b/y.mp4", "c.txt"):
    storage.atomic_write_bytes(storage.join(directory, name), b"12345")
  assert list(storage.walk(directory)) == [
      (directory, ["a"], ["c.txt"]), (storage.join(directory, "a"), ["b"], ["x.mp4"]),
      (storage.join(directory, "a", "b"), [], ["y.mp4"])]
  assert storage.glob(storage.join(directory, "a", "*.mp4")) == [
      storage.join(directory, "a", "x.mp4")]
  assert storage.size(storage.join(directory, "c.txt")) == 5
  storage.remove(storage.join(directory, "a"))
  storage.remove(storage.join(directory, "absent"))
  assert storage.listdir(directory) == ["c.txt"]


def test_open_for_decoding_gives_a_seekable_file_off_the_local_disk(tmp_path):
  assert storage.open_for_decoding(str(tmp_path / "x.mp4")) == str(tmp_path / "x.mp4")
  path = storage.join(ram_dir(), "x.bin")
  storage.atomic_write_bytes(path, b"0123456789")
  f = storage.open_for_decoding(path)
  f.seek(-3, 2)
  assert f.read() == b"789"
  f.seek(2)
  assert f.read(2) == b"23" and f.tell() == 4


def test_nothing_of_a_ram_path_reaches_the_local_disk(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  directory = ram_dir()
  storage.check_writable(storage.join(directory, "run"))
  storage.atomic_write_json(storage.join(directory, "run", "config.json"), {})
  assert os.listdir(tmp_path) == []
  assert tf.io.gfile.exists(storage.join(directory, "run", "config.json"))
