"""The public decode entry: sampled RGB frames that really exist, with true timestamps, in a worker that can be killed.

    decode(path, frames=N | fps=F) -> DecodedVideo(frames uint8 [T, H, W, 3], indices, timestamps, ...)

Why a worker: decord's native loop can spin forever holding the GIL, so nothing in-process can interrupt it.
The worker is a fresh interpreter (`python -c ... worker.main()`) rather than a multiprocessing child:
multiprocessing's spawn and forkserver both re-import the caller's `__main__` (the CLI) in the child, which
could pull in torch. It lives for the run (`DecodeWorker`; `decode` keeps a small pool of them), serves one
video after another, is replaced after a kill at the deadline, and exits as soon as its parent is gone.
The frames come back as one raw buffer over a pipe, straight into the result array.
How frames are found and chosen: see `job` (frame map, decoder choice), `exact` (the exact GOP-at-a-time
decode) and `sampling` (rules).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from multiprocessing.connection import Connection

import numpy as np

from ..errors import VideoError
from . import worker as worker_process
from .job import run_into
from .request import DECODERS, SEEKS, DecodedVideo, Request, VideoTooLarge
from .sinks import RESIZE_CHUNK, ArraySink, FrameResize, ResizingSink


def decode(
    path: str | os.PathLike,
    *,
    frames: int | None = None,
    fps: float | None = None,
    max_frames: int = 32,
    decoder: str = "auto",
    max_side: int | None = 1920,
    timeout_s: float | None = 120.0,
    max_bytes: int | None = None,
    worker: DecodeWorker | None = None,
    seek: str = "exact",
    resize: FrameResize | None = None,
) -> DecodedVideo:
    """Sample `frames` uniformly, or `fps` per second of true time (at most `max_frames`); default max_frames uniform.

    The frames are exactly those of a plain sequential FFmpeg decode at the reported indices (decoder
    "auto"/"pyav"), downscaled so the longer side is at most `max_side` px (None: full size).
    `resize` (e.g. the model's input size, `Pipeline.frame_resizer()`): frames are resized in this process as
    they arrive, `RESIZE_CHUNK` at a time, and only the resized frames are kept: memory holds T frames at the
    model's size plus a few at the decoded size. The resized frames are exactly `resize` applied to the whole
    set at once. A size that resizing again would change (the rule is not idempotent there), or that depends on
    a frame count that came out different (frames that did not decode), keeps the frames at decoded size.
    Raises VideoError (one line naming the file) for every problem with the request or the file, and
    VideoTooLarge (a VideoError) before decoding when the frames need more than `max_bytes` (default: the
    memory available). `timeout_s=None` decodes in this process (tests, benchmarks); otherwise in `worker`,
    by default a long-lived one of this module's pool, killed (and later replaced) at the deadline.

    `seek="keyframe"` (approximate, opt-in) replaces each sampled frame by the keyframe nearest its time
    (ties to the earlier) and decodes only those keyframe pictures, one packet each; samples that meet on
    one keyframe give one frame. `indices`/`timestamps` are the keyframes' own, `sampling` says "snapped to
    keyframes (approximate; max offset S s)", a note gives the mean and max offset from the asked times
    (also in `stats`: seek_offset_mean_s, seek_offset_max_s). The frames are still bit-equal to a sequential
    decode at the reported indices. PyAV only: with decoder="decord" it raises VideoError.
    """
    req = _request(path, frames, fps, max_frames, decoder, max_side, max_bytes, seek, resize)
    sink = ResizingSink(resize) if resize is not None else ArraySink()
    if timeout_s is None:
        meta = run_into(req, sink)
        array = sink.result(meta.pop("kept"))
    elif worker is not None:
        meta, array = worker.run(req, timeout_s, sink)
    else:
        meta, array = run_in_worker(req, timeout_s, sink)
    if array is None:  # the count that decoded calls for another size: decode again, keeping the decoded size
        return decode(path, frames=frames, fps=fps, max_frames=max_frames, decoder=decoder, max_side=max_side,
                      timeout_s=timeout_s, max_bytes=max_bytes, worker=worker, seek=seek)
    if resize is not None:
        meta["stats"].update(resized_to=sink.size if sink.size != sink.hw else None, resize_s=round(sink.seconds, 4))
    request = dict(file=req.file, frames=req.frames, fps=req.fps, max_frames=req.max_frames, decoder=req.decoder,
                   seek=req.seek)
    return DecodedVideo(frames=array, **meta, request=request)


def plan(path: str | os.PathLike, *, frames: int | None = None, fps: float | None = None, max_frames: int = 32,
         max_side: int | None = 1920, seek: str = "exact") -> tuple[int, tuple[int, int], tuple[int, int]]:
    """What `decode` with these arguments would return, from the packets alone (nothing decoded, in this process):
    (frame count T, (height, width) of the frames as decoded, the source's (height, width)). T is an upper bound
    (frames of the tail that do not decode, and keyframe snapping, give fewer). Raises VideoError as `decode` does
    for the request or the file."""
    from .job import sample_plan

    return sample_plan(_request(path, frames, fps, max_frames, "auto", max_side, seek=seek))


def _request(path, frames, fps, max_frames, decoder, max_side, max_bytes=None, seek="exact", resize=None) -> Request:
    """Validate the arguments and the path; raise VideoError with a one-line reason."""
    if frames is not None and fps is not None:
        raise VideoError("give either frames or fps, not both")
    if frames is not None and frames < 1:
        raise VideoError(f"frames must be at least 1 (got {frames})")
    if fps is not None and not 0 < fps < float("inf"):
        raise VideoError(f"fps must be positive and finite (got {fps})")
    if max_frames < 1:
        raise VideoError(f"max_frames must be at least 1 (got {max_frames})")
    if decoder not in DECODERS:
        raise VideoError(f"decoder must be one of {', '.join(DECODERS)} (got {decoder!r})")
    if seek not in SEEKS:
        raise VideoError(f"seek must be one of {', '.join(SEEKS)} (got {seek!r})")
    if seek == "keyframe" and decoder == "decord":
        raise VideoError("seek keyframe decodes keyframes with PyAV: use decoder auto or pyav, not decord")
    if max_side is not None and max_side < 1:
        raise VideoError(f"max_side must be at least 1 or None (got {max_side})")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    fps = float(fps) if fps is not None else None
    return Request(path, frames, fps, max_frames, decoder, max_side, max_bytes, file=os.path.abspath(path), seek=seek,
                   keep_pixels=getattr(resize, "max_pixels", None) if resize is not None else None,
                   chunk=RESIZE_CHUNK)


def run_in_worker(req: Request, timeout_s: float, sink=None) -> tuple[dict, np.ndarray | None]:
    """Run `req` in a long-lived worker of the module's pool, killed at `timeout_s` (and replaced next time)."""
    with _POOL.worker() as w:
        return w.run(req, timeout_s, sink)


class DecodeWorker:
    """One long-lived decode process: serves video after video, restarts after a kill, dies with its parent.

        with DecodeWorker() as w:
            for path in videos:
                v = w.decode(path, frames=32)   # DecodedVideo, frames uint8 [T, H, W, 3]

    The process starts on the first request (~0.25 s: an interpreter importing numpy and PyAV, never torch).
    A request past its deadline kills it; the next request starts a fresh one. If this process dies (even by
    kill -9) the worker notices within 0.1 s and exits. Not for concurrent use from several threads: the
    module's `decode` hands each thread its own worker from a pool.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The worker process id, or None when none is running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def decode(self, path: str | os.PathLike, *, timeout_s: float = 120.0, **kwargs) -> DecodedVideo:
        """`video.decode(path, ..., timeout_s=timeout_s)` in this worker; same arguments, same errors."""
        return decode(path, timeout_s=timeout_s, worker=self, **kwargs)

    def run(self, req: Request, timeout_s: float, sink=None) -> tuple[dict, np.ndarray | None]:
        """Send `req`, wait for its answer until `timeout_s`; kill the process on a timeout or a crash.

        Returns (DecodedVideo fields but frames, `sink.result(kept)`); `sink` defaults to a plain array."""
        with self._lock:
            deadline = time.monotonic() + timeout_s
            self._start()
            try:
                self._requests.send(req.__dict__)
                return self._receive(req, deadline, timeout_s, sink if sink is not None else ArraySink())
            except VideoError:
                raise
            except BaseException:  # timeout, crash, KeyboardInterrupt: the process state is unknown
                self._kill()
                raise
            finally:
                if self._proc is not None and self._proc.poll() is not None:
                    self._kill()

    def _receive(self, req: Request, deadline: float, timeout_s: float, sink) -> tuple[dict, np.ndarray | None]:
        """Read phases and frames (each straight into the sink's buffer for it) until the answer or the deadline.

        The deadline is the decoder's: time the sink spent blocked (its `blocked_s`, a consumer not ready for more
        frames: `stream.ChunkSink`) moves it later, as the worker waits then too."""
        base = deadline
        try:
            while True:
                deadline = base + getattr(sink, "blocked_s", 0.0)
                kind, *rest = self._next(req, deadline, timeout_s)
                if kind == "frames":
                    sink.start(*rest)
                elif kind == "plan":
                    if hasattr(sink, "plan"):
                        sink.plan(*rest)
                elif kind == "frame":
                    self._next(req, deadline, timeout_s, raw=memoryview(sink.buffer(rest[0])).cast("B"))
                    sink.filled(rest[0])
                elif kind == "error":
                    cls = VideoTooLarge if rest[0] == "VideoTooLarge" else VideoError
                    raise cls(rest[1])
                elif kind == "ok":
                    meta, kept = rest
                    meta["source_size"] = tuple(meta["source_size"])
                    return meta, sink.result(kept)
        except (EOFError, OSError):
            code = self._kill()
            raise VideoError(f"{req.path}: the decoder crashed (exit code {code})") from None

    def _next(self, req: Request, deadline: float, timeout_s: float, raw: memoryview | None = None):
        """The next message (or, with `raw`, the next frame's bytes into it), or a timeout VideoError."""
        self._wait(req, deadline, timeout_s)
        if raw is not None:
            return self._recv_bytes_into(raw, req, deadline, timeout_s)
        return self._replies.recv()

    def _wait(self, req: Request, deadline: float, timeout_s: float) -> None:
        """Block until the worker has written something, or kill it and raise the timeout VideoError."""
        if not self._replies.poll(max(0.0, deadline - time.monotonic())):
            self._kill()
            raise VideoError(f"{req.path}: decoding timed out after {timeout_s:g}s")

    def _recv_bytes_into(self, raw: memoryview, req: Request, deadline: float, timeout_s: float) -> int:
        """One `send_bytes` message read from the pipe straight into `raw` (the frame's slot of the result).

        Same wire format as `Connection.recv_bytes_into` (a 4-byte big-endian size, or -1 and an 8-byte size),
        but read with readv into `raw` itself: Connection reads into a temporary buffer, then copies, which
        cost as much as the decode on large frames (8K: 100 MB a frame). The deadline holds between reads.
        """
        fd = self._replies.fileno()
        (size,) = struct.unpack("!i", self._read_exact(fd, 4, req, deadline, timeout_s))
        if size == -1:
            (size,) = struct.unpack("!Q", self._read_exact(fd, 8, req, deadline, timeout_s))
        if size != len(raw):
            raise OSError(f"frame of {size} bytes for a slot of {len(raw)}")  # a broken stream: the worker is killed
        got = 0
        while got < size:
            n = os.readv(fd, [raw[got:]])
            if n == 0:
                raise EOFError
            got += n
            if got < size:
                self._wait(req, deadline, timeout_s)
        return size

    def _read_exact(self, fd: int, n: int, req: Request, deadline: float, timeout_s: float) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
            if len(data) < n:
                self._wait(req, deadline, timeout_s)
        return data

    def _start(self) -> None:
        """Start the process unless one is running: a fresh interpreter with this process's import path."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._kill()
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        _widen_pipe(rep_w)
        boot = f"import sys; sys.path[:0] = {sys.path!r}; from {worker_process.__name__} import main; main()"
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", boot, str(req_r), str(rep_w), str(os.getpid())],
                pass_fds=(req_r, rep_w),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # FFmpeg/decord log noise; answers come through the pipe
            )
        finally:
            os.close(req_r)  # the worker holds the only other ends: its death reads as EOF here
            os.close(rep_w)
        self._requests = Connection(req_w, readable=False)
        self._replies = Connection(rep_r, writable=False)

    def _kill(self) -> int | None:
        """Kill the process (if any) and close the pipes; returns its exit code."""
        code = None
        for conn in (self._requests, self._replies):
            if conn is not None:
                conn.close()
        self._requests = self._replies = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            code = self._proc.wait()
            self._proc = None
        return code

    def close(self) -> None:
        """Stop the worker: close its request pipe (it exits on EOF), kill it if it does not."""
        with self._lock:
            if self._requests is not None:
                self._requests.close()
                self._requests = None
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            self._kill()

    def __enter__(self) -> DecodeWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _widen_pipe(fd: int, size: int = 1 << 20) -> None:
    """Let the pipe hold `size` bytes (Linux's default is 64 KiB, its unprivileged maximum 1 MiB): a 1080p frame
    then crosses in 6 writes instead of 95, each a switch between the two processes. Best effort."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (AttributeError, OSError):  # not Linux, or a lower /proc/sys/fs/pipe-max-size
        pass


class _Pool:
    """Idle long-lived workers for `decode`: each caller (thread) takes one and gives it back."""

    MAX_IDLE = 2

    def __init__(self) -> None:
        self._idle: list[DecodeWorker] = []
        self._lock = threading.Lock()

    @contextmanager
    def worker(self):
        with self._lock:
            w = self._idle.pop() if self._idle else DecodeWorker()
        try:
            yield w
        finally:
            with self._lock:
                if len(self._idle) < self.MAX_IDLE:
                    self._idle.append(w)
                    w = None
            if w is not None:
                w.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            w.close()

    def forget(self) -> None:
        """In a forked child: the workers belong to the parent; never talk to them from here."""
        self._idle = []
        self._lock = threading.Lock()


_POOL = _Pool()
atexit.register(_POOL.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget)
