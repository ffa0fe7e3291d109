"""Annotate whole folders: one JSON line per (video, question), resumable, one bad video never stops the run.

    summary = annotate(find_videos("clips/"), ["what happens?"], "out.jsonl", AnnotateConfig(model=...))

- Resumable: every line is keyed by (absolute video path, question); a rerun reads the output first and skips the
  keys it holds. Each line is appended, flushed and fsynced before the next, so a kill loses no finished line; a
  line torn by a kill mid-write is cut off on the next start, so every line of the file always parses.
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
    skipped: int = 0  # already in the output
    elapsed_s: float = 0.0
    out: str = ""


# on_event(kind, record): kind is "start" (record = {"total", "skipped"}), "done" or "failed" (record = the line)
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
    """One question per non-empty line (duplicates dropped, order kept)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read --questions {path}: {exc.strerror or exc}") from None
    questions = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not questions:
        raise ConfigError(f"--questions {path} holds no questions")
    return questions


def line_key(record: dict[str, Any]) -> tuple[str, str]:
    return record["video"], record["question"]


class JsonLines:
    """An append-only JSON-lines file that survives kills: repaired and read on open, fsynced per line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[tuple[str, str]] = set()
        self.repaired = 0  # bytes of a torn last line cut off on open
        self._read_and_repair()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _read_and_repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
            self.repaired = len(data) - end
        for raw in data[:end].splitlines():
            try:
                record = json.loads(raw)
                self.done.add(line_key(record))
            except (ValueError, KeyError, TypeError):
                continue  # not ours: left in place, never a key

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add(line_key(record))

    def close(self) -> None:
        self._file.close()

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


def timed_decode(video: str, config: AskConfig) -> tuple[Any, float]:
    started = time.perf_counter()
    decoded = VideoQA.decode(video, config)
    return decoded, time.perf_counter() - started


def answer_video(qa: VideoQA, video: str, questions: list[str], config: AskConfig, options: dict[str, Any],
                 decoded: Any = None, decode_error: BaseException | None = None,
                 decode_s: float | None = None) -> Iterator[dict[str, Any]]:
    """The per-video work both engines run: prepared once and compressed once (per question when the method
    reads the question), then a line per question; an error line each when anything fails."""
    prepared = compressed = None
    error = decode_error
    if error is None:
        try:
            method = qa.build_method(config)
            prepared = qa.prepare(video, config, decoded=decoded, need=method.needs)
            if "question" not in method.needs:
                compressed = qa.compress(prepared, method)
        except Exception as exc:  # noqa: BLE001 - one bad video costs its lines, never the run
            error = exc
    for question in questions:
        if error is not None:
            yield make_record(video, question, options, error=error_text(error), decode_s=decode_s)
            continue
        try:
            result = qa.answer(prepared, question, config, compressed)
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
             on_event: EventHandler | None = None) -> Summary:
    """Answer every question about every video into ``out`` (JSON lines), skipping what it already holds."""
    validate(config, questions)
    on_event = on_event or (lambda kind, record: None)
    started = time.perf_counter()
    videos = [os.path.abspath(v) for v in videos]
    summary = Summary(total=len(videos) * len(questions), out=str(out))
    with JsonLines(out) as sink:
        todo, summary.skipped = plan(videos, questions, sink.done)
        on_event("start", {"total": summary.total, "skipped": summary.skipped, "repaired_bytes": sink.repaired})

        def write(record: dict[str, Any]) -> None:
            sink.write(record)
            failed = record["error"] is not None
            summary.failed += failed
            summary.done += not failed
            on_event("failed" if failed else "done", record)

        if todo:
            if config.engine == "ray":
                from .annotate_ray import run_ray

                for record in run_ray(todo, config):
                    write(record)
            else:
                for record in _run_local(todo, config):
                    write(record)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _run_local(todo: list[tuple[str, list[str]]], config: AnnotateConfig) -> Iterator[dict[str, Any]]:
    """Load the model once; decode up to ``prefetch`` videos ahead in threads (each waits on its worker process)."""
    qa = VideoQA(config.model, device=config.device, dtype=config.dtype)
    options = config.options()
    with ThreadPoolExecutor(max_workers=max(1, config.prefetch), thread_name_prefix="vidq-decode") as pool:
        pending: dict[int, Future] = {}
        try:
            for i, (video, questions) in enumerate(todo):
                for j in range(i, min(len(todo), i + 1 + config.prefetch)):
                    if j not in pending:
                        pending[j] = pool.submit(timed_decode, todo[j][0], config.ask)
                decoded = decode_s = error = None
                try:
                    decoded, decode_s = pending.pop(i).result()
                except Exception as exc:  # noqa: BLE001 - reported on the video's lines
                    error = exc
                yield from answer_video(qa, video, questions, config.ask, options, decoded, error, decode_s)
        finally:
            for future in pending.values():
                future.cancel()
