"""pipelines.video: real and broken files, generated edge cases, sampling rules, validation, and the worker's deadline.

Real files come from ../shared/videos (override with VIDQ_VIDEOS_DIR); those tests skip when it is absent.
PyAV is the reference decoder throughout: what FFmpeg decodes is what "exists".
"""

from __future__ import annotations

import os
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipelines.errors import VideoError
from pipelines.video import DecodedVideo, Request, decode, run_in_worker
from pipelines.video.sampling import fps_indices, uniform_indices
from samples.make_sample_video import write_sample_video
from test_video_exact import encode

REPO = Path(__file__).resolve().parents[1]
VIDEOS = Path(os.environ.get("VIDQ_VIDEOS_DIR", REPO.parent / "shared" / "videos"))
REAL_FILES = sorted(p for p in VIDEOS.rglob("*") if p.is_file() and p.suffix != ".md") if VIDEOS.is_dir() else []
# Files whose container claims more frames than FFmpeg decodes (see the folder's README).
OVERCOUNTED = [
    "broken/editlist_preroll25.mp4",
    "broken/aud_filler_tail25.mp4",
    "broken/mdat_half_zeroed.mp4",
    "broken/tailcut10_faststart.mp4",
    "h264_yuv444_editlist_1fps.mp4",
    "vp9_profile2_10bit_426x240.webm",
    "h264_corrupted_decord_testfile.mp4",
]
needs_videos = pytest.mark.skipif(not REAL_FILES, reason=f"no real videos at {VIDEOS}")


# ---------------------------------------------------------------- reference decoding and writers (PyAV)


def reference_frames(path: Path, rgb: bool = True) -> list[np.ndarray]:
    """Every frame FFmpeg decodes, in display orientation (RGB, or None placeholders when rgb=False)."""
    out = []
    try:
        with av.open(str(path)) as c:
            if not c.streams.video or c.format.name.endswith("_pipe"):  # no video, or a still image
                return []
            for packet in c.demux(c.streams.video[0]):
                try:
                    for f in packet.decode():
                        img = f.to_ndarray(format="rgb24") if rgb else None
                        k = int(round((f.rotation or 0) / 90))
                        out.append(np.rot90(img, k) if rgb and k else img)
                except av.error.FFmpegError:
                    continue
    except av.error.FFmpegError:
        return []
    return out


def write_video(path: Path, images, pts=None, codec="libx264", rate=8, time_base=None, options=None) -> Path:
    """Encode RGB images [H, W, 3] with PyAV; pts in `time_base` units (default one tick per frame); 8 fps."""
    return encode(path, list(images), codec=codec, rate=rate, options=options, pts=pts, time_base=time_base)


def shapes(n: int, size=(64, 96)) -> list[np.ndarray]:
    """n distinct frames: a bright bar at a different place in each, on a drifting background."""
    h, w = size
    out = []
    for i in range(n):
        img = np.full((h, w, 3), (20 + (i * 37) % 200, 60, 200 - (i * 23) % 180), np.uint8)
        x = (i * 7) % (w - 8)
        img[:, x : x + 8] = 255
        out.append(img)
    return out


def write(path: Path, data: bytes) -> Path:
    """Write bytes to path and return it."""
    path.write_bytes(data)
    return path


def nearest(frame: np.ndarray, refs: list[np.ndarray]) -> tuple[int, float]:
    """Index of the reference frame closest to `frame` (mean absolute difference on every 4th pixel) and that difference."""
    small = frame[::4, ::4].astype(np.int16)
    d = [np.abs(small - r[::4, ::4]).mean() if r.shape == frame.shape else 1e9 for r in refs]
    return int(np.argmin(d)), float(min(d))


def check_result(v: DecodedVideo) -> None:
    """Invariants every successful decode satisfies."""
    t = len(v.indices)
    assert t >= 1 and v.frames.dtype == np.uint8 and v.frames.shape[0] == t == len(v.timestamps)
    assert v.frames.ndim == 4 and v.frames.shape[3] == 3
    assert v.indices == sorted(set(v.indices)) and all(0 <= i < v.total_frames for i in v.indices)
    assert all(b > a for a, b in zip(v.timestamps, v.timestamps[1:]))
    assert v.decoder in ("decord", "pyav") and v.fps >= 0 and v.duration >= 0


def one_line(e: VideoError, path) -> str:
    """The error message, checked to be one line that names the file."""
    msg = str(e)
    assert "\n" not in msg and str(path) in msg and "Check failed" not in msg.split(":", 1)[0]
    return msg


# ---------------------------------------------------------------- real and broken files


@needs_videos
@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: str(p.relative_to(VIDEOS)))
def test_real_file_gets_frames_or_one_clear_error(path: Path):
    """Every file: a DecodedVideo or a one-line VideoError within the deadline; frames whenever FFmpeg decodes any."""
    started = time.monotonic()
    try:
        v = decode(path, timeout_s=60)
    except VideoError as e:
        one_line(e, path)
        assert not reference_frames(path, rgb=False), f"FFmpeg decodes {path.name} but decode() failed: {e}"
    else:
        check_result(v)
        assert v.total_frames == len(reference_frames(path, rgb=False))
        assert v.stats["torch_loaded"] is False
    assert time.monotonic() - started < 60


@needs_videos
@pytest.mark.parametrize("path", [p for p in REAL_FILES if "8k" not in p.name], ids=lambda p: p.name)
def test_sampled_frames_are_the_real_frames_at_their_indices(path: Path):
    """Each returned frame is FFmpeg's frame at the reported index, none repeated: no padding copies, no wrong seek.

    This is what catches decord's silent failures: copies of the last frame on over-counted files
    (OVERCOUNTED) and frames from the wrong GOP on the VFR multi-GOP HEVC file. (The 8K clip is left out
    only because its full-size reference frames take 800 MB.)
    """
    refs = reference_frames(path)
    if not refs:
        pytest.skip("FFmpeg decodes no frame of this file")
    for n in (8, 32):
        v = decode(path, frames=n, timeout_s=None, max_side=None)
        check_result(v)
        assert v.total_frames == len(refs)
        matched = [nearest(f, refs) for f in v.frames]
        assert [m for m, _ in matched] == v.indices or _legit_duplicates(refs, v.indices, matched)
        assert max(d for _, d in matched) < 1.0


def _legit_duplicates(refs, indices, matched) -> bool:
    """True where every mismatch is a frame identical to the one it matched (the AVI repeats frames)."""
    return all(i == m or np.array_equal(refs[i], refs[m]) for i, (m, _) in zip(indices, matched))


@needs_videos
@pytest.mark.parametrize("name", OVERCOUNTED)
def test_overcounted_files_are_noted(name: str):
    """Where the container over-reports its frames, the result says how many really decode."""
    if not (VIDEOS / name).exists():
        pytest.skip(f"{name} absent")
    v = decode(VIDEOS / name, frames=8, timeout_s=None)
    assert any("decodable" in n for n in v.notes)


@needs_videos
def test_8k_is_downscaled_at_decode():
    """An 8K clip comes back at max_side 1920 with its source size and a note, not as GBs of pixels."""
    v = decode(VIDEOS / "hevc_8k_7680x4320_8frames.mp4", frames=4, timeout_s=60)
    assert v.source_size == (4320, 7680) and v.frames.shape[1:3] == (1080, 1920)
    assert any("downscaled" in n for n in v.notes)


@needs_videos
@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_rotation_is_applied_by_both_decoders(decoder: str):
    """A -90 degree display matrix gives portrait frames, and decord and PyAV agree on the pixels."""
    path = VIDEOS / "h264_rot90_3frames.mov"
    v = decode(path, decoder=decoder, timeout_s=None)
    refs = reference_frames(path)
    assert v.frames.shape == (3, 568, 320, 3) and v.decoder == decoder
    assert all(nearest(f, refs) == (i, pytest.approx(0, abs=2)) for i, f in enumerate(v.frames))


@needs_videos
def test_wrong_fps_claim_is_corrected_from_timestamps():
    """The mkv claiming 1000 fps reports ~30 fps, with a note; its timestamps are the true ones."""
    v = decode(VIDEOS / "h264_ac3_1080x720_fps1000.mkv", frames=4, timeout_s=None)
    assert 29 < v.fps < 31 and 0.9 < v.duration < 1.1
    assert any("1000 fps" in n for n in v.notes)
    assert v.timestamps[-1] == pytest.approx(0.967, abs=0.002)


@needs_videos
def test_forcing_decord_on_an_overcounted_file_is_a_clear_error():
    """decoder="decord" refuses a file where decord would pad with copies, instead of returning them."""
    path = VIDEOS / "vp9_profile2_10bit_426x240.webm"
    with pytest.raises(VideoError, match="decord") as e:
        decode(path, decoder="decord", timeout_s=None)
    one_line(e.value, path)


# ---------------------------------------------------------------- generated edge cases


def test_sample_video_frames_are_distinct_and_decoders_agree(tmp_path):
    """The sample clip: 48 distinct frames; decord and PyAV return the same pixels at the same indices."""
    path = write_sample_video(tmp_path / "s.mp4")
    a = decode(path, frames=48, decoder="decord", timeout_s=None)
    b = decode(path, frames=48, decoder="pyav", timeout_s=None)
    assert a.indices == b.indices == list(range(48)) and a.fps == pytest.approx(8)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 1.0
    flat = b.frames.reshape(48, -1).astype(np.int16)
    assert min(np.abs(flat[i] - flat[j]).mean() for i in range(48) for j in range(i)) > 0.5


def test_vp9_odd_size(tmp_path):
    """Odd-size VP9 (decord decodes only frame 0): every frame arrives, at its odd size."""
    images = [img[:121, :161] for img in shapes(12, (128, 168))]
    try:
        path = write_video(tmp_path / "odd.webm", images, codec="libvpx-vp9", options={"deadline": "realtime"})
    except (av.error.FFmpegError, ValueError) as e:
        pytest.skip(f"no VP9 encoder: {e}")
    v = decode(path, frames=12, timeout_s=30)
    check_result(v)
    assert v.frames.shape == (12, 121, 161, 3)
    refs = reference_frames(path)
    assert [nearest(f, refs)[0] for f in v.frames] == list(range(12))


def test_av1(tmp_path):
    """AV1 decodes (with decord2 or PyAV)."""
    try:
        path = write_video(tmp_path / "av1.mp4", shapes(10, (64, 96)), codec="libsvtav1", options={"preset": "12"})
    except (av.error.FFmpegError, ValueError) as e:
        pytest.skip(f"no AV1 encoder in this PyAV build: {e}")
    v = decode(path, frames=5, timeout_s=30)
    check_result(v)
    assert v.total_frames == 10 and v.indices == [0, 2, 4, 7, 9]  # linspace(0, 9, 5) = 0, 2.25, 4.5, 6.75, 9


def test_variable_frame_rate_uses_true_timestamps(tmp_path):
    """VFR: timestamps are the written presentation times, fps is their average, fps sampling follows true time."""
    pts_ms = [0, 40, 80, 120, 600, 640, 1500, 1540, 1580, 2400]
    path = write_video(tmp_path / "vfr.mp4", shapes(10), pts=pts_ms, time_base=Fraction(1, 1000), rate=25)
    v = decode(path, frames=10, timeout_s=None)
    assert v.timestamps == pytest.approx([p / 1000 for p in pts_ms], abs=1e-3)
    assert v.fps == pytest.approx(9 / 2.4, rel=1e-3)
    w = decode(path, fps=1, timeout_s=None)  # on screen at t = 0, 1, 2 s: frames shown at 0, 0.64, 1.58
    assert w.indices == [0, 5, 8] and w.sampling == "fps=1 (max 32): 3 frames"


def test_single_frame_video(tmp_path):
    """One frame: returned once (with a note when more were asked), for frames and for fps sampling."""
    path = write_video(tmp_path / "one.mp4", shapes(1))
    v = decode(path, frames=8, timeout_s=30)
    check_result(v)
    assert v.indices == [0] and v.total_frames == 1 and any("returning all" in n for n in v.notes)
    assert decode(path, fps=2, timeout_s=None).indices == [0]


@pytest.fixture(scope="module")
def hour_clip(tmp_path_factory) -> Path:
    """A one-hour clip at 1 fps, 64x64, a keyframe every 10 frames (3600 frames, about 150 KB)."""
    images = []
    for i in range(3600):
        img = np.zeros((64, 64, 3), np.uint8)
        img[:, :, 0], img[:, :, 1] = i % 256, (i // 256) * 16
        images.append(img)
    path = tmp_path_factory.mktemp("long") / "hour.mp4"
    return write_video(path, images, rate=1, options={"g": "10", "bf": "0", "preset": "ultrafast"})


def test_hour_long_clip_decodes_a_bounded_number_of_frames(hour_clip):
    """Sampling 32 frames seeks: PyAV decodes at most one GOP per sample plus the verified tail, not 3600 frames."""
    v = decode(hour_clip, frames=32, decoder="pyav", timeout_s=None)
    assert v.total_frames == 3600 and v.duration == pytest.approx(3600)
    assert v.indices == uniform_indices(3600, 32) and v.timestamps == [float(i) for i in v.indices]
    assert v.stats["pyav_frames_decoded"] <= 32 * 10 + 2 * 10
    assert v.stats["pyav_passes"] <= 32 + 1  # one pass per GOP holding a sample, plus the tail
    w = decode(hour_clip, frames=32, timeout_s=60)  # auto: PyAV's exact path, in the worker
    assert w.decoder == "pyav" and w.indices == v.indices and np.array_equal(w.frames, v.frames)
    assert w.stats["decord_loaded"] is False  # chosen, not tried: decord never ran


def test_hour_long_clip_fps_sampling_is_capped(hour_clip):
    """fps=1 over an hour selects 3600 frames, capped uniformly to max_frames, and the report says so truly."""
    v = decode(hour_clip, fps=1.0, max_frames=16, timeout_s=None)
    assert len(v.indices) == 16 and v.indices == [uniform_indices(3600, 16)[i] for i in range(16)]
    assert v.sampling == "fps=1 capped to 16 frames (0.00417 fps effective)"  # 3599 s / 15 gaps = 240 s apart
    assert "fps=1 gives 3600 frames; capped by max frames 16: 16 frames 240 s apart" in " ".join(v.notes)


def test_audio_only_file_is_a_clear_error(tmp_path):
    """An audio-only mp4: 'no video stream'."""
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        samples = (np.sin(np.arange(16000) / 10) * 0.3).astype(np.float32)[None]
        for start in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024].copy(), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(VideoError, match="no video stream") as e:
        decode(path, timeout_s=30)
    one_line(e.value, path)


# ---------------------------------------------------------------- validation and paths


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(frames=8, fps=1.0), "either frames or fps"),
        (dict(frames=0), "frames must be at least 1"),
        (dict(frames=-3), "frames must be at least 1"),
        (dict(fps=0), "fps must be positive"),
        (dict(fps=-1.0), "fps must be positive"),
        (dict(max_frames=0), "max_frames"),
        (dict(decoder="ffmpeg"), "decoder must be one of"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    """Bad arguments fail before any decoding, with a one-line reason."""
    path = write_sample_video(tmp_path / "s.mp4", frames=4)
    with pytest.raises(VideoError, match=match):
        decode(path, **kwargs)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: d, "is a directory"),
        (lambda d: write(d / "empty.mp4", b""), "empty file"),
        (lambda d: write(d / "notes.mp4", b"just some text\n" * 20), "text file"),
    ],
    ids=["missing", "directory", "empty", "text"],
)
def test_bad_paths(tmp_path, make, match):
    """Missing, directory, empty and text files: one line naming the file and what is wrong."""
    path = make(tmp_path)
    with pytest.raises(VideoError, match=match) as e:
        decode(path, timeout_s=30)
    one_line(e.value, path)


# ---------------------------------------------------------------- sampling rules


def test_uniform_indices_rule():
    """np.linspace(0, total-1, n) rounded; distinct when n <= total; everything when n > total."""
    assert uniform_indices(100, 8) == np.linspace(0, 99, 8).round().astype(int).tolist()
    assert uniform_indices(5, 32) == [0, 1, 2, 3, 4]
    for total in range(1, 60):
        for n in range(1, total + 1):
            idx = uniform_indices(total, n)
            assert len(set(idx)) == n and idx[0] == 0 and (n == 1 or idx[-1] == total - 1)


def test_fps_indices_rule():
    """The frame on screen at each 1/fps second; repeats removed; capped uniformly."""
    seconds = np.arange(48) / 8.0  # 8 fps, 6 s
    assert fps_indices(seconds, 1.0, 32) == [0, 8, 16, 24, 32, 40]
    assert fps_indices(seconds, 100.0, 100, duration=6.0) == list(range(48))  # faster than the video: every frame once
    assert fps_indices(seconds, 4.0, 5) == [0, 12, 24, 34, 46]


# ---------------------------------------------------------------- the worker


def test_hanging_worker_is_killed_at_the_deadline(tmp_path):
    """A worker that stalls is killed at timeout_s and the call returns promptly with a timeout error."""
    path = write_sample_video(tmp_path / "s.mp4", frames=4)
    req = Request(str(path), None, None, 4, "pyav", None, hang_in="start", hang_s=60)
    started = time.monotonic()
    with pytest.raises(VideoError, match="timed out after 1s"):
        run_in_worker(req, timeout_s=1)
    assert time.monotonic() - started < 3


def test_real_decode_past_a_tiny_deadline_times_out(tmp_path):
    """A real decode given less time than it needs fails with the timeout message, not a hang."""
    path = write_sample_video(tmp_path / "s.mp4", frames=4)
    started = time.monotonic()
    with pytest.raises(VideoError, match="timed out after 0.05s") as e:
        decode(path, timeout_s=0.05)
    one_line(e.value, path)
    assert time.monotonic() - started < 2
