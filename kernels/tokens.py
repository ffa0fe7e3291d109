"""``--tokens K``: the keep that makes a method emit as close to K tokens as it can, so methods compare at equal counts.

``keep`` is not a token count: at keep 0.1 DivPrune sends ``round(0.1*T*N)`` tokens, VisionZip a multiple of T,
FlashVID and VidCom2 a count that depends on the clip. :func:`fit_tokens` finds, per method and clip, the keep
whose output is nearest K. A method's count does not fall as keep grows (by construction for the count rules; for
FlashVID and VidCom2 in practice), so a bisection over keep finds the step where it crosses K: on the method's own count rule (:meth:`Method.tokens_for`: no compression, exact) when
the count does not depend on the data, otherwise on the clip itself, compressing it once per probe (the cost is
reported in :class:`TokenFit`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .base import Method
from .errors import MethodError
from .types import Compressed, Grid

DATA_PROBES = 24  # compressions at most when the count depends on the data
RULE_PROBES = 60  # evaluations of a count rule (keep resolved to the last bits of a double)


@dataclass
class TokenFit:
    """What :func:`fit_tokens` chose: the method at the keep found, its output, and what the search cost."""

    method: Method  # rebuilt at the chosen keep
    compressed: Compressed
    target: int  # tokens asked of the method
    probes: int  # compressions of the clip made by the search (0 when the count has a rule)
    search_s: float  # seconds spent searching, the final compression included

    @property
    def keep(self) -> float:
        return self.method.keep

    @property
    def tokens(self) -> int:
        return int(self.compressed.tokens.shape[0])


def at_keep(method: Method, keep: float) -> Method:
    """``method`` with another keep, every option unchanged (validated again)."""
    return dataclasses.replace(method, keep=keep)


def search_keep(count: Callable[[float], int], target: int, top: int, probes: int, guess: float,
                resolution: float = 0.0, at_most: bool = False) -> float:
    """The keep in (0, 1] whose ``count(keep)`` (non-decreasing, ``count(1) = top``) is nearest ``target``.

    Bisection for the smallest keep counting at least ``target``, then the closer of it and the largest keep below
    it (a tie goes to the larger count: never fewer tokens than asked when as close). With ``at_most`` the largest
    keep found counting at most ``target`` (``--tokens auto``: a budget that must not be passed), or, when no keep
    probed counts that few, the smallest probed. ``guess`` is probed first; the search stops after ``probes`` calls
    or once the bracket is narrower than ``resolution``.
    """
    if target >= top:
        return 1.0
    lo, hi, hi_count = 0.0, 1.0, top  # count(lo) < target (lo = 0 stands for "below every keep") <= count(hi)
    lo_count: int | None = None
    probe = min(max(guess, 1e-9), 1.0)
    for _ in range(probes):
        if hi - lo < resolution:
            break
        if not lo < probe < hi:
            probe = (lo + hi) / 2
            if not lo < probe < hi:
                break
        got = count(probe)
        if got == target:
            return probe
        if got > target:
            hi, hi_count = probe, got
        else:
            lo, lo_count = probe, got
        probe = (lo + hi) / 2
    if at_most and lo_count is not None:
        return lo
    if lo_count is None or hi_count - target <= target - lo_count:
        return hi
    return lo


def fit_tokens(
    method: Method,
    tokens: int,
    feats: Tensor,
    grid: Grid,
    importance: Tensor | None = None,
    metric: Tensor | None = None,
    at_most: bool = False,
    **inputs: Any,
) -> TokenFit:
    """Compress ``feats [T, N, D]`` with ``method`` at the keep whose output is nearest ``tokens`` tokens (with
    ``at_most``: the most tokens not past ``tokens`` that the search finds, see :func:`search_keep`).

    Methods that ignore keep run as they are. A count rule (``method.tokens_for``) is searched without touching
    the data; otherwise each probe compresses the clip (at most ``DATA_PROBES`` times). ``inputs`` go to every
    call of the method as they are (e.g. the question, for a method that reads it). Raises
    :class:`MethodError` when ``tokens < 1`` or the method prunes inside the LLM (no one count to hold it to).
    """
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise MethodError(f"the token count must be an integer >= 1, got {tokens!r}")
    if method.llm_prune() is not None:
        raise MethodError(f"--tokens does not apply to {method.name!r} with its in-LLM stage: each decoder layer sees a "
                          "different number of visual tokens; use --keep")
    started = time.perf_counter()
    top = grid.T * grid.N
    if method.ignores_keep:
        out = method(feats, grid, importance, metric, **inputs)
        return TokenFit(method, out, tokens, 0, time.perf_counter() - started)
    guess = min(tokens / top, 0.5)
    if at_keep(method, guess).tokens_for(grid) is not None:  # below keep 1, where every count is T*N
        keep = search_keep(lambda k: at_keep(method, k).tokens_for(grid), tokens, top, RULE_PROBES, guess,
                           at_most=at_most)
        chosen = at_keep(method, keep)
        out = chosen(feats, grid, importance, metric, **inputs)
        return TokenFit(chosen, out, tokens, 0, time.perf_counter() - started)

    seen: dict[float, Compressed] = {}

    def count(keep: float) -> int:
        seen[keep] = at_keep(method, keep)(feats, grid, importance, metric, **inputs)
        return int(seen[keep].tokens.shape[0])

    # No count rule moves by a token for a keep step under 1/(4*T*N) (every budget is ~keep*N or ~keep*T*N).
    keep = search_keep(count, tokens, top, DATA_PROBES, guess, resolution=0.25 / top, at_most=at_most)
    chosen = at_keep(method, keep)
    compressed = seen[keep] if keep in seen else chosen(feats, grid, importance, metric, **inputs)
    return TokenFit(chosen, compressed, tokens, len(seen), time.perf_counter() - started)
