"""Which runs a bench (or eval) makes: the methods, each at each keep or visual-token count, and their --opt values.

``Run``, ``check_runs``, ``method_runs``, ``default_methods`` and ``is_trait`` are shared with ``vidq eval``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..config import AskConfig, ConfigError

DEFAULT_KEEPS = (0.1, 0.25)
DEFAULT_QUESTION = "Describe what happens in the video."
DEFAULT_FOLLOW_UP = "What happens at the end?"


@dataclass(frozen=True)
class BenchConfig:
    """What to run: methods x keeps (or x token counts), the question, and how often; ``ask`` holds sampling and
    generation. ``methods=None`` means every registered method."""

    methods: tuple[str, ...] | None = None
    keeps: tuple[float, ...] = DEFAULT_KEEPS
    question: str = DEFAULT_QUESTION
    follow_up: str = DEFAULT_FOLLOW_UP  # asked after ``question`` in every repeat, sharing its video and prefill
    repeat: int = 3
    warmup: int = 1
    ask: AskConfig = field(default_factory=AskConfig)
    tokens: tuple[int, ...] = ()  # visual-token counts; when given, they replace keeps
    # --opt: "key" goes to every method that has that option, "method.key" to that method only
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", default_methods(self.methods, self.tokens))
        check_runs(self.methods, self.keeps, self.tokens, self.options)
        check_options(self.methods, self.options)
        if self.repeat < 1:
            raise ConfigError(f"--repeat must be at least 1, got {self.repeat}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}")
        if not self.question.strip() or not self.follow_up.strip():
            raise ConfigError("the question is empty")

    def runs(self) -> list[Run]:
        return method_runs(self.methods, self.keeps, self.tokens)

    def options_for(self, method: str) -> dict[str, str]:
        """The --opt values ``method`` takes: plain keys it has, then its own ``method.key`` ones."""
        return method_options(method, self.options)


def method_options(method: str, options: dict[str, str]) -> dict[str, str]:
    from ..kernels import methods as registered

    fields = {f.name for f in dataclasses.fields(registered()[method])} - {"keep"}
    chosen = {key: value for key, value in options.items() if "." not in key and key in fields}
    chosen.update({key.split(".", 1)[1]: value for key, value in options.items() if key.startswith(f"{method}.")})
    return chosen


def check_options(methods: Sequence[str], options: dict[str, str]) -> None:
    """Every --opt must reach a method being run, and its value must parse (checked before the model loads)."""
    from ..kernels import build

    for key in options:
        target, _, name = key.rpartition(".")
        if target and target not in methods:
            raise ConfigError(f"--opt {key}: method {target!r} is not in --methods")
        if not target and not any(name in method_options(m, {name: ""}) for m in methods):
            raise ConfigError(f"--opt {key}: none of the methods {', '.join(methods)} has an option {key!r} "
                              "(`vidq methods` lists them)")
    for method in dict.fromkeys(methods):
        build(method, 0.5, options=method_options(method, options))


class Run(NamedTuple):
    """One row's method and budget: ``keep``, or with ``tokens`` the visual tokens asked (keep then searched)."""

    method: str
    keep: float
    tokens: int | None = None


def default_methods(methods: Sequence[str] | None, tokens: Sequence[int] = ()) -> tuple[str, ...]:
    """``methods``, or every registered method when None (a new file in kernels/ joins bench and eval by itself);
    with ``tokens``, every registered method that can be held to a visual-token count (not those that prune inside
    the LLM, where each decoder layer sees a different count)."""
    from ..kernels import methods as registered

    if methods is not None:
        return tuple(methods)
    return tuple(name for name in registered() if not (tokens and prunes_in_llm(name)))


def prunes_in_llm(method: str, options: Mapping[str, str] | None = None) -> bool:
    """Whether a registered method, with its default options updated by the --opt values it takes (``key`` or
    ``method.key``, as :func:`method_options` resolves them), runs an in-LLM pruning stage."""
    from ..kernels import build

    return build(method, 0.5, options=method_options(method, dict(options or {}))).llm_prune() is not None


def is_trait(method: str, trait: str) -> bool:
    """A registered method's class attribute (``ignores_keep``, ``baseline``), read instead of its name."""
    from ..kernels import methods as registered

    return bool(getattr(registered().get(method), trait, False))


def baseline_method(methods: Sequence[str]) -> str | None:
    """The first of ``methods`` that sends every token unchanged: the answers' reference."""
    return next((m for m in methods if is_trait(m, "baseline")), None)


def check_runs(methods: Sequence[str], keeps: Sequence[float], tokens: Sequence[int] = (),
               options: Mapping[str, str] | None = None) -> None:
    """Methods that exist, keeps in (0, 1], token counts >= 1, or a one-line ConfigError (shared by bench and eval).
    With ``tokens``, a method whose in-LLM stage ``options`` (--opt) leave on is refused (e.g. ``nuwa`` unless
    ``llm_stage=false``)."""
    from ..kernels import methods as registered

    if not methods:
        raise ConfigError("--methods is empty")
    unknown = [m for m in methods if m not in registered()]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose from: {', '.join(registered())}")
    if not keeps:
        raise ConfigError("--keep is empty")
    for keep in keeps:
        if not 0.0 < keep <= 1.0:
            raise ConfigError(f"--keep values must be in (0, 1], got {keep}")
    for count in tokens:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"--tokens values must be integers >= 1, got {count!r}")
    staged = [m for m in methods if tokens and prunes_in_llm(m, options)]
    if staged:
        raise ConfigError(f"--tokens does not apply to {staged[0]!r}: it prunes inside the LLM, so each decoder layer "
                          "sees a different number of visual tokens; give it --keep in a run of its own, or turn "
                          "its in-LLM stage off where it has one (`vidq methods`)")


def method_runs(methods: Sequence[str], keeps: Sequence[float], tokens: Sequence[int] = ()) -> list[Run]:
    """Runs in the order given: each method at each keep, or at each token count when ``tokens`` is given; a method
    that ignores keep runs once, at keep 1."""
    runs: list[Run] = []
    for method in dict.fromkeys(methods):
        if is_trait(method, "ignores_keep"):
            runs.append(Run(method, 1.0))
        elif tokens:
            runs += [Run(method, 1.0, count) for count in dict.fromkeys(tokens)]
        else:
            runs += [Run(method, keep) for keep in dict.fromkeys(keeps)]
    return runs
