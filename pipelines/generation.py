"""One timed generation: its options, its result, and the helpers generate() runs with (a device-synchronised
clock on the first token, a check that the first logits are finite).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessor

from .errors import NonFiniteLogitsError


@dataclass
class GenerationOptions:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    return_logits: bool = False
    sparse: Any = None  # a DecodeSparsity (kernels/traits.py): decode over a compact cache (SparseVILA)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_s: float  # time to first token: the prefill forward and the first sampled token
    decode_s: float  # every later token
    logits: list[Tensor] | None = None  # per step [1, vocab], only with return_logits
    visual_by_layer: list[int] | None = None  # with an in-LLM stage: visual tokens each decoder layer saw
    # with decoding sparsity: visual KV entries each decoder layer decoded over, and the seconds spent scoring the
    # cached visual tokens and building the compact cache (None when no token was decoded after the first)
    decode_visual_by_layer: list[int] | None = None
    decode_build_s: float | None = None
    sparse_run: Any = None  # with decoding sparsity: the SparseRun (pipelines/sparse_decode.py), its kept sets


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a perf_counter reading after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """A generate() streamer that timestamps the first generated token (device-synchronised) and hands each
    generated token id to ``on_token`` (for streaming) when given."""

    def __init__(self, device: torch.device, on_token: Any = None):
        self.device = device
        self.calls = 0
        self.first_token_at: float | None = None
        self.on_token = on_token

    def put(self, value: Tensor) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            synchronize(self.device)
            self.first_token_at = time.perf_counter()
        if self.calls >= 2 and self.on_token is not None:
            for token in value.reshape(-1).tolist():
                self.on_token(token)

    def end(self) -> None:
        pass


class _FiniteLogits(LogitsProcessor):
    """Checks the first generated position's logits: NaN or +inf (corrupt weights, an overflowing dtype) raise.

    Without it a checkpoint with NaN weights "answers" token 0 max_new_tokens times, decoded as ''. One
    reduction and one device sync per generate() call; -inf alone is allowed (processors mask tokens with it).
    """

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype, self.checked = name, dtype, False

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if not self.checked:
            self.checked = True
            raise_if_not_finite(scores, self.name, self.dtype, allow_masked=True)
        return scores


def raise_if_not_finite(logits: Tensor, name: str, dtype: torch.dtype, allow_masked: bool = False) -> None:
    """NonFiniteLogitsError naming the checkpoint when ``logits`` [..., vocab] hold NaN or +inf (or -inf, unless
    ``allow_masked``; all -inf is always an error)."""
    if allow_masked:
        bad = torch.isnan(logits).any() | torch.isposinf(logits).any() | torch.isneginf(logits).all()
    else:
        bad = ~torch.isfinite(logits).all()
    if bool(bad):
        if dtype == torch.float32:
            cause, fix = "its weights are corrupt", "check its *.safetensors files (download them again)"
        else:
            dtype_name = str(dtype).removeprefix("torch.")
            cause = f"its weights are corrupt or {dtype_name} overflows"
            fix = "try --dtype float32, or check its *.safetensors files (download them again)"
        raise NonFiniteLogitsError(f"{name!r} produced non-finite logits (NaN or infinity): {cause}; {fix}")
