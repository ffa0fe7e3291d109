"""SparseVILA's decoding sparsity (ALGORITHMS.md §13.2-3) on the stock transformers decoder, for every family.

After the question's prefill, every cached visual token is scored per LLM layer by the attention the question's
tokens pay it, ``S_j = 1/(H·L_Q) Σ_h Σ_t softmax(q_t·kᵀ·scale)_j`` (each question token's softmax over every key it
sees, float32; a KV head's group of query heads scores against its keys). The ``sinks`` visual tokens with the largest score summed over
the layers are kept in every layer; each layer also keeps its own top ``budget`` other visual tokens (ties to the
lower position), and every non-visual token (system, question, earlier turns). Those entries are gathered once into
a compact cache ``[system | kept visual | text]`` that every later generated token decodes over; the full cache is
left holding the prompt, so the next question is scored against all of it again (the paper's multi-turn point).
vidq's decisions, where the paper is silent: one kept set per layer for all its heads (the score sums every query
head, so each KV head keeps the same positions), sinks shared by the layers, the first answer token taken from the
prefill (it never reads the compact cache).

How, with transformers 5.23 (``cache_utils.py``, ``masking_utils.py``, ``generation/utils.py``):

* The prefill is the stock ``generate(max_new_tokens=1)``; a forward pre-hook on each layer's ``self_attn`` takes
  the question rows of its (normed) input and its cos/sin and computes their queries with the module's own
  ``q_proj``, ``q_norm`` where it has one and its family's ``apply_rotary_pos_emb``, as the in-LLM pruning stage does
  (:func:`~.llm_prune.last_query_attention`). The keys are read back from the filled cache (rotated already).
* Every position the model derives during decoding comes from the cache: a decode step's position (LLaVA: the cache
  length; Qwen: the length plus ``rope_deltas``) and the mask's query offset from ``get_seq_length()``, the mask's
  key length and offset from ``get_mask_sizes()``. :class:`CompactLayer` answers the first with the full sequence's
  length and the second with the entries it holds, offset by those left out, so the kept keys, which carry their
  rotary phases, are read at their own positions and new tokens take the positions they would have had: nothing
  is re-rotated.
* The rest of the answer is a second stock ``generate()`` on the compact cache with the first token appended, as a
  reused prefix is continued (:mod:`.prefix`). Sampling draws from the same generator in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicLayer

from ..kernels import ops
from ..kernels.traits import DecodeSparsity
from .generation import Generation, GenerationOptions, _Clock, synchronize
from .llm_prune import question_queries

# ``pipe`` below is a :class:`~.base.Pipeline` (typed Any: base.py imports this module, not the other way round).


@dataclass
class SparseRun:
    """What one answer's decoding read: visual tokens in the prompt, the shared sinks, per layer the prompt positions
    kept (ascending, text included) and the seconds spent scoring and building the compact cache."""

    visual_len: int
    sinks: Tensor  # [s] long, prompt positions
    keep: list[Tensor]  # per layer [Lk] long, prompt positions decoding reads, ascending
    visual_kept: list[int]  # per layer, visual entries decoding reads
    build_s: float


class CompactLayer(DynamicLayer):
    """A ``DynamicLayer`` holding some entries of a longer sequence: ``keys``/``values [B, Hkv, Lk, d]`` and
    ``hidden`` entries left out. ``get_seq_length()`` is the full sequence's length (so new tokens take their true
    positions) and ``get_mask_sizes()`` counts the entries held (the keys attention reads), offset by ``hidden``.
    Grows like its base; never cropped (a compact cache serves one answer)."""

    def __init__(self, keys: Tensor, values: Tensor, hidden: int):
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values, self.hidden = keys, values, hidden
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return int(self.keys.shape[-2]) + self.hidden

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # The mask compares key index + offset with the query's position (the full length + its row): offsetting
        # every held key by ``hidden`` puts the new ones at their true positions (causal among several queries)
        # and leaves every kept prompt key before the first query.
        return int(self.keys.shape[-2]) + query_length, self.hidden

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a compact KV cache is not cut back")


def decode_scores(q: Tensor, keys: Tensor, positions: Tensor, scale: float) -> Tensor:
    """§13.2's score: the attention the question pays each key, averaged over heads and question tokens.

    ``q [H, Q, d]`` float32 queries at prompt ``positions [Q]``; ``keys [Hkv, L, d]`` the layer's cached keys
    (H a multiple of Hkv); query t sees keys ``0..positions[t]``. Returns ``[L]`` float32 (sums to 1 over L).
    """
    H, Q, d = q.shape
    Hkv, L, _ = keys.shape
    grouped = q.reshape(Hkv, (H // Hkv) * Q, d)  # a KV head's group of query heads as rows (no key copies)
    logits = torch.matmul(grouped, keys.float().transpose(-1, -2)) * scale  # [Hkv, G*Q, L]
    ahead = torch.arange(L, device=q.device)[None, :] > positions.to(q.device)[:, None]  # [Q, L]
    logits = logits.view(Hkv, H // Hkv, Q, L).masked_fill(ahead, float("-inf"))
    return torch.softmax(logits, dim=-1).sum(dim=(0, 1, 2)) / (H * Q)


def select(scores: Tensor, visual: Tensor, length: int, sparsity: DecodeSparsity) -> tuple[Tensor, list[Tensor]]:
    """The sinks and each layer's kept positions from ``scores [layers, L]`` over a prompt of ``length`` whose
    visual tokens are at ``visual [Lv]``: sinks are the top ``sinks`` visual tokens by the score summed over layers;
    each layer keeps them, its top ``budget`` other visual tokens by its own score (ties to the lower position) and
    every non-visual position. Returns ``(sinks [s], [keep [Lk] ascending] per layer)``; every layer keeps as many."""
    visual = visual.to(scores.device).long()
    n_sinks, n_top = sparsity.budget(int(visual.numel()))
    sinks = visual[ops.top_indices(scores[:, visual].sum(0), n_sinks)]
    text = torch.ones(length, dtype=torch.bool, device=scores.device)
    text[visual] = False
    others = visual[~torch.isin(visual, sinks)]
    keep = []
    for layer in scores:
        kept = text.clone()
        kept[sinks] = True
        kept[others[ops.top_indices(layer[others], n_top)]] = True
        keep.append(kept.nonzero()[:, 0])
    return sinks, keep


def compact_cache(cache: Any, keep: list[Tensor], config: Any) -> Any:
    """A new ``DynamicCache`` whose layer i holds the entries ``keep[i]`` of ``cache``'s layer i (gathered copies:
    ``cache`` is not changed), as :class:`CompactLayer` s."""
    from transformers import DynamicCache

    out = DynamicCache(config=config)
    out.layers = []
    for layer, index in zip(cache.layers, keep):
        index = index.to(layer.keys.device)
        out.layers.append(CompactLayer(layer.keys.index_select(-2, index), layer.values.index_select(-2, index),
                                       int(layer.keys.shape[-2]) - int(index.numel())))
    return out


@contextmanager
def capture_questions(body: nn.Module, rows: tuple[int, int], prompt_len: int) -> Iterator[list[Tensor | None]]:
    """While active, the prefill of a ``prompt_len``-token prompt through decoder ``body`` leaves in the yielded list
    each layer's question queries (:func:`question_queries` of prompt positions ``[start, stop)`` = ``rows``). The
    prefill may start after a cached prefix; the rows must lie in what it computes."""
    layers = body.layers
    out: list[Tensor | None] = [None] * len(layers)

    def capture(index: int) -> Callable[[nn.Module, tuple, dict], None]:
        def hook(attn: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cache = kwargs.get("past_key_values")
            past = cache.get_seq_length(index) if cache is not None else 0
            if out[index] is not None or past + hidden.shape[1] != prompt_len:
                return
            if rows[0] < past:
                raise ValueError("the question must be in the part of the prompt that is prefilled")
            cos, sin = kwargs["position_embeddings"]
            with torch.no_grad():
                out[index] = question_queries(attn, hidden, cos, sin, slice(rows[0] - past, rows[1] - past))

        return hook

    handles = [layer.self_attn.register_forward_pre_hook(capture(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()


def plan(pipe: Any, cache: Any, queries: list[Tensor], rows: tuple[int, int], visual: Tensor,
         sparsity: DecodeSparsity) -> SparseRun:
    """Score (:func:`decode_scores` per layer) and select (:func:`select`) over the filled ``cache`` of the prompt;
    the compact cache itself is built by the caller from the run's ``keep``."""
    started = time.perf_counter()
    layers = pipe.language_model.layers
    length = cache.get_seq_length()
    positions = torch.arange(rows[0], rows[1])
    scores = torch.stack([decode_scores(q, cache.layers[i].keys[0], positions, layers[i].self_attn.scaling)
                          for i, q in enumerate(queries)])  # [layers, L]
    sinks, keep = select(scores, visual, length, sparsity)
    kept = sum(sparsity.budget(int(visual.numel())))  # select keeps as many in every layer
    return SparseRun(int(visual.numel()), sinks, keep, [kept] * len(keep), time.perf_counter() - started)


def _compact(pipe: Any, inputs: dict[str, Any], cache: Any, queries: list[Tensor], rows: tuple[int, int],
             visual: Tensor, sparsity: DecodeSparsity, after: list[int]) -> tuple[SparseRun, Any, dict[str, Any]]:
    """After the prompt's prefill into ``cache``: the run (:func:`plan`; its ``build_s`` includes the gather), the
    compact cache, and the model inputs of the prompt followed by ``after`` without the video (it is cached)."""
    run = plan(pipe, cache, queries, rows, visual, sparsity)
    built = time.perf_counter()
    compact = compact_cache(cache, run.keep, pipe.model.config)
    run.build_s += time.perf_counter() - built
    rest = pipe.append_tokens({k: v for k, v in inputs.items() if k != "mm_encoder_outputs"}, after)
    return run, compact, rest


def question_rows(pipe: Any, input_ids: Tensor, question: str | None, after: int = 0) -> tuple[int, int]:
    """[start, stop) of the question's tokens in ``input_ids [1, L]``: the last place ``question``'s own tokens occur
    at or after ``after`` (a conversation's latest user message), else the pipeline's
    :meth:`~.base.Pipeline.question_span` when it starts at or after ``after``, else ``[after, L)`` (the text a
    prefill after a cached prefix of ``after`` tokens computes: a question tokenised otherwise in context)."""
    ids = input_ids[0].tolist()
    if question:
        asked = pipe.tokenizer(question, add_special_tokens=False)["input_ids"]
        n = len(asked)
        for start in range(len(ids) - n, after - 1, -1) if n else ():
            if ids[start:start + n] == asked:
                return start, start + n
    span = pipe.question_span(input_ids)
    return span if span[0] >= after else (after, len(ids))


def _stops(pipe: Any) -> set[int]:
    eos = pipe.model.generation_config.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])


def generate_sparse(pipe: Any, inputs: dict[str, Any], options: GenerationOptions, cache: Any = None,
                    on_token: Callable[[int], None] | None = None, question: str | None = None) -> Generation:
    """:meth:`Pipeline.generate` with ``options.sparse`` (a :class:`DecodeSparsity`): the prompt's prefill and first
    token as usual, then every later token decoded over the compact cache (module docstring).

    ``cache``: a ``DynamicCache`` holding a prefix of the prompt, or None; it ends holding the whole prompt and
    nothing generated. ``question``: the text of the question whose tokens score (:func:`question_rows`, after any
    cached prefix). Raises PromptTooLongError as generate() does.
    """
    from transformers import DynamicCache

    input_ids = inputs["input_ids"]  # [1, L]
    L = int(input_ids.shape[1])
    pipe._check_inputs(inputs, options.max_new_tokens)
    cache = DynamicCache(config=pipe.model.config) if cache is None else cache
    rows = question_rows(pipe, input_ids, question, cache.get_seq_length())
    visual = pipe.visual_positions(input_ids)
    clock = _Clock(pipe.device, on_token)
    synchronize(pipe.device)
    start = time.perf_counter()
    with capture_questions(pipe.language_model, rows, L) as queries:
        out = pipe.stock_generate(inputs, options, 1, cache, clock)
    ids = out.sequences[0, L:].tolist()
    logits = [x.detach() for x in out.logits] if options.return_logits else None
    run = None
    if options.max_new_tokens > 1 and ids and ids[-1] not in _stops(pipe) and visual.numel():
        if cache.get_seq_length() != L or any(q is None for q in queries):
            raise RuntimeError("decoding sparsity did not see the question's prefill")
        run, compact, rest = _compact(pipe, inputs, cache, queries, rows, visual, options.sparse, ids)
        more = pipe.stock_generate(rest, options, options.max_new_tokens - 1, compact, _Clock(pipe.device, on_token))
        ids += more.sequences[0, L + 1:].tolist()
        if logits is not None:
            logits += [x.detach() for x in more.logits]
    synchronize(pipe.device)
    end = time.perf_counter()
    first = clock.first_token_at or end
    text = pipe.tokenizer.decode(ids, skip_special_tokens=True).strip()
    decoded = [n + pipe.extra_video_tokens for n in run.visual_kept] if run else None  # as visual_by_layer counts
    return Generation(text, ids, L, first - start, end - first, logits, None, decoded, run.build_s if run else None,
                      run)


def sparse_logits(pipe: Any, inputs: dict[str, Any], append: list[int], count: int, sparsity: DecodeSparsity,
                  question: str | None = None) -> Tensor:
    """Float32 logits ``[count, vocab]`` at the last ``count`` positions of the prompt followed by ``append``, as
    :func:`generate_sparse` computes them when it generates ``append`` (teacher forcing; position i predicts token
    i + 1): the prompt's last position from the full prefill, every appended position decoded over the compact
    cache built from the question's attention. ``count`` at most ``len(append) + 1``. Raises ValueError otherwise
    and NonFiniteLogitsError for NaN or infinite logits. For scoring (eval): no generate(), no sampling.
    """
    from transformers import DynamicCache

    from .generation import raise_if_not_finite

    if not 1 <= count <= len(append) + 1:
        raise ValueError(f"count must be in 1..{len(append) + 1}, got {count}")
    input_ids = inputs["input_ids"]
    L = int(input_ids.shape[1])
    pipe._check_inputs(inputs, len(append))
    rows = question_rows(pipe, input_ids, question)
    visual = pipe.visual_positions(input_ids)
    cache = DynamicCache(config=pipe.model.config)
    with torch.inference_mode():
        with capture_questions(pipe.language_model, rows, L) as queries:
            out = pipe.model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = [out.logits[0, -1:].float()]
        if append:
            if not visual.numel():
                raise ValueError("decoding sparsity needs visual tokens in the prompt")
            _, compact, rest = _compact(pipe, inputs, cache, queries, rows, visual, sparsity, append)
            step = {"input_ids": rest["input_ids"][:, L:]}
            if (positions := rest.get("position_ids")) is not None:
                step["position_ids"] = positions[..., L:]
            more = pipe.model(**step, past_key_values=compact, use_cache=True)
            logits.append(more.logits[0].float())
    result = torch.cat(logits)[-count:]
    raise_if_not_finite(result, pipe.name, pipe.dtype)
    return result
