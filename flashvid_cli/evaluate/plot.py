"""The eval's PNG: accuracy against keep (or visual tokens) per method, with Wilson intervals (matplotlib, lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..bench.runs import is_trait
from ..config import ConfigError
from .results import EvalResult, EvalRow


def require_matplotlib() -> None:
    """Fail at once, in one line, when the optional plot extra is missing (before an hour of evaluation)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'vidq[plot]'") from None


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``correct / total`` (95% for z = 1.96), as (low, high) in [0, 1].

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0% or 100% with small n. Source:
    E. B. Wilson, "Probable inference, the law of succession, and statistical inference", JASA 22 (1927);
    recommended over the Wald interval by Brown, Cai & DasGupta, Statistical Science 16 (2001).
    ``total == 0`` gives (0, 1): nothing is known.
    """
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * ((p * (1 - p) / total + z * z / (4 * total * total)) ** 0.5) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def method_offsets(methods: Sequence[str], spread: float = 0.06) -> dict[str, float]:
    """A factor per method that nudges its points along the (log) keep axis, so lines that coincide stay visible:
    the methods spread evenly over ``1 ± spread``, in the order given."""
    count = len(methods)
    if count <= 1:
        return {m: 1.0 for m in methods}
    return {m: (1 + spread) ** (2 * i / (count - 1) - 1) for i, m in enumerate(methods)}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")


def plot_eval(result: EvalResult, path: str | Path) -> Path:
    """A PNG: accuracy against keep (log scale, falling left to right), a line per method with 95% Wilson
    intervals as whiskers (points nudged apart along keep so equal results stay visible, each method its own
    marker and dash), `none` flat with its interval shaded, and chance dotted. With --tokens the x axis is the
    visual tokens the LLM sees (each method at its mean count sent for each count asked)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    env = result.environment
    fig, ax = plt.subplots(figsize=(9, 5))
    by_tokens = bool(env.get("tokens"))

    def x(r: EvalRow) -> float:
        return (r.visual_tokens or r.tokens or 1.0) if by_tokens else r.keep

    keeps = sorted({float(r.tokens) if by_tokens else r.keep for r in result.rows
                    if not is_trait(r.method, "ignores_keep") and (r.tokens or not by_tokens)} or {1.0})
    methods = [m for m in dict.fromkeys(r.method for r in result.rows) if not is_trait(m, "ignores_keep")]
    offsets = method_offsets(methods)
    for r in result.rows:
        if is_trait(r.method, "ignores_keep") and r.accuracy is not None:
            low, high = wilson_interval(r.correct, r.total)
            what = "every token" if is_trait(r.method, "baseline") else f"{r.visual_tokens or 0:,.0f} tokens"
            ax.axhspan(low, high, color="#222222", alpha=0.08, linewidth=0)
            ax.axhline(r.accuracy, color="#222222", linestyle="--", linewidth=1.2,
                       label=f"{r.method} ({what}): {r.accuracy:.1%} [{low:.0%}, {high:.0%}]")
    for i, method in enumerate(methods):
        rows = sorted((r for r in result.rows if r.method == method and r.accuracy is not None), key=x)
        if not rows:
            continue
        bounds = [wilson_interval(r.correct, r.total) for r in rows]
        ax.errorbar(
            [x(r) * offsets[method] for r in rows], [r.accuracy for r in rows],
            yerr=[[r.accuracy - low for r, (low, _) in zip(rows, bounds)],
                  [high - r.accuracy for r, (_, high) in zip(rows, bounds)]],
            marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)], markersize=6,
            markerfacecolor="none" if i % 2 else None, capsize=3, linewidth=1.4, alpha=0.9, label=method,
        )
    ax.axhline(env["chance"], color="#888888", linestyle=":", linewidth=1.2, label=f"chance: {env['chance']:.1%}")
    ax.set_xscale("log")
    ax.set_xticks(keeps, [f"{k:g}" for k in keeps])
    ax.minorticks_off()
    ax.set_xlim(max(keeps) * 1.25, min(keeps) / 1.25)  # reversed: fewer tokens to the right
    ax.set_ylim(-0.02, 1.02)  # a line at 0 or 1 stays visible
    what = ("visual tokens the LLM sees (each method at the keep that comes closest, per clip)" if by_tokens
            else "keep: share of visual tokens the LLM sees")
    ax.set_xlabel(what + "\n(each method's points nudged apart along the axis, so none hides another)")
    ax.set_ylabel("accuracy (whiskers: 95% Wilson interval)")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=9, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    failed = result.failed_questions
    scored = env["questions"] - failed
    ax.set_title(f"vidq eval: {env['model']}\nn = {scored} question{'s' if scored != 1 else ''} "
                 f"({env['scoring']} scoring)" + (f", {failed} failed" if failed else ""), loc="left", fontsize=10)
    if env.get("random_weights"):
        fig.text(0.99, 0.99, "RANDOM WEIGHTS: accuracy is meaningless", ha="right", va="top", color="#c0392b",
                 fontsize=9, fontweight="bold")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
