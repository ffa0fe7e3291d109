"""The bench's PNG: per video, time to first token split by stage, and visual tokens (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path

from .render import agreement_label, plural, row_label, stage_segments
from .results import TTFT_STAGES, BenchResult


STAGE_COLOURS = {
    "decode": "#9e9e9e", "preprocess": "#f2b134", "encode": "#4a90d9", "compress": "#8e5ea2", "prefill": "#e8684a",
}


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
