"""Reading Kinetics CSVs, class folders, file lists and the UCF-101 / HMDB-51 split files into
VideoEntry lists."""

import os

import pytest

from cvrl_tf import storage
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


def test_file_list_of_absolute_paths_without_video_dir(tmp_path):
  # A list made like `find /abs/data -name '*.mp4'` (plus a label column), kept elsewhere.
  data = tmp_path / "data"
  jump, run = _touch(str(data / "jump" / "a.mp4")), _touch(str(data / "run" / "b.mp4"))
  lists = tmp_path / "lists"
  near = _touch(str(lists / "near" / "c.mp4"))
  list_path = _write(lists / "all.csv", (
      f"{jump},jump\n{run},run\n{data}/run/./x/../gone.mp4,run\nnear/c.mp4,run\n"
      "../data/jump/a.mp4,jump\n"))
  entries = annotations.read_file_list(list_path, None, "train")
  assert [(e.key, e.path, e.problem) for e in entries] == [
      (jump, jump, None),
      (run, run, None),
      (f"{data}/run/gone.mp4", None, "missing_file"),
      ("near/c.mp4", near, None),                            # relative: the list's folder
      ("../data/jump/a.mp4", None, "path_escapes_root"),     # relative rows stay inside it
  ]
  assert [e.relative_path for e in entries[:2]] == [jump, run]
  # With --video_dir, absolute rows must lead into it; relative rows resolve against it.
  rooted = annotations.read_file_list(list_path, str(data), "train")
  assert [(e.key, e.problem) for e in rooted] == [
      ("jump/a.mp4", None), ("run/b.mp4", None), ("run/gone.mp4", "missing_file"),
      ("near/c.mp4", "missing_file"), ("../data/jump/a.mp4", "path_escapes_root")]
  assert rooted[0].path == jump


def test_inputs_on_another_file_system(tmp_path, monkeypatch):
  # ram:// behaves like gs:// for tf.io.gfile and fails like it for open() / os.*.
  monkeypatch.chdir(tmp_path)
  root = f"ram://annotations_test_{tmp_path.name}"
  for name in ("train/aaaaaaaaaaa_000000_000010.mp4", "train/jump/bbbbbbbbbbb_000001_000011.mkv",
               "notes.txt"):
    storage.atomic_write_bytes(storage.join(root, "videos", name), b"x")
  csv_path = storage.join(root, "train.csv")
  storage.atomic_write_text(csv_path, (
      "\ufefflabel,youtube_id,time_start,time_end,split\r\n"
      "jump,aaaaaaaaaaa,0,10,train\r\njump,bbbbbbbbbbb,1,11,train\r\n"))
  videos = storage.join(root, "videos")
  entries = annotations.read_kinetics_csv(csv_path, videos, annotations.index_videos(videos))
  assert [(e.key, e.path, e.relative_path) for e in entries] == [
      ("aaaaaaaaaaa_000000_000010", f"{videos}/train/aaaaaaaaaaa_000000_000010.mp4",
       "train/aaaaaaaaaaa_000000_000010.mp4"),
      ("bbbbbbbbbbb_000001_000011", f"{videos}/train/jump/bbbbbbbbbbb_000001_000011.mkv",
       "train/jump/bbbbbbbbbbb_000001_000011.mkv")]
  classes = annotations.read_class_dirs(storage.join(videos, "train"), "train")
  assert [(e.key, e.label) for e in classes] == [("jump/bbbbbbbbbbb_000001_000011.mkv", "jump")]
  list_path = storage.join(videos, "list.csv")
  storage.atomic_write_text(list_path, "train/aaaaaaaaaaa_000000_000010.mp4,jump\n"
                                       "train/absent.mp4,jump\n../x.mp4,jump\n")
  listed = annotations.read_file_list(list_path, None, "train")
  assert [(e.path, e.problem) for e in listed] == [
      (f"{videos}/train/aaaaaaaaaaa_000000_000010.mp4", None), (None, "missing_file"),
      (None, "path_escapes_root")]
  assert os.listdir(tmp_path) == []


def _ucf101(tmp_path, split_id=1):
  """UCF-101's layout in miniature: (split folder, video folder). classInd.txt is deliberately
  not in alphabetical order; the files have the official CRLF line ends."""
  splits = tmp_path / "ucfTrainTestlist"
  _touch(str(splits / "classInd.txt"),
         b"1 YoYo\r\n2 ApplyEyeMakeup\r\n3 HandstandPushups\r\n")
  _touch(str(splits / f"trainlist0{split_id}.txt"), (
      b"YoYo/v_YoYo_g08_c01.avi 1\r\n"
      b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2\r\n"
      b"HandstandPushups/v_HandStandPushups_g08_c01.avi 3\r\n\r\n"))
  _touch(str(splits / f"testlist0{split_id}.txt"), (
      b"YoYo/v_YoYo_g01_c01.avi\r\n"
      b"HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n"
      b"ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi\r\n"))
  videos = tmp_path / "UCF-101"
  for name in ("YoYo/v_YoYo_g08_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
               "HandstandPushups/v_HandStandPushups_g08_c01.avi", "YoYo/v_YoYo_g01_c01.avi",
               "HandstandPushups/v_HandStandPushups_g01_c01.avi"):
    _touch(str(videos / name))
  return str(splits), str(videos)


def test_ucf101_official_split_files(tmp_path):
  splits, videos = _ucf101(tmp_path, split_id=2)
  entries, label_map = annotations.read_ucf101_splits(splits, videos, 2)
  assert label_map == ["YoYo", "ApplyEyeMakeup", "HandstandPushups"]   # classInd.txt order
  assert [(e.split, e.key, e.label, e.problem) for e in entries] == [
      ("train", "YoYo/v_YoYo_g08_c01.avi", "YoYo", None),
      ("train", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup", None),
      ("train", "HandstandPushups/v_HandStandPushups_g08_c01.avi", "HandstandPushups", None),
      ("test", "YoYo/v_YoYo_g01_c01.avi", "YoYo", None),
      ("test", "HandstandPushups/v_HandStandPushups_g01_c01.avi", "HandstandPushups", None),
      ("test", "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi", "ApplyEyeMakeup", "missing_file"),
  ]
  assert entries[0].path == os.path.join(videos, "YoYo", "v_YoYo_g08_c01.avi")
  with pytest.raises(FileNotFoundError, match=r"trainlist01.txt does not exist; expected "
                                              r"UCF-101's official train list of split 1"):
    annotations.read_ucf101_splits(splits, videos, 1)


@pytest.mark.parametrize("name,text,message", [
    ("classInd.txt", "1 YoYo\nx ApplyEyeMakeup\n",
     "classInd.txt:2: expected '<class number> <class name>'"),
    ("classInd.txt", "1 YoYo\n3 ApplyEyeMakeup\n", "class numbers must run 1..2"),
    ("trainlist01.txt", "YoYo/v_YoYo_g08_c01.avi 1\nYoYo/v_YoYo_g09_c01.avi 2\n",
     "trainlist01.txt:2: class number 2 is 'ApplyEyeMakeup' in"),
    ("trainlist01.txt", "v_YoYo_g08_c01.avi 1\n",
     "trainlist01.txt:1: expected '<Class>/<video file>[ <class number>]'"),
    ("testlist01.txt", "Knitting/v_Knitting_g01_c01.avi\n",
     "testlist01.txt:1: class folder 'Knitting' is not in"),
])
def test_ucf101_split_errors_name_file_and_line(tmp_path, name, text, message):
  splits, videos = _ucf101(tmp_path)
  _write(os.path.join(splits, name), text)
  with pytest.raises(ValueError) as error:
    annotations.read_ucf101_splits(splits, videos, 1)
  assert message in str(error.value)


def _hmdb51(tmp_path):
  splits = tmp_path / "testTrainMulti_7030_splits"
  splits.mkdir()
  # The official rows end in a space; 0 = not used in this split.
  _write(splits / "cartwheel_test_split1.txt", "d.avi 1 \ne.avi 2 \n")
  _touch(str(splits / "brush_hair_test_split1.txt"), b"a.avi 1 \r\nb.avi 2 \r\nc.avi 0 \r\n")
  _write(splits / "brush_hair_test_split2.txt", "a.avi 2 \nb.avi 1 \nc.avi 1 \n")
  videos = tmp_path / "hmdb51_org"
  for name in ("brush_hair/a.avi", "brush_hair/b.avi", "brush_hair/c.avi", "cartwheel/d.avi"):
    _touch(str(videos / name))
  return str(splits), str(videos)


def test_hmdb51_official_split_files(tmp_path):
  splits, videos = _hmdb51(tmp_path)
  entries, label_map = annotations.read_hmdb51_splits(splits, videos, 1)
  assert label_map == ["brush_hair", "cartwheel"]     # sorted class names
  assert [(e.split, e.key, e.label, e.problem) for e in entries] == [
      ("train", "brush_hair/a.avi", "brush_hair", None),
      ("test", "brush_hair/b.avi", "brush_hair", None),
      ("train", "cartwheel/d.avi", "cartwheel", None),
      ("test", "cartwheel/e.avi", "cartwheel", "missing_file"),
  ]
  entries, _ = annotations.read_hmdb51_splits(splits, videos, 2)
  assert [(e.split, e.key) for e in entries] == [
      ("test", "brush_hair/a.avi"), ("train", "brush_hair/b.avi"), ("train", "brush_hair/c.avi")]
  with pytest.raises(FileNotFoundError, match=r"holds no '<class>_test_split3.txt' file "
                                              r"\(split 3\); it holds split\(s\) \['1', '2'\]"):
    annotations.read_hmdb51_splits(splits, videos, 3)
  _write(os.path.join(splits, "cartwheel_test_split1.txt"), "d.avi 1\ne.avi train\n")
  with pytest.raises(ValueError, match=r"cartwheel_test_split1.txt:2: expected '<video file> "
                                       r"<0\|1\|2>'"):
    annotations.read_hmdb51_splits(splits, videos, 1)
