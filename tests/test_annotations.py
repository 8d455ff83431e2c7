"""Reading Kinetics CSVs, class folders and file lists into VideoEntry lists."""

import os

import pytest

from dataset_tools import annotations


def _touch(path, data=b"x"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return path


def _write(path, text):
  with open(path, "w") as f:
    f.write(text)
  return str(path)


def test_kinetics_csv_quoted_labels_layouts_and_problems(tmp_path):
  videos = tmp_path / "videos"
  # Flat per split, per-label folders, an upper-case extension, a webm, a bare-id download.
  _touch(str(videos / "train" / "-abcdefghij_000010_000020.mp4"))
  _touch(str(videos / "train" / "cooking egg" / "ABCDEFGHIJK_000000_000010.MP4"))
  _touch(str(videos / "train" / "zzzzzzzzzzz_000005_000015.webm"))
  _touch(str(videos / "val" / "bareid00000.mkv"))
  csv_path = _write(tmp_path / "train.csv", (
      "label,youtube_id,time_start,time_end,split,is_cc\n"
      '"cooking egg",-abcdefghij,10,20,train,0\n'
      '"cooking egg",ABCDEFGHIJK,0,10,train,0\n'
      '"tying knot (not on a tie)",zzzzzzzzzzz,5,15,train,1\n'
      '"tying knot (not on a tie)",missing0000,1,11,train,0\n'
      '"abseiling",bad/../id,0,10,train,0\n'
      '"abseiling",bareid00000,3,13,val,0\n'))
  index = annotations.index_videos(str(videos))
  entries = annotations.read_kinetics_csv(csv_path, str(videos), index)
  by_key = {e.key: e for e in entries}
  assert by_key["-abcdefghij_000010_000020"].relative_path == "train/-abcdefghij_000010_000020.mp4"
  assert by_key["-abcdefghij_000010_000020"].start_us == 10_000_000
  assert by_key["-abcdefghij_000010_000020"].end_us == 20_000_000
  assert by_key["ABCDEFGHIJK_000000_000010"].label == "cooking egg"
  assert by_key["zzzzzzzzzzz_000005_000015"].label == "tying knot (not on a tie)"
  assert by_key["missing0000_000001_000011"].problem == "missing_file"
  assert by_key["bad/../id_000000_000010"].problem == "invalid_id"
  assert by_key["bad/../id_000000_000010"].path is None
  assert by_key["bareid00000_000003_000013"].relative_path == "val/bareid00000.mkv"
  assert by_key["bareid00000_000003_000013"].split == "val"


def test_kinetics_test_csv_without_label_or_split(tmp_path):
  videos = tmp_path / "v"
  _touch(str(videos / "test" / "aaaaaaaaaaa_000000_000010.mp4"))
  csv_path = _write(tmp_path / "test.csv", "youtube_id,time_start,time_end\naaaaaaaaaaa,0,10\n")
  (entry,) = annotations.read_kinetics_csv(csv_path, str(videos),
                                           annotations.index_videos(str(videos)))
  assert entry.label is None and entry.split == "test" and entry.problem is None


@pytest.mark.parametrize("text,message", [
    ("label,id,start\nx,y,z\n", "missing column(s) ['youtube_id', 'time_start', 'time_end']"),
    ("label,youtube_id,time_start,time_end,split\nx,aaaaaaaaaaa,zero,10,train\n",
     "train.csv:2: column 'time_start' must be a number"),
    ("label,youtube_id,time_start,time_end,split\nx,aaaaaaaaaaa,0\n", "train.csv:2: expected 5"),
    ("", "found no header"),
])
def test_malformed_kinetics_csv_names_file_and_line(tmp_path, text, message):
  csv_path = _write(tmp_path / "train.csv", text)
  with pytest.raises(ValueError) as error:
    annotations.read_kinetics_csv(csv_path, str(tmp_path), {})
  assert message in str(error.value)


def test_class_dirs_sorted_and_nested(tmp_path):
  _touch(str(tmp_path / "b class" / "v2.avi"))
  _touch(str(tmp_path / "a class" / "sub" / "v1.mp4"))
  _touch(str(tmp_path / "a class" / "notes.txt"))
  entries = annotations.read_class_dirs(str(tmp_path), "train")
  assert [(e.key, e.label) for e in entries] == [("a class/sub/v1.mp4", "a class"),
                                                 ("b class/v2.avi", "b class")]


def test_class_dirs_without_label_folders_is_an_error(tmp_path):
  _touch(str(tmp_path / "loose.mp4"))
  with pytest.raises(ValueError, match="holds no label folders"):
    annotations.read_class_dirs(str(tmp_path), "train")


def test_file_list_header_splits_and_escapes(tmp_path):
  root = tmp_path / "root"
  _touch(str(root / "a" / "x.mp4"))
  _touch(str(tmp_path / "outside.mp4"))
  list_path = _write(tmp_path / "list.csv", (
      "path,label,split\n"
      "a/x.mp4,jump,train\n"
      f"{root}/a/x.mp4,jump,val\n"
      "../outside.mp4,jump,train\n"
      "a/../../outside.mp4,jump,train\n"
      "/etc/passwd,jump,train\n"
      "a/missing.mp4,run\n"))
  entries = annotations.read_file_list(list_path, str(root), "test")
  assert [(e.split, e.key, e.problem) for e in entries] == [
      ("train", "a/x.mp4", None),
      ("val", "a/x.mp4", None),
      ("train", "../outside.mp4", "path_escapes_root"),
      ("train", "a/../../outside.mp4", "path_escapes_root"),
      ("train", "/etc/passwd", "path_escapes_root"),
      ("test", "a/missing.mp4", "missing_file"),
  ]


def test_file_list_bad_row_names_line(tmp_path):
  list_path = _write(tmp_path / "list.csv", "a.mp4,x\nb.mp4\n")
  with pytest.raises(ValueError, match=r"list.csv:2: expected 'path,label\[,split\]'"):
    annotations.read_file_list(list_path, str(tmp_path), "train")


def test_duplicates_become_failures():
  entry = annotations.VideoEntry(split="train", key="k", path="/p", relative_path="p", label="a")
  first, second = annotations.mark_duplicates([entry, entry])
  assert first.problem is None and second.problem == "duplicate_entry"
