"""Decoding real video files onto the constant-rate grid."""

import os
import uuid
from fractions import Fraction

import av
import numpy as np
import pytest
import simplejpeg

from conftest import coded_frame, frame_index, write_audio_only, write_video
from cvrl_tf import storage
from dataset_tools import video_decode
from dataset_tools.video_decode import (VideoDecodeError, decode_video, grid_slot, output_size,
                                        skips_kept_the_grid)


def _indices(video):
  return [frame_index(simplejpeg.decode_jpeg(j)) for j in video.jpegs]


def _expected_indices(times, fps, end_time):
  """Slot k shows the last frame i with round(times[i] * fps) <= k (hand-written rule)."""
  slots = [int(np.floor(t * fps + 0.5)) for t in times]
  num_slots = int(np.floor(end_time * fps + 0.5))
  return [max(i for i, s in enumerate(slots) if s <= k) for k in range(num_slots)]


def test_grid_slot_rounds_half_up():
  per_tick = Fraction(1, 100) * 25   # ticks of 1/100 s on a 25 fps grid
  assert [grid_slot(t, per_tick) for t in (0, 1, 2, 3, 4, 6)] == [0, 0, 1, 1, 1, 2]


def test_output_size_scales_short_side_to_even_sizes():
  assert output_size(640, 480, 256) == (342, 256)     # 341.3 -> 342
  assert output_size(480, 640, 256) == (256, 342)
  assert output_size(640, 480, 0) == (640, 480)
  assert output_size(853, 481, 0) == (854, 482)     # halves round up
  assert output_size(64, 48, 32) == (42, 32)          # 42.7 -> 42


def test_odd_source_sizes_give_deterministic_even_frames(tmp_path):
  rng = np.random.default_rng(3)
  frames = [rng.integers(0, 255, (45, 67, 3), dtype=np.uint8) for _ in range(4)]
  frames = [np.pad(f, ((0, 1), (0, 1), (0, 0))) for f in frames]   # encoders need even sizes
  path = write_video(str(tmp_path / "odd.mkv"), frames)
  runs = [decode_video(path, fps=25, short_side=s, jpeg_quality=90) for s in (0, 0, 33, 33)]
  assert runs[0].jpegs == runs[1].jpegs and runs[2].jpegs == runs[3].jpegs
  assert (runs[0].height, runs[0].width) == (46, 68)
  assert (runs[2].height, runs[2].width) == (34, 50)    # 33 -> 34; 68 * 34 / 46 = 50.3


def test_frames_round_trip_within_jpeg_tolerance(tmp_path):
  # Smooth content (JPEG and 4:2:0 chroma are gentle to it): gradients with a moving offset.
  y, x = np.mgrid[0:48, 0:64]
  frames = [np.stack([(x * 4 + 9 * i) % 256, (y * 5) % 256, np.full_like(x, 40 * i % 256)],
                     -1).astype(np.uint8) for i in range(6)]
  path = write_video(str(tmp_path / "smooth.mkv"), frames, fps=25)
  video = decode_video(path, fps=25, short_side=0, jpeg_quality=95)
  assert (video.height, video.width) == (48, 64)
  assert len(video.jpegs) == 6
  for original, jpeg in zip(frames, video.jpegs):
    decoded = simplejpeg.decode_jpeg(jpeg).astype(np.float32)
    assert np.mean(np.abs(decoded - original)) < 4.0


def test_same_rate_keeps_every_frame(coded_video):
  video = decode_video(coded_video(n=12, fps=25), fps=25, short_side=0, jpeg_quality=90)
  assert _indices(video) == list(range(12))
  assert video.source_frames == 12 and video.partial_error is None


def test_slower_source_repeats_frames(coded_video):
  # 10 fps -> 25 fps: frame i at i/10 s lands on slot round(2.5 i).
  video = decode_video(coded_video(n=8, fps=10), fps=25, short_side=0, jpeg_quality=90)
  times = [i / 10 for i in range(8)]
  assert _indices(video) == _expected_indices(times, 25, 0.8)
  assert _indices(video)[:9] == [0, 0, 0, 1, 1, 2, 2, 2, 3]


def test_faster_source_drops_frames(coded_video):
  # 50 fps -> 25 fps keeps every other frame: 0, 2, 4, ...
  video = decode_video(coded_video(n=16, fps=50), fps=25, short_side=0, jpeg_quality=90)
  assert _indices(video) == [0, 2, 4, 6, 8, 10, 12, 14]


def test_variable_frame_rate_follows_timestamps(tmp_path):
  times = [0.0, 0.04, 0.2, 0.21, 0.22, 0.5, 0.52]   # a stall, a burst, another stall
  frames = [coded_frame(i) for i in range(len(times))]
  path = write_video(str(tmp_path / "vfr.mkv"), frames, times=times)
  video = decode_video(path, fps=25, short_side=0, jpeg_quality=90)
  # The last frame lasts as long as the gap before it (0.02 s).
  assert _indices(video) == _expected_indices(times, 25, 0.54)


@pytest.mark.parametrize("rotation,shape", [(90, (64, 32)), (-90, (64, 32)), (180, (32, 64))])
def test_rotation_metadata_is_honoured(tmp_path, rotation, shape):
  frame = np.zeros((32, 64, 3), np.uint8)
  frame[:, :16] = 255  # a white band on the left of the coded picture
  path = write_video(str(tmp_path / f"rot{rotation}.mp4"), [frame] * 3, rotation=rotation)
  video = decode_video(path, fps=25, short_side=32, jpeg_quality=95)
  assert (video.height, video.width) == shape
  upright = simplejpeg.decode_jpeg(video.jpegs[0]).mean(-1) > 128
  # Counter-clockwise 90: left -> bottom; clockwise 90: left -> top; 180: left -> right.
  band = {90: upright[-12:], -90: upright[:12], 180: upright[:, -12:]}[rotation]
  rest = {90: upright[:-20], -90: upright[20:], 180: upright[:, :-20]}[rotation]
  assert band.mean() > 0.9 and rest.mean() < 0.1


def test_short_side_resize_of_portrait_video(coded_video):
  video = decode_video(coded_video(n=2), fps=25, short_side=24, jpeg_quality=90)
  assert (video.height, video.width) == (24, 32)


def test_truncated_matroska_keeps_frames_and_says_so(coded_video, tmp_path):
  path = coded_video("whole.mkv", n=50)
  data = open(path, "rb").read()
  cut = str(tmp_path / "cut.mkv")
  with open(cut, "wb") as f:
    f.write(data[:len(data) // 2])
  video = decode_video(cut, fps=25, short_side=0, jpeg_quality=90)
  assert 10 < len(video.jpegs) < 50
  assert _indices(video) == [i % 20 for i in range(len(video.jpegs))]
  assert "header announces 2.00 s" in video.partial_error


def test_decode_error_midway_keeps_earlier_frames(tmp_path):
  rng = np.random.default_rng(1)
  frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(60)]
  # MJPEG: every packet is a whole picture, so a damaged one is an error, not concealed.
  path = write_video(str(tmp_path / "noisy.mp4"), frames, codec="mjpeg")
  data = bytearray(open(path, "rb").read())
  middle = len(data) // 2
  data[middle:middle + 4000] = np.random.default_rng(2).integers(0, 255, 4000, np.uint8).tobytes()
  broken = str(tmp_path / "broken.mp4")
  with open(broken, "wb") as f:
    f.write(bytes(data))
  video = decode_video(broken, fps=25, short_side=0, jpeg_quality=90)
  assert 0 < len(video.jpegs) < 60
  assert "InvalidDataError" in video.partial_error


@pytest.mark.parametrize("make,reason", [
    (lambda d: os.path.join(d, "absent.mp4"), "missing_file"),
    (lambda d: open(os.path.join(d, "zero.mp4"), "wb").close() or os.path.join(d, "zero.mp4"),
     "empty_file"),
    (lambda d: _text(os.path.join(d, "text.mp4")), "unreadable"),
    (lambda d: write_audio_only(os.path.join(d, "audio.mp4")), "audio_only"),
])
def test_unusable_files_raise_with_reason(tmp_path, make, reason):
  path = make(str(tmp_path))
  with pytest.raises(VideoDecodeError) as error:
    decode_video(path, fps=25, short_side=0, jpeg_quality=90)
  assert error.value.reason == reason
  assert os.path.basename(path) in str(error.value)


def test_mp4_without_index_is_unreadable(coded_video, tmp_path):
  data = open(coded_video("whole.mp4", n=20), "rb").read()
  cut = str(tmp_path / "nomoov.mp4")
  with open(cut, "wb") as f:
    f.write(data[:len(data) // 2])   # the moov atom is at the end: gone
  with pytest.raises(VideoDecodeError) as error:
    decode_video(cut, fps=25, short_side=0, jpeg_quality=90)
  assert error.value.reason == "unreadable"


@pytest.mark.parametrize("codec,ext", [("libvpx-vp9", "webm"), ("mjpeg", "avi")])
def test_other_codecs_decode(tmp_path, codec, ext):
  frames = [coded_frame(i) for i in range(5)]
  path = write_video(str(tmp_path / f"clip.{ext}"), frames, codec=codec)
  video = decode_video(path, fps=25, short_side=0, jpeg_quality=90)
  assert _indices(video) == list(range(5))


def _text(path):
  with open(path, "w") as f:
    f.write("this is not a video\n" * 20)
  return path


def _ram_dir():
  return f"ram://video_decode_test_{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("name,codec", [("clip.mp4", "libx264"), ("clip.mkv", "libx264"),
                                        ("clip.avi", "mjpeg")])
def test_video_off_the_local_disk_decodes_through_a_file_object(tmp_path, name, codec):
  # ram:// fails like gs:// for FFmpeg's own file I/O: PyAV must read through a GFile.
  local = write_video(str(tmp_path / name), [coded_frame(i) for i in range(12)], codec=codec)
  data = open(local, "rb").read()
  if name.endswith(".mp4"):
    assert data.index(b"moov") > data.index(b"mdat")   # the index is at the end: seeks needed
  remote = storage.join(_ram_dir(), name)
  storage.atomic_write_bytes(remote, data)
  settings = dict(fps=25, short_side=32, jpeg_quality=90)
  video = decode_video(remote, **settings)
  assert _indices(video) == list(range(12))
  assert video.jpegs == decode_video(local, **settings).jpegs


def test_unusable_files_off_the_local_disk_raise_with_reason():
  directory = _ram_dir()
  storage.atomic_write_bytes(storage.join(directory, "zero.mp4"), b"")
  storage.atomic_write_bytes(storage.join(directory, "text.mp4"), b"not a video\n" * 20)
  storage.makedirs(storage.join(directory, "folder.mp4"))
  for name, reason in (("absent.mp4", "missing_file"), ("zero.mp4", "empty_file"),
                       ("text.mp4", "unreadable"), ("folder.mp4", "not_a_video")):
    with pytest.raises(VideoDecodeError) as error:
      decode_video(storage.join(directory, name), fps=25, short_side=0, jpeg_quality=90)
    assert error.value.reason == reason and name in error.value.detail


_B_FRAMES = {"preset": "medium", "bf": "3", "crf": "30"}  # x264: B-frames, some not references


def _write_moving_texture(path, codec, options, times=None, num_frames=40):
  """A texture sliding 2 px per frame at 60 fps (or at `times`, seconds): frames that reference
  each other, as a camera pan makes them. 128x80."""
  texture = np.random.default_rng(0).integers(0, 256, (96, 160, 3), np.uint8)
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=60)
    stream.width, stream.height, stream.pix_fmt, stream.options = 128, 80, "yuv420p", options
    if times is not None:
      stream.codec_context.time_base = Fraction(1, 1000)
    for t in range(num_frames):
      rgb = np.ascontiguousarray(np.roll(texture, 2 * t, axis=1)[8:88, :128])
      frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
      if times is not None:
        frame.pts, frame.time_base = int(round(times[t] * 1000)), Fraction(1, 1000)
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


@pytest.mark.parametrize("codec,ext,options", [
    ("libx264", "mp4", _B_FRAMES), ("mpeg2video", "ts", {"bf": "2", "q": "6"})])
def test_frames_do_not_depend_on_decoding_threads(tmp_path, codec, ext, options):
  # Frame threads decode frames that reference each other in parallel.
  path = _write_moving_texture(str(tmp_path / f"clip.{ext}"), codec, options)
  decoded = {threads: decode_video(path, fps=25, short_side=0, jpeg_quality=90, threads=threads)
             for threads in (1, 4, 0)}
  assert len(decoded[1].jpegs) == 17 and decoded[1].source_frames == 40
  assert decoded[1].jpegs == decoded[4].jpegs == decoded[0].jpegs


def test_skips_kept_the_grid_hand_cases():
  # 10 ticks per slot: ticks 0-4 land on slot 0, 5-14 on slot 1, 15-24 on slot 2 (half up).
  per_tick = Fraction(1, 10)
  check = lambda shown, skipped, kept=(): skips_kept_the_grid(shown, skipped, kept, 0, per_tick)
  assert check([0, 4, 8, 16], set())                 # nothing skipped
  assert check([0, 4, 12, 16], {8})                  # 8 and 12 share slot 1: 12 replaces 8
  assert not check([0, 4, 8, 16], {12})              # 16 is on slot 2: 12 would have shown
  assert not check([0, 4, 8], {12})                  # the last frame fixes the grid's end
  assert not check([0, 8, 4, 16], {12})              # the decoder left presentation order
  assert not check([0, 4, 16], {8}, kept=[12])       # a frame sent to decode did not come back
  assert not check([0, 8, 16], {8})                  # skipped and shown: not a skip
  assert not skips_kept_the_grid([4, 8, 16], {0}, (), 4, per_tick)  # before the first frame


def _spy_on_skips(monkeypatch) -> list:
  """(frames skipped, kept the grid) per decode that skipped any, from skips_kept_the_grid."""
  calls = []
  check = video_decode.skips_kept_the_grid
  monkeypatch.setattr(video_decode, "skips_kept_the_grid", lambda shown, skipped, *args: (
      calls.append((len(skipped), check(shown, skipped, *args))) or calls[-1][1]))
  return calls


def _decoded_both_ways(path, **kwargs):
  """(decode_video of `path` at 25 fps skipping dropped frames, the same decoding every frame)."""
  return tuple(decode_video(path, fps=25, short_side=0, jpeg_quality=90, skip_dropped=skip,
                            **kwargs) for skip in (True, False))


def test_frames_dropped_by_the_grid_are_skipped_and_change_nothing(tmp_path, monkeypatch):
  # 60 fps with B-frames at 25 fps: 23 of 40 frames are dropped; the non-reference ones among
  # them are never decoded, and the JPEGs are those of decoding every frame.
  calls = _spy_on_skips(monkeypatch)
  path = _write_moving_texture(str(tmp_path / "clip.mp4"), "libx264", _B_FRAMES)
  for threads in (1, 0):
    skipping, everything = _decoded_both_ways(path, threads=threads)
    assert skipping.jpegs == everything.jpegs and len(everything.jpegs) == 17
    assert skipping.source_frames == everything.source_frames == 40
  assert [kept for _, kept in calls] == [True, True] and all(n >= 5 for n, _ in calls)


def test_skipping_on_variable_timestamps_decodes_again_when_it_must(tmp_path, monkeypatch):
  # Millisecond timestamps with a 130 ms pause after frame `gap`: a packet's duration (from the
  # decoding timestamps) no longer says when the next frame is shown, and a frame skipped as
  # replaced can be the one a slot shows. Then the video is decoded again, every frame.
  calls = _spy_on_skips(monkeypatch)
  for gap in range(10, 22):
    times = [i / 60 + (0.13 if i >= gap else 0) for i in range(40)]
    path = _write_moving_texture(str(tmp_path / f"gap{gap}.mp4"), "libx264", _B_FRAMES, times)
    skipping, everything = _decoded_both_ways(path, threads=1)
    assert skipping.jpegs == everything.jpegs, gap
  outcomes = {kept for _, kept in calls}
  assert len(calls) == 12 and outcomes == {True, False}, calls


def _remux_to_mkv(source, path, presentation_ms):
  """Copies `source`'s packets into Matroska with presentation times `presentation_ms(i)` for the
  i-th frame in display order (decoding times 20 ms apart): timestamps a broken muxer writes."""
  with av.open(source) as reader, av.open(path, "w") as writer:
    stream = writer.add_stream_from_template(reader.streams.video[0])
    packets = [p for p in reader.demux(reader.streams.video[0]) if p.size]
    in_display_order = sorted(range(len(packets)), key=lambda j: packets[j].pts)
    display = {j: i for i, j in enumerate(in_display_order)}
    for j, packet in enumerate(packets):
      packet.stream, packet.time_base = stream, Fraction(1, 1000)
      packet.pts, packet.dts, packet.duration = presentation_ms(display[j]) + 40, 20 * j, 20
      writer.mux(packet)
  return path


def test_repeated_timestamps_turn_skipping_off(tmp_path, monkeypatch):
  # 50 fps with one B-frame per P-frame, remuxed so that each B-frame shares its time with the
  # P-frame before it: decoding everything stores the B-frame (it comes out later on that slot);
  # a skipped B-frame would leave the P-frame there. Skipping stops at the first repeated time.
  calls = _spy_on_skips(monkeypatch)
  frames = [np.full((48, 64, 3), 16 + 9 * i, np.uint8) for i in range(23)]
  source = str(tmp_path / "source.mp4")
  with av.open(source, "w") as container:
    stream = container.add_stream("libx264", rate=50)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.options = {"crf": "10", "preset": "medium", "bf": "1",
                      "x264-params": "b-adapt=0:scenecut=0:keyint=300"}
    for rgb in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  path = _remux_to_mkv(source, str(tmp_path / "repeated.mkv"),
                       lambda i: 10 * i if i < 2 else 40 * (i // 2) + 20)
  for threads in (1, 0):
    skipping, everything = _decoded_both_ways(path, threads=threads)
    assert skipping.jpegs == everything.jpegs and len(everything.jpegs) == 13
    assert skipping.source_frames == everything.source_frames == 23
  assert all(not kept for _, kept in calls)  # skipped before the repeat: decoded again


def test_interlaced_h264_is_not_skipped(tmp_path, monkeypatch):
  # Interlaced H.264 may carry a frame's fields in two packets; nothing is skipped in it.
  calls = _spy_on_skips(monkeypatch)
  path = _write_moving_texture(str(tmp_path / "interlaced.mp4"), "libx264",
                               dict(_B_FRAMES, flags="+ildct+ilme"))
  skipping, everything = _decoded_both_ways(path)
  assert skipping.jpegs == everything.jpegs
  assert calls == [] and len(skipping.jpegs) == 17
