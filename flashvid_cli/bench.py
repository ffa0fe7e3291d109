"""Compare compression methods side by side: every method x keep on every video, one loaded model.

    qa = VideoQA(model)
    result = run_bench(qa, ["clip.mp4"], BenchConfig(methods=("flashvid", "none"), keeps=(0.1, 0.25)))
    run_bench(qa, ["clip.mp4"], BenchConfig(tokens=(64, 128)))  # every method at 64 and at 128 visual tokens
    result.to_dict()            # {"environment": {...}, "rows": [...]}
    plot_bench(result, "bench.png")

Each row is run ``warmup`` times untimed, then ``repeat`` times; every stage time is reported as the median
with min and max over the repeats. Each repeat is one ``VideoQA.ask_many`` of the question and a follow-up
(``follow_up_ttft``: the follow-up's time to first token on the same prepared video), i.e. the same
prepare -> compress -> answer stages as ``vidq ask``, each time read after a device synchronisation.
Methods that ignore ``keep`` (``none``) get one row per video, at keep 1; every other method one row per keep, or
with ``tokens`` one row per visual-token count (each method at the keep that comes closest on each clip). The
methods default to every registered one; answers are compared with the baseline method's (``none``).
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .api import AskConfig, AskResult, ConfigError, VideoQA

DEFAULT_KEEPS = (0.1, 0.25)
DEFAULT_QUESTION = "Describe what happens in the video."
DEFAULT_FOLLOW_UP = "What happens at the end?"
# The stages that make up the time to first token, in pipeline order (the plot splits its bar by them).
TTFT_STAGES = ("decode", "preprocess", "encode", "compress", "prefill")
STAGES = (*TTFT_STAGES, "generate", "time_to_first_token", "total")


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
        check_runs(self.methods, self.keeps, self.tokens)
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
    from .kernels import methods as registered

    fields = {f.name for f in dataclasses.fields(registered()[method])} - {"keep"}
    chosen = {key: value for key, value in options.items() if "." not in key and key in fields}
    chosen.update({key.split(".", 1)[1]: value for key, value in options.items() if key.startswith(f"{method}.")})
    return chosen


def check_options(methods: Sequence[str], options: dict[str, str]) -> None:
    """Every --opt must reach a method being run, and its value must parse (checked before the model loads)."""
    from .kernels import build

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
    from .kernels import methods as registered

    if methods is not None:
        return tuple(methods)
    return tuple(name for name in registered() if not (tokens and prunes_in_llm(name)))


def prunes_in_llm(method: str) -> bool:
    """Whether a registered method, with its default options, runs an in-LLM pruning stage."""
    from .kernels import methods as registered

    return registered()[method]().llm_prune() is not None


def is_trait(method: str, trait: str) -> bool:
    """A registered method's class attribute (``ignores_keep``, ``baseline``), read instead of its name."""
    from .kernels import methods as registered

    return bool(getattr(registered().get(method), trait, False))


def baseline_method(methods: Sequence[str]) -> str | None:
    """The first of ``methods`` that sends every token unchanged: the answers' reference."""
    return next((m for m in methods if is_trait(m, "baseline")), None)


def check_runs(methods: Sequence[str], keeps: Sequence[float], tokens: Sequence[int] = ()) -> None:
    """Methods that exist, keeps in (0, 1], token counts >= 1, or a one-line ConfigError (shared by bench and eval)."""
    from .kernels import methods as registered

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
    staged = [m for m in methods if tokens and prunes_in_llm(m)]
    if staged:
        raise ConfigError(f"--tokens does not apply to {staged[0]!r}: it prunes inside the LLM, so each decoder layer "
                          "sees a different number of visual tokens; give it --keep in a run of its own")


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


def environment(qa: VideoQA, config: BenchConfig, videos: Sequence[str]) -> dict[str, Any]:
    """Device, versions, model and sampling: what a reader needs to trust or reproduce the numbers."""
    import torch
    import transformers

    from . import __version__
    from .pipelines.random_init import is_random

    info = qa.info
    device = torch.device(info.device)
    ask = config.ask
    return {
        "device": info.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "dtype": info.dtype,
        "model": info.name,
        "model_type": info.model_type,
        "random_weights": is_random(info.name),
        "load_s": qa.load_s,
        "videos": [str(v) for v in videos],
        "question": config.question,
        "frames": {"frames": ask.frames, "fps": ask.fps, "max_frames": ask.max_frames, "decoder": ask.decoder,
                   "seek": ask.seek},
        "tokens": list(config.tokens),
        "max_new_tokens": ask.max_new_tokens,
        "repeat": config.repeat,
        "warmup": config.warmup,
        "options": dict(config.options),
        "versions": {
            "vidq": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda,
        },
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "prefill_tflops_formula": "(2 * N_llm_non_embedding * L + 4 * layers * hidden * L^2 / 2) / 1e12, L = prompt tokens",
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run_bench(
    qa: VideoQA,
    videos: Sequence[str | Path],
    config: BenchConfig,
    on_run: Callable[[str, str, float, int, int], None] | None = None,
) -> BenchResult:
    """Run every (method, keep) of ``config`` on every video; ``on_run(video, method, keep, done, total)`` reports
    progress after each row. A row that fails (a video that does not decode, a method that raises) is kept with
    its ``error`` and the run goes on; a video that does not decode is not tried again for its other rows."""
    from .annotate import error_text
    from .pipelines.errors import VideoError

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


STAGE_COLOURS = {
    "decode": "#9e9e9e", "preprocess": "#f2b134", "encode": "#4a90d9", "compress": "#8e5ea2", "prefill": "#e8684a",
}


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


def plot_bench(result: BenchResult, path: str | Path) -> Path:
    """A PNG per video: the median time to first token per method and keep (the bar is that median, split by
    the stages' shares, with a min-max whisker), and the visual tokens; a failed row says so in place of a bar."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    env = result.environment
    videos = list(dict.fromkeys(r.video for r in result.rows))
    height = max(2.6, 0.42 * max(len([r for r in result.rows if r.video == v]) for v in videos) + 1.4)
    fig, axes = plt.subplots(
        len(videos), 2, figsize=(13, height * len(videos) + 0.9), squeeze=False,
        gridspec_kw={"width_ratios": [2.3, 1]},
    )
    # One scale for every video, so that their bars compare.
    longest = max((r.timings["time_to_first_token"].max * 1000 for r in result.measured), default=1.0)
    most = max((r.visual_tokens for r in result.measured), default=1) or 1
    for (ax_time, ax_tokens), video in zip(axes, videos):
        rows = [r for r in result.rows if r.video == video]
        labels = [row_label(r) for r in rows]
        ys = list(range(len(rows)))[::-1]  # first row at the top
        ok = [(y, r) for y, r in zip(ys, rows) if r.error is None]
        for y, r in ok:
            left = 0.0
            for stage, seconds in stage_segments(r):
                ax_time.barh(y, seconds * 1000, left=left, color=STAGE_COLOURS[stage], height=0.7,
                             label=stage if y == ok[0][0] else None)
                left += seconds * 1000
            ttft = r.timings["time_to_first_token"]
            ax_time.errorbar(ttft.median * 1000, y, xerr=[[(ttft.median - ttft.min) * 1000],
                                                          [(ttft.max - ttft.median) * 1000]],
                             color="#222222", capsize=3, linewidth=1)
            text = f"{ttft.median * 1000:,.0f} ms  [{ttft.min * 1000:,.0f}-{ttft.max * 1000:,.0f}]"
            note = agreement_label(r)
            ax_time.text(ttft.max * 1000 + longest * 0.02, y, text + (f"   {note}" if note else ""), va="center",
                         fontsize=8.5, color="#333333" if not note.startswith("differs") else "#b03a2e")
        for y, r in zip(ys, rows):
            if r.error is not None:
                reason = r.error.removeprefix(f"{video}: ")
                ax_time.text(longest * 0.01, y, f"failed: {reason[:100]}", va="center", fontsize=8.5,
                             color="#b03a2e")
        ax_time.set_yticks(ys, labels)
        ax_time.set_xlim(0, longest * 1.6)
        ax_time.set_xlabel("ms to first token: each bar is the median (its label), split in proportion to the "
                           "stage medians; whisker and [ ] = min-max over the repeats")
        ax_time.set_title(Path(video).name, loc="left", fontsize=10)
        ax_time.grid(axis="x", alpha=0.3)
        ax_time.spines[["top", "right"]].set_visible(False)

        tokens = [r.visual_tokens or 0 for r in rows]
        ax_tokens.barh(ys, tokens, color="#5b8c5a", height=0.7)
        for y, r in zip(ys, rows):
            if r.error is not None:
                continue
            share = r.visual_tokens / r.visual_tokens_before if r.visual_tokens_before else 0
            ax_tokens.text(r.visual_tokens + most * 0.02, y, f"{r.visual_tokens:,} ({share:.0%})", va="center",
                           fontsize=8.5)
        ax_tokens.set_yticks(ys, [""] * len(ys))
        ax_tokens.set_xlim(0, most * 1.45)
        ax_tokens.set_xlabel("visual tokens the LLM sees")
        ax_tokens.grid(axis="x", alpha=0.3)
        ax_tokens.spines[["top", "right"]].set_visible(False)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(ncol=len(TTFT_STAGES), fontsize=8, loc="lower right", frameon=False,
                          bbox_to_anchor=(1.0, 1.08))
    frames = next((r.frames for r in result.rows if r.error is None), 0)
    title = (f"vidq bench: {env['model']} on {env['device']} ({env['device_name']}), {env['dtype']}, "
             f"{plural(frames, 'frame')}, medians of {plural(env['repeat'], 'run')}")
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    if env.get("random_weights"):
        fig.text(0.99, 0.995, "RANDOM WEIGHTS: answers are meaningless, timings are real", ha="right", va="top",
                 color="#c0392b", fontsize=10, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
