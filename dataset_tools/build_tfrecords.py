r"""Builds sharded TFRecords of JPEG frames from raw labelled videos.

Kinetics (annotation CSVs + downloaded clips, flat per split or in per-label folders):
  python dataset_tools/build_tfrecords.py \
      --csv=kinetics400/train.csv,kinetics400/validate.csv \
      --video_dir=kinetics400/videos --output_dir=/data/k400_tfrecords

UCF-101 / HMDB-51 from their official split files: `train` and `test` shards of one split, with
the official label order (UCF: classInd.txt; HMDB: sorted class names):
  python dataset_tools/build_tfrecords.py --ucf101_splits=ucfTrainTestlist --split_id=1 \
      --video_dir=UCF-101 --output_dir=/data/ucf101_split1
  python dataset_tools/build_tfrecords.py --hmdb51_splits=testTrainMulti_7030_splits \
      --split_id=1 --video_dir=hmdb51_org --output_dir=/data/hmdb51_split1

A folder per class (your own), one split:
  python dataset_tools/build_tfrecords.py --class_dirs=my_videos --split=train --output_dir=...

A list of files (`path,label[,split]` rows; relative paths resolve against --video_dir, else the
list's folder; absolute paths are fine without --video_dir, e.g. a list made by `find`):
  python dataset_tools/build_tfrecords.py --file_list=my_list.csv --output_dir=...

Writes `{split}-{i:05d}-of-{n:05d}.tfrecord`, `label_map.txt`, `dataset_info.json` and
`failures.csv` into --output_dir. Re-running the same command resumes where it stopped.
Add --dry_run first to see what the build will cost. Every input and output may be local or on
any file system of tf.io.gfile (`gs://bucket/...`); `--num_workers=0` decodes in this process.

The same build as an Apache Beam pipeline (`pip install -e '.[beam]'`), with the same bytes:
on this machine's worker processes (Beam's FnApiRunner, offline), or on Dataflow, Flink or Spark
with their options (BUILD.md has the commands):
  python dataset_tools/build_tfrecords.py --csv=... --video_dir=... --output_dir=... \
      --runner=beam [--beam_pipeline_options="--runner=DataflowRunner --project=P ..."]
"""

import csv
import os
import sys

# Run as a script, the repository root is not on sys.path; the package may not be installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # local-only: ours

from absl import app
from absl import flags

from dataset_tools.video_decode import usable_cores  # PyAV, NumPy: no TensorFlow

# Nothing that imports TensorFlow at the top (annotations, builder, cvrl_tf): the decode workers
# are spawned processes that re-import this script, and must not load it (seconds and hundreds of
# MB per worker). main() imports them.

MODES = ("csv", "class_dirs", "file_list", "ucf101_splits", "hmdb51_splits")
RUNNERS = ("local", "beam")
FLAGS = flags.FLAGS
flags.DEFINE_list("csv", None, "Kinetics annotation CSV(s): label,youtube_id,time_start,"
                  "time_end,split[,is_cc]; needs --video_dir.")
flags.DEFINE_string("video_dir", None, "Root of the downloaded clips (--csv, searched "
                    "recursively), of the videos of --ucf101_splits / --hmdb51_splits, or of "
                    "the relative paths in --file_list (default: the list's folder).")
flags.DEFINE_string("class_dirs", None, "A folder of label folders: DIR/<label>/<video>.")
flags.DEFINE_string("file_list", None, "CSV of path,label[,split] rows (optional header); "
                    "absolute paths are accepted when --video_dir is not given.")
flags.DEFINE_string("ucf101_splits", None, "UCF-101's official split folder (ucfTrainTestlist: "
                    "classInd.txt, trainlist0N.txt, testlist0N.txt); builds train and test of "
                    "--split_id; needs --video_dir (the UCF-101 folder of class folders).")
flags.DEFINE_string("hmdb51_splits", None, "HMDB-51's official split folder "
                    "(testTrainMulti_7030_splits: <class>_test_splitN.txt); builds train and test "
                    "of --split_id; needs --video_dir (the folder of class folders).")
flags.DEFINE_integer("split_id", 1, "Which official split of --ucf101_splits / --hmdb51_splits "
                     "(1, 2 or 3).")
flags.DEFINE_string("split", "train", "Split name for --class_dirs, and for --file_list rows "
                    "without a split.")
flags.DEFINE_string("output_dir", None, "Where shards, label_map.txt, dataset_info.json and "
                    "failures.csv go.")
flags.DEFINE_float("fps", 25.0, "Stored frame rate: frames are taken on a constant 1/fps grid.")
flags.DEFINE_integer("short_side", 256, "Stored short side in pixels (0 keeps the source size).")
flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality, 1..100.")
flags.DEFINE_integer("num_shards", None, "Shards per split (default: ~150 MB per shard, "
                     "estimated from the clip durations).")
flags.DEFINE_integer("num_workers", None, "Decoding processes (default: all cores; with "
                     "--runner=beam: per Beam worker, default 1); 0 decodes in this process, "
                     "without --timeout_s.")
flags.DEFINE_enum("runner", "local", RUNNERS, "local: a pool of --num_workers processes on this "
                  "machine; beam: an Apache Beam pipeline (same bytes), see "
                  "--beam_pipeline_options.")
flags.DEFINE_string("beam_pipeline_options", None, "With --runner=beam: Beam's options, e.g. "
                    "\"--runner=DataflowRunner --project=P --region=R --temp_location=gs://...\"; "
                    "default: this machine, one Beam worker process per core "
                    "(FnApiRunner, multi_processing).")
flags.DEFINE_string("label_map", None, "Reuse this label_map.txt (one label per line) instead "
                    "of building one from the training labels.")
flags.DEFINE_float("timeout_s", 300.0, "Give up on a video whose decoding takes longer "
                   "(0: no limit).")
flags.DEFINE_float("max_failure_fraction", 0.15, "Exit non-zero when more than this fraction "
                   "of the listed videos failed (Kinetics typically misses 5-10%).")
flags.DEFINE_bool("overwrite", False, "Replace an existing build in --output_dir.")
flags.DEFINE_bool("dry_run", False, "Decode a sample, estimate output size and time, write "
                  "nothing.")


def _input_mode() -> str:
  """The one input flag given (before anything is read, so that a typo fails at once)."""
  modes = [name for name in MODES if FLAGS[name].value]
  if len(modes) != 1:
    raise app.UsageError(f"give exactly one of {', '.join('--' + m for m in MODES)} (got "
                         f"{', '.join('--' + m for m in modes) or 'none'})")
  mode = modes[0]
  if mode in ("csv", "ucf101_splits", "hmdb51_splits") and not FLAGS.video_dir:
    raise app.UsageError(f"--{mode} needs --video_dir, the folder holding the videos")
  if mode in ("ucf101_splits", "hmdb51_splits") and FLAGS.label_map:
    raise app.UsageError(f"--{mode} takes the official label order from the split files; "
                         "drop --label_map")
  if FLAGS.beam_pipeline_options and FLAGS.runner != "beam":
    raise app.UsageError("--beam_pipeline_options is for --runner=beam (got --runner="
                         f"{FLAGS.runner})")
  if FLAGS.num_workers is not None and FLAGS.num_workers < 0:
    raise app.UsageError(f"--num_workers must be >= 0 (0: decode in this process), got "
                         f"{FLAGS.num_workers}")
  return mode


def _beam_options():
  """--runner=beam's PipelineOptions, checked before anything is read or decoded."""
  try:
    from dataset_tools import beam_options
  except ImportError as e:
    if (e.name or "").split(".")[0] != "apache_beam":
      raise
    raise app.UsageError("--runner=beam needs Apache Beam, which is not installed here: "
                         "pip install -e '.[beam]' (or use --runner=local, the default)")
  # The DirectRunner's worker processes import dataset_tools by name: they find this checkout
  # through PYTHONPATH when the project is not installed.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # local-only: ours
  os.environ["PYTHONPATH"] = os.pathsep.join(
      p for p in (root, os.environ.get("PYTHONPATH")) if p)
  try:
    return beam_options.pipeline_options(FLAGS.beam_pipeline_options, usable_cores())
  except ValueError as e:
    raise app.UsageError(str(e))


def _read_entries(mode: str):
  """(entries, label map or None) from the input flags."""
  from cvrl_tf import storage
  from dataset_tools import annotations

  label_map = None
  if mode == "csv":
    for path in FLAGS.csv:
      if not storage.isfile(path):
        raise app.UsageError(f"--csv: {path!r} is not a file")
    index = annotations.index_videos(FLAGS.video_dir)
    entries = [e for path in FLAGS.csv
               for e in annotations.read_kinetics_csv(path, FLAGS.video_dir, index)]
  elif mode == "class_dirs":
    entries = annotations.read_class_dirs(FLAGS.class_dirs, FLAGS.split)
  elif mode == "file_list":
    if not storage.isfile(FLAGS.file_list):
      raise app.UsageError(f"--file_list: {FLAGS.file_list!r} is not a file")
    entries = annotations.read_file_list(FLAGS.file_list, FLAGS.video_dir, FLAGS.split)
  else:
    read = (annotations.read_ucf101_splits if mode == "ucf101_splits"
            else annotations.read_hmdb51_splits)
    entries, label_map = read(FLAGS[mode].value, FLAGS.video_dir, FLAGS.split_id)
  return annotations.mark_duplicates(entries), label_map


def _size(num_bytes: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if num_bytes < 1024 or unit == "TB":
      return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
    num_bytes /= 1024


def _print_dry_run(estimate: dict, num_workers: int) -> None:
  print(f"videos listed           {estimate['videos_listed']}")
  print(f"unusable before decode  {estimate['videos_unusable_before_decoding']} "
        "(missing files, bad ids)")
  print(f"sample decoded          {estimate['sampled']} ({estimate['sample_failures']} failed)")
  print(f"frames per video        {estimate['mean_frames_per_video']:.0f}")
  print(f"size per video          {_size(estimate['mean_bytes_per_video'])}")
  print(f"estimated output        {_size(estimate['estimated_total_bytes'])}")
  hours = estimate["estimated_seconds"] / 3600
  workers = f"{num_workers} worker(s)" if num_workers else "this process (--num_workers=0)"
  print(f"estimated time          {hours:.2f} h with {workers}")


# The local runner's one process writes every shard: busier than this, it set the build's pace
# (a large machine; BUILD.md "Disk and time"). Not said of a build too small to have a pace.
WRITER_BOUND = 0.9
WRITER_HINT_MIN_VIDEOS = 50


def _listed(names, limit: int = 10) -> str:
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def _print_summary(report, output_dir: str) -> None:
  header = f"{'split':<12}{'videos':>9}{'failed':>9}{'partial':>9}{'frames':>12}{'size':>11}{'shards':>8}"
  print(header)
  print("-" * len(header))
  for split, shards in sorted(report.summaries.items()):
    failed = sum(len(s.failures) for s in shards)
    partial = sum(len(s.partial) for s in shards)
    print(f"{split:<12}{sum(s.videos for s in shards):>9}{failed:>9}{partial:>9}"
          f"{sum(s.frames for s in shards):>12}{_size(sum(s.bytes for s in shards)):>11}"
          f"{len(shards):>8}")
  if report.counters:
    print("Beam counters: " + ", ".join(f"{k}={v}" for k, v in report.counters.items()))
  if report.skipped_shards:
    print(f"resumed: {report.skipped_shards} shard(s) were already complete")
  if report.rebuilt_shards:
    print(f"rebuilt: {report.rebuilt_shards} shard(s) whose videos changed since they were "
          f"written (paths, sizes or modification times): {_listed(report.rebuilt_names)}")
  if report.videos_decoded:
    print(f"decoded {report.videos_decoded} videos in {report.seconds:.1f} s "
          f"({report.videos_decoded / max(report.seconds, 1e-9):.1f} videos/s)")
  if (report.writer_busy is not None and report.writer_busy > WRITER_BOUND and
      report.videos_decoded >= WRITER_HINT_MIN_VIDEOS):
    print(f"the writer was busy {report.writer_busy:.0%} of the time: it set the pace, not the "
          "decoding workers (more of them would not help); --runner=beam writes shards in "
          "parallel (BUILD.md)")
  print(f"outputs in {output_dir}; failures listed in {output_dir.rstrip('/')}/failures.csv")


def _message(error: Exception) -> str:
  # A tf.errors.OpError's str() starts with the op's traceback; its `message` is the sentence.
  return getattr(error, "message", None) or str(error)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.output_dir and not FLAGS.dry_run:
    raise app.UsageError("--output_dir is required")
  mode = _input_mode()
  beam_options = _beam_options() if FLAGS.runner == "beam" else None
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads and writes files here
  import tensorflow as tf
  from cvrl_tf import schema
  from dataset_tools import builder

  try:
    entries, label_map = _read_entries(mode)
  except (ValueError, OSError, csv.Error, tf.errors.OpError) as e:  # UnicodeDecodeError: ValueError
    print(f"error: reading the inputs: {_message(e)}", file=sys.stderr)
    return 2
  settings = builder.BuildSettings(fps=FLAGS.fps, short_side=FLAGS.short_side,
                                   jpeg_quality=FLAGS.jpeg_quality)
  num_workers = FLAGS.num_workers
  if num_workers is None:
    num_workers = usable_cores()
  try:
    if FLAGS.label_map:
      label_map = schema.read_label_map(FLAGS.label_map)
    if FLAGS.dry_run:
      estimate = builder.dry_run(entries, settings, num_workers=num_workers,
                                 timeout_s=FLAGS.timeout_s)
      _print_dry_run(estimate, num_workers)
      return 0
    if beam_options is not None:
      from dataset_tools import beam_runner
      report = beam_runner.build(
          entries, FLAGS.output_dir, settings, num_shards=FLAGS.num_shards,
          num_decoders=1 if FLAGS.num_workers is None else FLAGS.num_workers,
          timeout_s=FLAGS.timeout_s, label_map=label_map, overwrite=FLAGS.overwrite,
          options=beam_options)
    else:
      report = builder.build(
          entries, FLAGS.output_dir, settings, num_shards=FLAGS.num_shards,
          num_workers=num_workers, timeout_s=FLAGS.timeout_s, label_map=label_map,
          overwrite=FLAGS.overwrite)
  # OSError: permissions, a full disk; OpError: the same from tf.io.gfile (gs://, s3://).
  except (builder.BuildError, ValueError, OSError, tf.errors.OpError) as e:
    print(f"error: {_message(e)}", file=sys.stderr)
    return 2
  _print_summary(report, FLAGS.output_dir)
  if report.failure_fraction > FLAGS.max_failure_fraction:
    print(f"error: {report.failures_this_run} of {report.entries_this_run} videos failed "
          f"({report.failure_fraction:.1%}), more than --max_failure_fraction="
          f"{FLAGS.max_failure_fraction}; see failures.csv", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
