"""The streamed decode (pipelines/video/stream.py): frames flow in chunks as they decode, a bounded number held.

Exact (the frames, indices, timestamps and errors of a plain `decode`), bounded (back-pressure: the decode does not
run ahead of a slow consumer), and stopped with its worker when the consumer stops (an exception, Ctrl-C).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from flashvid_cli.config import AskConfig
from flashvid_cli.pipelines.errors import VideoError
from flashvid_cli.pipelines import frame_resizer
from flashvid_cli.pipelines.video import api, decode
from flashvid_cli.pipelines.video.stream import ChunkSink, FrameChunk, FrameStream, decode_stream
from tests.test_video_exact import _gone, encode, pictures

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
RESIZE = frame_resizer("random:llava-onevision-0.5b")  # 384 x 384, as LLaVA-OneVision's input


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """240 frames of 64x96 at 24 fps, a keyframe every 12 (short groups of pictures, so the tail is small)."""
    return encode(tmp_path_factory.mktemp("stream") / "long.mp4", pictures(240), options={"g": "12"})


def _read(stream: FrameStream) -> np.ndarray:
    """The frames of a stream's chunks (from the last restart on), checking they come in order."""
    frames: list[np.ndarray] = []
    for chunk in stream:
        if chunk.restart:
            frames = []
        assert chunk.first == sum(len(f) for f in frames) and len(chunk.frames) == len(chunk.timestamps)
        frames.append(chunk.frames)
    return np.concatenate(frames)


@pytest.mark.parametrize("timeout", [None, 60.0])
@pytest.mark.parametrize(("seek", "ask"), [("exact", {"frames": 13}), ("exact", {"fps": 5.0, "max_frames": 100}),
                                           ("keyframe", {"frames": 13})])
def test_streamed_frames_equal_a_plain_decode(long_video, sample_video, timeout, seek, ask):
    for path in (sample_video, long_video):
        whole = decode(path, timeout_s=timeout, resize=RESIZE, seek=seek, **ask)
        with decode_stream(path, chunk=3, max_chunks=1, timeout_s=timeout, resize=RESIZE, seek=seek, **ask) as s:
            frames = _read(s)
        d = s.decoded
        assert np.array_equal(frames, whole.frames)
        assert (d.indices, d.timestamps, d.sampling) == (whole.indices, whole.timestamps, whole.sampling)
        assert d.frames.shape == (0, *whole.frames.shape[1:])  # not held whole
        assert not any("decoded again" in n for n in d.notes)


@pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"no real videos at {VIDEOS}")
def test_real_and_broken_files_give_the_same_frames_or_the_same_error():
    files = sorted(p for p in VIDEOS.rglob("*") if p.is_file() and p.suffix != ".md" and "8k" not in p.name)
    for path in files:
        try:
            whole, error = decode(path, frames=9, timeout_s=60, resize=RESIZE), None
        except VideoError as e:
            whole, error = None, str(e)
        if error is not None:
            with pytest.raises(VideoError) as got:
                with decode_stream(path, chunk=2, timeout_s=60, frames=9, resize=RESIZE) as s:
                    _read(s)
            assert str(got.value) == error, path
            continue
        with decode_stream(path, chunk=2, timeout_s=60, frames=9, resize=RESIZE) as s:
            frames = _read(s)
        assert np.array_equal(frames, whole.frames), path
        assert (s.decoded.indices, s.decoded.timestamps) == (whole.indices, whole.timestamps), path


def _wait_until(test, what: str) -> None:
    deadline = time.monotonic() + 60
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_the_decode_waits_for_a_slow_consumer(long_video, timeout):
    """Back-pressure: with one chunk of 4 queued, a consumer that stops reading leaves the decode blocked with a
    few frames held, not the 120 asked for; reading on gives them all, exactly."""
    ask = dict(frames=120, timeout_s=timeout, resize=RESIZE)
    with decode_stream(long_video, chunk=4, max_chunks=1, **ask) as s:
        chunks = iter(s)
        first = next(chunks)
        _wait_until(lambda: s._queue.full() or s.sink.released >= 120, "the queue filled")
        time.sleep(0.5)  # time enough to decode all 120 tiny frames, were the decode not held back
        assert s.sink.released <= 3 * 4  # the chunk read, the one queued, the one waiting to be queued
        assert s.sink.held_max <= 4 + 2 + 12  # a chunk, the frames at decoded size, the last GOP's
        rest = [c.frames for c in chunks]
    assert np.array_equal(np.concatenate([first.frames, *rest]), decode(long_video, **ask).frames)
    assert s.decoded.stats["frames_held_max"] <= 4 + 2 + 12


def _decode_workers() -> set[int]:
    return {p.pid for p in psutil.Process().children() if "worker import main" in " ".join(p.cmdline())}


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_a_consumer_that_stops_stops_the_decode_and_its_worker(long_video, stop):
    api._POOL.close()  # no idle worker: the one decoding is the only one
    with pytest.raises(stop):
        with decode_stream(long_video, chunk=2, max_chunks=1, frames=200, timeout_s=60, resize=RESIZE) as s:
            for chunk in s:
                workers = _decode_workers()
                raise stop("the encode failed")
    assert workers and all(_gone(pid) for pid in workers)
    assert not s._thread.is_alive()


def test_stream_video_stopped_midway_stops_its_decode_worker(tiny_models, long_video):
    """An exception in the encode (or a Ctrl-C from the progress callback) ends stream_video with no decode
    worker left decoding, and the next streamed run decodes again from a fresh worker."""
    from flashvid_cli.api import VideoQA
    from flashvid_cli.streaming import stream_video

    qa = VideoQA(str(tiny_models["llava_onevision"]), device="cpu")
    config = AskConfig(method="pool", keep=0.25, frames=60)
    api._POOL.close()
    seen: list[set[int]] = []

    def ctrl_c(stage, done, total):
        if stage == "encoded":
            seen.append(_decode_workers())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stream_video(qa, long_video, config, chunk_frames=4, progress=ctrl_c)
    assert seen[0] and all(_gone(pid) for pid in seen[0])
    encode_ = qa.pipeline.encode

    def failing(*a, **k):
        seen.append(_decode_workers())
        raise RuntimeError("out of memory in the vision tower")

    qa.pipeline.encode = failing
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            stream_video(qa, long_video, config, chunk_frames=4)
    finally:
        qa.pipeline.encode = encode_
    assert seen[1] and all(_gone(pid) for pid in seen[1])
    prepared, compressed = stream_video(qa, long_video, config, chunk_frames=4)
    assert compressed.compressed.grid.T == 60
    assert prepared.timings.decode_ahead is not None  # the decode's own time, overlapped with the encode
    assert any("of which" in n and "were waited for" in n for n in prepared.video.notes)


def test_a_sink_sees_a_decode_that_changes_frames_passed_on():
    """A frame sent again for a slot already passed on (the sampling redone single-threaded on a damaged file)
    voids the stream; so do kept slots or timestamps other than those passed on."""
    got: list[FrameChunk] = []
    frame = lambda v: np.full((4, 6, 3), v, np.uint8)  # noqa: E731

    def sink(n=4) -> ChunkSink:
        s = ChunkSink(None, 2, got.append)
        s.start(n, (4, 6))
        s.plan([0.0, 0.5, 1.0, 1.5][:n])
        return s

    s = sink()
    s.put(3, frame(3))  # ahead of its turn: held
    assert got == []
    s.put(0, frame(0))
    s.put(1, frame(1))
    assert [c.first for c in got] == [0] and got[0].timestamps == [0.0, 0.5] and got[0].total == 4
    s.put(2, frame(2))
    s.result([0, 1, 2, 3])
    s.finish([0.0, 0.5, 1.0, 1.5])
    assert s.void is None and [c.first for c in got] == [0, 2]
    assert np.array_equal(np.concatenate([c.frames for c in got])[:, 0, 0, 0], [0, 1, 2, 3])

    s = sink()
    for slot in (0, 1, 1):  # slot 1 again after it was passed on
        s.put(slot, frame(slot))
    assert s.void is not None and "again" in s.void
    s = sink()
    for slot in range(4):
        s.put(slot, frame(slot))
    s.result([0, 2, 3])  # slot 1 did not keep its frame
    s.finish([0.0, 1.0, 1.5])
    assert s.void is not None
    s = sink()
    for slot in range(4):
        s.put(slot, frame(slot))
    s.result([0, 1, 2, 3])
    s.finish([0.0, 0.5, 1.0, 2.0])  # not the timestamps planned
    assert s.void is not None


def test_a_void_stream_restarts_from_the_whole_decode(sample_video):
    """The consumer is told to start over (restart=True) and then gets the frames of a whole decode."""
    whole = decode(sample_video, frames=6, timeout_s=None)

    def decode_into(sink):
        sink.start(6, whole.frames.shape[1:3])
        sink.plan(whole.timestamps)
        for slot in (0, 1, 0):  # the first chunk passed on, then slot 0 again
            sink.put(slot, whole.frames[slot])
        sink.result(list(range(6)))
        return {"timestamps": whole.timestamps}

    with FrameStream(decode_into, lambda: decode(sample_video, frames=6, timeout_s=None), None, 2) as s:
        chunks = list(s)
    assert [(c.first, c.restart) for c in chunks] == [(0, False), (0, True), (2, False), (4, False)]
    assert np.array_equal(np.concatenate([c.frames for c in chunks[1:]]), whole.frames)
    assert any("decoded again whole" in n for n in s.decoded.notes)


def test_bad_chunk_sizes_are_refused(sample_video):
    for chunk, ahead in ((0, 1), (2, 0)):
        with pytest.raises(ValueError, match="at least 1"):
            decode_stream(sample_video, chunk=chunk, max_chunks=ahead)



def test_a_stream_started_ahead_is_stopped_when_stream_video_refuses(tiny_models, long_video):
    """load_and_decode starts the streamed decode before the model loads; a stream_video that then refuses (here a
    method that cannot stream) stops it and its worker instead of leaving them blocked on a full queue."""
    from flashvid_cli.api import VideoQA
    from flashvid_cli.config import ConfigError
    from flashvid_cli.streaming import stream_video

    qa = VideoQA(str(tiny_models["llava_onevision"]), device="cpu")
    config = AskConfig(method="divprune", keep=0.25, frames=60)
    api._POOL.close()
    ahead = qa.decode_stream(long_video, config, 4, resize=RESIZE)
    _wait_until(lambda: ahead._queue.full(), "the stream filled its queue")
    workers = _decode_workers()
    with pytest.raises(ConfigError, match="cannot stream"):
        stream_video(qa, long_video, config, chunk_frames=4, decoded=ahead)
    assert not ahead._thread.is_alive()
    assert workers and all(_gone(pid) for pid in workers)
