"""The dataset builder as a Beam pipeline (dataset_tools/beam_runner.py) against the local runner:
the same bytes for every input form, resumable, remote outputs, clear errors.

Beam runs here on the FnApiRunner (the DirectRunner's batch engine): `multi_processing` where
the comparison needs real worker processes, `in_memory` (this process) where the test needs to
reach inside the workers: a DoFn made to fail mid-build, and ram://, which exists in one process
only. A multi-processing pipeline costs ~8 s per worker process here (each imports TensorFlow).
"""

import dataclasses
import logging
import os
import pathlib
import subprocess
import sys
import time

import pytest

from conftest import coded_frame, local_folders_named_like_urls, write_video
from cvrl_tf import storage
from dataset_tools import annotations, beam_options, beam_runner, builder
from test_build_tfrecords import (SCRIPT, _cli, _entries, _hmdb51, _kinetics, _tree_bytes,
                                  _ucf101, _ucf101_on_ram)

SETTINGS = builder.BuildSettings(fps=25.0, short_side=32)   # float, as the command line gives it


def _every_input_form(root: pathlib.Path):
  """Entries of all five input forms: Kinetics CSVs (with broken and missing clips), class
  folders, a file list (one row missing), UCF-101's and HMDB-51's official split files. Each
  form's splits are prefixed with its name, so that one build holds them all."""
  forms = {"kinetics": _entries(*_kinetics(str(root / "kinetics"), per_label=1, frames=4))}
  for label in ("jump", "run"):
    os.makedirs(root / "classes" / label)
    for i in range(2):
      write_video(str(root / "classes" / label / f"{label}{i}.mp4"),
                  [coded_frame(i + j) for j in range(3)])
  forms["dirs"] = annotations.read_class_dirs(str(root / "classes"), "all")
  (root / "list.csv").write_text("path,label\nclasses/jump/jump0.mp4,jump\nnot_there.mp4,run\n")
  forms["list"] = annotations.read_file_list(str(root / "list.csv"), None, "all")
  forms["ucf"], _ = annotations.read_ucf101_splits(
      *_ucf101(str(root / "ucf"), train=1, frames=4), 1)
  os.makedirs(root / "hmdb")
  forms["hmdb"], _ = annotations.read_hmdb51_splits(*map(str, _hmdb51(root / "hmdb")), 1)
  return annotations.mark_duplicates(
      dataclasses.replace(e, split=f"{form}_{e.split}") for form, entries in forms.items()
      for e in entries)


def _local(entries, out, label_map):
  return builder.build(entries, str(out), SETTINGS, num_shards=2, num_workers=0, timeout_s=60,
                       label_map=label_map, overwrite=False, progress=False)


def _beam(entries, out, options, label_map, num_decoders=0):
  return beam_runner.build(entries, str(out), SETTINGS, num_shards=2, num_decoders=num_decoders,
                           timeout_s=60, label_map=label_map, overwrite=False,
                           options=beam_options.pipeline_options(options, num_workers=2))


# Every form's labels (no split is called "train", so the map is given).
LABELS = sorted({"abseiling", "cooking egg", "tying knot (not on a tie)", "jump", "run", "YoYo",
                 "ApplyEyeMakeup", "wave", "brush_hair"})
IN_MEMORY = "--direct_running_mode=in_memory --direct_num_workers=1"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """(entries of every input form, the local runner's output folder, its report)."""
  root = tmp_path_factory.mktemp("forms")
  entries = _every_input_form(root)
  report = _local(entries, root / "local", LABELS)
  return entries, root / "local", report


def test_every_input_form_is_in_the_reference(inputs):
  entries, local, report = inputs
  assert sorted({e.split for e in entries}) == [
      "dirs_all", "hmdb_test", "hmdb_train", "kinetics_train", "kinetics_val", "list_all",
      "ucf_test", "ucf_train"]
  failures = sorted(line.split(",")[2] for line in (local / "failures.csv").read_text()
                    .splitlines()[1:])
  assert failures == ["audio_only", "empty_file", "missing_file", "missing_file", "missing_file",
                      "unreadable"]
  assert report.failures_this_run == 6 and report.entries_this_run == len(entries) == 25


def test_one_worker_resumes_a_failed_build_to_the_local_bytes(inputs, tmp_path, monkeypatch):
  # 1) A DoFn that dies when it starts its fourth shard (in_memory: the DoFns run in this
  #    process, so the patched module is theirs). 2) The same command with one worker process.
  entries, local, _ = inputs
  out = tmp_path / "out"
  write_shard, written = builder.write_shard, []

  def failing_write_shard(*args, **kwargs):
    if len(written) >= 3:
      raise RuntimeError("the worker was lost")
    written.append(write_shard(*args, **kwargs))
    return written[-1]

  monkeypatch.setattr(builder, "write_shard", failing_write_shard)
  with pytest.raises(Exception, match="the worker was lost"):
    _beam(entries, out, IN_MEMORY, LABELS)
  monkeypatch.undo()
  assert len(list(out.glob("*.tfrecord"))) == 3 and not (out / "dataset_info.json").exists()

  report = _beam(entries, out, "--direct_num_workers=1", LABELS, num_decoders=1)
  assert report.skipped_shards == 3 and report.rebuilt_shards == 0
  assert report.counters["shards_written"] == 16 - 3
  assert _tree_bytes(str(out)) == _tree_bytes(str(local))


def test_two_workers_give_the_local_bytes_and_counters(inputs, tmp_path):
  entries, local, local_report = inputs
  options = beam_options.pipeline_options("--direct_num_workers=2", num_workers=1)
  assert options.get_all_options(drop_default=True) == {
      "runner": "FnApiRunner", "direct_running_mode": "multi_processing",
      "direct_num_workers": 2}
  report = _beam(entries, tmp_path / "out", "--direct_num_workers=2", LABELS)
  assert _tree_bytes(str(tmp_path / "out")) == _tree_bytes(str(local))
  frames = sum(s.frames for shards in local_report.summaries.values() for s in shards)
  assert report.counters == {
      "bytes": sum(s.bytes for shards in local_report.summaries.values() for s in shards),
      "failed_audio_only": 1, "failed_empty_file": 1, "failed_missing_file": 3,
      "failed_unreadable": 1, "frames": frames, "shards_written": 16, "videos": 19,
      "videos_processed": 25}
  assert (report.failures_this_run, report.entries_this_run, report.videos_decoded) == (6, 25, 25)


def test_a_changed_video_rebuilds_exactly_its_shard(tmp_path, caplog):
  csvs, videos = _kinetics(str(tmp_path / "data"), per_label=1, frames=4)
  out = tmp_path / "out"
  _local(_entries(csvs, videos), out, None)
  before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tfrecord")}
  changed = next(pathlib.Path(videos, "train").glob("v*.mp4"))
  write_video(str(changed), [coded_frame(j) for j in range(7)])   # 7 frames instead of 4

  with caplog.at_level(logging.WARNING):
    report = _beam(_entries(csvs, videos), out, IN_MEMORY, None)
  after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tfrecord")}
  rewritten = [name for name in before if after[name] != before[name]]
  assert len(rewritten) == 1 and rewritten[0].startswith("train-")
  assert (report.rebuilt_shards, report.skipped_shards, report.rebuilt_names) == (1, 3, rewritten)
  # The worker (this process, in_memory) names the shard in its log.
  assert [r.getMessage().split(":")[0] for r in caplog.records
          if "changed since it was written" in r.getMessage()] == rewritten
  assert report.summaries["train"][0].frames + report.summaries["train"][1].frames == 3 * 4 + 3
  _local(_entries(csvs, videos), tmp_path / "fresh", None)
  assert _tree_bytes(str(out)) == _tree_bytes(str(tmp_path / "fresh"))
  # The local runner, same code, finds nothing to do; then rebuilds a val video's shard.
  assert _local(_entries(csvs, videos), out, None).skipped_shards == 4
  changed = next(pathlib.Path(videos, "val").glob("*.mp4"))
  write_video(str(changed), [coded_frame(1)] * 2)
  report = _local(_entries(csvs, videos), out, None)
  shard, = [s for s in builder.read_plan(str(out), "val")
            if changed.stem in [e.key for e in s.entries]]
  assert (report.rebuilt_shards, report.skipped_shards, report.videos_decoded) == (
      1, 3, len(shard.entries))
  assert report.rebuilt_names == [shard.name]


def test_shard_progress_counts_the_summaries_as_they_appear(tmp_path):
  state = tmp_path / builder.STATE_DIR
  os.makedirs(state)
  # "old" had a summary when the bar started (a complete shard, or one whose file was deleted):
  # a listing cannot tell when it is rewritten, so it is not on the bar.
  (state / "old.tfrecord.json").write_text("{}")
  (state / "other_split.tfrecord.json").write_text("{}")
  names = ["a.tfrecord", "b.tfrecord", "old.tfrecord"]

  def seen(progress, n):
    deadline = time.monotonic() + 30
    while progress.done != n and time.monotonic() < deadline:
      time.sleep(0.01)
    return progress.done

  with beam_runner.ShardProgress(str(tmp_path), names, enabled=True, interval_s=0.02) as progress:
    (state / "a.tfrecord.json").write_text("{}")
    assert seen(progress, 1) == 1
    assert progress._bar.total == 2
  # The last one, written between two listings, is counted on the way out.
  with beam_runner.ShardProgress(str(tmp_path), names, enabled=True, interval_s=3600) as progress:
    (state / "b.tfrecord.json").write_text("{}")
    assert progress.done == 0
  assert progress.done == 1 and progress._bar.total == 1
  assert builder.summarised_shards(str(tmp_path)) == {
      "a.tfrecord", "b.tfrecord", "old.tfrecord", "other_split.tfrecord"}
  # Disabled, or nothing left to write: no bar, no thread.
  for enabled, todo in ((False, ["c.tfrecord"]), (True, names)):
    with beam_runner.ShardProgress(str(tmp_path), todo, enabled=enabled) as progress:
      assert progress._bar is None and not progress._thread.is_alive()


def test_ram_inputs_and_outputs_leave_nothing_on_local_disk(tmp_path, monkeypatch):
  # The in_memory mode: ram:// exists in this process only (gs:// is what it stands for).
  root, cwd, entries, label_map = _ucf101_on_ram(tmp_path, monkeypatch)
  with pytest.raises(builder.BuildError, match="Beam's worker processes cannot reach it"):
    beam_runner.build(entries, storage.join(root, "x"), SETTINGS, num_shards=2, num_decoders=0,
                      timeout_s=None, label_map=label_map, overwrite=False,
                      options=beam_options.pipeline_options("", num_workers=1))
  outputs = {}
  for name, build in (("beam", beam_runner.build), ("local", builder.build)):
    kwargs = ({"num_decoders": 0, "options": beam_options.pipeline_options(IN_MEMORY, 1)}
              if name == "beam" else {"num_workers": 0, "progress": False})
    out = storage.join(root, name)
    build(entries, out, SETTINGS, num_shards=2, timeout_s=None, label_map=label_map,
          overwrite=False, **kwargs)
    outputs[name] = {p[len(out):]: storage.read_bytes(p) for d, _, files in storage.walk(out)
                     for p in [storage.join(d, f) for f in files]}
  assert len(outputs["beam"]) == 14 and outputs["beam"] == outputs["local"]
  assert os.listdir(cwd) == [] and local_folders_named_like_urls(str(tmp_path)) == []


def test_pipeline_options_are_checked():
  cases = {"--direct_num_workers=two": "argument --direct_num_workers: invalid int value: 'two'",
           "--runner=DataflowRunner --no_such_option=1": "unknown Beam option(s) --no_such_option",
           "direct_num_workers=2": "'direct_num_workers=2' is not an option",
           "--job_name='unclosed": "is not shell syntax"}
  for text, message in cases.items():
    with pytest.raises(ValueError, match="--beam_pipeline_options") as error:
      beam_options.pipeline_options(text, num_workers=2)
    assert message in str(error.value)
  # Beam's DirectRunner would try Prism (a download): this machine's runs pin the FnApiRunner.
  assert beam_options.pipeline_options("--runner=DirectRunner", 3).get_all_options(
      drop_default=True) == {"runner": "FnApiRunner", "direct_running_mode": "multi_processing",
                             "direct_num_workers": 3}
  dataflow = beam_options.pipeline_options("--runner=DataflowRunner --project=p", 3)
  assert dataflow.get_all_options(drop_default=True) == {"runner": "DataflowRunner",
                                                        "project": "p"}


def test_cli_beam_run_and_its_errors(tmp_path):
  csvs, videos = _kinetics(str(tmp_path / "data"), per_label=1, frames=4)
  args = [f"--csv={','.join(csvs)}", f"--video_dir={videos}", "--short_side=32",
          "--num_shards=2", "--num_workers=0"]
  out = tmp_path / "out"
  run = _cli(*args, f"--output_dir={out}", "--runner=beam", "--max_failure_fraction=0.3",
             f"--beam_pipeline_options={IN_MEMORY}")
  assert run.returncode == 1, run.stderr     # 4 of 10 failed: the local runner's exit rule
  assert "4 of 10 videos failed (40.0%), more than --max_failure_fraction=0.3" in run.stderr
  assert ("Beam counters: bytes=" in run.stdout and "failed_unreadable=1, frames=24, "
          "shards_written=4, videos=6, videos_processed=10" in run.stdout)
  assert next(line.split()[:3] for line in run.stdout.splitlines()
              if line.startswith("train")) == ["train", "3", "4"]
  _local(_entries(csvs, videos), tmp_path / "local", None)
  assert _tree_bytes(str(out)) == _tree_bytes(str(tmp_path / "local"))

  never = tmp_path / "never"
  wrong = _cli(*args, f"--output_dir={never}", "--runner=dataflow")
  assert wrong.returncode != 0
  assert "flag --runner=dataflow: value should be one of <local|beam>" in wrong.stderr
  malformed = _cli(*args, f"--output_dir={never}", "--runner=beam",
                   "--beam_pipeline_options=--direct_num_workers=two")
  assert malformed.returncode == 1 and ("--beam_pipeline_options: argument --direct_num_workers: "
                                        "invalid int value: 'two'") in malformed.stderr
  # No Apache Beam: an import of it fails as it would where it is not installed.
  absent = subprocess.run(
      [sys.executable, "-c", "import runpy, sys; sys.modules['apache_beam'] = None; "
       f"sys.argv = {[SCRIPT, *args, f'--output_dir={never}', '--runner=beam']!r}; "
       f"runpy.run_path({SCRIPT!r}, run_name='__main__')"],
      capture_output=True, text=True, timeout=120)
  assert absent.returncode != 0 and "--runner=beam needs Apache Beam, which is not installed" \
      in absent.stderr
  assert not never.exists()
