"""Building blocks shared by the compression methods: pure torch, float32, vectorised over frames and tokens.

Each function is written once here from ``shared/ALGORITHMS.md`` and used by several methods: the cosine
distance and max-min diversity greedy (ADTS and DivPrune), DySeg, TSTM trees, DPC-kNN, grouping of sources,
and the attention-map pooling of LLaVA-OneVision. ``maxmin_greedy``, ``tstm_links`` and ``tree_roots`` are the
hot loops: their Triton twins live in ``*_triton.py`` beside this file, and ``dispatch.use_triton`` picks one per
call (CUDA and triton importable, or ``VIDQ_KERNELS``); the torch code here stays the CPU path and the spec.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from . import dispatch
from .types import Compressed, Grid


def normalize(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm: ``[..., D] -> [..., D]`` (division, as the references do; zero rows stay 0)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def cosine_distance(x: Tensor) -> Tensor:
    """``1 - cos`` between every token pair of each batch row: ``[B, N, D] -> [B, N, N]``.

    Computed as normalise, matrix product, ``1.0 - sim`` in float32: DivPrune's global selection on
    ``case_s02`` is only reproducible with exactly this arithmetic (float64 diverges after 218 picks).
    """
    xn = normalize(x)
    return 1.0 - xn @ xn.transpose(-1, -2)


def top_indices(score: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries along the last dim, ties to the lowest index: ``[..., n] -> [..., k]``.

    ``torch.topk`` gives no tie guarantee; a stable descending sort does.
    """
    return torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :k]


def maxmin_greedy(cost: Tensor, k: int, exclude: bool = True) -> Tensor:
    """Max-min diversity greedy per batch row: ``cost [B, N, N] -> picks [B, k]`` in pick order.

    ``cost[b, i, j]`` is how far candidate ``j`` is from a selected ``i`` (DivPrune: ``1 - cos``; ADTS: that times
    ``j``'s attention). First pick: the column whose 2nd smallest entry is largest (the smallest is the ~0 self
    term); then repeatedly the candidate whose minimum cost to the selected set is largest. ``exclude=False``
    reproduces the references, which rely on self-costs being ~0 instead of masking picked tokens (a re-pick is
    then possible in degenerate data). Argmax ties go to the lowest index.
    """
    B, N, _ = cost.shape
    if not 0 < k <= N:
        raise ValueError(f"cannot pick {k} of {N} tokens")
    rows = torch.arange(B, device=cost.device)
    picks = torch.empty(B, k, dtype=torch.long, device=cost.device)
    second = torch.kthvalue(cost, min(2, N), dim=1).values  # [B, N]
    picks[:, 0] = second.argmax(-1)
    score = cost[rows, picks[:, 0]]  # [B, N]
    for step in range(1, k):
        if exclude:
            # -inf survives every later minimum, so one scatter per pick masks it for good.
            score = score.scatter(1, picks[:, step - 1 : step], float("-inf"))
        picks[:, step] = score.argmax(-1)
        score = torch.minimum(score, cost[rows, picks[:, step]])
    return picks


def maxmin_select(
    sim: Tensor, k: int, weight: Tensor | None = None, relevance: Tensor | None = None, exclude: bool = True
) -> Tensor:
    """Max-min greedy on the calibrated cost ``((1 - sim) * weight_j) * relevance_j``: ``sim [B, N, N]`` -> ``[B, k]``.

    ``weight`` and ``relevance`` are per column ``[B, N]`` (optional). The Triton kernel forms the same float32
    cost on the fly from the same ``sim``, so both paths compare identical values and return identical picks.
    """
    if dispatch.use_triton(sim):
        return dispatch.kernel("greedy").maxmin_greedy(sim, k, weight, relevance, exclude)
    cost = 1.0 - sim
    if weight is not None:
        cost = cost * weight[:, None, :]
    if relevance is not None:
        cost = cost * relevance[:, None, :]
    return maxmin_greedy(cost, k, exclude)


def cosine_similarity(x: Tensor) -> Tensor:
    """``cos`` between every token pair of each batch row: ``[B, N, D] -> [B, N, N]`` (``1 - cosine_distance``)."""
    xn = normalize(x)
    return xn @ xn.transpose(-1, -2)


def adts_select(feats: Tensor, attn: Tensor, k: int, event: Tensor | None = None, exclude: bool = True) -> Tensor:
    """FlashVID ADTS, each frame independently: ``feats [T, N, D]``, ``attn [T, N]`` -> picks ``[T, k]`` in pick order.

    v1 (``event=None``) calibrates the distance to candidate ``j`` by its attention; v2 also by its relevance
    ``feats[t, j] . event[t]``, where ``event [T, D]`` is the mean token of each frame's segment. The attention is
    scaled by 1e6 only because the reference does so (it changes float rounding, hence near-ties).
    """
    weight = attn * 1e6  # [T, N]
    # v2's relevance is a raw dot product (may be negative).
    relevance = (feats @ event[:, :, None])[..., 0] if event is not None else None  # [T, N]
    return maxmin_select(cosine_similarity(feats), k, weight, relevance, exclude)


def dyseg(frame_feats: Tensor, threshold: float, min_segments: int, complementary: bool = True) -> list[int]:
    """FlashVID DySeg: ``frame_feats [F, D]`` (mean token per frame) -> segment lengths (sum F, none empty).

    Cut after frame i when ``cos(m[i], m[i+1]) < threshold``; if that gives fewer than ``min_segments`` (clamped to
    F) segments, add cuts at the least similar remaining transitions (ties: earliest). The reference marks
    existing cuts as similarity 1.0 and can re-add one as an empty segment; dropping it gives the same output.
    """
    n_frames = frame_feats.shape[0]
    if n_frames <= 1:
        return [n_frames] if n_frames else []
    sim = F.cosine_similarity(frame_feats[:-1], frame_feats[1:], dim=-1)  # [F-1]
    cut = sim < threshold
    need = min(min_segments, n_frames) - int(cut.sum()) - 1
    if complementary and need > 0:
        extra = torch.sort(sim.masked_fill(cut, 1.0), stable=True).indices[:need]
        cut[extra] = True
    ends = torch.cat([cut.nonzero()[:, 0], torch.tensor([n_frames - 1], device=cut.device)])
    return torch.diff(ends, prepend=ends.new_tensor([-1])).tolist()


def tstm_links(feats: Tensor, cand: Tensor, tau: float, lower: int) -> tuple[Tensor, Tensor, Tensor]:
    """TSTM edges of one segment: ``feats [T, N, D]``, ``cand [T, N]`` -> ``link, parent, max_sim`` (each ``[T, N]``).

    A candidate links to its most similar candidate of the previous frame (argmax, lowest index on ties) when the
    cosine is strictly above ``tau``. If fewer than ``lower`` tokens would stay unlinked, the threshold rises to
    the similarity that links exactly ``T*N - lower`` tokens (never below -1 + 1e-6), as the reference does.
    """
    T, N, _ = feats.shape
    xn = normalize(feats)
    sim = xn[1:] @ xn[:-1].transpose(-1, -2)  # [T-1, N, N]: token n of frame f vs token m of frame f-1
    if dispatch.use_triton(sim):
        best, parent = dispatch.kernel("tstm").best_parent(sim, cand)
    else:
        sim = sim.masked_fill(~(cand[1:, :, None] & cand[:-1, None, :]), -1.0)
        best, parent = sim.max(-1)  # [T-1, N]; empty when T == 1
    max_sim = torch.cat([best.new_full((1, N), -1.0), best])
    parent = torch.cat([parent.new_zeros(1, N), parent])
    link = max_sim > tau
    if int((~link).sum()) < lower:
        k = T * N - lower
        thr = max(float(max_sim.flatten().topk(k).values[-1]), -1.0 + 1e-6) if k > 0 else math.inf
        link = max_sim > thr
    return link, parent, max_sim


def tree_roots(link: Tensor, parent: Tensor) -> Tensor:
    """Root of each token's tree: ``link, parent [T, N]`` -> the root's flat index ``t*N + n``, ``[T, N]``."""
    if dispatch.use_triton(link, parent):
        return dispatch.kernel("tstm").tree_roots(link, parent)
    T, N = link.shape
    own = torch.arange(T * N, device=link.device).view(T, N)
    root = own.clone()
    for t in range(1, T):  # a tree grows forward in time, so each frame needs the previous frame's roots
        root[t] = torch.where(link[t], root[t - 1][parent[t]], own[t])
    return root


def tree_merge(
    feats: Tensor, root: Tensor, keep: Tensor, link: Tensor, parent: Tensor, true_mean: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Merge each tree whose root is in ``keep [T, N]`` into one token.

    ``feats [T, N, D]``, ``root [T, N]`` from :func:`tree_roots` -> ``values [R, D]``, ``roots [R]`` (flat, ascending),
    ``sources [M]`` and ``sizes [R]`` (CSR members of each tree, root first then ascending). ``true_mean`` divides
    the tree sum by its size; otherwise by 1 + the root's direct children, the reference's divisor.
    """
    T, N, D = feats.shape
    flat_root = root.flatten()
    size = torch.bincount(flat_root, minlength=T * N)
    roots = keep.flatten().nonzero()[:, 0]
    if true_mean:
        divisor = size[roots]
    else:
        child_of = ((torch.arange(T, device=feats.device)[:, None] - 1) * N + parent)[link]
        divisor = 1 + torch.bincount(child_of, minlength=T * N)[roots]
    # Members sorted by root (stable, so ascending inside a tree); a root is its tree's earliest, smallest index.
    order = torch.argsort(flat_root, stable=True)
    sources = order[keep.flatten()[flat_root[order]]]
    if dispatch.use_triton(feats):
        values = dispatch.kernel("segment").segment_mean(feats.reshape(-1, D), sources, size[roots], divisor)
        return values.to(feats.dtype), roots, sources, size[roots]
    sums = torch.zeros(T * N, D, dtype=feats.dtype, device=feats.device).index_add_(0, flat_root, feats.reshape(-1, D))
    values = sums[roots] / divisor[:, None].to(feats.dtype)
    return values, roots, sources, size[roots]


def dpc_knn(x: Tensor, num_clusters: int, k: int) -> tuple[Tensor, Tensor, bool]:
    """DPC-kNN clustering: ``x [n, D]`` -> ``centres [C]`` (score order = cluster id), ``assign [n]``, ``tied``.

    Density ``exp(-mean of the k smallest squared distances)`` (self included) with distances ``cdist / sqrt(D)``;
    ``delta`` = distance to the nearest denser token; centres = top ``delta * density``. Deterministic where the
    reference adds random noise: equal densities count the lower index as denser, score ties go to the lower
    index. ``tied`` says that an exact density tie occurred (the reference would have decided it by chance).
    """
    n, D = x.shape
    dist = torch.cdist(x, x) / math.sqrt(D)  # [n, n]
    nearest = dist.topk(min(k, n), dim=-1, largest=False).values
    density = (-(nearest**2).mean(-1)).exp()  # [n]
    idx = torch.arange(n, device=x.device)
    other, this = density[None, :], density[:, None]
    denser = (other > this) | ((other == this) & (idx[None, :] < idx[:, None]))  # [n, n]: j denser than i
    delta = torch.where(denser, dist, dist.max()).min(-1).values
    centres = top_indices(delta * density, num_clusters)
    assign = dist[:, centres].argmin(-1)
    assign[centres] = torch.arange(num_clusters, device=x.device)
    tied = bool(torch.unique(density).numel() < n)
    return centres, assign, tied


def group_mean(x: Tensor, labels: Tensor, num_groups: int) -> Tensor:
    """Mean of the rows of ``x [n, D]`` per label ``[n]`` (labels in ``[0, num_groups)``) -> ``[num_groups, D]``."""
    if dispatch.use_triton(x, labels):
        counts = torch.bincount(labels, minlength=num_groups)
        members = torch.argsort(labels, stable=True)
        return dispatch.kernel("segment").segment_mean(x, members, counts, counts.clamp_min(1)).to(x.dtype)
    sums = torch.zeros(num_groups, x.shape[-1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=num_groups).clamp_min(1)
    return sums / counts[:, None].to(x.dtype)


def regroup(sources: Tensor, sizes: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
    """CSR groups ``sources [M]``, ``sizes [K]`` taken in ``order [K']`` (a permutation or a subset) -> new pair."""
    starts = torch.cumsum(sizes, 0) - sizes
    new_sizes = sizes[order]
    new_starts = torch.cumsum(new_sizes, 0) - new_sizes
    # Position of every output entry inside its group, shifted to where that group starts in ``sources``.
    within = torch.arange(int(new_sizes.sum()), device=sources.device) - torch.repeat_interleave(new_starts, new_sizes)
    return sources[torch.repeat_interleave(starts[order], new_sizes) + within], new_sizes


def assemble(
    tokens: Tensor,
    index: Tensor,
    sources: Tensor,
    sizes: Tensor,
    grid: Grid,
    stats: dict[str, Any] | None = None,
    order: Tensor | None = None,
    weights: Tensor | None = None,
) -> Compressed:
    """Build a :class:`Compressed` from unsorted parts, ordered by ``index`` (stable) unless ``order [K]`` is given.

    ``weights [M]`` (optional) are each source's weight in its token, aligned with ``sources``; they are regrouped
    with them.
    """
    if order is None:
        order = torch.argsort(index, stable=True)
    if weights is not None:
        weights = regroup(weights, sizes, order)[0]
    sources, sizes = regroup(sources, sizes, order)
    offsets = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
    return Compressed(tokens[order], index[order], sources, offsets, grid, dict(stats or {}), weights)


def pool_attention(attn: Tensor, H: int, W: int, mode: Literal["bilinear", "average"]) -> Tensor:
    """Pool a per-frame attention map like LLaVA pools its features: ``[T, H*W] -> [T, h*w]``.

    ``bilinear`` (LLaVA-OneVision): resize to ``ceil(H/2) x ceil(W/2)``, ``align_corners=False``;
    ``average`` (LLaVA-Video): ``avg_pool2d(2)`` to ``floor(H/2) x floor(W/2)``. No renormalisation: only
    relative values within a frame matter.
    """
    maps = attn.reshape(-1, 1, H, W)
    if mode == "bilinear":
        out = F.interpolate(maps, size=(math.ceil(H / 2), math.ceil(W / 2)), mode="bilinear", align_corners=False)
    elif mode == "average":
        out = F.avg_pool2d(maps, kernel_size=2, stride=2)
    else:
        raise ValueError(f"unknown pooling mode {mode!r}")
    return out.flatten(1)
