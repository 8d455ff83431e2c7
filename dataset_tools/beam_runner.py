"""Runs the dataset build as an Apache Beam pipeline: `build_tfrecords.py --runner=beam`.

The same build as `builder.build`, scheduled by Beam: the driver plans the shards and saves the
plan (`builder.prepare`), one DoFn call builds one shard (decode its videos in plan order, write
it under a temporary name, rename it: `builder.write_shard`), and the driver writes
dataset_info.json and failures.csv from the shards' summaries (`builder.finish`). Which videos
go in which shard, and their order, come from the plan alone, never from Beam's bundles, so the
bytes equal the local runner's, and a retried shard writes the same bytes again.

Offline by default: beam_options.py pins the FnApiRunner unless the user names a runner.

Apache Beam is an optional dependency (`pip install -e '.[beam]'`): only this module imports it.
"""

import logging
import sys
import threading
import time
from typing import Collection, Dict, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
import tqdm

from dataset_tools import beam_options
from dataset_tools import builder
from dataset_tools.annotations import VideoEntry
from dataset_tools.video_decode import VideoDecodeError

NAMESPACE = "cvrl_build"
_log = logging.getLogger(__name__)


def _check_in_memory_paths(entries: Sequence[VideoEntry], output_dir: str, num_decoders: int,
                           options: PipelineOptions) -> None:
  in_memory = next((p for p in [output_dir] + [e.path for e in entries if e.path]
                    if p.startswith("ram://")), None)
  if in_memory and not beam_options.runs_in_this_process(options):
    raise builder.BuildError(
        f"{in_memory} is on ram://, which lives in this process only: Beam's worker processes "
        "cannot reach it; pass --beam_pipeline_options=\"--direct_running_mode=in_memory\"")
  # Then, as for the local runner: ram:// videos are decoded in this process (--num_workers=0).
  builder.check_workers(entries, num_decoders)


class BuildShard(beam.DoFn):
  """(split, shard index) -> builds that shard unless it is complete and its videos unchanged.

  Each DoFn instance decodes with its own `builder.Decoder` (`num_decoders` processes, which
  enforce `timeout_s` per video; 0: in the Beam worker itself, without a timeout).
  """

  def __init__(self, output_dir: str, settings: builder.BuildSettings,
               label_index: Dict[str, int], num_decoders: int, timeout_s: Optional[float]):
    self._output_dir = output_dir
    self._settings = settings
    self._label_index = label_index
    self._num_decoders = num_decoders
    self._timeout_s = timeout_s
    self._decoder = None
    self._plans = {}

  def setup(self):
    # One FFmpeg thread per video: Beam runs a worker per core, and a shard's last video is not
    # the job's last (the local pool's reason for FFmpeg's threads at its tail).
    self._decoder = builder.Decoder(self._settings, self._num_decoders, self._timeout_s,
                                    threads=1)

  def teardown(self):
    if self._decoder is not None:
      self._decoder.close()

  def _shard(self, split: str, index: int) -> builder.ShardPlan:
    if split not in self._plans:   # one read per split and DoFn instance
      self._plans[split] = builder.read_plan(self._output_dir, split)
    return self._plans[split][index]

  def process(self, element):
    split, index = element
    shard = self._shard(split, index)
    state, inputs = builder.shard_state(self._output_dir, shard)
    if state == builder.COMPLETE:
      Metrics.counter(NAMESPACE, "shards_skipped").inc()
      return
    if state == builder.CHANGED:
      # As it happens (the console here, Cloud Logging on Dataflow); the driver's summary names
      # them too, from the shards' summaries (builder.shard_outcomes).
      _log.warning("%s: its videos changed since it was written (paths, sizes or "
                   "modification times); rebuilding it", shard.name)
    records = self._decoder.decode_in_order(
        shard.entries, builder.record_maker(self._settings, self._label_index))
    summary = builder.write_shard(self._output_dir, shard, records, inputs,
                                  on_video=_count_video)
    Metrics.counter(NAMESPACE, "shards_rebuilt" if state == builder.CHANGED
                    else "shards_written").inc()
    Metrics.counter(NAMESPACE, "bytes").inc(summary.bytes)
    yield shard.name


def _count_video(result) -> None:
  """Beam counters of one decoded video, summed over the workers (the progress of a job)."""
  Metrics.counter(NAMESPACE, "videos_processed").inc()
  if isinstance(result, VideoDecodeError):
    Metrics.counter(NAMESPACE, f"failed_{result.reason}").inc()
  else:
    Metrics.counter(NAMESPACE, "videos").inc()
    Metrics.counter(NAMESPACE, "frames").inc(result.frames)


class ShardProgress:
  """A progress bar of the shards a pipeline writes, from the driver: a thread lists the output
  folder's summaries every `interval_s` (any runner: the driver sees gs:// as the workers do).

  Of `names`, it counts the shards that had no summary when it started: a listing cannot tell a
  rewritten summary from an old one, so shards rebuilt over earlier ones are left to the
  summary at the end. A listing that fails costs one update, never the build.
  """

  def __init__(self, output_dir: str, names: Collection[str], enabled: bool,
               interval_s: Optional[float] = None):
    self._output_dir = output_dir
    self._names = set(names)
    self._enabled = enabled
    self._interactive = sys.stderr.isatty()
    # Into a log file (CI, nohup) every redraw is kept: few of them.
    self._interval_s = interval_s or (2.0 if self._interactive else 30.0)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._poll, daemon=True)
    self._bar = None

  @property
  def done(self) -> int:
    """The shards counted so far."""
    return self._bar.n if self._bar is not None else 0

  def _update(self) -> None:
    try:
      done = len(builder.summarised_shards(self._output_dir) & self._names)
    except Exception as e:  # progress only: a network blip must not stop the build
      _log.debug("listing %s for progress failed: %s", self._output_dir, e)
      return
    self._bar.update(done - self._bar.n)

  def _poll(self) -> None:
    while not self._stop.wait(self._interval_s):
      self._update()

  def __enter__(self):
    if not self._enabled or not self._names:
      return self
    try:
      self._names -= builder.summarised_shards(self._output_dir)
    except Exception as e:  # then shards rebuilt over an old summary count from the start
      _log.debug("listing %s for progress failed: %s", self._output_dir, e)
    if self._names:
      # miniters=1: the poll interval sets the pace of redraws, not tqdm's estimate of it.
      self._bar = tqdm.tqdm(total=len(self._names), unit="shard", desc="building (Beam)",
                            dynamic_ncols=True, miniters=1,
                            mininterval=0.2 if self._interactive else self._interval_s)
      self._thread.start()
    return self

  def __exit__(self, exc_type, *_):
    if self._bar is None:
      return
    self._stop.set()
    try:
      # After a failure, a listing in flight is not worth waiting for (on a failing network
      # GCS retries for minutes; the thread is a daemon); after success, it is one listing.
      self._thread.join(timeout=None if exc_type is None else 0)
      if exc_type is None:
        self._update()
    finally:
      self._bar.close()


def counters(result) -> Dict[str, int]:
  """The pipeline's counters of this module, by name (committed values)."""
  found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
  totals: Dict[str, int] = {}
  for counter in found:
    totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + counter.committed
  return dict(sorted(totals.items()))


def build(entries: Sequence[VideoEntry], output_dir: str, settings: builder.BuildSettings, *,
          num_shards: Optional[int], num_decoders: int, timeout_s: Optional[float],
          label_map: Optional[Sequence[str]], overwrite: bool,
          options: PipelineOptions, progress: bool = True) -> builder.BuildReport:
  """`builder.build` as a Beam pipeline run with `options` (beam_options.pipeline_options).

  Args:
    num_decoders: decoding processes per DoFn instance (1: one video at a time, killed after
      `timeout_s`); 0 decodes in the Beam worker (no timeout; ram:// inputs).
    progress: show a progress bar of the shards written (ShardProgress) on stderr.
    The others as in builder.build.

  Returns:
    builder.BuildReport; `videos_decoded` comes from the pipeline's counters (all of them are in
    `counters`), the skipped and rebuilt shards from the shards' summaries before and after the
    run (builder.shard_outcomes: Beam 2.77's string-set metric, the way to collect names from
    workers, kept 2 of 3 names in a check here).

  Raises:
    BuildError as builder.build does, before the pipeline starts.
  """
  _check_in_memory_paths(entries, output_dir, num_decoders, options)
  plan = builder.prepare(entries, output_dir, settings, num_shards=num_shards,
                         label_map=label_map, overwrite=overwrite)
  before = builder.written_from(builder.load_summaries(output_dir))
  start = time.monotonic()
  pipeline = beam.Pipeline(options=options)
  _ = (pipeline
       | "shards" >> beam.Create([(s.split, s.index) for s in plan.shards])
       # Reshuffle: the shards spread over the workers instead of following Create's one bundle.
       | "spread" >> beam.Reshuffle()
       | "build" >> beam.ParDo(BuildShard(output_dir, settings, plan.label_index, num_decoders,
                                          timeout_s)))
  with ShardProgress(output_dir, [s.name for s in plan.shards], enabled=progress):
    result = pipeline.run()
    result.wait_until_finish()
  totals = counters(result)
  summaries = builder.load_summaries(output_dir)
  skipped, rebuilt = builder.shard_outcomes(before, builder.written_from(summaries),
                                            [s.name for s in plan.shards])
  report = builder.finish(output_dir, settings, plan, entries_this_run=len(entries),
                          videos_decoded=totals.get("videos_processed", 0),
                          seconds=time.monotonic() - start, skipped_shards=skipped,
                          rebuilt_shards=len(rebuilt), rebuilt_names=rebuilt,
                          summaries=summaries)
  report.counters = totals
  return report
