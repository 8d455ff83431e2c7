"""Decodes one video file into JPEG frames on a constant-rate grid, with PyAV.

This module runs inside the builder's worker processes: it imports PyAV, simplejpeg and NumPy only
(no TensorFlow, which would cost every worker seconds of start-up and hundreds of MB). Videos off
the local disk (`gs://`, `s3://`, `ram://`) are the exception: a worker imports `cvrl_tf.storage`
(tf.io.gfile) with its first such video, and PyAV reads through a GFile file object (read; seek
with whence 0, 1, 2; PyAV answers FFmpeg's AVSEEK_SIZE query with "unknown", which MP4 with its
index at the end, Matroska and AVI accept: tests/test_video_decode.py).

Frame selection follows presentation time, as ffmpeg's `fps` filter does: a source frame with
presentation time t (seconds after the first frame) lands on grid slot round(t * fps), and slot k
stores the last frame that landed on a slot <= k. A slower source therefore repeats frames, a
faster one drops them, and timestamps jittered by less than half a slot still map one to one.
Header frame counts and durations are never trusted: the grid ends where the last decoded frame
stops being shown. H.264 frames that the grid drops and that no other frame references are not
decoded at all (`skip_dropped`); the result is that of decoding every frame (see decode_video).
"""

import dataclasses
import math
import os
import stat
import time
from fractions import Fraction
from typing import Collection, List, Optional, Sequence

import av
import numpy as np
import simplejpeg
from av.video.reformatter import VideoReformatter


class VideoDecodeError(Exception):
  """A video that yields no frames. `reason` is a short code for failures.csv."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail

  def __reduce__(self):
    # Raised in a worker process and re-raised in the builder: pickle by (reason, detail).
    return VideoDecodeError, (self.reason, self.detail)


@dataclasses.dataclass(frozen=True)
class DecodedVideo:
  """JPEG frames on the `fps` grid plus what was learned about the source."""
  jpegs: List[bytes]        # [T] one JPEG per grid slot; repeated slots share equal bytes
  height: int               # stored frame size, after rotation and resizing
  width: int
  source_frames: int        # frames the file yielded (decoded, or skipped as dropped)
  source_width: int         # coded size, before rotation
  source_height: int
  rotation: int             # counter-clockwise degrees applied (0, 90, 180, 270)
  partial_error: Optional[str]  # decode error after which the frames so far were kept


def usable_cores() -> int:
  """Cores this process may run on (its CPU affinity: a container's or `taskset`'s share): the
  builder's default pool size, and what tells it whether its workers fill the machine."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def duration_us_at(num_frames: int, fps: float) -> int:
  """Microseconds spanned by `num_frames` stored at `fps`."""
  return int(round(num_frames * 1_000_000 / fps))


def output_size(width: int, height: int, short_side: int) -> tuple:
  """(width, height) with the short side scaled to `short_side` (0 keeps the size).

  Both sides are rounded to even numbers, as ffmpeg's `scale=-2:N` does: JPEG stores chroma at
  half resolution, and libjpeg-turbo's planar encoder needs whole chroma samples.
  """
  even = lambda x: max(2, 2 * math.floor(x / 2 + 0.5))
  if short_side <= 0:
    return even(width), even(height)
  short = even(short_side)
  scale = short / min(width, height)
  if width <= height:
    return short, even(height * scale)
  return even(width * scale), short


def grid_slot(ticks: int, slots_per_tick: Fraction) -> int:
  """The grid slot a frame shown `ticks` time-base units after the first lands on.

  Round half up of ticks × slots_per_tick (= time_base × fps), in integers: exact, and cheap
  enough to run on every decoded frame.
  """
  p, q = slots_per_tick.numerator, slots_per_tick.denominator
  return (2 * ticks * p + q) // (2 * q)


def _normalised_rotation(degrees) -> int:
  # PyAV reports the display matrix as a counter-clockwise angle in (-180, 180]; phone clips are
  # multiples of 90. Anything else (a skew) cannot be honoured with a lossless rotation.
  rotation = int(round(float(degrees or 0))) % 360
  return rotation if rotation in (0, 90, 180, 270) else 0


def _plane(plane) -> np.ndarray:
  """A video plane as a contiguous [H, W] uint8 array, without FFmpeg's row padding.

  Contiguous matters: the encoder reads rows back to back, and a strided view would hand it the
  padding bytes, whose content depends on what the buffer held before (non-deterministic JPEGs).
  """
  rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
  return np.ascontiguousarray(rows[:, :plane.width])


class _FrameEncoder:
  """Resizes, rotates and JPEG-encodes decoded frames, never leaving YUV 4:2:0.

  JPEG stores full-range YCbCr 4:2:0, which is what video decoders produce (up to the range):
  swscale scales and expands the range in one pass, and libjpeg-turbo (simplejpeg) compresses
  the planes as they are. Going through RGB, as ffmpeg-to-Pillow pipelines do, costs two colour
  conversions and a chroma resampling per frame, ~3x the time (benchmarks/build_tfrecords.py).
  """

  def __init__(self, short_side: int, jpeg_quality: int):
    self._short_side = short_side
    self._quality = jpeg_quality
    # One reformatter per video keeps its swscale context between frames
    # (`VideoFrame.reformat` builds a new one per call, which doubles the cost).
    self._scaler = VideoReformatter()
    self.height = self.width = 0

  def encode(self, frame: av.VideoFrame, rotation: int) -> bytes:
    # Resize before rotating: a quarter turn swaps which side is short.
    upright_w, upright_h = ((frame.height, frame.width) if rotation in (90, 270)
                            else (frame.width, frame.height))
    out_w, out_h = output_size(upright_w, upright_h, self._short_side)
    coded_w, coded_h = (out_h, out_w) if rotation in (90, 270) else (out_w, out_h)
    # AREA averages when shrinking (the usual case: Kinetics is 340-1280 px wide), so the
    # result is anti-aliased, and it is the cheapest swscale kernel that is.
    small = self._scaler.reformat(
        frame, width=coded_w, height=coded_h, format="yuv420p", interpolation="AREA",
        src_color_range=frame.color_range or None, dst_color_range="JPEG", threads=1)
    y, u, v = (_plane(p) for p in small.planes)
    if rotation:
      y, u, v = (np.ascontiguousarray(np.rot90(p, k=rotation // 90)) for p in (y, u, v))
    self.height, self.width = y.shape
    return simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=self._quality)


def _is_local(path: str) -> bool:
  # storage.is_local without importing TensorFlow (file:// paths take the tf.io.gfile route).
  return "://" not in path


def _file_facts(path: str):
  """(exists, is a directory, bytes) of `path`."""
  if _is_local(path):
    try:
      info = os.stat(path)  # local-only: no scheme (checked above), and no TensorFlow here
    except FileNotFoundError:
      return False, False, 0
    except OSError as e:  # a permission, a broken mount
      raise VideoDecodeError("unreadable", f"{path}: {e}") from e
    return True, stat.S_ISDIR(info.st_mode), info.st_size
  from cvrl_tf import storage  # TensorFlow: imported by a worker's first non-local video only
  if not storage.exists(path):
    return False, False, 0
  if storage.isdir(path):
    return True, True, 0
  return True, False, storage.size(path)


def _check_file(path: str) -> None:
  """Raises VideoDecodeError for a missing, folder or empty `path`, before FFmpeg sees it."""
  exists, folder, size = _file_facts(path)
  if not exists:
    raise VideoDecodeError("missing_file", f"{path} does not exist")
  if folder:
    raise VideoDecodeError("not_a_video", f"{path} is a directory")
  if size == 0:
    raise VideoDecodeError("empty_file", f"{path} is 0 bytes")


def _open(path: str):
  """(container, source): `source` is what PyAV reads, a local path (FFmpeg reads it with its own
  buffered I/O) or a seekable tf.io.gfile file object; close it with `_close_source`."""
  _check_file(path)
  if _is_local(path):
    source = path
  else:
    from cvrl_tf import storage
    source = storage.open_for_decoding(path)
  try:
    container = av.open(source, metadata_errors="ignore")
  except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
    _close_source(source)
    raise VideoDecodeError("unreadable", f"{path}: FFmpeg cannot open it ({e})") from e
  if not container.streams.video:
    kinds = sorted({s.type for s in container.streams}) or ["no streams"]
    container.close()
    _close_source(source)
    reason = "audio_only" if kinds == ["audio"] else "no_video_stream"
    raise VideoDecodeError(reason, f"{path} has no video stream (found: {', '.join(kinds)})")
  return container, source


def _close_source(source) -> None:
  """Closes the file object PyAV read from (a path needs nothing)."""
  if not isinstance(source, str):
    source.close()


def _announced_seconds(container, stream) -> Optional[float]:
  if stream.duration and stream.time_base:
    return float(stream.duration * stream.time_base)
  if container.duration:
    return container.duration / 1_000_000  # AV_TIME_BASE
  return None


# Decoders whose non-reference frames no other frame reads, so that a frame the grid drops can be
# skipped before it is decoded without changing any other frame: H.264 (nal_ref_idc 0), what
# nearly all of Kinetics is. Not HEVC (a "sub-layer non-reference" picture may be read by a
# higher temporal layer) nor MPEG-4 part 2 (a packed B-frame shares its packet with the next
# frame); FFmpeg's MPEG-2 decoder skipped 7 of the 39 dropped frames it was offered in
# benchmarks/build_tfrecords.py's mix, not worth a second path.
SKIPPABLE_CODECS = frozenset({"h264"})


def skips_kept_the_grid(shown: Sequence[int], skipped: Collection[int], kept: Collection[int],
                        first: int, per_tick: Fraction) -> bool:
  """Whether frames skipped before decoding left the grid as decoding them would have.

  Args:
    shown: ticks of the decoded frames, in the order the decoder gave them.
    skipped: ticks of the frames skipped (sent with skip_frame NONREF, no frame came back).
    kept: ticks of the packets sent without skipping once skipping could start.
    first: ticks of the first decoded frame; per_tick: grid slots per tick.

  A skipped frame changes nothing when a later frame follows it in presentation order on its slot
  (it would have been replaced there). The decoder must also have kept to presentation order and
  returned every frame that was not skipped, as it does without skipping.

  Presentation order is taken from the timestamps: H.264 puts frames out in their own order
  (picture order counts), which a file's timestamps follow unless its muxer broke them. A file whose
  decoded frames come out with timestamps out of order fails here; one where only skipped frames
  carry wrong timestamps cannot be told apart (the skipped frames are never seen).
  """
  if not skipped:
    return True
  if any(b <= a for a, b in zip(shown, shown[1:])) or not set(kept) <= set(shown):
    return False
  everything = sorted(set(shown) | set(skipped))
  if len(everything) != len(shown) + len(skipped) or everything[-1] in skipped:
    return False
  return all(t > first and grid_slot(t - first, per_tick) == grid_slot(nxt - first, per_tick)
             for t, nxt in zip(everything, everything[1:]) if t in skipped)


def decode_video(path: str, *, fps: float, short_side: int, jpeg_quality: int,
                 threads: int = 0, skip_dropped: bool = True) -> DecodedVideo:
  """Decodes `path` into JPEG frames on the `fps` grid.

  Args:
    path: a video file any FFmpeg build of PyAV can read, local or on any file system of
      tf.io.gfile (`gs://...`).
    fps: stored frame rate (> 0).
    short_side: stored short side in pixels after rotation (even); 0 keeps the source size.
    jpeg_quality: 1..100, the IJG (libjpeg) quality scale.
    threads: FFmpeg decoding threads; 0 lets FFmpeg choose frame and slice threads (one per
      core). The frames are the same either way (FFmpeg's decoders are bit-exact across threads);
      the cost is not: one thread spends ~21 % less CPU per frame on the codec mix of
      benchmarks/build_tfrecords.py, and is what a process per core should use.
    skip_dropped: skip decoding non-reference frames that the grid drops (SKIPPABLE_CODECS): a
      59.94 fps H.264 source stored at 25 fps drops 58 % of its frames, a 30 fps one 17 %. The
      result is the same as decoding every frame: when the timestamps turn out not to be what
      the skipping assumed (skips_kept_the_grid; repeated or missing timestamps, interlaced
      video), the video is decoded again without it. The exception is a file whose muxer gave
      skipped frames timestamps out of their display order, which cannot be seen.

  Returns:
    DecodedVideo. A file that breaks partway keeps the frames before the damage and says so in
    `partial_error`.

  Raises:
    VideoDecodeError when the file is missing, empty, not a video or yields no frame.
  """
  video = _decode_on_grid(path, fps, short_side, jpeg_quality, threads, skip_dropped)
  if video is None:
    video = _decode_on_grid(path, fps, short_side, jpeg_quality, threads, skip_dropped=False)
  return video


def _decode_on_grid(path: str, fps: float, short_side: int, jpeg_quality: int, threads: int,
                    skip_dropped: bool) -> Optional[DecodedVideo]:
  """decode_video; None when frames were skipped and that changed the grid."""
  container, source = _open(path)
  stream = container.streams.video[0]
  codec = stream.codec_context
  stream.thread_type = "AUTO"
  codec.thread_count = threads
  skippable = skip_dropped and codec.name in SKIPPABLE_CODECS
  # Timestamps stay integers in the stream's time base (ticks); one exact ratio maps ticks to
  # grid slots.
  time_base = Fraction(stream.time_base or Fraction(1, 90_000))
  per_tick = time_base * Fraction(fps).limit_denominator(1_000_000)
  one_slot_ticks = max(1, round(1 / per_tick))
  # A packet's duration (from MP4's decoding timestamps, Matroska's block durations) may differ
  # from the step to the next presentation timestamp by the timestamps' rounding (a millisecond
  # in Matroska, or in MP4 made from it).
  jitter = max(1, math.ceil(Fraction(2, 1000) / time_base))

  encoder = _FrameEncoder(short_side, jpeg_quality)
  jpegs: List[bytes] = []
  decoded = 0
  partial_error = None
  pending_slot, pending_frame = -1, None   # the frame on screen from `pending_slot` on
  first = last = None                      # ticks of the first frame and the latest one
  last_step = None                         # ticks between the last two frames
  rotation = 0
  source_w, source_h = codec.width, codec.height
  shown, sent_to_skip, kept = [], set(), []  # ticks, for skips_kept_the_grid
  sent = set()                                # ticks of every packet sent
  unchecked = False                           # a timestamp missing or repeated
  try:
    for packet in container.demux(stream):
      if packet.size and packet.pts is not None:  # size 0: the final flush
        # Two packets at one time: a skipped one and a kept one could not be told apart.
        unchecked |= packet.pts in sent
        sent.add(packet.pts)
      if skippable and first is not None and packet.size:
        if packet.pts is None or unchecked:  # nothing to check a skip against: decode all
          skippable, unchecked, skip = False, True, False
        else:
          # Skipped if the next frame, one duration later (give or take the timestamps'
          # rounding), lands on this frame's slot.
          skip = bool(packet.duration) and packet.pts > first and (
              grid_slot(packet.pts - first, per_tick) ==
              grid_slot(packet.pts + packet.duration + jitter - first, per_tick))
          (sent_to_skip.add if skip else kept.append)(packet.pts)
        codec.skip_frame = "NONREF" if skip else "DEFAULT"
      for frame in codec.decode(packet):
        decoded += 1
        if frame.pts is not None:
          ticks = frame.pts
          shown.append(ticks)
        else:  # no timestamp: assume it follows the previous frame
          ticks = 0 if last is None else last + (last_step or one_slot_ticks)
          unchecked = True
        if first is None:
          first = last = ticks
          rotation = _normalised_rotation(getattr(frame, "rotation", 0))
          source_w, source_h = frame.width, frame.height
          # Interlaced H.264 may carry a frame's two fields in two packets: the second one never
          # comes back as a frame, and would look skipped.
          skippable = skippable and not frame.interlaced_frame
        elif ticks > last:
          last_step, last = ticks - last, ticks
        slot = grid_slot(ticks - first, per_tick)
        if slot < pending_slot:
          continue  # timestamps went backwards: that slot is already decided
        if pending_frame is not None and slot > pending_slot:
          # Slots pending_slot .. slot-1 show the pending frame.
          jpegs.extend([encoder.encode(pending_frame, rotation)] * (slot - pending_slot))
        pending_slot, pending_frame = slot, frame
  except (av.error.FFmpegError, MemoryError, ValueError) as e:
    partial_error = f"{type(e).__name__}: {e}"
  finally:
    announced = _announced_seconds(container, stream)
    container.close()
    _close_source(source)

  skipped = sent_to_skip - set(shown)
  if skipped:
    if (partial_error is not None or unchecked or
        not skips_kept_the_grid(shown, skipped, kept, first, per_tick)):
      return None
    # The last frame's duration as decoding every frame would measure it: from the frame before
    # it, decoded or skipped (the last one was decoded: skips_kept_the_grid).
    last_step = last - max(max(skipped), *shown[-2:-1])
  if pending_frame is None:
    detail = partial_error or "the video stream holds no decodable frame"
    raise VideoDecodeError("no_frames", f"{path}: {detail}")
  # The last frame stays on screen for one source frame duration (or one slot when unknown).
  end = last + (last_step or one_slot_ticks)
  # The grid has round(duration * fps) slots; a last frame that lands on the slot past the end
  # is dropped, as every other frame that is not on screen at any grid time.
  end_slot = max(1, grid_slot(end - first, per_tick))
  if partial_error is not None:
    end_slot = pending_slot + 1  # after damage the frame's real duration is unknown
  if end_slot > pending_slot:
    jpegs.extend([encoder.encode(pending_frame, rotation)] * (end_slot - pending_slot))
  decoded_seconds = float((end - first) * time_base)
  if partial_error is None and announced and decoded_seconds < announced - max(0.25, 0.05 * announced):
    # Matroska, WebM and MPEG-TS end quietly where a truncated file ends: only the header's
    # duration shows that frames are missing. (Headers can lie; the frames are kept either way.)
    partial_error = (f"decoding ended at {decoded_seconds:.2f} s but the header announces "
                     f"{announced:.2f} s (truncated or damaged file?)")
  return DecodedVideo(
      jpegs=jpegs, height=encoder.height, width=encoder.width,
      source_frames=decoded + len(skipped), source_width=source_w, source_height=source_h,
      rotation=rotation, partial_error=partial_error)


def estimate_decode_cost(path: str) -> float:
  """Pixels that decoding `path` will produce (seconds x frame rate x width x height), from the
  container header alone: the builder starts the costliest videos first. 0.0 when unknown.

  Off the local disk the answer is 0.0 without reading: a header read over the network costs
  more than the load balance it buys.
  """
  if not _is_local(path):
    return 0.0
  try:
    with av.open(path, metadata_errors="ignore") as container:
      stream = container.streams.video[0]
      seconds = _announced_seconds(container, stream) or 0.0
      rate = float(stream.average_rate or stream.guessed_rate or 0)
      return seconds * rate * stream.codec_context.width * stream.codec_context.height
  except Exception:  # any unreadable header: decode_video will say what is wrong with the file
    return 0.0


def timed_decode_video(path: str, **kwargs) -> tuple:
  """(decode_video(path, **kwargs), seconds it took): the builder's --dry_run estimate."""
  start = time.perf_counter()
  video = decode_video(path, **kwargs)
  return video, time.perf_counter() - start
