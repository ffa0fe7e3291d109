"""Measuring the bench's rows: each run timed over repeats, its prefill FLOPs estimated, its answer compared."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..results import AskResult
from ..videoqa import VideoQA
from .provenance import environment
from .results import STAGES, Agreement, BenchResult, BenchRow, Divergence, Stat
from .runs import BenchConfig, baseline_method


@dataclass(frozen=True)
class LanguageModelSize:
    """What the prefill estimate needs from the LLM: non-embedding parameters a token uses, depth and width.

    In a mixture-of-experts LLM (config ``num_experts``, ``num_experts_per_tok``) a token runs only its top-k
    experts, so expert weights count ``k / num_experts`` of their size.
    """

    params: int
    layers: int
    hidden: int

    @classmethod
    def of(cls, qa: VideoQA) -> LanguageModelSize:
        info = qa.info
        return cls(info.llm_params, info.llm_layers, info.llm_hidden)


def prefill_flops(size: LanguageModelSize, tokens: int) -> float:
    """Estimated FLOPs of the LLM prefill over ``tokens`` prompt tokens.

    ``2 * N * L`` for the matmuls with the weights (N = non-embedding LLM parameters: the embedding is a lookup,
    and generate() applies the LM head to the last position only), plus ``4 * layers * hidden * L^2 / 2`` for
    ``Q K^T`` and ``A V`` (2 * L^2 * hidden multiply-adds each per layer, halved by the causal mask).
    """
    return 2.0 * size.params * tokens + 4.0 * size.layers * size.hidden * tokens**2 / 2


def agreement(tokens: list[int], reference: list[int], text: str, reference_text: str,
              token_text: Callable[[int], str], reference_method: str = "none") -> Agreement:
    """Compare a row's generated ids with the reference row's: identical or the first index where they part."""
    divergence = None
    if tokens != reference:
        index = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
        mine = tokens[index] if index < len(tokens) else None
        theirs = reference[index] if index < len(reference) else None
        divergence = Divergence(
            index, mine, token_text(mine) if mine is not None else None,
            theirs, token_text(theirs) if theirs is not None else None,
        )
    return Agreement(reference_method, text == reference_text, divergence is None, divergence)


def run_bench(
    qa: VideoQA,
    videos: Sequence[str | Path],
    config: BenchConfig,
    on_run: Callable[[str, str, float, int, int], None] | None = None,
) -> BenchResult:
    """Run every (method, keep) of ``config`` on every video; ``on_run(video, method, keep, done, total)`` reports
    progress after each row. A row that fails (a video that does not decode, a method that raises) is kept with
    its ``error`` and the run goes on; a video that does not decode is not tried again for its other rows."""
    from ..annotate import error_text
    from ..pipelines.errors import VideoError

    videos = list(dict.fromkeys(str(v) for v in videos))  # a video named twice is benchmarked once
    size = LanguageModelSize.of(qa)
    pairs = config.runs()
    total, done = len(videos) * len(pairs), 0
    rows: list[BenchRow] = []
    baseline = baseline_method(config.methods)
    for video in videos:
        broken: str | None = None  # a video that does not decode fails every row without being tried again
        for method, keep, tokens in pairs:
            ask = dataclasses.replace(config.ask, method=method, keep=keep, tokens=tokens,
                                      options=config.options_for(method))
            questions = [config.question, config.follow_up]
            if broken is not None:
                rows.append(BenchRow(str(video), method, keep, error=broken, tokens_asked=tokens))
            else:
                try:
                    for _ in range(config.warmup):
                        qa.ask_many(video, questions, ask)
                    pairs_run = [qa.ask_many(video, questions, ask) for _ in range(config.repeat)]
                except Exception as exc:  # noqa: BLE001 - one bad video or method costs its rows, never the run
                    rows.append(BenchRow(str(video), method, keep, error=error_text(exc), tokens_asked=tokens))
                    if isinstance(exc, VideoError):
                        broken = rows[-1].error
                else:
                    row = _row(str(video), method, keep, [first for first, _ in pairs_run], size)
                    row.follow_up_ttft = Stat.of([f.report.timings.question_to_first_token for _, f in pairs_run])
                    row.follow_up_prefix = pairs_run[-1][1].report.cache["prefix"]
                    rows.append(row)
            done += 1
            if on_run is not None:
                on_run(str(video), method, keep if tokens is None else tokens, done, total)
    for row in rows:
        reference = next((r for r in rows if r.video == row.video and r.method == baseline), None)
        if reference is not None and reference.error is None and row.error is None:
            row.agreement = agreement(
                row.token_ids, reference.token_ids, row.answer, reference.answer,
                qa.token_text, baseline,
            )
    return BenchResult(environment(qa, config, [str(v) for v in videos]), rows)


def _row(video: str, method: str, keep: float, results: list[AskResult], size: LanguageModelSize) -> BenchRow:
    last = results[-1]
    report = last.report
    timings = {stage: Stat.of([getattr(r.report.timings, stage) for r in results]) for stage in STAGES}
    searches = [r.report.token_search["seconds"] for r in results if r.report.token_search]
    return BenchRow(
        video=video,
        method=method,
        keep=report.keep,  # with --tokens, the keep the search found
        frames=len(report.video.frame_indices),
        visual_tokens_before=report.tokens.visual_before,
        visual_tokens=report.tokens.visual_after,
        prompt_tokens=report.tokens.prompt,
        generated_tokens=report.tokens.generated,
        timings=timings,
        peak_memory_bytes=max(r.report.peak_memory_bytes for r in results),
        peak_memory_kind=report.peak_memory_kind,
        decode_worker_peak_rss_bytes=max((r.report.decode_worker_peak_rss_bytes or 0 for r in results), default=0)
        or None,
        prefill_tflops=prefill_flops(size, report.tokens.prompt) / 1e12,
        answer=last.answer,
        token_ids=list(last.token_ids),
        tokens_asked=report.tokens.asked,
        token_search_s=statistics.median(searches) if searches else None,
    )
