"""What an engine does for one video: decode it, then prepare and compress it once and answer each question,
giving one line (answer and report, or the error) per question. Both engines run exactly this."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

from ..api import AskConfig, VideoQA


def error_text(exc: BaseException) -> str:
    """One line for the error field: the message of a known error, the type and first line of anything else."""
    from ..kernels import MethodError
    from ..pipelines.errors import VidqError

    message = (str(exc).strip().splitlines() or [""])[0]
    return message if isinstance(exc, (VidqError, MethodError)) and message else f"{type(exc).__name__}: {message}"


def short_question(question: str, width: int = 40) -> str:
    """``question`` for a one-line message: as it is up to ``width`` characters, else cut to ``width`` with "…"."""
    return question if len(question) <= width else question[:width - 1] + "…"


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


def timed_decode(video: str, config: AskConfig, resize: Any = None, rules: Any = None) -> tuple[Any, float]:
    """``(DecodedVideo, seconds)``; ``resize``: the answering model's ``frame_resizer()`` (frames kept at its size);
    ``rules``: its input rules (``pipelines.preflight.rules_of``), so a video it cannot take is refused undecoded."""
    started = time.perf_counter()
    decoded = VideoQA.decode(video, config, resize=resize, rules=rules)
    return decoded, time.perf_counter() - started


def answer_video(qa: VideoQA, video: str, questions: list[str], config: AskConfig, options: dict[str, Any],
                 decoded: Any = None, decode_error: BaseException | None = None,
                 decode_s: float | None = None, tokens_auto: bool = False) -> Iterator[dict[str, Any]]:
    """The per-video work both engines run: prepared once and compressed once (per question when the method
    reads the question), then a line per question; an error line each when anything fails. ``tokens_auto``
    (``--tokens auto``): this video's budget is the one that fills the context beside the longest of its
    questions and ``max_new_tokens`` (:func:`flashvid_cli.plan.auto_tokens`, from ``decoded``'s frames)."""
    prepared = compressed = prefix = None
    error = decode_error
    if error is None:
        try:
            if tokens_auto:
                from ..plan import auto_tokens

                height, width = decoded.frames.shape[1:3]
                config = dataclasses.replace(config, tokens_at_most=True, tokens=auto_tokens(
                    qa.pipeline, questions, config, len(decoded.frames), height, width))
            method = qa.build_method(config)
            prepared = qa.prepare(video, config, decoded=decoded, need=method.needs, write_cache=False)
            if "question" not in method.needs:
                compressed = qa.compress(prepared, method, tokens=config.tokens, at_most=config.tokens_at_most)
                prefix = qa.video_prefix(compressed)  # the video's prefill, kept for the next question
        except Exception as exc:  # noqa: BLE001 - one bad video costs its lines, never the run
            error = exc
    try:
        for i, question in enumerate(questions):
            if error is not None:
                yield make_record(video, question, options, error=error_text(error), decode_s=decode_s)
                continue
            batch = (_batched(qa, prepared, questions[1:], config, prefix)
                     if i == 1 and len(questions) > 2 and prefix is not None else None)  # a batch of one: answer()
            if batch:
                for asked, result in zip(questions[1:], batch):
                    yield make_record(video, asked, options, result=result, decode_s=decode_s)
                break
            try:
                own = compressed or qa.compress(prepared, method, question, config.tokens, config.tokens_at_most)
                result = qa.answer(prepared, question, config, own, prefix or qa.video_prefix(own))
            except Exception as exc:  # noqa: BLE001 - one bad question costs its line, never the run
                yield make_record(video, question, options, error=error_text(exc), decode_s=decode_s)
            else:
                yield make_record(video, question, options, result=result, decode_s=decode_s)
    finally:  # the encoded video goes to the cache after its answers, in no answer's time to first token
        if prepared is not None:
            qa.write_cache(prepared)


def _batched(qa: VideoQA, prepared: Any, questions: list[str], config: AskConfig, prefix: Any) -> list[Any] | None:
    """The later questions of a video answered in one batch over the first one's cached prefill
    (:meth:`VideoQA.answer_batch`), or None when they cannot be (sampling, a method or family that answers one at a
    time, the first question failed, any error in the batch): they are then answered one at a time, each with its
    own line or error."""
    try:
        return qa.answer_batch(prepared, questions, config, prefix)
    except Exception:  # noqa: BLE001 - one at a time instead, where each question's own error is its line
        return None
