"""Which runs an eval makes: methods x keeps (or x token counts), the scoring and the question limit."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..bench.runs import Run, check_options, check_runs, default_methods, method_options, method_runs
from ..config import AskConfig, ConfigError

DEFAULT_KEEPS = (1.0, 0.5, 0.25, 0.1)
SCORINGS = ("likelihood", "letter")


@dataclass(frozen=True)
class EvalConfig:
    """Methods x keeps (or x token counts), how options are scored, how many questions; ``ask`` holds frame sampling
    and decoding. ``methods=None`` means every registered method. ``ask.options`` (--opt), as in bench: ``key`` goes
    to every method that has that option, ``method.key`` to that method only; an option no method of the eval has
    is a ConfigError."""

    methods: tuple[str, ...] | None = None
    keeps: tuple[float, ...] = DEFAULT_KEEPS
    scoring: str = "likelihood"
    limit: int | None = None  # the first N questions
    ask: AskConfig = field(default_factory=AskConfig)
    tokens: tuple[int, ...] = ()  # visual-token counts; when given, they replace keeps

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", default_methods(self.methods, self.tokens))
        check_runs(self.methods, self.keeps, self.tokens, self.ask.options)
        check_options(self.methods, dict(self.ask.options))
        if self.scoring not in SCORINGS:
            raise ConfigError(f"--scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")

    def options_for(self, method: str) -> dict[str, str]:
        """The --opt values ``method`` takes: plain keys it has, then its own ``method.key`` ones."""
        return method_options(method, dict(self.ask.options))

    def runs(self) -> list[Run]:
        """(method, keep, tokens) in the order given; a method that ignores keep once, at keep 1."""
        return method_runs(self.methods, self.keeps, self.tokens)
