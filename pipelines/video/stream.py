"""A decode whose frames flow out in chunks as they are decoded (issue 27): only a bounded number of them is held.

    with decode_stream(path, fps=1, resize=resizer, chunk=16) as stream:
        for chunk in stream:        # FrameChunk(first, frames uint8 [c, h, w, 3], timestamps, restart)
            ...                     # the decode goes on meanwhile, at most `max_chunks` chunks ahead
        decoded = stream.decoded    # DecodedVideo of the whole decode; its frames are empty, [0, h, w, 3]

The decode runs as `decode` runs it (in the killable worker, or in this process with `timeout_s=None`), from a
thread of this process that feeds a `ChunkSink`. The sink resizes frames as they arrive (as `ResizingSink` does)
and passes them on in order, `chunk` at a time, into a queue of `max_chunks` chunks; while the queue is full the
thread blocks, stops reading the worker's pipe, and the worker blocks on its next frame (back-pressure: the
decode never runs more than the queue and a pipe's worth ahead). Held at once: the queue, the chunk being
filled, the consumer's chunk, `RESIZE_CHUNK` frames at decoded size, and frames that arrive ahead of their turn
(the exact decode sends the last group of pictures' frames first: `exact._TailFrames`).

Exactness: the frames and timestamps are those of `decode` with the same arguments. A frame is passed on only
once the decode has said which slots there are and their timestamps (`plan`). Rarely a decode changes what it
already sent (a damaged file: the sampling redone single-threaded, a sampled frame that did not decode taking
a later one, fewer frames than planned); the sink then sees it (a frame for a slot passed on, the kept slots or
the timestamps not those passed on), the video is decoded again whole, and its chunks come again from the
first with `restart=True`: the consumer drops what it made of the earlier ones. Stopping (`close`, leaving the
`with`, an exception or Ctrl-C in the consumer) stops the thread and kills the worker mid-decode.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from typing import Any

import numpy as np

from .request import DecodedVideo, Request
from .sinks import RESIZE_CHUNK, FrameResize

DEFAULT_MAX_CHUNKS = 2  # chunks decoded ahead of the consumer at most


@dataclasses.dataclass
class FrameChunk:
    """Frames `first` .. `first + len(frames) - 1` of a streamed decode."""

    first: int
    frames: np.ndarray  # uint8 [c, h, w, 3] RGB, at the resize's size
    timestamps: list[float]  # seconds since the video's first frame, one per frame
    total: int  # frames of the whole decode (exact: a decode that keeps fewer than it planned starts over)
    restart: bool = False  # the chunks before this one are void: the decode starts over from frame 0


class _Stopped(Exception):
    """The consumer stopped the stream: unwinds the decode (the worker is killed)."""


class ChunkSink:
    """A decode's sink (`sinks.ResizingSink`'s protocol plus `plan`) that passes the frames on in order.

    `emit(FrameChunk)` is called from the decode's thread with each chunk of `chunk` frames as soon as they are
    all there and the slots' timestamps are known; it may block (back-pressure). `finish(timestamps)`, after the
    decode, checks that what was passed on is the decode's result and passes on the rest; `void` then says why
    not (None: exact). `held_max` counts the most frames held here at once (passed-on chunks not counted).
    """

    def __init__(self, resize: FrameResize | None, chunk: int, emit: Any) -> None:
        self.resize, self.chunk, self.emit = resize, chunk, emit
        self.released = 0  # slots 0 .. released - 1 were passed on
        self.void: str | None = None
        self.held_max = 0
        self.resize_s = 0.0
        self.blocked_s = 0.0  # in `emit`: moves the worker's deadline later (`api.DecodeWorker._receive`)
        self.kept: list[int] | None = None
        self.times: list[float] | None = None
        self.size: tuple[int, int] | None = None
        self.hw: tuple[int, int] | None = None
        self.n = 0
        self._scratch: np.ndarray | None = None  # where frames go once void (the video is decoded again)

    def start(self, n: int, hw: tuple[int, int]) -> None:
        """n slots of (H, W); a second call discards what was put (`worker.serve`), voiding what was passed on."""
        if self.released:
            self._void("the decode started its frames over after some were passed on")
        self.n, self.hw = n, tuple(hw)
        size = self.hw if self.resize is None else tuple(self.resize.size(n, *self.hw))
        if self.resize is not None and tuple(self.resize.size(n, *size)) != size:
            size = self.hw  # preprocessing would resize these again: keep the decoded size (as ResizingSink)
        self.size = size
        self.held: dict[int, np.ndarray] = {}  # slot -> [h, w, 3], not passed on yet
        self.staging = np.empty((min(n, RESIZE_CHUNK), *self.hw, 3), np.uint8) if size != self.hw else None
        self.pending: dict[int, int] = {}  # slot -> staging row (or a fresh array's slot without staging)
        self.open: dict[int, np.ndarray] = {}
        self.times = None

    def plan(self, times: list[float]) -> None:
        """Each slot's timestamp, sent once the slots are final: frames can be passed on from here."""
        self.times = list(times) if len(times) == self.n else None
        self._release()

    def buffer(self, slot: int) -> np.ndarray:
        if slot < self.released:
            self._void("the decode sent a frame again after it was passed on (decoded again single-threaded)")
        if self.void is not None:  # nothing more is passed on or kept: the video is decoded again whole
            if self._scratch is None or self._scratch.shape[:2] != self.hw:
                self._scratch = np.empty((*self.hw, 3), np.uint8)
            return self._scratch
        self.held.pop(slot, None)
        if self.staging is None:
            self.open[slot] = np.empty((*self.size, 3), np.uint8)
            return self.open[slot]
        if slot not in self.pending:
            if len(self.pending) == len(self.staging):
                self._flush()
            self.pending[slot] = len(self.pending)
        return self.staging[self.pending[slot]]

    def filled(self, slot: int) -> None:
        if self.void is not None:
            return
        if self.staging is None:
            self.held[slot] = self.open.pop(slot)
            self._release()
        elif len(self.pending) == len(self.staging):
            self._flush()

    def put(self, slot: int, rgb: np.ndarray) -> None:
        self.buffer(slot)[...] = rgb
        self.filled(slot)

    def result(self, kept: list[int]) -> np.ndarray:
        """Called by the decode with the slots that hold its result; the frames go on in `finish`."""
        self._flush()
        self.kept = list(kept)
        return np.empty((0, *(self.size or (0, 0)), 3), np.uint8)

    def finish(self, timestamps: list[float]) -> None:
        """After the decode (its reported `timestamps` of the kept slots): pass on the frames not passed on yet,
        or set `void` when those passed on are not the decode's result."""
        kept, r = self.kept or [], self.released
        if self.void is None and kept[:r] != list(range(r)):
            self._void("frames passed on were not kept (a sampled frame that did not decode took a later one)")
        if self.void is None and (self.times is None or [self.times[s] for s in kept] != list(timestamps)):
            self._void("the decoded frames' timestamps differ from those planned")
        if self.void is None and len(kept) != self.n:  # the chunks said `total` (and a size may hang on it)
            self._void(f"{len(kept)} of the {self.n} frames planned decoded")
        if self.void is not None:
            return
        rest = kept[r:]
        for i in range(0, len(rest), self.chunk):
            self._emit_slots(rest[i: i + self.chunk], first=r + i)

    # -- internals ---------------------------------------------------------------------------------------------
    def _void(self, why: str) -> None:
        self.void = self.void or why
        self.held, self.pending, self.open = {}, {}, {}

    def _flush(self) -> None:
        if not self.pending or self.staging is None:
            return
        started = time.perf_counter()
        resized = self.resize(self.staging[: len(self.pending)], self.size)  # [k, h, w, 3]
        for slot, row in self.pending.items():
            self.held[slot] = resized[row]
        self.pending.clear()
        self.resize_s += time.perf_counter() - started
        self._release()

    def _release(self) -> None:
        """Pass on each full chunk of consecutive slots from the next one, once the timestamps are known."""
        self.held_max = max(self.held_max, len(self.held) + len(self.pending) + len(self.open))
        if self.times is None or self.void is not None:
            return
        while all(s in self.held for s in range(self.released, min(self.released + self.chunk, self.n))):
            slots = list(range(self.released, min(self.released + self.chunk, self.n)))
            if len(slots) < self.chunk:
                return  # the last, short chunk goes in `finish`, once the kept slots are known
            self._emit_slots(slots, first=self.released)

    def _emit_slots(self, slots: list[int], first: int) -> None:
        frames = np.stack([self.held.pop(s) for s in slots])  # [c, h, w, 3]
        self.released = max(self.released, slots[-1] + 1)
        started = time.perf_counter()
        try:
            self.emit(FrameChunk(first, frames, [self.times[s] for s in slots], self.n))
        finally:
            self.blocked_s += time.perf_counter() - started


class FrameStream:
    """The chunks of one decode, as they are decoded (see the module's docstring); iterate once, then `decoded`.

    The decode starts on construction (so it can run ahead while a model loads: at most `max_chunks` chunks).
    Iterating raises what the decode raises (VideoError, one line naming the file) where it raised it.
    """

    def __init__(self, decode_into: Any, redecode: Any, resize: FrameResize | None, chunk: int,
                 max_chunks: int = DEFAULT_MAX_CHUNKS) -> None:
        """``decode_into(sink) -> meta`` runs the decode into ``sink`` (the `DecodedVideo` fields but frames, with
        ``request``); ``redecode() -> DecodedVideo`` decodes the whole video again (used only when ``void``)."""
        if chunk < 1 or max_chunks < 1:
            raise ValueError(f"chunk and max_chunks must be at least 1 (got {chunk}, {max_chunks})")
        self._queue: queue.Queue = queue.Queue(maxsize=max_chunks)
        self._stop = threading.Event()
        self._decode_into, self._redecode = decode_into, redecode
        self.chunk, self.max_chunks = chunk, max_chunks
        self.sink = ChunkSink(resize, chunk, lambda c: self._emit(("chunk", c)))
        self.decoded: DecodedVideo | None = None
        self.waited_s = 0.0  # the consumer's wait for chunks
        self.stats: dict[str, Any] = {}  # added to decoded.stats (e.g. started_at, by a caller that runs it ahead)
        self.consumed = False
        self.request: dict[str, Any] = {}  # what was asked (as `DecodedVideo.request`), set by `decode_stream`
        self._thread = threading.Thread(target=self._run, name="vidq-decode-stream", daemon=True)
        self._thread.start()

    def __iter__(self):
        if self.consumed:
            raise RuntimeError("a FrameStream is iterated once")
        self.consumed = True
        try:
            while True:
                started = time.perf_counter()
                kind, value = self._get()
                self.waited_s += time.perf_counter() - started
                if kind == "chunk":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    own = value.stats.get("decode_s", 0.0)
                    # this run's, not the video's: kept out of its notes, which a cache entry stores with it
                    value.stats["stream_note"] = (f"decoded while the frames before were preprocessed and encoded: "
                                       f"{own * 1e3:,.0f} ms of decoding, of which {self.waited_s * 1e3:,.0f} ms "
                                       f"were waited for (the decode stage); at most {self.max_chunks} chunk(s) of "
                                       f"{self.chunk} frames decoded ahead")
                    self.decoded = value
                    return
        finally:
            if self.decoded is None:
                self.close()

    def close(self) -> None:
        """Stop the decode (the worker is killed if it is still decoding) and wait for its thread."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get(self) -> tuple[str, Any]:
        while True:
            try:
                return self._queue.get(timeout=0.5)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the decode thread ended without an answer") from None

    def _emit(self, item: tuple[str, Any]) -> None:
        """Queue ``item`` for the consumer, waiting while the queue is full; raises _Stopped once stopped."""
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                pass

    def _run(self) -> None:
        try:
            meta = self._decode_into(self.sink)
            sink = self.sink
            sink.finish(meta["timestamps"])
            if sink.void is None:
                meta["stats"].update(resized_to=sink.size if sink.size != sink.hw else None,
                                     resize_s=round(sink.resize_s, 4))
                frames = np.empty((0, *sink.size, 3), np.uint8)
                decoded = DecodedVideo(frames=frames, **meta)
            else:
                decoded = self._redecode()
                decoded.notes.append(f"decoded again whole: {sink.void}; the streamed frames were void")
                whole, decoded.frames = decoded.frames, decoded.frames[:0]
                for first in range(0, len(whole), self.chunk):
                    self._emit(("chunk", FrameChunk(first, whole[first: first + self.chunk],
                                                    decoded.timestamps[first: first + self.chunk], len(whole),
                                                    restart=first == 0)))
            decoded.stats.update(self.stats, streamed_chunk=self.chunk, streamed_max_chunks=self.max_chunks,
                                 frames_held_max=sink.held_max, blocked_s=round(sink.blocked_s, 4))
            self._emit(("done", decoded))
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - the consumer raises it
            try:
                self._emit(("error", e))
            except _Stopped:
                pass


def decode_stream(path: str | os.PathLike, *, chunk: int, max_chunks: int = DEFAULT_MAX_CHUNKS,
                  frames: int | None = None, fps: float | None = None, max_frames: int = 32, decoder: str = "auto",
                  max_side: int | None = 1920, timeout_s: float | None = 120.0, max_bytes: int | None = None,
                  seek: str = "exact", resize: FrameResize | None = None) -> FrameStream:
    """`decode`'s frames, `chunk` at a time as they are decoded (a `FrameStream`; see the module's docstring).

    Same arguments, frames, timestamps and errors as `api.decode`; the memory check counts the frames held at
    once (`(max_chunks + 2) * chunk`), not all of them. Raises VideoError here for a bad request or path, and
    from the iteration for the file; ValueError for `chunk` or `max_chunks` below 1.
    """
    from .api import _request, decode, run_in_worker
    from .job import run_into

    if not isinstance(chunk, int) or chunk < 1 or not isinstance(max_chunks, int) or max_chunks < 1:
        raise ValueError(f"chunk and max_chunks must be at least 1 (got {chunk!r}, {max_chunks!r})")
    req = _request(path, frames, fps, max_frames, decoder, max_side, max_bytes, seek, resize)
    req = dataclasses.replace(req, held=(max_chunks + 2) * chunk)
    request = dict(file=req.file, frames=req.frames, fps=req.fps, max_frames=req.max_frames, decoder=req.decoder,
                   seek=req.seek)

    def decode_into(sink: ChunkSink) -> dict:
        if timeout_s is None:
            meta = run_into(req, sink)
            sink.result(meta.pop("kept"))
        else:
            meta, _ = run_in_worker(req, timeout_s, sink)
        return {**meta, "request": request}

    def redecode() -> DecodedVideo:
        return decode(path, frames=frames, fps=fps, max_frames=max_frames, decoder=decoder, max_side=max_side,
                      timeout_s=timeout_s, max_bytes=max_bytes, seek=seek, resize=resize)

    stream = FrameStream(decode_into, redecode, resize, chunk, max_chunks)
    stream.request = request
    return stream


class DecodedChunks:
    """Chunks of a video decoded whole (a `DecodedVideo`), with `FrameStream`'s interface: nothing to wait for."""

    def __init__(self, decoded: DecodedVideo, chunk: int) -> None:
        self.decoded, self.chunk, self.waited_s, self.stats = decoded, chunk, 0.0, {}

    def __iter__(self):
        frames, times = self.decoded.frames, self.decoded.timestamps  # [T, h, w, 3]
        for first in range(0, len(frames), self.chunk):
            yield FrameChunk(first, frames[first: first + self.chunk], list(times[first: first + self.chunk]),
                             len(frames))

    def close(self) -> None:
        pass

    def __enter__(self) -> DecodedChunks:
        return self

    def __exit__(self, *exc) -> None:
        pass


__all__ = ["DEFAULT_MAX_CHUNKS", "ChunkSink", "DecodedChunks", "FrameChunk", "FrameStream", "Request", "decode_stream"]
