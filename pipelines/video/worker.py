"""The decode worker process: serves one decode request after another from a pipe, dies with its parent.

`main` is the entry point of the long-lived process that `api.DecodeWorker` starts: it imports numpy, PyAV and
(only if asked for) decord, never torch, sends each frame back the moment it is converted (`PipeSink`), and exits
as soon as its parent is gone.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from ..errors import VideoError
from .container import clean_cause
from .job import run_into
from .request import Request


class PipeSink:
    """Sends each frame to the caller the moment it is converted: the worker never holds the whole set."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def start(self, n: int, hw: tuple[int, int]) -> None:
        self.conn.send(("frames", n, tuple(hw)))

    def plan(self, times: list[float]) -> None:
        self.conn.send(("plan", list(times)))

    def put(self, slot: int, rgb: np.ndarray) -> None:
        self.conn.send(("frame", slot))
        self.conn.send_bytes(memoryview(np.ascontiguousarray(rgb)).cast("B"))  # raw bytes, no pickling


def _maybe_hang(req: Request, phase: str) -> None:
    """Stall in `phase` if the request asks to (tests only)."""
    if req.hang_in == phase:
        time.sleep(req.hang_s)


def serve(req: Request, replies) -> None:
    """Decode one request; send ("frames", n, (H, W)), ("phase", p), ("plan", each slot's timestamp) once the
    slots are final, ("frame", slot) + bytes per frame as decoded, then ("ok", meta, kept slots); or ("error",
    kind, msg).

    "frames" may come before or after "phase", and a second time (rarely: the verified frame map changed
    the selection after the tail's frames were sent): it then starts the result over, with its own n.
    """
    try:
        _reset_peak_rss()
        _maybe_hang(req, "start")

        def on_phase(phase: str) -> None:
            replies.send(("phase", phase))
            _maybe_hang(req, phase)

        meta = run_into(req, PipeSink(replies), on_phase)
        meta["stats"]["torch_loaded"] = "torch" in sys.modules  # the worker must stay light
        meta["stats"]["decord_loaded"] = "decord" in sys.modules
        meta["stats"]["worker_pid"] = os.getpid()
        meta["stats"]["peak_rss_bytes"] = _peak_rss_bytes()  # the caller's report adds it to its own peak
        replies.send(("ok", meta, meta.pop("kept")))
    except VideoError as e:
        replies.send(("error", type(e).__name__, str(e)))
    except Exception as e:  # anything else still reaches the user as one line
        msg = f"{req.path}: decoding failed: {type(e).__name__}: {clean_cause(e)}"
        replies.send(("error", "VideoError", msg))


def _peak_rss_bytes() -> int | None:
    """This process's peak resident set size in bytes since the current request began (`_reset_peak_rss`):
    Linux's VmHWM, which starts afresh at exec (``ru_maxrss`` would not do: it keeps the forking parent's
    peak across the exec). None where unknown."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _reset_peak_rss() -> None:
    """Start VmHWM over at the current RSS (Linux: "5" to /proc/self/clear_refs), so a long-lived worker
    reports each request's own peak, not the largest of all the videos before it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _watch_parent(parent: int) -> None:
    """Exit the moment the parent process is gone (it was killed, or exited without closing us).

    Polls os.getppid() (the parent's death re-parents this process) rather than prctl(PR_SET_PDEATHSIG),
    which fires when the parent *thread* that started the worker exits, not the process.
    """
    while os.getppid() == parent:
        time.sleep(0.1)
    os._exit(0)


class _Heap:
    """glibc's allocator, told to keep frame-sized buffers between frames while a request runs.

    glibc serves every block over 32 MiB with a fresh mmap and unmaps it when freed, so each converted 8K
    frame (7680x4320 RGB: 100 MB) cost a fresh zeroed mapping: 100 ms of page faults for a 20 ms conversion.
    With mmap off (M_MMAP_MAX 0) and a high trim threshold, the freed block is reused by the next frame;
    `release()` hands the free memory back to the system after each request (malloc_trim), so an idle worker
    stays small. Does nothing where the C library is not glibc.
    """

    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, glibc's malloc.h

    def __init__(self) -> None:
        self.libc = None
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            if libc.mallopt(self.M_MMAP_MAX, 0) and libc.mallopt(self.M_TRIM_THRESHOLD, 1 << 30):
                self.libc = libc
        except (OSError, AttributeError):  # no dlopen of the process, or no mallopt (not glibc)
            pass

    def release(self) -> None:
        if self.libc is not None:
            self.libc.malloc_trim(0)


def main() -> None:
    """Worker entry: argv = [request fd, reply fd, parent pid]; serves requests until the request pipe closes."""
    from multiprocessing.connection import Connection

    threading.Thread(target=_watch_parent, args=(int(sys.argv[3]),), daemon=True).start()
    requests = Connection(int(sys.argv[1]), writable=False)
    replies = Connection(int(sys.argv[2]), readable=False)
    heap = _Heap()
    while True:
        try:
            fields = requests.recv()
        except (EOFError, OSError):
            return
        serve(Request(**fields), replies)
        heap.release()


if __name__ == "__main__":
    main()
