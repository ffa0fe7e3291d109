"""What an eval yields: accuracy per (method, keep) row, by question type, and every question's prediction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TypeScore:
    accuracy: float | None
    correct: int
    total: int


@dataclass
class EvalRow:
    method: str
    keep: float
    accuracy: float | None  # correct / total; None when no question could be scored
    correct: int
    total: int  # questions scored
    failed: int  # questions that could not be scored (e.g. the video does not decode): not in total
    visual_tokens: float | None  # mean over scored questions of what the LLM sees (LLaVA-OV's newline included)
    visual_tokens_before: float | None  # the same, uncompressed
    by_type: dict[str, TypeScore] = field(default_factory=dict)
    tokens: int | None = None  # --tokens: the visual tokens asked; keep is then the mean keep found per clip
    token_search_s: float | None = None  # --tokens: seconds spent searching the keep, all clips together


@dataclass
class Prediction:
    index: int  # position in the question list
    id: str
    method: str
    keep: float
    answer: int
    predicted: int | None  # None when the question failed
    correct: bool
    scores: list[float] | None = None  # one per option: summed log-probability, or the letter's logit
    error: str | None = None
    tokens: int | None = None  # --tokens: the visual tokens asked (keep is then the one found for this clip)
    # What was reused (as report.cache of ask): the encoded video from the on-disk cache; the video's prefill
    # ("hit": from an earlier question of the same video and row, "miss", or "off": full forwards for a method with
    # an in-LLM stage or decoding sparsity; environment["notes"] says so).
    cache: dict[str, str] = field(default_factory=lambda: {"encoded": "off", "prefix": "off"})


@dataclass
class EvalResult:
    environment: dict[str, Any]
    rows: list[EvalRow]
    predictions: list[Prediction]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def failed_questions(self) -> int:
        return len({p.index for p in self.predictions if p.error is not None})
