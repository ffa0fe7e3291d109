"""pipelines.video, exactness and faults: every sampled frame equals a plain sequential PyAV decode, bit for bit.

The files are generated here with PyAV (small, so the tests stay fast): H.264 with B-frames and a long GOP,
HEVC (x265's open GOPs), VP9 (hidden alt-ref frames), AV1, MPEG-TS with B-frames (where a seek to a keyframe
lands late), variable frame rate and an edit list; then the faults of issue 14 (names that look like URLs,
two video streams, a static video) and the long-lived worker (survives a kill, dies with its parent).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import psutil
import pytest

from pipelines.errors import VideoError
from pipelines.video import DecodeWorker, Request, VideoTooLarge, decode
from pipelines.video import container, exact, frame_map, job, reader
from pipelines.video import rgb as rgb_mod
from pipelines.video.sampling import uniform_indices

REPO = Path(__file__).resolve().parents[1]


def pictures(n: int, size=(64, 96), static: bool = False) -> list[np.ndarray]:
    """n frames with motion and texture (so encoders use B-frames and references); all equal if static."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        t = 0 if static else i
        img = np.empty((h, w, 3), np.uint8)
        img[..., 0] = (xx * 3 + t * 5) % 256
        img[..., 1] = (yy * 4 + t * 3) % 256
        img[..., 2] = ((xx + yy) * 2 + t * 7) % 256
        x = (t * 3) % (w - 12)
        img[10:30, x : x + 12] = 255
        out.append(img)
    return out


def encode(path: Path, images, codec="libx264", rate=24, options=None, fmt=None, pts=None, time_base=None) -> Path:
    """Encode RGB images [H, W, 3] with PyAV (pts in `time_base` units, default one tick per frame)."""
    h, w = images[0].shape[:2]
    try:
        with av.open(str(path), "w", format=fmt) as out:
            s = out.add_stream(codec, rate=Fraction(rate))
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            if time_base is not None:
                s.codec_context.time_base = time_base
            s.options = {**({"threads": "1"} if codec != "libsvtav1" else {}), **(options or {})}
            for i, img in enumerate(images):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = pts[i] if pts is not None else i
                if time_base is not None:
                    frame.time_base = time_base
                out.mux(s.encode(frame))
            out.mux(s.encode(None))
    except (av.error.FFmpegError, ValueError) as e:
        pytest.skip(f"PyAV cannot encode {codec} here: {e}")
    return path


def sequential(path: Path) -> tuple[list[int], list[np.ndarray]]:
    """The reference: every frame of a plain sequential decode (pts, RGB) in output order."""
    pts, rgb = [], []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            pts.append(f.pts)
            rgb.append(f.to_ndarray(format="rgb24"))
    return pts, rgb


GENERATED = {
    # name: (file name, codec, encoder options, container format, frames)
    "h264_bframes_long_gop": ("a.mp4", "libx264", {"g": "60", "bf": "3", "preset": "veryfast"}, None, 150),
    "hevc_open_gop": ("h.mp4", "libx265", {"x265-params": "keyint=30:min-keyint=30:bframes=4:log-level=none"},
                      None, 90),
    "vp9_altref": ("v.webm", "libvpx-vp9", {"g": "30", "deadline": "good", "cpu-used": "8", "lag-in-frames": "16",
                                            "auto-alt-ref": "1"}, None, 60),
    "av1": ("av1.mp4", "libsvtav1", {"preset": "12", "g": "24"}, None, 48),
    "mpegts_bframes": ("t.ts", "libx264", {"g": "24", "bf": "2"}, "mpegts", 240),
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict:
    """Lazily generated files by name (each encoded at most once per module)."""
    root, made = tmp_path_factory.mktemp("gen"), {}

    def get(name: str) -> Path:
        if name not in made:
            fname, codec, opts, fmt, n = GENERATED[name]
            made[name] = encode(root / fname, pictures(n), codec=codec, options=opts, fmt=fmt)
        return made[name]

    return get


def assert_exact(path: Path, v, ref_pts: list[int], ref_rgb: list[np.ndarray]) -> None:
    """Every returned frame is, bit for bit, the sequential decode's frame at the reported index."""
    assert v.total_frames == len(ref_rgb)
    assert v.frames.shape[0] == len(v.indices)
    for frame, i in zip(v.frames, v.indices):
        assert np.array_equal(frame, ref_rgb[i]), f"{path.name}: frame {i} differs from the sequential decode"


@pytest.mark.parametrize("name", list(GENERATED))
def test_sampled_frames_equal_a_sequential_decode(generated, name):
    """Uniform counts from 1 to every frame, and fps sampling: the frames of a plain decode, at the right indices."""
    path = generated(name)
    ref_pts, ref_rgb = sequential(path)
    for n in (1, 5, 17, len(ref_rgb)):
        v = decode(path, frames=n, max_side=None, timeout_s=None)
        assert v.decoder == "pyav" and v.indices == uniform_indices(len(ref_rgb), n)
        assert_exact(path, v, ref_pts, ref_rgb)
    v = decode(path, fps=3.0, max_side=None, timeout_s=None)
    assert_exact(path, v, ref_pts, ref_rgb)


def test_each_group_of_pictures_is_decoded_once(generated):
    """A long-GOP H.264 file: one pass per GOP holding samples (plus the tail check), unwanted B-frames skipped."""
    path = generated("h264_bframes_long_gop")  # 150 frames, keyframes every 60
    v = decode(path, frames=3, max_side=None, timeout_s=None)  # frames 0, 74 (GOP 2), 149 (GOP 3: the tail)
    assert v.indices == [0, 74, 149]
    assert v.stats["pyav_passes"] == 3  # tail (GOP 3, whose frame 149 is reused) + GOP 1 + GOP 2
    assert v.stats["pyav_frames_decoded"] < 150  # GOP 2 stops at frame 74, unreferenced B-frames skipped


def test_mpegts_with_bframes_keeps_every_frame(generated):
    """The issue's fault: 240 frames muxed to MPEG-TS (GOP 24, 2 B-frames); all counted, 10 of 10 returned,
    the last at 9.96 s, with no note that the tail did not decode."""
    path = generated("mpegts_bframes")
    ref_pts, ref_rgb = sequential(path)
    v = decode(path, frames=10, max_side=None, timeout_s=30)
    assert v.total_frames == 240 and len(v.indices) == 10 and v.timestamps[-1] == pytest.approx(239 / 24, abs=1e-3)
    assert not v.notes
    assert_exact(path, v, ref_pts, ref_rgb)


def test_variable_frame_rate_is_exact(tmp_path):
    """VFR (gaps of 40 ms to 0.9 s): frames exact at the written timestamps."""
    pts_ms = [0, 40, 80, 120, 600, 640, 1500, 1540, 1580, 2400, 2440, 2480]
    path = encode(tmp_path / "vfr.mp4", pictures(12), pts=pts_ms, time_base=Fraction(1, 1000), rate=25,
                  options={"g": "4", "bf": "2"})
    ref_pts, ref_rgb = sequential(path)
    v = decode(path, frames=6, max_side=None, timeout_s=None)
    assert_exact(path, v, ref_pts, ref_rgb)
    assert v.timestamps == pytest.approx([pts_ms[i] / 1000 for i in v.indices], abs=1e-3)


def test_edit_list_preroll_is_exact(tmp_path):
    """An edit list that hides the first 3 frames (pre-roll written at negative pts): those are never returned
    or counted, and every frame returned is the sequential decode's."""
    path = encode(tmp_path / "edit.mp4", pictures(30), pts=[i - 3 for i in range(30)], options={"g": "10", "bf": "2"})
    ref_pts, ref_rgb = sequential(path)
    assert len(ref_rgb) == 27  # FFmpeg shows 27 of the 30 encoded frames
    v = decode(path, frames=9, max_side=None, timeout_s=None)
    assert_exact(path, v, ref_pts, ref_rgb)


@pytest.mark.parametrize("name", ["file:x.mp4", "cam1:clip.mp4", "pipe:0.mp4"])
def test_names_that_look_like_urls_are_files(tmp_path, monkeypatch, name):
    """`file:x.mp4`, `cam1:clip.mp4`, `pipe:0.mp4` are files in the working directory, never FFmpeg protocols:
    with a different `x.mp4` next to it, `file:x.mp4` still decodes its own frames."""
    monkeypatch.chdir(tmp_path)
    encode(tmp_path / "x.mp4", pictures(8, static=True))  # the file an FFmpeg protocol would read instead
    encode(tmp_path / name, pictures(8))
    _, ref_rgb = sequential(tmp_path / name)
    for timeout in (None, 30):
        v = decode(name, frames=8, max_side=None, timeout_s=timeout)
        assert v.total_frames == 8 and all(np.array_equal(a, b) for a, b in zip(v.frames, ref_rgb))


def test_two_video_streams_use_the_largest_and_say_so(tmp_path):
    """A small preview first (FFmpeg's mp4 muxer marks it default), the main clip second: the main clip is
    decoded and the note names the stream left out."""
    path = tmp_path / "two.mp4"
    main = pictures(12)
    with av.open(str(path), "w") as out:
        preview = out.add_stream("libx264", rate=12)
        full = out.add_stream("libx264", rate=12)
        preview.width, preview.height, full.width, full.height = 48, 32, 96, 64
        for i, img in enumerate(main):
            for s, im in ((preview, np.ascontiguousarray(img[::2, ::2])), (full, img)):
                f = av.VideoFrame.from_ndarray(im, format="rgb24")
                f.pts = i
                out.mux(s.encode(f))
        out.mux(preview.encode(None))
        out.mux(full.encode(None))
    v = decode(path, frames=4, max_side=None, timeout_s=None)
    assert v.frames.shape == (4, 64, 96, 3)
    assert any("2 video streams: decoded #1 (96x64, the largest); ignored #0 48x32" in n for n in v.notes)
    with pytest.raises(VideoError, match="2 video streams"):  # decord cannot choose the stream: refused
        decode(path, decoder="decord", timeout_s=None)


@pytest.mark.parametrize("decoder", ["auto", "decord"])
def test_static_video_is_decoded_without_a_fallback(tmp_path, decoder):
    """All frames identical: returned as they are, with no note, by the exact path and by decord (whose
    repeated frames are checked against PyAV and found genuine, so the guard does not fire)."""
    images = pictures(40, (96, 128), static=True)  # (decord fails on 96 px wide H.264: a size copy check)
    path = encode(tmp_path / "static.mp4", images, options={"g": "1", "qp": "20"})  # intra only: identical
    assert all(np.array_equal(f, sequential(path)[1][0]) for f in sequential(path)[1])  # really static
    v = decode(path, frames=8, max_side=None, timeout_s=None, decoder=decoder)
    assert v.decoder == ("pyav" if decoder == "auto" else "decord") and len(v.indices) == 8 and not v.notes
    assert all(np.array_equal(f, v.frames[0]) for f in v.frames)


def test_sampling_notes_are_true(tmp_path):
    """No count asked: never "asked for N frames"; --fps capped by max frames says so with the effective rate."""
    path = encode(tmp_path / "s.mp4", pictures(12))
    v = decode(path, timeout_s=None)  # default: max_frames 32 > 12
    assert not any("asked for" in n for n in v.notes)
    assert "the video has 12 frames, fewer than max frames 32: returning all of them" in v.notes
    w = decode(path, fps=24, max_frames=4, timeout_s=None)
    assert "fps=24 gives 12 frames; capped by max frames 4: 4 frames 0.153 s apart (6.55 fps effective)" in w.notes
    asked = decode(path, frames=20, timeout_s=None).notes
    assert asked == ["asked for 20 frames, the video has 12: returning all of them"]


def test_over_large_request_is_refused_before_decoding(tmp_path, monkeypatch):
    """A request whose frames cannot fit raises VideoTooLarge (one line: how much, what to lower) before any
    frame is decoded."""
    path = encode(tmp_path / "s.mp4", pictures(12))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before refusing")

    monkeypatch.setattr(job, "verify_tail", no_decoding)  # where the decode job looks them up
    monkeypatch.setattr(exact, "sample", no_decoding)
    with pytest.raises(VideoTooLarge) as e:
        decode(path, frames=12, max_bytes=100_000, timeout_s=None)  # 12 x 64 x 96 x 3 = 216 KiB
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path))
    assert "12 frames at 96x64 need 0.211 MiB of memory (0.0954 MiB the limit): ask for fewer frames" in msg
    monkeypatch.undo()
    with pytest.raises(VideoTooLarge):  # the same through the worker
        decode(path, frames=12, max_bytes=100_000, timeout_s=30)


# ---------------------------------------------------------------- the fast paths stay exact


def _robust_sequential(path: Path) -> list[np.ndarray]:
    """The reference for damaged files: every frame a plain decode outputs, skipping packets that fail."""
    out = []
    with av.open(str(path)) as c:
        try:
            for packet in c.demux(video=0):
                try:
                    out += [f.to_ndarray(format="rgb24") for f in packet.decode()]
                except av.error.FFmpegError:
                    continue
        except av.error.FFmpegError:
            pass
    return out


@pytest.mark.parametrize("gop", [12, 300])
def test_matroska_without_dts_is_opened_once_and_exact(tmp_path, monkeypatch, gop):
    """Matroska packets carry no dts: the rewind after the packet scan seeks by pts instead of reopening the
    file (and probing it again); the frames stay those of a plain decode, B-frames included."""
    path = encode(tmp_path / "m.mkv", pictures(36), fmt="matroska", options={"g": str(gop), "bf": "2"})
    ref_pts, ref_rgb = sequential(path)
    opened = []
    real_open = container.open_video
    counting = lambda *a, **k: opened.append(a) or real_open(*a, **k)  # noqa: E731
    for where in (frame_map, reader):  # the packet scan opens the file; a reader opens it again (`_reopen`)
        monkeypatch.setattr(where, "open_video", counting)
    for n in (3, 36):
        opened.clear()
        v = decode(path, frames=n, max_side=None, timeout_s=None)
        assert_exact(path, v, ref_pts, ref_rgb)
        assert len(opened) == 1, f"{len(opened)} opens for {n} frames"


def cut_file(tmp_path: Path) -> Path:
    """A 40-frame H.264 mp4 (one GOP, no B-frames) with its index first (faststart) and the last sixth of the
    file cut off: the container claims 40 frames, fewer decode."""
    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as out:  # the index first, then the data
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt, s.options = 96, 64, "yuv420p", {"threads": "1", "g": "40", "bf": "0"}
        for i, img in enumerate(pictures(40)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) - len(data) // 6])
    return cut


def test_tail_frames_streamed_then_map_shrinks_is_exact(tmp_path):
    """The tail pass hands the frames wanted before verification to the caller as they decode; when the
    verified map is shorter (a cut file: the container claims 40 frames), the selection changes and the
    result is still exactly the plain decode's frames at the new indices, in-process and through the worker."""
    cut = cut_file(tmp_path)
    ref = _robust_sequential(cut)
    assert 0 < len(ref) < 40
    for timeout in (None, 30):
        v = decode(cut, frames=8, max_side=None, timeout_s=timeout)
        assert v.total_frames == len(ref) and v.indices == uniform_indices(len(ref), 8)
        assert all(np.array_equal(f, ref[i]) for f, i in zip(v.frames, v.indices))


def test_tail_frames_and_a_count_dependent_resize(tmp_path):
    """All 40 frames asked of the cut file: the frames wanted before verification (40) are a superset of those
    that decode (30). The result is started again with the final count, so a caller that sizes frames by the
    count (Qwen3-VL's pixel budget) gets them resized for 30 frames, equal to resizing the exact frames, with
    no second decode at the decoded size."""
    import torch

    from pipelines.preprocess import FrameResizer

    cut = cut_file(tmp_path)
    ref = _robust_sequential(cut)
    by_count = FrameResizer(lambda n, h, w: (2 * n, 3 * n), 3, torch.device("cpu"))  # idempotent, count-dependent
    for timeout in (None, 30):
        v = decode(cut, frames=40, max_side=None, timeout_s=timeout, resize=by_count)
        n = len(ref)
        assert v.indices == list(range(n)) and v.stats["resized_to"] == (2 * n, 3 * n)
        assert np.array_equal(v.frames, by_count(np.stack(ref), (2 * n, 3 * n)))


def test_worker_frames_larger_than_the_pipe_are_exact(tmp_path):
    """Frames of 1280x720 (2.7 MB, more than the 1 MiB pipe) read straight into their slots through the
    worker: bit-equal to the in-process decode and to a plain decode; a second video reuses the worker."""
    path = encode(tmp_path / "hd.mp4", pictures(6, (720, 1280)), options={"preset": "ultrafast"})
    ref_pts, ref_rgb = sequential(path)
    with DecodeWorker() as w:
        for n in (6, 2):
            v = w.decode(path, frames=n, max_side=None, timeout_s=60)
            assert_exact(path, v, ref_pts, ref_rgb)
            small = w.decode(path, frames=n, max_side=320, timeout_s=60)  # downscaled in the worker
            assert np.array_equal(small.frames, decode(path, frames=n, max_side=320, timeout_s=None).frames)


def test_rotate_moves_whole_pixels():
    """`rgb.rotate` gives the same bytes as np.rot90 for every rotation, also on rows padded like
    PyAV's frames (a row stride larger than width x 3)."""
    rng = np.random.default_rng(0)
    padded = rng.integers(0, 256, (7, 24, 3), dtype=np.uint8)[:, :21]  # stride 72 bytes for 63 used
    for rgb in (rng.integers(0, 256, (5, 9, 3), dtype=np.uint8), padded, np.zeros((1, 1, 3), np.uint8)):
        for rotation in (90, 180, 270):
            out = rgb_mod.rotate(rgb, rotation)
            assert out.flags.c_contiguous and out.dtype == np.uint8
            assert np.array_equal(out, np.rot90(rgb, rotation // 90))


# ---------------------------------------------------------------- the long-lived worker


def test_worker_serves_many_videos_and_survives_a_killed_decode(tmp_path):
    """One process serves video after video; a decode past its deadline kills it, the next starts a new one."""
    a = encode(tmp_path / "a.mp4", pictures(8))
    b = encode(tmp_path / "b.mp4", pictures(10))
    with DecodeWorker() as w:
        first = w.decode(a, frames=4)
        second = w.decode(b, frames=4)
        assert first.stats["worker_pid"] == second.stats["worker_pid"] == w.pid
        hang = Request(str(a), None, None, 4, "pyav", None, hang_in="start", hang_s=60)
        with pytest.raises(VideoError, match="timed out after 1s"):
            w.run(hang, timeout_s=1)
        assert w.pid is None  # killed at the deadline
        third = w.decode(b, frames=4)
        assert third.stats["worker_pid"] != first.stats["worker_pid"] and np.array_equal(third.frames, second.frames)
    assert w.pid is None


def _gone(pid: int) -> bool:
    """Whether the process has exited (a zombie counts: it runs nothing and holds no memory)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_worker_exits_when_its_parent_is_killed(tmp_path):
    """kill -9 of the process using the worker, while the worker is busy: the worker exits promptly."""
    path = encode(tmp_path / "a.mp4", pictures(8))
    script = textwrap.dedent(f"""
        import sys, threading, time
        sys.path[:0] = {[str(REPO), str(REPO / "flashvid_cli")]!r}
        from flashvid_cli.pipelines.video import DecodeWorker, Request
        w = DecodeWorker()
        w.decode({str(path)!r}, frames=2)
        print(w.pid, flush=True)
        busy = Request({str(path)!r}, None, None, 2, "pyav", None, hang_in="start", hang_s=120)
        threading.Thread(target=w.run, args=(busy, 300), daemon=True).start()
        time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert not _gone(worker)
        time.sleep(0.5)  # the worker is now sleeping inside the request
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        waited = 0.0
        while not _gone(worker) and waited < 20:  # a bound on the wait, not a timing assertion
            time.sleep(0.1)
            waited += 0.1
        assert _gone(worker), "the decode worker outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
