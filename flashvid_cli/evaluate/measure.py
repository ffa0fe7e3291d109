"""The eval run: each video decoded ahead and encoded once, compressed per (method, keep), its questions scored."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import AskConfig, ConfigError
from ..results import CompressedVideo
from ..videoqa import VideoQA
from .dataset import Question
from .provenance import environment
from .results import EvalResult, EvalRow, Prediction, TypeScore
from .runs import EvalConfig
from .scoring import Scorer, score_question

if TYPE_CHECKING:
    from ..pipelines.video import DecodedVideo

PREFETCH = 2  # videos decoded ahead while the model works

# progress(done, total, failed) in questions, called after each video's questions are scored for every row
ProgressCallback = Callable[[int, int, int], None]


@dataclass
class _Tally:
    correct: int = 0
    total: int = 0
    failed: int = 0
    tokens: list[int] = field(default_factory=list)
    tokens_before: list[int] = field(default_factory=list)
    by_type: dict[str, list[int]] = field(default_factory=dict)  # type -> [correct, total]
    keeps: list[float] = field(default_factory=list)  # --tokens: the keep found, per clip
    search_s: float = 0.0

    def add(self, question: Question, correct: bool, tokens: int, tokens_before: int) -> None:
        self.correct += correct
        self.total += 1
        self.tokens.append(tokens)
        self.tokens_before.append(tokens_before)
        if question.type is not None:
            counts = self.by_type.setdefault(question.type, [0, 0])
            counts[0] += correct
            counts[1] += 1

    def searched(self, compressed: CompressedVideo | None) -> None:
        """Count a --tokens compression: the keep it found and what the search cost."""
        if compressed is not None and compressed.search is not None:
            self.keeps.append(compressed.method.keep)
            self.search_s += compressed.search["seconds"]

    def row(self, method: str, keep: float, tokens: int | None = None) -> EvalRow:
        def mean(values: list[int]) -> float | None:
            return statistics.fmean(values) if values else None

        return EvalRow(
            method, mean(self.keeps) if tokens is not None and self.keeps else keep,
            self.correct / self.total if self.total else None, self.correct, self.total, self.failed,
            mean(self.tokens), mean(self.tokens_before),
            {t: TypeScore(c / n if n else None, c, n) for t, (c, n) in sorted(self.by_type.items())},
            tokens, self.search_s if tokens is not None else None,
        )


def run_eval(qa: VideoQA, questions: Sequence[Question], config: EvalConfig,
             progress: ProgressCallback | None = None) -> EvalResult:
    """Score every question under every (method, keep) of ``config``; ``progress(done, total, failed)`` follows
    the questions."""
    from ..annotate import error_text
    from ..kernels import build

    started, stamp = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    questions = list(questions)[: config.limit]
    if not questions:
        raise ConfigError("no questions to evaluate")
    rule = qa.text_after_video_rule(config.ask.text_after_video)
    methods = {run: build(run.method, run.keep, model_type=qa.model_type, options=config.options_for(run.method))
               for run in config.runs()}  # --opt: each method gets the options it has
    need = frozenset().union(*(m.needs for m in methods.values()))  # one encode serves every method
    by_video: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_video.setdefault(q.video, []).append(i)
    tallies = {pair: _Tally() for pair in methods}
    predictions: list[Prediction] = []
    done, failed = 0, set()  # failed: indices of questions that failed in any row

    fits = _fits_some_run(qa, config)
    from ..pipelines.prefix import template_order_reason

    video_first = template_order_reason(qa.pipeline) is None  # else no question can reuse the video's prefill
    for video, decoded, error in _decode_ahead(list(by_video), config.ask, qa.frame_resizer(), fits):
        prepared = None
        if error is None:
            prepared, error = _attempt(qa.prepare, video, config.ask, decoded, need)
        for run, method in methods.items():
            name, tally = run.method, tallies[run]
            shared, row_error = None, error
            if row_error is None and "question" not in method.needs:
                shared, row_error = _attempt(qa.compress, prepared, method, None, run.tokens)
                tally.searched(shared)
            # the video's prefill and each prompt are prefilled once; a video whose tokens differ per question
            # (a method that reads it) gets a cache per question, shared by its options only
            video_cache = _prompt_cache(qa, method) if shared is not None else None
            for i in by_video[video]:
                q = questions[i]
                compressed, scores, question_error = shared, None, row_error
                if question_error is None and compressed is None:  # the method reads the question
                    compressed, question_error = _attempt(qa.compress, prepared, method, q.question, run.tokens)
                    tally.searched(compressed)
                scorer = Scorer(qa, method.llm_prune(), method.decode_sparsity(),
                                video_cache if shared is not None else _prompt_cache(qa, method),
                                video_shared=shared is not None and video_first)
                if question_error is None:
                    scores, question_error = _attempt(score_question, qa, prepared, compressed, q, config.scoring,
                                                      rule, scorer)
                found = compressed.method.keep if compressed is not None else run.keep  # with --tokens, per clip
                if question_error is not None:
                    tally.failed += 1
                    failed.add(i)
                    predictions.append(Prediction(i, q.id, name, found, q.answer, None, False,
                                                  error=error_text(question_error), tokens=run.tokens))
                    continue
                predicted = max(range(len(scores)), key=scores.__getitem__)  # the first of equal scores
                tally.add(q, predicted == q.answer, compressed.visual_tokens, prepared.visual_tokens)
                predictions.append(Prediction(i, q.id, name, found, q.answer, predicted, predicted == q.answer,
                                              scores, tokens=run.tokens,
                                              cache={"encoded": prepared.cache, "prefix": scorer.prefix or "off"}))
        done += len(by_video[video])
        if progress is not None:
            progress(done, len(questions), len(failed))

    rows = [tally.row(*run) for run, tally in tallies.items()]
    scored = [q for i, q in enumerate(questions) if i not in failed] or questions
    env = environment(qa, config, questions, rule, chance=chance_level(scored))
    env.update(started=stamp, elapsed_s=time.perf_counter() - started)
    env["notes"] = ["each prompt is prefilled once for all its options, and where the chat template puts the video "
                    "first the video's prefill once for all its questions (predictions' cache.prefix: hit); methods "
                    "with an in-LLM stage or decoding sparsity are scored by full forward passes (prefix: off)"]
    return EvalResult(env, rows, predictions)


def _prompt_cache(qa: VideoQA, method: Any) -> Any:
    """A ``PromptCache`` for scoring with ``method``, or None where none can serve (an in-LLM stage or decoding
    sparsity changes what the cache would hold; a model whose cache cannot be cut back to a prefix)."""
    from ..pipelines.prefix import PromptCache

    if method.llm_prune() is not None or method.decode_sparsity() is not None:
        return None
    return PromptCache(qa.pipeline) if PromptCache.unsupported_reason(qa.pipeline) is None else None


def _attempt(fn: Callable[..., Any], *args: Any) -> tuple[Any, Exception | None]:
    """``(fn(*args), None)``, or ``(None, the exception)``: one bad video or question costs its rows, not the run."""
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - recorded on the question's predictions and counted as failed
        return None, exc


def _fits_some_run(qa: VideoQA, config: EvalConfig) -> Callable[[str], None]:
    """A check of one video against the model before it decodes: it raises (VideoError, PromptTooLongError) only
    when no run of the eval can take the video, from the frame map (``preflight.check_video_fits``)."""
    from ..pipelines.preflight import rules_of
    from ..preflight import check_video_fits

    rules = rules_of(qa.pipeline)
    asks = [dataclasses.replace(config.ask, method=run.method, keep=run.keep, tokens=run.tokens,
                                options=config.options_for(run.method)) for run in config.runs()]

    def check(video: str) -> None:
        first: Exception | None = None
        for ask in asks:
            try:
                check_video_fits(video, ask, rules, new_tokens=0)  # eval scores by forward passes: it generates none
                return
            except Exception as exc:  # noqa: BLE001 - the first refusal is raised if every run refuses
                first = first or exc
        if first is not None:
            raise first

    return check


def _decode_ahead(videos: list[str], ask: AskConfig, resize: Any = None, check: Callable[[str], None] | None = None
                  ) -> Iterator[tuple[str, DecodedVideo | None, Exception | None]]:
    """(video, decoded, None) or (video, None, error) in order, decoding up to PREFETCH videos ahead in threads;
    ``resize``: the model's ``frame_resizer()``, so frames are kept only at its input size; ``check(video)``
    runs first, so a video it refuses is its error, undecoded."""

    def decode(video: str) -> DecodedVideo:
        if check is not None:
            check(video)
        return VideoQA.decode(video, ask, resize)

    with ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="vidq-decode") as pool:
        pending: dict[int, Future] = {}
        try:
            for i, video in enumerate(videos):
                for j in range(i, min(len(videos), i + 1 + PREFETCH)):
                    if j not in pending:
                        pending[j] = pool.submit(decode, videos[j])
                decoded, error = _attempt(pending.pop(i).result)
                yield video, decoded, error
        finally:
            for future in pending.values():
                future.cancel()


def chance_level(questions: Sequence[Question]) -> float:
    """The accuracy of guessing uniformly: the mean of 1 / options."""
    return statistics.fmean(1 / len(q.options) for q in questions)
