"""The in-LLM pruning stage (FastV; FlashVID's inner stage) on the stock transformers decoder, for every family.

During the prefill, at decoder layer ``K - 1`` the last query's attention over every key is computed from that
layer's own ``q_proj``/``k_proj`` and rotary embedding (one query row, float32 softmax, GQA keys repeated, mean over
heads); before layer ``K`` the chosen visual tokens and all text are kept, each survivor with its position. Layers
``>= K`` run on (and cache) the survivors only. The model keeps its SDPA attention; nothing is vendored.

How, with transformers 5.23 (read from the Qwen2 decoder and the VL text models,
``cache_utils.py``, ``masking_utils.py``): the stage is a set of hooks around the stock ``generate()``/forward.

* Every decoder body (``Qwen2Model``, ``Qwen2_5_VLTextModel``) computes ``position_embeddings = rotary_emb(h,
  position_ids)`` once (cos/sin ``[B, L, d]``, Qwen's M-RoPE sections already merged) and passes the same
  ``position_embeddings``, ``attention_mask`` and ``position_ids`` keywords to each layer. A forward pre-hook
  (``with_kwargs``) on each layer ``>= K`` gathers the survivors' columns of the hidden states, of cos/sin, of
  ``position_ids`` and of a materialised mask (rows and columns). So survivors keep their exact rotary phases:
  LLaVA's 1-D positions and Qwen2.5-VL's ``(t, h, w)`` columns alike, without recomputing any position.
* A forward pre-hook on layer ``K - 1``'s ``self_attn`` reads the normed hidden states and cos/sin it is given and
  applies the attention module's own ``apply_rotary_pos_emb`` (looked up in its module, so each family uses its
  own). It needs no attention weights, so the layer itself runs SDPA as usual.
* ``DynamicCache`` keeps one ``DynamicLayer`` per decoder layer and each grows by concatenation, so layers
  ``>= K`` simply hold fewer entries. Everything ``generate()`` derives from the cache reads layer 0
  (``get_seq_length()`` default), which holds the full prompt: the next token's position (LLaVA: ``L``; Qwen:
  ``L + rope_deltas``) and the mask's key length are those of the unpruned prompt, which is right because the
  survivors kept their positions. A decode step's mask, when one is materialised, has a column per layer-0 key;
  the hook on layers ``>= K`` keeps the survivors' columns and every column after the prompt. With SDPA and no
  padding the mask is None (``is_causal`` for the prefill, no mask for one query), which needs no cutting.
* Qwen3-VL's DeepStack adds visual features to the visual positions after its first layers, in the body's own
  loop (``_deepstack_process(hidden, visual_pos_masks, embeds)``); when that happens after the cut, the stage
  wraps that bound method on the instance for the duration and hands it the survivors' mask and rows.

Prefill is recognised per layer by an empty cache for that layer (or no cache at all, as in ``use_cache=False``
scoring); a prompt is pruned once. Batch size 1 (vidq answers one question at a time).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..kernels import ops
from ..kernels.traits import LLMPrune


@dataclass
class PruneRun:
    """What one stage did: layer ``K``, the visual span, survivors (sequence columns) and visual tokens per layer."""

    layer: int
    depth: int
    visual_len: int
    kept_visual: int
    extra_visual: int = 0  # visual tokens outside the pruned span that every layer sees (LLaVA's newline)
    keep: Tensor | None = None  # [L'] long: the prompt positions layers >= K see, ascending
    scores: Tensor | None = None  # [L] float32: the selection score (the last query's attention at layer K - 1)

    @property
    def visual_by_layer(self) -> list[int]:
        """Visual tokens each decoder layer sees during the prefill (one count per layer)."""
        full = self.visual_len + self.extra_visual
        cut = self.kept_visual + self.extra_visual
        return [full] * self.layer + [cut] * (self.depth - self.layer)


def question_queries(attn: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor, rows: slice) -> Tensor:
    """The rotated queries of ``rows`` of one attention module's input: ``hidden [1, L, C]`` (already normed),
    ``cos, sin [1, L, d]`` -> float32 ``[H, Q, d]``, computed as the module computes them (its ``q_proj``, its
    ``q_norm`` where it has one, its family's ``apply_rotary_pos_emb``)."""
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    d = attn.head_dim
    q = attn.q_proj(hidden[:, rows])
    q = q.view(1, q.shape[1], -1, d)  # [1, Q, H, d]
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
    q = q.transpose(1, 2)
    q, _ = rotate(q, q, cos[:, rows], sin[:, rows])
    return q[0].float()


def last_query_attention(
    attn: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None, at: int | None = None,
    queries: int = 1, heads: str = "mean",
) -> Tensor:
    """Head-averaged attention of one query (the last, or position ``at``) over the keys it sees, float32.

    ``queries > 1``: the mean over the last ``queries`` rows up to that query (each causal), and ``heads="max"``
    reduces over heads by the maximum instead of the mean (Nüwa's Qwen rule).

    ``hidden [1, L, C]`` (the module's input, already normed), ``cos, sin [1, L, d]`` -> ``[L]`` (zero after
    ``at``: causal). Uses the module's own projections (and q/k norms where it has them), ``scaling`` and its
    family's ``apply_rotary_pos_emb``;
    softmax in float32 (ALGORITHMS.md 2.9). ``mask``: the layer's materialised attention mask ``[1, 1, L, L]``
    (bool: True = attend, or additive float), whose row of the query applies; None = every earlier key.
    """
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    B, L, _ = hidden.shape
    end = L if at is None else at + 1  # the query and the keys it sees: [0, end)
    d = attn.head_dim
    Q = max(1, min(queries, end))
    q = question_queries(attn, hidden, cos, sin, slice(end - Q, end))[None]  # [1, H, Q, d] float32
    k = attn.k_proj(hidden[:, :end]).view(B, end, -1, d)  # [B, end, Hkv, d]
    if hasattr(attn, "k_norm"):  # Qwen3: per-head RMSNorm of k (and q) before the rotary embedding
        k = attn.k_norm(k)
    k, _ = rotate(k.transpose(1, 2), k.transpose(1, 2), cos[:, :end], sin[:, :end])  # [B, Hkv, end, d]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: each key head serves a group of query heads
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scaling  # [B, H, Q, end]
    if mask is not None:
        row = mask[:, :, end - Q : end, :end]  # [B, 1, Q, end]
        logits = logits.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else logits + row.float()
    elif Q > 1:  # causal: row i is position end - Q + i
        ahead = torch.arange(end, device=logits.device) > torch.arange(end - Q, end, device=logits.device)[:, None]
        logits = logits.masked_fill(ahead, float("-inf"))
    probs = torch.softmax(logits, dim=-1)[0]  # [H, Q, end]
    per_head = probs[:, 0] if Q == 1 else probs.mean(1)  # [H, end]
    score = per_head.max(0).values if heads == "max" else per_head.mean(0)  # [end]
    return torch.cat([score, score.new_zeros(L - end)])


def _cache_empty(kwargs: dict[str, Any], layer: int) -> bool:
    cache = kwargs.get("past_key_values")
    return cache is None or cache.get_seq_length(layer) == 0


@contextmanager
def prune_in_llm(
    body: nn.Module, stage: LLMPrune, prompt_len: int, visual: Tensor, extra_visual: int = 0,
    scored_at: int | None = None, question: tuple[int, int] | None = None,
) -> Iterator[PruneRun]:
    """While active, prefills of the ``prompt_len``-token prompt through decoder ``body`` prune at ``stage``'s layer.

    ``body``: the decoder (``.layers``; see :attr:`Pipeline.language_model`). ``visual [Lv]``: the prompt positions
    of the prunable visual tokens, ascending (one run, or several blocks); the top ``stage.budget(Lv)`` of them by
    the query's attention (ties to the lower position) and every other position are kept. ``scored_at``: the query whose attention selects
    (None: the last token). Scoring a prompt with answer tokens appended in one forward pass passes the prompt's
    last position, so the selection is the one ``generate()`` makes from the prompt alone, and the appended
    tokens, as text, are all kept. A stage with ``score="question"`` ranks instead by the cosine of each position's
    input embedding (the body's ``inputs_embeds``) with the mean input embedding over ``question`` ([start, stop)
    prompt positions), computed before layer 0. Yields a :class:`PruneRun` that is filled in by the prefill. Raises
    :class:`~flashvid_cli.kernels.MethodError` if the layer does not fit the model.
    """
    layers = body.layers
    depth = len(layers)
    K = stage.layer_for(depth)
    visual = visual.long()
    run = PruneRun(K, depth, int(visual.numel()), stage.budget(int(visual.numel())), extra_visual)

    def select(scores: Tensor) -> None:
        where = visual.to(scores.device)
        top = where[ops.top_indices(scores[where], run.kept_visual)]
        dropped = torch.zeros(prompt_len, dtype=torch.bool, device=scores.device)
        dropped[where] = True
        dropped[top] = False
        keep = (~dropped).nonzero()[:, 0]  # [L'] ascending: text, extra tokens and survivors in prompt order
        run.scores, run.keep = scores, keep

    def score(attn: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if not _cache_empty(kwargs, K - 1) or hidden.shape[1] != prompt_len:
            return
        if hidden.shape[0] != 1:
            raise ValueError("in-LLM pruning runs on one sequence at a time")
        cos, sin = kwargs["position_embeddings"]
        mask = kwargs.get("attention_mask")
        with torch.no_grad():
            select(last_query_attention(attn, hidden, cos, sin, mask if isinstance(mask, Tensor) else None,
                                        scored_at, stage.queries, stage.heads))

    def by_question(module: nn.Module, args: tuple, kwargs: dict) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or embeds.shape[1] != prompt_len or not _cache_empty(kwargs, 0):
            return
        if embeds.shape[0] != 1:
            raise ValueError("in-LLM pruning runs on one sequence at a time")
        start, stop = question
        with torch.no_grad():
            rows = embeds[0].float()  # [L, C]
            select(torch.nn.functional.cosine_similarity(rows, rows[start:stop].mean(0, keepdim=True), dim=-1))

    def cut(index: int):
        def hook(layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            keep = run.keep
            if keep is None:
                return args, kwargs
            keep = keep.to(args[0].device if args else kwargs["hidden_states"].device)
            kwargs = dict(kwargs)
            mask = kwargs.get("attention_mask")
            if _cache_empty(kwargs, index):  # the prefill: gather the survivors
                if args:
                    hidden = args[0]
                    if hidden.shape[1] == prompt_len:
                        args = (hidden.index_select(1, keep), *args[1:])
                elif kwargs["hidden_states"].shape[1] == prompt_len:
                    kwargs["hidden_states"] = kwargs["hidden_states"].index_select(1, keep)
                cos, sin = kwargs["position_embeddings"]
                if cos.shape[-2] == prompt_len:
                    kwargs["position_embeddings"] = (cos.index_select(-2, keep), sin.index_select(-2, keep))
                ids = kwargs.get("position_ids")
                if isinstance(ids, Tensor) and ids.shape[-1] == prompt_len:
                    kwargs["position_ids"] = ids.index_select(-1, keep)
                if isinstance(mask, Tensor) and mask.shape[-1] == prompt_len:
                    kwargs["attention_mask"] = mask.index_select(-2, keep).index_select(-1, keep)
            elif isinstance(mask, Tensor) and mask.shape[-1] > prompt_len:  # a decode step: drop pruned keys
                tail = torch.arange(prompt_len, mask.shape[-1], device=keep.device)
                kwargs["attention_mask"] = mask.index_select(-1, torch.cat([keep, tail]))
            return args, kwargs

        return hook

    if stage.score == "question":
        if question is None:
            raise ValueError("a stage scored by the question needs the question's span in the prompt")
        handles = [body.register_forward_pre_hook(by_question, with_kwargs=True)]
    else:
        handles = [layers[K - 1].self_attn.register_forward_pre_hook(score, with_kwargs=True)]
    handles += [layers[i].register_forward_pre_hook(cut(i), with_kwargs=True) for i in range(K, depth)]
    deepstack = getattr(body, "_deepstack_process", None)  # Qwen3-VL adds visual features after its first layers
    if deepstack is not None:

        def cut_deepstack(hidden: Tensor, mask: Tensor, embeds: Tensor) -> Tensor:
            keep = run.keep
            if keep is not None and mask is not None and mask.shape[-1] == prompt_len != hidden.shape[1]:
                keep = keep.to(mask.device)
                row = (mask[0].long().cumsum(0) - 1)[keep][mask[0, keep]]  # the survivors' rows of ``embeds``
                mask, embeds = mask[:, keep], embeds[row.to(embeds.device)]
            return deepstack(hidden, mask, embeds)

        body._deepstack_process = cut_deepstack  # an instance attribute, removed on exit
    try:
        yield run
    finally:
        for handle in handles:
            handle.remove()
        if deepstack is not None:
            del body._deepstack_process
