"""The output of an annotate run: an append-only, resumable JSON-lines file, written by one run at a time.

Every line is keyed by (absolute video path, question); a rerun reads the output first and skips the keys it holds.
Each line is appended, flushed and fsynced before the next, so a kill loses no finished line; a last line torn by
a kill mid-write is cut off on the next start (only one that does not parse: a complete line missing its newline
gets one). A file that holds no vidq record (a video, text, other JSON) is refused untouched; lines that are not
vidq records are kept and reported by number; one run writes a file at a time (an flock on ``FILE.lock``), a
second exits at once naming the first's pid.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api import ConfigError


def line_key(record: dict[str, Any]) -> tuple[str, str]:
    return record["video"], record["question"]


class OutputError(ConfigError):
    """An ``--out`` that is not vidq's JSON lines, or that another run is writing; nothing was changed."""


SNIFF_BYTES = 64 * 1024  # a NUL byte in the first line of this head is binary data: refused before reading it all
RECORD_START = b'{"video": '  # how every line make_record writes begins (json.dumps keeps the key order)


def is_record(value: Any) -> bool:
    """Whether a parsed line is one of vidq's: an object with a string video and question, answer and error."""
    return (isinstance(value, dict) and isinstance(value.get("video"), str) and isinstance(value.get("question"), str)
            and "answer" in value and "error" in value)


def describe_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """(the record, "") for a vidq line, else (None, what the line is instead) for messages."""
    if b"\0" in raw:
        return None, "binary data"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "binary data (not UTF-8 text)"
    try:
        value = json.loads(text)
    except ValueError:
        preview = text.strip()
        return None, f"not JSON: {preview[:40]!r}" + ("..." if len(preview) > 40 else "")
    if not is_record(value):
        return None, "JSON but not a vidq record (no video, question, answer and error)"
    return value, ""


class OutputLock:
    """One writer per output file: an exclusive ``flock`` on ``FILE.lock``, which holds the writer's pid.

    The kernel drops the lock when the writer exits in any way (``kill -9`` included), so a stale ``.lock`` left
    by a killed run never blocks the next one; the file is removed on a clean release. ``filelock`` would do
    the locking, but it truncates the lock file on every attempt, which would erase the pid the message names.
    Raises OutputError at once (never waits) while another process holds the lock.
    """

    def __init__(self, out: Path):
        self.out = out
        self.path = out.with_name(out.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise OutputError(f"another vidq annotate{who} is writing {self.out}; wait for it to finish or "
                                  "choose another --out") from None
            # A holder releasing just now unlinks the file: a lock on that old inode would lock nothing.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: a waiter that opened it retries on a fresh file
        except FileNotFoundError:
            pass
        os.close(self._fd)  # drops the flock
        self._fd = None


@dataclass
class Existing:
    """What an output file held when a run opened it."""

    latest: dict[tuple[str, str], bool] = field(default_factory=dict)  # key -> its last line is an error
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of lines that are not vidq records
    torn_bytes: int = 0  # an unparsable last line without a newline (a write cut by a kill), cut off
    newline_added: bool = False  # a complete last line without its newline, kept and given one


class JsonLines:
    """An append-only JSON-lines file that survives kills, written by one run at a time.

    On open: take the lock (:class:`OutputLock`), refuse a file that holds no vidq record (binary data, text,
    someone else's JSON: :class:`OutputError`, the file untouched), then read it: every vidq line's key, the
    numbers of lines that are not vidq records (kept as they are), a torn last line cut off, a complete last line
    missing its newline given one. Later lines win: a key's state is its last line. Each write is flushed and
    fsynced before the next. A file it created stays only once a line is written in it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise OutputError(f"--out {self.path} is a directory; give a file name such as annotations.jsonl")
        self._refuse_binary()
        if not self.path.parent.is_dir():  # never created silently: a typo in the folder would hide the output
            raise OutputError(f"--out {self.path}: the folder {self.path.parent} does not exist; create it or write "
                              "elsewhere")
        self._lock = OutputLock(self.path)
        try:
            self._lock.acquire()
        except PermissionError as exc:
            raise OutputError(f"cannot write next to --out {self.path}: {exc.strerror or exc}") from None
        try:
            self._created = not self.path.exists()  # removed again on close if no line was written
            self.existing = self._read_and_repair()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except BaseException:
            self._lock.release()
            raise

    @property
    def repaired(self) -> int:
        """Bytes of a torn last line cut off on open."""
        return self.existing.torn_bytes

    def done(self, retry_failed: bool = False) -> set[tuple[str, str]]:
        """The keys not to ask again: all in the file, or with ``retry_failed`` those whose last line answered."""
        return {key for key, failed in self.existing.latest.items() if not (retry_failed and failed)}

    def _refuse(self, found: str) -> OutputError:
        return OutputError(f"--out {self.path} is not a vidq output file ({found}); it was left untouched: "
                           "choose another --out")

    def _refuse_binary(self) -> None:
        """A video or other binary file named as --out is refused from its head, before the lock or a full read."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(SNIFF_BYTES)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OutputError(f"cannot read --out {self.path}: {exc.strerror or exc}") from None
        first = head.split(b"\n", 1)[0]
        if b"\0" in first:
            raise self._refuse(f"binary data at line 1, byte {first.index(0)}")

    def _read_and_repair(self) -> Existing:
        existing = Existing()
        if not self.path.exists():
            return existing
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        last = lines.pop()  # b"" when the file ends with a newline
        first_bad = ""
        for number, raw in enumerate([*lines, last], start=1):
            if not raw.strip():
                continue
            record, found = describe_line(raw)
            if record is None and number == len(lines) + 1 and not found.startswith("JSON"):
                existing.torn_bytes = len(last)  # a write cut short (mid-character too): cut off below
                first_bad = first_bad or f"line {number} is {found}"
                continue
            if record is None:
                existing.bad_lines.append(number)
                first_bad = first_bad or f"line {number} is {found}"
                continue
            existing.latest[line_key(record)] = record["error"] is not None
        # A kill during the very first write leaves only the start of a vidq line: that is ours, and torn.
        first_write_torn = existing.torn_bytes and not lines and last.lstrip().startswith(RECORD_START)
        if not existing.latest and (existing.bad_lines or (existing.torn_bytes and not first_write_torn)):
            raise self._refuse(first_bad)
        if existing.torn_bytes or last.strip():
            with open(self.path, "r+b") as f:
                if existing.torn_bytes:
                    f.truncate(len(data) - len(last))
                else:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                    existing.newline_added = True
                f.flush()
                os.fsync(f.fileno())
        return existing

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.existing.latest[line_key(record)] = record["error"] is not None

    def close(self) -> None:
        """Close the file and release the lock; a file this run created and wrote no line to (a run refused after
        opening it, say a question too long for the model) is removed, so no empty output is left behind."""
        try:
            self._file.close()
            if self._created:
                with contextlib.suppress(OSError):  # gone or unreadable already: nothing to tidy
                    if self.path.stat().st_size == 0:
                        self.path.unlink()
        finally:
            self._lock.release()

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
