"""How a bench row reads: its label, its agreement note, its stage shares of the time to first token."""

from __future__ import annotations

from .results import TTFT_STAGES, BenchRow
from .runs import is_trait


def row_label(row: BenchRow) -> str:
    if is_trait(row.method, "ignores_keep"):
        return row.method
    return f"{row.method} {row.tokens_asked} tok" if row.tokens_asked is not None else f"{row.method} {row.keep:g}"


def agreement_label(row: BenchRow) -> str:
    if row.agreement is None or row.method == row.agreement.reference:
        return ""
    if row.agreement.identical_tokens:
        return f"same answer as {row.agreement.reference}"
    return f"differs from {row.agreement.reference} at token {row.agreement.first_divergence.index}"


def stage_segments(row: BenchRow) -> list[tuple[str, float]]:
    """(stage, seconds) that add up exactly to the row's median time to first token: the stage medians scaled by
    one factor (medians of parts need not add up to the median of the whole, so the raw sum would not)."""
    parts = [(stage, row.timings[stage].median) for stage in TTFT_STAGES]
    total = sum(value for _, value in parts)
    ttft = row.timings["time_to_first_token"].median
    return [(stage, value * ttft / total if total else 0.0) for stage, value in parts]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
