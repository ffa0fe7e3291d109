"""The compression contract every method implements (see DESIGN.md, "Contracts").

A method is a frozen dataclass: its fields are its options, validated once on construction. It takes the
visual tokens of a clip ``feats [T, N, D]`` on a ``(T, H, W)`` grid (N = H * W, raster order), optional
``importance [T, N]`` (attention each token receives in one vision layer) and optional ``metric [T, N, Dk]``
(that layer's keys averaged over heads, for VisionZip), and returns a :class:`Compressed`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from flashvid_cli.errors import VidqError  # absolute: the leaf module every layer's user errors derive from

if TYPE_CHECKING:
    from .fastv import LLMPrune


class MethodError(VidqError, ValueError):
    """A bad method name, option or input; the message is meant for the user (a :class:`VidqError`)."""


@dataclass(frozen=True)
class Grid:
    """Token grid of a clip: T frames (temporal groups for Qwen2.5-VL) of H x W tokens."""

    T: int
    H: int
    W: int

    @property
    def N(self) -> int:
        return self.H * self.W

    def positions(self, index: Tensor) -> Tensor:
        """Global indices ``t*N + h*W + w`` [K] -> positions (t, h, w) [K, 3]."""
        t, n = index // self.N, index % self.N
        return torch.stack([t, n // self.W, n % self.W], dim=-1)


@dataclass
class Compressed:
    """What a method returns.

    ``tokens [K, D]`` in the input dtype, ordered by ``index`` (temporal-then-raster) unless a reference mode
    says otherwise. ``index [K]`` is each token's representative global index ``t*N + n``; the token takes that
    token's position. Token k was made from ``sources[offsets[k]:offsets[k+1]]`` (representative first): one
    index for a kept token, a group for a merged one.

    ``weights [M]`` (float32, optional) state the merge: ``tokens[k] = sum_j weights[j] * feats[sources[j]]`` over
    token k's group, exactly the arithmetic the method did up to rounding. Methods that merge fill it; None means
    every token stands for its representative (kept tokens, or a method that does not state its merge).
    :meth:`carry` applies the same merge to other per-token features (Qwen3-VL's DeepStack features).
    """

    tokens: Tensor  # [K, D]
    index: Tensor  # [K] long
    sources: Tensor  # [M] long
    offsets: Tensor  # [K+1] long
    grid: Grid
    stats: dict[str, Any] = field(default_factory=dict)
    weights: Tensor | None = None  # [M] float32

    def carry(self, x: Tensor) -> Tensor:
        """Per-token features ``x [T, N, D']`` (or ``[T*N, D']``) -> ``[K, D']`` that follow this compression.

        With ``weights``: each output row is the same weighted merge of its sources' rows as the method made of
        the main features (accumulated in float32, returned in ``x.dtype``; a kept token, weight 1 alone in its
        group, gets its own row exactly). Without: each output row is its representative's row.
        """
        flat = x.reshape(-1, x.shape[-1])
        if self.weights is None:
            return flat[self.index.to(flat.device)]
        sizes = torch.diff(self.offsets).to(flat.device)
        owner = torch.repeat_interleave(torch.arange(sizes.numel(), device=flat.device), sizes)  # [M]
        rows = flat[self.sources.to(flat.device)].float() * self.weights.to(flat.device)[:, None]
        out = torch.zeros(sizes.numel(), flat.shape[-1], dtype=torch.float32, device=flat.device)
        return out.index_add_(0, owner, rows).to(x.dtype)

    @property
    def positions(self) -> Tensor:
        """(t, h, w) of each output token's representative, [K, 3]."""
        return self.grid.positions(self.index)

    def groups(self) -> list[Tensor]:
        """Source indices of each output token (a Python list; for tests and reports, not hot paths)."""
        return list(torch.split(self.sources, torch.diff(self.offsets).tolist()))

    @staticmethod
    def kept(feats: Tensor, index: Tensor, grid: Grid, stats: dict[str, Any] | None = None) -> Compressed:
        """Output made of tokens kept as they are: ``feats [T, N, D]`` gathered at global ``index [K]``."""
        index = index.to(torch.long)
        tokens = feats.reshape(-1, feats.shape[-1])[index]
        offsets = torch.arange(index.numel() + 1, device=index.device)
        return Compressed(tokens, index, index.clone(), offsets, grid, dict(stats or {}))


def per_frame_counts(index: Tensor, grid: Grid) -> list[int]:
    """How many output tokens each frame holds (by representative)."""
    return torch.bincount(index // grid.N, minlength=grid.T).tolist()


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op CPU threads (None: leave as is), restoring the setting afterwards.

    Compression is ~1000 small ops (a few hundred KB each). With OpenMP threads every op pays a team wake-up, and
    ``index_add_``'s parallel path is far slower still: on a 2-core machine the first FlashVID call at 32x196x896
    took 0.6-2.6 s with 2 threads and 0.14-0.25 s with one (later calls 0.6-3.8 s vs 0.11-0.18 s when the
    cores are shared). ``vidq ask`` makes one call per process, so that first call is what users wait for.
    """
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Method:
    """Base of every compression method: validates the ratio and the inputs once, runs ``compress`` in float32.

    Subclasses set ``name`` (the registry key), ``needs`` (which optional inputs they read: "importance", "metric",
    "question"), ``recipes`` (per-``model_type`` option defaults) and implement :meth:`compress`. What a method is,
    callers read from these class attributes and never from its name: ``ignores_keep`` (its output does not depend
    on ``keep``, so bench and eval run it once, at keep 1), ``baseline`` (it sends every token unchanged: the
    reference that answers are compared with), ``granularity`` (which visual-token counts it can hit, for
    ``--tokens``) and :meth:`tokens_for` (its count when that does not depend on the data). A method with
    "question" in ``needs`` depends on the question (its tokens cannot be shared between questions). A method
    that can prune inside the LLM sets ``prunes_in_llm`` and returns its stage from :meth:`llm_prune`.
    ``option_notes`` says, per option, how its default is resolved when that is not plain (``vidq methods`` shows
    it next to the default: what it follows, or for a None resolved only at run time, what it becomes).
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    recipes: ClassVar[dict[str, dict[str, Any]]] = {}
    ignores_keep: ClassVar[bool] = False
    baseline: ClassVar[bool] = False
    granularity: ClassVar[str] = "data dependent (searched per clip)"
    prunes_in_llm: ClassVar[bool] = False  # True: may have an in-LLM stage (see llm_prune); the stage needs the question
    option_notes: ClassVar[dict[str, str]] = {}

    keep: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.keep, (int, float)) or not (0.0 < float(self.keep) <= 1.0):
            raise MethodError(f"keep must be in (0, 1], got {self.keep!r}")

    def __call__(
        self,
        feats: Tensor,
        grid: Grid,
        importance: Tensor | None = None,
        metric: Tensor | None = None,
        question: Tensor | None = None,
    ) -> Compressed:
        """Compress ``feats [T, N, D]``; see the module docstring for the optional inputs.

        ``question [M, D]``: the question's token embeddings (the LLM's own input embeddings, any float dtype), read
        only by methods with "question" in ``needs`` (passed to :meth:`compress` as the ``question`` keyword).
        """
        if feats.ndim != 3 or feats.shape[:2] != (grid.T, grid.N):
            raise MethodError(f"feats must be [T, N, D] = [{grid.T}, {grid.N}, D], got {tuple(feats.shape)}")
        if "importance" in self.needs:
            if importance is None or importance.shape != (grid.T, grid.N):
                raise MethodError(f"method {self.name!r} needs importance [T, N] = [{grid.T}, {grid.N}]")
            importance = importance.float()
        if "metric" in self.needs:
            if metric is None or metric.shape[:2] != (grid.T, grid.N):
                raise MethodError(f"method {self.name!r} needs a key metric [T, N, Dk]")
            metric = metric.float()
        extra: dict[str, Tensor] = {}
        if "question" in self.needs:
            if question is None or question.ndim != 2 or question.shape[0] < 1:
                raise MethodError(f"method {self.name!r} needs the question's token embeddings [M, D]")
            extra["question"] = question.float()
        if self.keep >= 1.0 and not getattr(self, "reference", False):
            index = torch.arange(grid.T * grid.N, device=feats.device)
            out = Compressed.kept(feats, index, grid)
        else:
            with cpu_threads(1 if feats.device.type == "cpu" else None):
                out = self.compress(feats.float(), grid, importance, metric, **extra)
            out.tokens = out.tokens.to(feats.dtype)
            if out.weights is not None:
                out.weights = out.weights.float()
        out.stats = {
            "tokens_in": grid.T * grid.N,
            "tokens_out": int(out.tokens.shape[0]),
            "per_frame": per_frame_counts(out.index, grid),
            **out.stats,
        }
        return out

    def compress(
        self, feats: Tensor, grid: Grid, importance: Tensor | None, metric: Tensor | None
    ) -> Compressed:  # pragma: no cover - abstract
        """Float32 ``feats [T, N, D]`` -> :class:`Compressed`; called only when there is something to drop."""
        raise NotImplementedError

    def tokens_for(self, grid: Grid) -> int | None:
        """Tokens this method emits on ``grid`` at its ``keep`` when that count does not depend on the data, else
        None (``--tokens`` then searches the keep on the clip itself, see :mod:`.tokens`)."""
        return grid.T * grid.N if self.keep >= 1.0 and not getattr(self, "reference", False) else None

    def llm_prune(self) -> LLMPrune | None:
        """The in-LLM pruning stage this method runs after the vision side, or None (the default)."""
        return None

    @property
    def query_aware(self) -> bool:
        """Whether the output depends on the question: it reads it, or prunes inside the LLM by the last query."""
        return "question" in self.needs or self.llm_prune() is not None

    def options(self) -> dict[str, Any]:
        """The method's options as a plain dict (for reports)."""
        return dataclasses.asdict(self)
