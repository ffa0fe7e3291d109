"""What a bench run yields: per (video, method, keep) rows of stage timings, tokens, memory and answer agreement."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The stages that make up the time to first token, in pipeline order (the plot splits its bar by them).
TTFT_STAGES = ("decode", "preprocess", "encode", "compress", "prefill")
STAGES = (*TTFT_STAGES, "generate", "time_to_first_token", "total")


@dataclass
class Stat:
    """Median, min and max of one quantity over the timed repeats."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values))


@dataclass
class Divergence:
    """Where a row's generated tokens first differ from the reference row's (None for a token past the end)."""

    index: int
    token_id: int | None
    token: str | None
    reference_token_id: int | None
    reference_token: str | None


@dataclass
class Agreement:
    reference: str  # the baseline method, "none"
    identical_text: bool
    identical_tokens: bool
    first_divergence: Divergence | None


@dataclass
class BenchRow:
    """One method at one keep on one video; when it failed, ``error`` says why and the measurements are None."""

    video: str
    method: str
    keep: float
    error: str | None = None  # one line: why this row could not be measured (e.g. the video does not decode)
    frames: int | None = None
    visual_tokens_before: int | None = None
    visual_tokens: int | None = None  # what the LLM sees
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    timings: dict[str, Stat] | None = None  # seconds; keys are STAGES
    peak_memory_bytes: int | None = None  # the highest over the repeats (this process; see peak_memory_kind)
    peak_memory_kind: str | None = None
    decode_worker_peak_rss_bytes: int | None = None  # the decode worker process's own peak RSS, highest over repeats
    prefill_tflops: float | None = None
    answer: str | None = None
    token_ids: list[int] | None = None
    agreement: Agreement | None = None  # None when `none` was not run or did not succeed
    tokens_asked: int | None = None  # --tokens: the count asked (visual_tokens is what was sent, keep what was found)
    token_search_s: float | None = None  # --tokens: seconds the keep search took (median over the repeats)
    # The follow-up question's time to first token (seconds): its own compression when the method reads the
    # question, its prompt and its prefill, on the video prepared, compressed and (where possible) prefilled for
    # the first question; beside timings["time_to_first_token"], the first question's from the decode on.
    follow_up_ttft: Stat | None = None
    follow_up_prefix: str | None = None  # whether the follow-up reused the video's prefill: "hit" | "off"


@dataclass
class BenchResult:
    environment: dict[str, Any]
    rows: list[BenchRow]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def measured(self) -> list[BenchRow]:
        """The rows that ran (no error)."""
        return [r for r in self.rows if r.error is None]
