"""Decode a video into sampled RGB frames that really exist, with true timestamps, in a worker that can be killed.

    decode(path, frames=N | fps=F) -> DecodedVideo(frames uint8 [T, H, W, 3], indices, timestamps, ...)

Why a worker: decord's native loop can spin forever holding the GIL, so nothing in-process can interrupt it.
The worker is a fresh interpreter (`python -c ... video_worker.main()`) rather than a multiprocessing child:
multiprocessing's spawn and forkserver both re-import the caller's `__main__` (the CLI) in the child, which
could pull in torch. The frames come back as one raw buffer over a pipe, straight into the result array.
How frames are found and chosen: see `video_worker` (frame map, decoder choice) and `video_sampling` (rules).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np

from . import video_worker
from .errors import VideoError
from .video_worker import Request

DECODERS = ("auto", "decord", "pyav")


@dataclass
class DecodedVideo:
    """Sampled frames of one video and what is known about it."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB, the sampled frames
    indices: list[int]  # frame index of each sampled frame among the frames that decode
    timestamps: list[float]  # presentation time of each sampled frame, seconds since the first frame
    fps: float  # true average fps from the frame timestamps (the container's claim is only cross-checked)
    total_frames: int  # frames that really decode (not the container's claim)
    duration: float  # seconds, first frame to the end of the last
    decoder: str  # "decord" or "pyav"
    sampling: str  # e.g. "32 frames uniform" or "fps=1 (max 32): 12 frames"
    notes: list[str]  # what was noticed and handled, e.g. "container claims 30 frames, 5 decodable"
    source_size: tuple[int, int]  # (height, width) in display orientation, before any decode-time downscale
    stats: dict = field(default_factory=dict)  # pyav_frames_decoded, decode_s; torch_loaded, peak_rss_bytes (worker)


def decode(
    path: str | os.PathLike,
    *,
    frames: int | None = None,
    fps: float | None = None,
    max_frames: int = 32,
    decoder: str = "auto",
    max_side: int | None = 1920,
    timeout_s: float | None = 120.0,
) -> DecodedVideo:
    """Sample `frames` uniformly, or `fps` per second of true time (at most `max_frames`); default max_frames uniform.

    Raises VideoError (one line naming the file) for every problem with the request or the file.
    `timeout_s=None` decodes in this process (tests, benchmarks); otherwise a worker is killed at the deadline.
    """
    req = _request(path, frames, fps, max_frames, decoder, max_side)
    if timeout_s is None:
        meta, array = video_worker.run(req)
    else:
        meta, array = run_in_worker(req, timeout_s)
    return DecodedVideo(frames=array, **meta)


def _request(path, frames, fps, max_frames, decoder, max_side) -> Request:
    """Validate the arguments and the path; raise VideoError with a one-line reason."""
    if frames is not None and fps is not None:
        raise VideoError("give either frames or fps, not both")
    if frames is not None and frames < 1:
        raise VideoError(f"frames must be at least 1 (got {frames})")
    if fps is not None and not fps > 0:
        raise VideoError(f"fps must be positive (got {fps})")
    if max_frames < 1:
        raise VideoError(f"max_frames must be at least 1 (got {max_frames})")
    if decoder not in DECODERS:
        raise VideoError(f"decoder must be one of {', '.join(DECODERS)} (got {decoder!r})")
    if max_side is not None and max_side < 1:
        raise VideoError(f"max_side must be at least 1 or None (got {max_side})")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    return Request(path, frames, float(fps) if fps is not None else None, max_frames, decoder, max_side)


def run_in_worker(req: Request, timeout_s: float) -> tuple[dict, np.ndarray]:
    """Run `req` in a worker killed at `timeout_s`; in auto mode a stalled decord gets half and PyAV the rest."""
    deadline = time.monotonic() + timeout_s
    try:
        return _attempt(req, deadline, decord_budget_s=timeout_s / 2 if req.decoder == "auto" else None)
    except _DecordStalled as stalled:
        meta, array = _attempt(
            Request(**{**req.__dict__, "decoder": "pyav"}), deadline, decord_budget_s=None, timeout_s=timeout_s
        )
        meta["notes"].append(f"decord made no progress in {stalled.seconds:.3g}s; killed it and decoded with PyAV")
        return meta, array
    except _Timeout:
        raise VideoError(f"{req.path}: decoding timed out after {timeout_s:g}s") from None


class _Timeout(Exception):
    """The worker missed the overall deadline."""


class _DecordStalled(Exception):
    """decord used up its share of the time (the known get_batch spin); PyAV gets what is left."""

    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.seconds = seconds


def _attempt(req: Request, deadline: float, decord_budget_s: float | None, timeout_s: float | None = None):
    """Start one worker and collect its answer before `deadline`, always killing it afterwards."""
    read_fd, write_fd = os.pipe()
    proc = _start_worker(req, write_fd)
    os.close(write_fd)  # the worker holds the only write end now: its death reads as EOF
    conn = Connection(read_fd, writable=False)
    stall_at, phase_started = None, None
    try:
        while True:
            until = deadline if stall_at is None else min(deadline, stall_at)
            if not conn.poll(max(0.0, until - time.monotonic())):
                if stall_at is not None and time.monotonic() >= stall_at:
                    raise _DecordStalled(time.monotonic() - phase_started)
                if timeout_s is not None:  # second attempt: report the caller's full timeout
                    raise VideoError(f"{req.path}: decoding timed out after {timeout_s:g}s")
                raise _Timeout()
            kind, *rest = conn.recv()
            if kind == "phase":
                phase_started = time.monotonic()
                stall_at = phase_started + decord_budget_s if rest[0] == "decord" and decord_budget_s else None
            elif kind == "error":
                raise VideoError(rest[0])
            else:
                meta, shape = rest
                array = np.empty(shape, dtype=np.uint8)
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    raise _Timeout()
                conn.recv_bytes_into(array.reshape(-1))  # 1-D view: Connection sizes buffers by len()
                meta["source_size"] = tuple(meta["source_size"])
                return meta, array
    except EOFError:
        proc.wait(timeout=5)
        raise VideoError(f"{req.path}: the decoder crashed (exit code {proc.returncode})") from None
    finally:
        conn.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _start_worker(req: Request, write_fd: int) -> subprocess.Popen:
    """Start a fresh interpreter running `video_worker.main`, with this process's import path."""
    boot = f"import sys; sys.path[:0] = {sys.path!r}; from {video_worker.__name__} import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", boot, str(write_fd), json.dumps(req.__dict__)],
        pass_fds=(write_fd,),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # FFmpeg/decord log noise; the answer comes through the pipe
    )
