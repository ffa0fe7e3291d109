"""Crash-safe writes into the cache directory, and the clean-up of the partial writes a killed writer leaves.

Writes go to a temporary file in the same directory, are fsynced, then ``os.replace``d over the entry: a kill -9
mid-write leaves only a ``.tmp`` file no lookup reads (the next write removes it once its writer is dead); two
processes writing the same entry both succeed and the last replace wins, with one valid entry.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

TMP_SUFFIX = ".tmp"
_WRITE_CHUNK = 8 * 2**20
_STALE_TMP_S = 24 * 3600.0  # a temporary file this old is removed even if its writer's pid is alive (pid reuse)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomic(root: Path, path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    remove_dead_temporaries(root)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{path.stem[:16]}.{os.getpid()}.", suffix=TMP_SUFFIX)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view[:_WRITE_CHUNK])
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def remove_dead_temporaries(root: Path) -> None:
    """Remove temporary files whose writer is gone (killed mid-write) or that are a day old."""
    now = time.time()
    for tmp in root.glob(f".*{TMP_SUFFIX}"):
        parts = tmp.name.split(".")
        try:
            pid = int(parts[2])
        except (IndexError, ValueError):
            pid = -1
        try:
            age = now - tmp.stat().st_mtime
            if age > _STALE_TMP_S or (pid > 0 and not _pid_alive(pid)):
                tmp.unlink()
        except OSError:
            pass
