"""The annotate driver: plan what is left to do, pick the engine, write every line it yields; and the local engine.

    summary = annotate(find_videos("clips/"), ["what happens?"], "out.jsonl", AnnotateConfig(model=...))

The local engine loads the model once in this process and decodes the next videos in background threads (each in
vidq's killable worker process with a time limit) while the model runs. The ``ray`` engine lives in
:mod:`.ray_engine` and is imported only when asked for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from ..api import ConfigError, VideoQA
from ..pipelines.preflight import rules_of
from .answer import answer_video, short_question, timed_decode
from .config import AnnotateConfig
from .engine import Engine, Todo
from .output import JsonLines


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
    from ..kernels import build

    if not questions or any(not q.strip() for q in questions):
        raise ConfigError("every question must be non-empty")
    build(config.ask.method, config.ask.keep, options=config.ask.options)


def check_questions(qa: VideoQA, todo: Todo, new_tokens: int) -> None:
    """A question whose prompt without the video, with ``new_tokens`` to generate, passes the model's context is
    too long for every video: PromptTooLongError naming it, once, before any video decodes (it was each video's
    error lines, after its decode and encode)."""
    from ..pipelines.errors import PromptTooLongError

    for question in dict.fromkeys(q for _, questions in todo for q in questions):
        try:
            qa.pipeline.check_question_length(question, new_tokens)
        except PromptTooLongError as exc:
            raise PromptTooLongError(f"question {short_question(question)!r}: {exc}") from None


class LocalEngine:
    """This process: one model, videos decoded ``prefetch`` ahead in threads (:class:`~.engine.Engine`)."""

    def preflight(self, config: AnnotateConfig) -> None:
        """Nothing to check before the output is opened: the local engine runs wherever vidq does."""

    def run(self, todo: Todo, config: AnnotateConfig) -> Iterator[dict[str, Any]]:
        """Load the model once; decode up to ``prefetch`` videos ahead in threads (each waits on its worker
        process)."""
        qa = VideoQA(config.model, device=config.device, dtype=config.dtype, cache=config.open_cache())
        check_questions(qa, todo, config.ask.max_new_tokens)  # the same for every video: refused once, before any
        options = config.options()
        # a video whose encoding the cache holds is not decoded ahead (prepare reads the entry); --tokens auto
        # sizes the budget from the decoded frames, so it decodes anyway
        need = None if config.tokens_auto else qa.build_method(config.ask).needs
        with ThreadPoolExecutor(max_workers=max(1, config.prefetch), thread_name_prefix="vidq-decode") as pool:
            pending: dict[int, Future] = {}
            try:
                for i, (video, questions) in enumerate(todo):
                    for j in range(i, min(len(todo), i + 1 + config.prefetch)):
                        if j in pending:
                            continue
                        if need is not None and qa.holds_encoded(todo[j][0], config.ask, need):
                            pending[j] = Future()
                            pending[j].set_result((None, None))
                        else:
                            pending[j] = pool.submit(timed_decode, todo[j][0], config.checked(), qa.frame_resizer(),
                                                     rules_of(qa.pipeline))
                    decoded = decode_s = error = None
                    try:
                        decoded, decode_s = pending.pop(i).result()
                    except Exception as exc:  # noqa: BLE001 - reported on the video's lines
                        error = exc
                    yield from answer_video(qa, video, questions, config.ask, options, decoded, error, decode_s,
                                            config.tokens_auto)
            finally:
                for future in pending.values():
                    future.cancel()


def engine_for(name: str) -> Engine:
    """The engine ``--engine`` names (one of :data:`~.config.ENGINES`); the Ray one is imported only when named."""
    if name == "ray":
        from .ray_engine import RayEngine

        return RayEngine()
    return LocalEngine()


def annotate(videos: list[str], questions: list[str], out: str | os.PathLike, config: AnnotateConfig,
             on_event: EventHandler | None = None, retry_failed: bool = False) -> Summary:
    """Answer every question about every video into ``out`` (JSON lines), skipping what it already holds.

    ``retry_failed`` asks again the pairs whose last line in ``out`` is an error (the new line is appended and,
    being later, wins). Raises OutputError when ``out`` is not vidq's JSON lines or another run is writing it,
    ConfigError for a method or question that would fail every line.
    """
    validate(config, questions)
    engine = engine_for(config.engine)
    engine.preflight(config)
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
            with closing(engine.run(todo, config)) as lines:  # closed at once on an error (Ray: shut down)
                for record in lines:
                    write(record)
    summary.elapsed_s = time.perf_counter() - started
    return summary
