"""Importance from one vision layer without eager attention everywhere.

A forward pre-hook on one attention module recomputes ``softmax(q k^T * scale)`` for that layer only, in chunks
of queries so memory stays bounded, and stores the attention each token *receives*: the mean over heads and
queries (the "[CLS] attention" surrogate of FlashVID and the VisionZip video ports; ALGORITHMS.md 1.3). The
module itself still runs with SDPA/flash attention. Maths in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

# Upper bound on one chunk of attention probabilities (elements); 2**26 float32 = 256 MiB.
_CHUNK_ELEMENTS = 2**26


def received_attention(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Mean attention each key receives: q, k [B, heads, L, d] -> [B, L] float32 (mean over heads and queries)."""
    B, H, L, _ = q.shape
    q, k = q.float(), k.float()
    rows = max(1, _CHUNK_ELEMENTS // max(1, H * L))
    total = torch.zeros(B, L, dtype=torch.float32, device=q.device)
    for start in range(0, L, rows):
        logits = torch.matmul(q[:, :, start : start + rows], k.transpose(-1, -2)) * scale  # [B, H, r, L]
        total += torch.softmax(logits, dim=-1).sum(dim=(1, 2))
    return total / (H * L)


@contextmanager
def capture_inputs(module: nn.Module, fn: Callable[[nn.Module, tuple, dict], Any]) -> Iterator[list[Any]]:
    """While active, every call of ``module`` first runs ``fn(module, args, kwargs)``; results are collected."""
    results: list[Any] = []

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        with torch.no_grad():
            results.append(fn(mod, args, kwargs))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield results
    finally:
        handle.remove()


def packed_vision_stats(need: frozenset[str], rotary: Callable[..., tuple[Tensor, Tensor]]
                        ) -> Callable[[nn.Module, tuple, dict], tuple[Tensor | None, Tensor | None]]:
    """A :func:`capture_inputs` hook for a Qwen-VL vision attention block (one fused ``qkv``, tokens packed as
    ``hidden_states [S, C]``, attention segments bounded by ``cu_seqlens``): returns ``(importance [S], metric
    [S, d])`` in the block's token order, each None unless ``need`` asks for it. The importance is the attention
    each token receives within its segment (:func:`received_attention`, after the family's vision ``rotary(q, k,
    cos, sin)``); the metric is the keys before RoPE (content, not place), mean over heads."""

    def stats(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[Tensor | None, Tensor | None]:
        hidden = kwargs.get("hidden_states", args[0] if args else None)  # [S, C]
        S = hidden.shape[0]
        q, k, _ = mod.qkv(hidden).reshape(S, 3, mod.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # [S, heads, d]
        metric = k.float().mean(1) if "metric" in need else None
        importance = None
        if "importance" in need:
            cos, sin = kwargs["position_embeddings"]
            q, k = rotary(q, k, cos, sin)
            bounds = kwargs["cu_seqlens"].tolist()
            importance = torch.cat([
                received_attention(q[a:b].transpose(0, 1)[None], k[a:b].transpose(0, 1)[None], mod.scaling)[0]
                for a, b in zip(bounds[:-1], bounds[1:])
            ])
        return importance, metric

    return stats


def similarity_band(depth: int) -> range:
    """0-based indices of the vision layers whose outputs Nüwa's similarity features average: the tower's last
    third, the LLaVA-1.5 code's hidden states 16..24 of 24 scaled to ``depth`` (ALGORITHMS.md §12.4)."""
    first = min(depth, max(1, round(16 * depth / 24)))  # 1-based
    return range(first - 1, depth)


@contextmanager
def mean_outputs(layers: list[nn.Module]) -> Iterator[list[Tensor]]:
    """While active, the outputs of ``layers`` (a tensor, or a tuple whose first item is one) are summed in float32;
    on exit the yielded list holds their mean over the calls (one tensor, the layers' output shape; each layer is
    expected to run once), or stays empty if none ran."""
    total: list[Tensor] = []
    calls = [0]

    def hook(mod: nn.Module, args: tuple, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        calls[0] += 1
        with torch.no_grad():
            if total:
                total[0] += out.float()
            else:
                total.append(out.float().clone())

    handles = [layer.register_forward_hook(hook) for layer in layers]
    result: list[Tensor] = []
    try:
        yield result
    finally:
        for handle in handles:
            handle.remove()
        if total:
            result.append(total[0] / calls[0])
