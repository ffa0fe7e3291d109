"""Compare compression methods side by side: every method x keep on every video, one loaded model.

    qa = VideoQA(model)
    result = run_bench(qa, ["clip.mp4"], BenchConfig(methods=("flashvid", "none"), keeps=(0.1, 0.25)))
    result.to_dict()            # {"environment": {...}, "rows": [...]}
    plot_bench(result, "bench.png")

Each row is run ``warmup`` times untimed, then ``repeat`` times; every stage time is reported as the median
with min and max over the repeats. Each repeat is one ``VideoQA.ask``, i.e. the same prepare -> compress -> answer
stages as ``vidq ask``, each time read after a device synchronisation.
``none`` ignores ``keep``, so it is one row per video (keep 1); every other method has one row per keep.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import AskConfig, AskResult, ConfigError, VideoQA

DEFAULT_METHODS = ("flashvid", "divprune", "visionzip", "pool", "none")
DEFAULT_KEEPS = (0.1, 0.25)
DEFAULT_QUESTION = "Describe what happens in the video."
REFERENCE_METHOD = "none"
# The stages that add up to the time to first token, in pipeline order (the plot stacks them).
TTFT_STAGES = ("decode", "preprocess", "encode", "compress", "prefill")
STAGES = (*TTFT_STAGES, "generate", "time_to_first_token", "total")


@dataclass(frozen=True)
class BenchConfig:
    """What to run: methods x keeps, the question, and how often; ``ask`` holds sampling and generation."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    keeps: tuple[float, ...] = DEFAULT_KEEPS
    question: str = DEFAULT_QUESTION
    repeat: int = 3
    warmup: int = 1
    ask: AskConfig = field(default_factory=AskConfig)

    def __post_init__(self) -> None:
        check_runs(self.methods, self.keeps)
        if self.repeat < 1:
            raise ConfigError(f"--repeat must be at least 1, got {self.repeat}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}")
        if not self.question.strip():
            raise ConfigError("the question is empty")

    def runs(self) -> list[tuple[str, float]]:
        return method_runs(self.methods, self.keeps)


def check_runs(methods: Sequence[str], keeps: Sequence[float]) -> None:
    """Methods that exist and keeps in (0, 1], or a one-line ConfigError (shared by bench and eval)."""
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


def method_runs(methods: Sequence[str], keeps: Sequence[float]) -> list[tuple[str, float]]:
    """(method, keep) pairs in the order given; ``none`` ignores keep, so it runs once, at keep 1."""
    pairs: list[tuple[str, float]] = []
    for method in dict.fromkeys(methods):
        method_keeps = (1.0,) if method == REFERENCE_METHOD else tuple(dict.fromkeys(keeps))
        pairs += [(method, keep) for keep in method_keeps]
    return pairs


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
    reference: str  # "none"
    identical_text: bool
    identical_tokens: bool
    first_divergence: Divergence | None


@dataclass
class BenchRow:
    video: str
    method: str
    keep: float
    frames: int
    visual_tokens_before: int
    visual_tokens: int  # what the LLM sees
    prompt_tokens: int
    generated_tokens: int
    timings: dict[str, Stat]  # seconds; keys are STAGES
    peak_memory_bytes: int  # the highest over the repeats
    peak_memory_kind: str
    prefill_tflops: float
    answer: str
    token_ids: list[int]
    agreement: Agreement | None = None  # None when `none` was not run


@dataclass
class BenchResult:
    environment: dict[str, Any]
    rows: list[BenchRow]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LanguageModelSize:
    """What the prefill estimate needs from the LLM: non-embedding parameters, depth and width."""

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
              token_text: Callable[[int], str]) -> Agreement:
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
    return Agreement(REFERENCE_METHOD, text == reference_text, divergence is None, divergence)


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
        "frames": {"frames": ask.frames, "fps": ask.fps, "max_frames": ask.max_frames, "decoder": ask.decoder},
        "max_new_tokens": ask.max_new_tokens,
        "repeat": config.repeat,
        "warmup": config.warmup,
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
    progress after each row."""
    videos = list(dict.fromkeys(str(v) for v in videos))  # a video named twice is benchmarked once
    size = LanguageModelSize.of(qa)
    pairs = config.runs()
    total, done = len(videos) * len(pairs), 0
    rows: list[BenchRow] = []
    for video in videos:
        for method, keep in pairs:
            ask = dataclasses.replace(config.ask, method=method, keep=keep)
            for _ in range(config.warmup):
                qa.ask(video, config.question, ask)
            results = [qa.ask(video, config.question, ask) for _ in range(config.repeat)]
            rows.append(_row(str(video), method, keep, results, size))
            done += 1
            if on_run is not None:
                on_run(str(video), method, keep, done, total)
    for row in rows:
        reference = next((r for r in rows if r.video == row.video and r.method == REFERENCE_METHOD), None)
        if reference is not None:
            row.agreement = agreement(
                row.token_ids, reference.token_ids, row.answer, reference.answer,
                qa.token_text,
            )
    return BenchResult(environment(qa, config, [str(v) for v in videos]), rows)


def _row(video: str, method: str, keep: float, results: list[AskResult], size: LanguageModelSize) -> BenchRow:
    last = results[-1]
    report = last.report
    timings = {stage: Stat.of([getattr(r.report.timings, stage) for r in results]) for stage in STAGES}
    return BenchRow(
        video=video,
        method=method,
        keep=keep,
        frames=len(report.video.frame_indices),
        visual_tokens_before=report.tokens.visual_before,
        visual_tokens=report.tokens.visual_after,
        prompt_tokens=report.tokens.prompt,
        generated_tokens=report.tokens.generated,
        timings=timings,
        peak_memory_bytes=max(r.report.peak_memory_bytes for r in results),
        peak_memory_kind=report.peak_memory_kind,
        prefill_tflops=prefill_flops(size, report.tokens.prompt) / 1e12,
        answer=last.answer,
        token_ids=list(last.token_ids),
    )


STAGE_COLOURS = {
    "decode": "#9e9e9e", "preprocess": "#f2b134", "encode": "#4a90d9", "compress": "#8e5ea2", "prefill": "#e8684a",
}


def row_label(row: BenchRow) -> str:
    return row.method if row.method == REFERENCE_METHOD else f"{row.method} {row.keep:g}"


def agreement_label(row: BenchRow) -> str:
    if row.agreement is None or row.method == REFERENCE_METHOD:
        return ""
    if row.agreement.identical_tokens:
        return "same answer as none"
    return f"differs from none at token {row.agreement.first_divergence.index}"


def plot_bench(result: BenchResult, path: str | Path) -> Path:
    """A PNG per video: time to first token with its stages stacked, and the visual tokens, per method and keep."""
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
    for (ax_time, ax_tokens), video in zip(axes, videos):
        rows = [r for r in result.rows if r.video == video]
        labels = [row_label(r) for r in rows]
        ys = list(range(len(rows)))[::-1]  # first row at the top
        left = [0.0] * len(rows)
        for stage in TTFT_STAGES:
            widths = [r.timings[stage].median * 1000 for r in rows]
            ax_time.barh(ys, widths, left=left, color=STAGE_COLOURS[stage], label=stage, height=0.7)
            left = [a + b for a, b in zip(left, widths)]
        longest = max(left) if left else 1.0
        for y, r, end in zip(ys, rows, left):
            ttft = r.timings["time_to_first_token"]
            text = f"{ttft.median * 1000:,.0f} ms  [{ttft.min * 1000:,.0f}-{ttft.max * 1000:,.0f}]"
            note = agreement_label(r)
            ax_time.text(end + longest * 0.01, y, text + (f"   {note}" if note else ""), va="center", fontsize=8.5,
                         color="#333333" if not note.startswith("differs") else "#b03a2e")
        ax_time.set_yticks(ys, labels)
        ax_time.set_xlim(0, longest * 1.55)
        ax_time.set_xlabel("ms to first token: bars stack the stage medians; "
                           "labels give the median time to first token [min-max over repeats]")
        ax_time.set_title(Path(video).name, loc="left", fontsize=10)
        ax_time.grid(axis="x", alpha=0.3)
        ax_time.spines[["top", "right"]].set_visible(False)

        tokens = [r.visual_tokens for r in rows]
        ax_tokens.barh(ys, tokens, color="#5b8c5a", height=0.7)
        most = max(tokens) if tokens else 1
        for y, r in zip(ys, rows):
            share = r.visual_tokens / r.visual_tokens_before if r.visual_tokens_before else 0
            ax_tokens.text(r.visual_tokens + most * 0.02, y, f"{r.visual_tokens:,} ({share:.0%})", va="center",
                           fontsize=8.5)
        ax_tokens.set_yticks(ys, [""] * len(ys))
        ax_tokens.set_xlim(0, most * 1.45)
        ax_tokens.set_xlabel("visual tokens the LLM sees")
        ax_tokens.grid(axis="x", alpha=0.3)
        ax_tokens.spines[["top", "right"]].set_visible(False)
    axes[0][0].legend(ncol=len(TTFT_STAGES), fontsize=8, loc="lower right", frameon=False,
                      bbox_to_anchor=(1.0, 1.08))
    frames = result.rows[0].frames if result.rows else 0
    title = (f"vidq bench: {env['model']} on {env['device']} ({env['device_name']}), {env['dtype']}, "
             f"{frames} frames, {env['repeat']} repeats")
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    if env.get("random_weights"):
        fig.text(0.99, 0.995, "RANDOM WEIGHTS: answers are meaningless, timings are real", ha="right", va="top",
                 color="#c0392b", fontsize=10, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
