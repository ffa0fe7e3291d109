"""Annotate whole folders: one JSON line per (video, question), resumable, one bad video never stops the run.

    summary = annotate(find_videos("clips/"), ["what happens?"], "out.jsonl", AnnotateConfig(model=...))

- Resumable: every line is keyed by (absolute video path, question); a rerun reads the output first and skips the
  keys it holds (``retry_failed``: except those whose last line is an error). Each line is appended, flushed and
  fsynced before the next, so a kill loses no finished line; a last line torn by a kill mid-write is cut off on
  the next start (only one that does not parse: a complete line missing its newline gets one).
- Safe: a file that holds no vidq record (a video, text, other JSON) is refused untouched; lines that are not
  vidq records are kept and reported by number; one run writes a file at a time (an flock on ``FILE.lock``), a
  second exits at once naming the first's pid.
- Once per video: each video is decoded, encoded and compressed once for all of its questions (the
  ``VideoQA.prepare`` / ``compress`` / ``answer`` stages); every line's report holds those shared stages' times.
- Isolated: each video is decoded in a worker process with a time limit (``VideoQA.decode``), so a corrupt or
  hanging file becomes one error line. The next videos decode in background threads while the model runs.
- Engines: ``local`` (this process) or ``ray`` (Ray Data, see :mod:`.annotate_ray`); both write the same lines.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import DEFAULT_MODEL, AskConfig, ConfigError, VideoQA

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts",
    ".3gp", ".ogv",
})
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class AnnotateConfig:
    """The model, how each question is asked, and how the work is spread."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    ask: AskConfig = field(default_factory=AskConfig)
    prefetch: int = 2  # videos decoded ahead of the model (local engine)
    engine: str = "local"
    ray_actors: int = 1  # model replicas (ray engine)
    ray_gpus_per_actor: float = 0.0
    cache_size: str | None = None  # the encoded-video cache's cap (flashvid_cli/cache.py); None: no cache

    def open_cache(self) -> Any:
        """The EncodedCache each model replica reads and writes, or None."""
        from .cache import EncodedCache

        return EncodedCache(max_bytes=self.cache_size) if self.cache_size is not None else None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.prefetch < 0:
            raise ConfigError(f"--prefetch must be >= 0, got {self.prefetch}")
        if self.ray_actors < 1:
            raise ConfigError(f"--ray-actors must be at least 1, got {self.ray_actors}")
        if self.ray_gpus_per_actor < 0:
            raise ConfigError(f"--gpus-per-actor must be >= 0, got {self.ray_gpus_per_actor}")

    def options(self) -> dict[str, Any]:
        """What each line records about how it was made."""
        ask = dataclasses.asdict(self.ask)
        ask.pop("decode_timeout_s")
        return {"model": self.model, "device": self.device, "dtype": self.dtype, **ask}


@dataclass
class Summary:
    total: int = 0  # (video, question) pairs asked for
    done: int = 0  # answered in this run
    failed: int = 0  # error lines written in this run
    skipped: int = 0  # already in the output, not asked again
    failed_before: int = 0  # of the skipped, those whose last line in the output is an error (see retry_failed)
    bad_lines: list[int] = field(default_factory=list)  # lines of the output that are not vidq records, kept
    elapsed_s: float = 0.0
    out: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)  # (video, error) of this run, once each


# on_event(kind, record): kind is "start" (record = {"total", "skipped", "failed_before", "repaired_bytes",
# "newline_added", "bad_lines"}), "done" or "failed" (record = the line written)
EventHandler = Callable[[str, dict[str, Any]], None]


def find_videos(spec: str | os.PathLike) -> list[str]:
    """Video files (by extension) under a directory (recursively), matching a glob, or the one file named."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [os.path.abspath(path)]
    roots = [path] if path.is_dir() else [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
    if not roots:
        raise ConfigError(f"{spec}: no such file, directory or matching path")
    found: set[str] = set()
    for root in roots:
        files = root.rglob("*") if root.is_dir() else [root]
        found.update(os.path.abspath(f) for f in files if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file())
    if not found:
        raise ConfigError(f"{spec}: no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    return sorted(found)


def read_questions(path: str | os.PathLike) -> list[str]:
    """One question per non-empty line (duplicates dropped, order kept); UTF-8, a BOM and CRLF line ends handled."""
    from .inputs import read_text_lines

    lines = read_text_lines(path, "--questions")
    questions = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not questions:
        raise ConfigError(f"--questions {path} holds no questions")
    return questions


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
    fsynced before the next.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise OutputError(f"--out {self.path} is a directory; give a file name such as annotations.jsonl")
        self._refuse_binary()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the folder of --out {self.path}: {exc.strerror or exc}") from None
        self._lock = OutputLock(self.path)
        try:
            self._lock.acquire()
        except PermissionError as exc:
            raise OutputError(f"cannot write next to --out {self.path}: {exc.strerror or exc}") from None
        try:
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
        try:
            self._file.close()
        finally:
            self._lock.release()

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_text(exc: BaseException) -> str:
    """One line for the error field: the message of a known error, the type and first line of anything else."""
    from .kernels import MethodError
    from .pipelines.errors import VidqError

    message = (str(exc).strip().splitlines() or [""])[0]
    return message if isinstance(exc, (VidqError, MethodError)) and message else f"{type(exc).__name__}: {message}"


def make_record(video: str, question: str, options: dict[str, Any], result: Any = None,
                error: str | None = None, decode_s: float | None = None) -> dict[str, Any]:
    """The line written for one (video, question): answer and report, or the error."""
    return {
        "video": video,
        "question": question,
        "answer": result.answer if result is not None else None,
        "error": error,
        "decode_s": decode_s,  # the decode itself, in a background worker (the report's decode is the wait for it)
        "report": dataclasses.asdict(result.report) if result is not None else None,
        "options": options,
    }


def timed_decode(video: str, config: AskConfig, resize: Any = None) -> tuple[Any, float]:
    """``(DecodedVideo, seconds)``; ``resize``: the answering model's ``frame_resizer()`` (frames kept at its size)."""
    started = time.perf_counter()
    decoded = VideoQA.decode(video, config, resize=resize)
    return decoded, time.perf_counter() - started


def answer_video(qa: VideoQA, video: str, questions: list[str], config: AskConfig, options: dict[str, Any],
                 decoded: Any = None, decode_error: BaseException | None = None,
                 decode_s: float | None = None) -> Iterator[dict[str, Any]]:
    """The per-video work both engines run: prepared once and compressed once (per question when the method
    reads the question), then a line per question; an error line each when anything fails."""
    prepared = compressed = prefix = None
    error = decode_error
    if error is None:
        try:
            method = qa.build_method(config)
            prepared = qa.prepare(video, config, decoded=decoded, need=method.needs)
            if "question" not in method.needs:
                compressed = qa.compress(prepared, method)
                prefix = qa.video_prefix(compressed)  # the video's prefill, kept for the next question
        except Exception as exc:  # noqa: BLE001 - one bad video costs its lines, never the run
            error = exc
    for question in questions:
        if error is not None:
            yield make_record(video, question, options, error=error_text(error), decode_s=decode_s)
            continue
        try:
            own = compressed or qa.compress(prepared, method, question)
            result = qa.answer(prepared, question, config, own, prefix or qa.video_prefix(own))
        except Exception as exc:  # noqa: BLE001 - one bad question costs its line, never the run
            yield make_record(video, question, options, error=error_text(exc), decode_s=decode_s)
        else:
            yield make_record(video, question, options, result=result, decode_s=decode_s)


def plan(videos: Iterable[str], questions: list[str], done: set[tuple[str, str]]) -> tuple[list[tuple[str, list[str]]], int]:
    """(video, questions still to ask) for every video with work left, and how many pairs are already done."""
    todo, skipped = [], 0
    for video in videos:
        left = [q for q in questions if (video, q) not in done]
        skipped += len(questions) - len(left)
        if left:
            todo.append((video, left))
    return todo, skipped


def validate(config: AnnotateConfig, questions: list[str]) -> None:
    """Fail before loading anything on what would fail every line: the method, its options, empty questions."""
    from .kernels import build

    if not questions or any(not q.strip() for q in questions):
        raise ConfigError("every question must be non-empty")
    build(config.ask.method, config.ask.keep, options=config.ask.options)


def annotate(videos: list[str], questions: list[str], out: str | os.PathLike, config: AnnotateConfig,
             on_event: EventHandler | None = None, retry_failed: bool = False) -> Summary:
    """Answer every question about every video into ``out`` (JSON lines), skipping what it already holds.

    ``retry_failed`` asks again the pairs whose last line in ``out`` is an error (the new line is appended and,
    being later, wins). Raises OutputError when ``out`` is not vidq's JSON lines or another run is writing it,
    ConfigError for a method or question that would fail every line.
    """
    validate(config, questions)
    if config.engine == "ray":
        from .annotate_ray import preflight

        preflight(config)
    on_event = on_event or (lambda kind, record: None)
    started = time.perf_counter()
    videos = [os.path.abspath(v) for v in videos]
    summary = Summary(total=len(videos) * len(questions), out=str(out))
    with JsonLines(out) as sink:
        existing = sink.existing
        todo, summary.skipped = plan(videos, questions, sink.done(retry_failed))
        summary.failed_before = 0 if retry_failed else sum(
            existing.latest.get((v, q), False) for v in videos for q in questions)
        summary.bad_lines = list(existing.bad_lines)
        on_event("start", {"total": summary.total, "skipped": summary.skipped, "failed_before": summary.failed_before,
                           "repaired_bytes": existing.torn_bytes, "newline_added": existing.newline_added,
                           "bad_lines": summary.bad_lines})

        named: set[tuple[str, str]] = set()

        def write(record: dict[str, Any]) -> None:
            sink.write(record)
            failed = record["error"] is not None
            summary.failed += failed
            summary.done += not failed
            if failed and (record["video"], record["error"]) not in named:
                named.add((record["video"], record["error"]))
                summary.failures.append((record["video"], record["error"]))
            on_event("failed" if failed else "done", record)

        if todo:
            if config.engine == "ray":
                from .annotate_ray import run_ray

                with closing(run_ray(todo, config)) as lines:  # closed at once on an error: Ray shut down
                    for record in lines:
                        write(record)
            else:
                for record in _run_local(todo, config):
                    write(record)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _run_local(todo: list[tuple[str, list[str]]], config: AnnotateConfig) -> Iterator[dict[str, Any]]:
    """Load the model once; decode up to ``prefetch`` videos ahead in threads (each waits on its worker process)."""
    qa = VideoQA(config.model, device=config.device, dtype=config.dtype, cache=config.open_cache())
    options = config.options()
    with ThreadPoolExecutor(max_workers=max(1, config.prefetch), thread_name_prefix="vidq-decode") as pool:
        pending: dict[int, Future] = {}
        try:
            for i, (video, questions) in enumerate(todo):
                for j in range(i, min(len(todo), i + 1 + config.prefetch)):
                    if j not in pending:
                        pending[j] = pool.submit(timed_decode, todo[j][0], config.ask, qa.frame_resizer())
                decoded = decode_s = error = None
                try:
                    decoded, decode_s = pending.pop(i).result()
                except Exception as exc:  # noqa: BLE001 - reported on the video's lines
                    error = exc
                yield from answer_video(qa, video, questions, config.ask, options, decoded, error, decode_s)
        finally:
            for future in pending.values():
                future.cancel()
