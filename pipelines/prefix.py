"""The prompt's KV cache kept between generations: a video prefilled once serves many questions and chat turns.

Two pieces, both family-independent:

* :class:`PromptCache` holds one transformers ``DynamicCache`` and the token ids (and, for M-RoPE families, the
  position ids) whose keys and values it holds. Given the next prompt it keeps the longest prefix the two share,
  cuts the cache back to it (``DynamicCache.crop``: a view, no copy, and ``DynamicLayer.update`` concatenates into
  new tensors, so the kept prefix is never written to), and lets ``generate()`` prefill only the rest. A prefix
  that stops inside the video is not kept (the model's placeholder scatter needs every video token or none).
* :func:`conversation_ids` renders a multi-turn conversation with the model's own chat template and returns its
  ids with each earlier answer as the tokens the model generated (not a re-tokenisation of their text), so a
  conversation's next turn starts with the ids already in the cache.

Keys and values of a prefix computed inside a longer prompt equal those of the prefix alone up to float rounding:
attention is causal, but the matmuls run on other shapes (and so other blockings), so logits after a reused prefix
match a fresh prefill within a tolerance (tests/test_prefix.py states it), not bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .generation import GenerationOptions
from .prompt import chat_prompt, text_ids

if TYPE_CHECKING:
    from .base import Pipeline
    from .generation import Generation

# Stands in for an earlier answer while a conversation is rendered, then is replaced by the answer's token ids.
_ANSWER = "VIDQANSWERSLOT{}"
_QUESTION = "VIDQQUESTIONSLOT{}Q"  # stands in for turn i's question (letters and digits no template treats specially)
_PROBES = ("Which colour is it?", "How many are there?")  # two questions that differ from their first character


def template_order_reason(pipe: Pipeline) -> str | None:
    """None when the chat template puts the video before the question, else why a video prefix cannot be shared.

    Decided by rendering the template with two questions and checking that the video placeholder ends before the
    first character where the two prompts differ; the model's name plays no part.
    """
    a, b = (chat_prompt(pipe.tokenizer, pipe.chat_template, q) for q in _PROBES)
    placeholder = a.find(pipe.video_token)
    if placeholder < 0 or a.count(pipe.video_token) != 1:
        return f"the chat template of {pipe.name!r} does not hold one {pipe.video_token} placeholder"
    differ = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if placeholder + len(pipe.video_token) > differ:
        return "the chat template puts the question before the video, so every question prefills the video again"
    return None


def video_end(pipe: Pipeline, input_ids: Tensor) -> int:
    """One past the last video placeholder of ``input_ids [1, L]`` (LLaVA-OneVision's newline token included)."""
    video_id = pipe.tokenizer.convert_tokens_to_ids(pipe.video_token)
    where = (input_ids[0] == video_id).nonzero()
    return int(where[-1]) + 1 if len(where) else 0


def conversation_ids(pipe: Pipeline, turns: Sequence[tuple[str, Sequence[int]]], question: str,
                     head: Sequence[int]) -> list[int]:
    """Token ids of a conversation about one video, ready for the assistant's next answer.

    ``turns`` are the earlier (question, generated ids) pairs; the video is in the first user message, and
    ``head`` is the first turn's prompt ids up to the video's end, exactly as the family's adapter laid the video
    out (repeated placeholders, or per-frame timestamps and placeholders). The template renders every message
    (so roles, separators and end-of-turn tokens are the model's own); what it renders after its video placeholder
    follows ``head``. Each earlier answer enters as its generated ids without a final end-of-turn token, which the
    template adds. Raises ValueError when the template does not hold one video placeholder or does not render an
    answer where it was put.
    """
    tok = pipe.tokenizer
    said = {_QUESTION.format(i): asked for i, asked in enumerate([*(q for q, _ in turns), question])}  # as text
    messages: list[dict[str, Any]] = []
    for i, _ in enumerate(turns):  # questions go in as stand-ins: their text is tokenized as text, never control
        messages.append(_user(_QUESTION.format(i), video=i == 0))
        messages.append({"role": "assistant", "content": [{"type": "text", "text": _ANSWER.format(i)}]})
    messages.append(_user(_QUESTION.format(len(turns)), video=not turns))
    text = tok.apply_chat_template(messages, chat_template=pipe.chat_template, tokenize=False,
                                   add_generation_prompt=True)
    if text.count(pipe.video_token) != 1:
        raise ValueError(f"the chat template of {pipe.name!r} must hold one {pipe.video_token} placeholder")
    text = text.split(pipe.video_token)[1]  # what precedes the video's end is ``head``, as the adapter laid it out
    stop = {i for i in (tok.eos_token_id, tok.pad_token_id, tok.convert_tokens_to_ids("<|im_end|>")) if i is not None}
    ids: list[int] = list(head)
    for i, (_, answer) in enumerate(turns):
        piece, sep, text = text.partition(_ANSWER.format(i))
        if not sep:
            raise ValueError(f"the chat template of {pipe.name!r} does not render an assistant answer")
        ids += text_ids(tok, piece, said)
        answer = list(answer)
        while answer and answer[-1] in stop:
            answer.pop()
        ids += answer
    return ids + text_ids(tok, text, said)


def _user(question: str, video: bool) -> dict[str, Any]:
    content = [{"type": "text", "text": question}]
    return {"role": "user", "content": ([{"type": "video"}] if video else []) + content}


def extend_inputs(first: dict[str, Any], ids: Sequence[int], end: int) -> dict[str, Any]:
    """The model inputs of a longer prompt ``ids`` that shares ``first``'s tokens up to the video's end ``end``.

    Every token after the video is text, so its positions continue by one per token from the first text position
    after the video in ``first`` (Qwen2.5-VL's ``position_ids [4, 1, L]``, its text-after-video rule included);
    LLaVA-OneVision's 1-D positions are counted by the model. Raises ValueError when ``ids`` do not start with
    ``first``'s tokens up to ``end``.
    """
    input_ids = first["input_ids"]  # [1, L0]
    if list(ids[:end]) != input_ids[0, :end].tolist():
        raise ValueError("the conversation does not start with the first prompt's tokens up to the video's end")
    out = dict(first)
    out["input_ids"] = torch.tensor([list(ids)], dtype=input_ids.dtype, device=input_ids.device)  # [1, L]
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    if (positions := first.get("position_ids")) is not None:
        step = torch.arange(len(ids) - end, dtype=positions.dtype, device=positions.device)
        out["position_ids"] = torch.cat([positions[..., :end], positions[..., end:end + 1] + step], dim=-1)
    return out


class PromptCache:
    """One ``DynamicCache`` and the ids and positions whose keys and values it holds.

    :meth:`generate` keeps the longest prefix the cache shares with the new prompt and prefills only the rest;
    the cache then holds that prompt and the answer (all but the last generated token, which generate() never
    feeds back). Not thread-safe: one generation at a time.
    """

    def __init__(self, pipe: Pipeline):
        from transformers import DynamicCache

        self.pipe = pipe
        self._new = lambda: DynamicCache(config=pipe.model.config)
        self.cache = self._new()
        self.ids: list[int] = []
        self.positions: Tensor | None = None  # [R, 1, len(ids)] for families with explicit positions

    @staticmethod
    def unsupported_reason(pipe: Pipeline) -> str | None:
        """Why the model's cache cannot be cut back to a prefix (sliding-window or non-attention layers), or None."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        layers = DynamicCache(config=pipe.model.config).layers
        if any(type(layer) is not DynamicLayer for layer in layers):
            return "the model's KV cache has layers that cannot be cut back to a prefix (sliding window)"
        return None

    def shared(self, inputs: dict[str, Any], end: int) -> int:
        """How many leading tokens of ``inputs`` the cache holds and may keep: 0, or at least the video's ``end``,
        and never the whole prompt (its last token is fed to get the first answer token's logits)."""
        ids = inputs["input_ids"][0].tolist()
        n = next((i for i, (a, b) in enumerate(zip(self.ids, ids)) if a != b), min(len(self.ids), len(ids)))
        n = min(n, len(ids) - 1)
        positions = inputs.get("position_ids")
        if n and positions is not None and self.positions is not None:
            same = (self.positions[..., :n] == positions[..., :n]).all(dim=0).all(dim=0)  # [n]
            n = int(same.long().cumprod(0).sum())
        return n if n >= end else 0

    def reset(self) -> None:
        self.cache, self.ids, self.positions = self._new(), [], None

    def generate(self, inputs: dict[str, Any], options: GenerationOptions, end: int,
                 on_token: Callable[[int], None] | None = None, question: str | None = None) -> tuple[Generation, int]:
        """generate() on ``inputs`` (as :meth:`Pipeline.inputs` makes them) reusing what the cache shares with them.

        ``end`` is one past the prompt's last video token; ``question`` is handed to generate() (decoding sparsity
        scores by its tokens). Returns the generation and how many prompt tokens came from the cache (0: a full
        prefill). With decoding sparsity the answer is decoded on a compact copy, so the cache then holds the prompt
        alone, and the next prompt prefills the answer's tokens.
        """
        self.pipe._check_inputs(inputs, options.max_new_tokens)  # a prompt refused leaves the cache as it was
        keep = self.shared(inputs, end)
        if keep:
            self.cache.crop(keep - self.cache.get_seq_length())
            inputs = {k: v for k, v in inputs.items() if k != "mm_encoder_outputs"}  # the video is in the cache
        else:
            self.reset()
        self.ids, self.positions = [], None  # until the generation finishes, the cache holds no known ids
        gen = self.pipe.generate(inputs, options, cache=self.cache, on_token=on_token, question=question)
        fed = inputs["input_ids"][0].tolist()
        if options.sparse is None:
            fed += gen.token_ids[:-1]
        if self.cache.get_seq_length() != len(fed):  # never trust a cache whose contents are not known
            self.reset()
            return gen, keep
        self.ids = fed
        if (positions := inputs.get("position_ids")) is not None:
            step = torch.arange(1, len(fed) - positions.shape[-1] + 1, dtype=positions.dtype, device=positions.device)
            self.positions = torch.cat([positions, positions[..., -1:] + step], dim=-1)
        return gen, keep

    def batch_reason(self, prompts: Sequence[dict[str, Any]], options: GenerationOptions, end: int) -> str | None:
        """Why :meth:`generate_batch` cannot answer ``prompts`` together, or None: it needs greedy decoding (a
        sampled answer must not depend on which questions share its batch), no decoding sparsity, positions the model
        counts itself (LLaVA-OneVision; M-RoPE families pass explicit ``position_ids``), and the cache holding every
        prompt's first ``end`` tokens (the video's prefill, left by an earlier question)."""
        if options.temperature > 0:
            return "sampling (temperature > 0) answers one question at a time"
        if options.sparse is not None or any(p.get("position_ids") is not None for p in prompts):
            return "this model or method answers one question at a time"
        if any(self.shared(p, end) < end for p in prompts):
            return "the video's prefill is not in the cache yet"
        return None

    def generate_batch(self, prompts: Sequence[dict[str, Any]], options: GenerationOptions,
                       end: int) -> list[Generation]:
        """Greedy answers to several prompts that share their first ``end`` tokens (one video, several questions)
        from one batched generate(): the cached prefix is repeated per row, each prompt's own tokens (its question)
        are right-aligned after it with padding between, masked out, so every row sees its own positions and
        tokens exactly as alone; only matmul shapes differ, so logits match one-at-a-time answers within float
        rounding (tests/test_batch_answers.py). A row that finishes early is padded until the last one does.

        Every ``prompts[i]`` comes from :meth:`Pipeline.inputs`; :meth:`batch_reason` must be None. Returns one
        :class:`Generation` per prompt, in order, each with the batch's prefill and decode seconds. The cache then
        holds the prefix alone again (batch 1); on any error it is emptied and the error raised.
        """
        from .generation import Generation, _Clock, synchronize

        pipe = self.pipe
        if (reason := self.batch_reason(prompts, options, end)) is not None:
            raise ValueError(reason)
        for prompt in prompts:
            pipe._check_inputs(prompt, options.max_new_tokens)
        head = prompts[0]["input_ids"][:, :end]  # [1, end], held by the cache
        rows = [p["input_ids"][0, end:] for p in prompts]
        width, count = max(len(r) for r in rows), len(rows)
        ids = torch.full((count, end + width), pipe.tokenizer.pad_token_id, dtype=head.dtype, device=head.device)
        mask = torch.zeros_like(ids)
        ids[:, :end], mask[:, :end] = head, 1
        for i, row in enumerate(rows):  # padding between the video and the question, masked out
            ids[i, end + width - len(row):], mask[i, end + width - len(row):] = row, 1
        self.cache.crop(end - self.cache.get_seq_length())
        held = list(self.ids[:end])
        self.ids = []  # until the generation finishes, the cache holds no known ids
        try:
            self.cache.batch_repeat_interleave(count)
            clock = _Clock(pipe.device)
            synchronize(pipe.device)
            start = time.perf_counter()
            out = pipe.stock_generate({"input_ids": ids, "attention_mask": mask}, options, options.max_new_tokens,
                                      self.cache, clock)
            synchronize(pipe.device)
            finish = time.perf_counter()
            self.cache.batch_select_indices(torch.tensor([0], device=head.device))
            self.cache.crop(end - self.cache.get_seq_length())
        except BaseException:
            self.reset()
            raise
        self.ids = held
        first = clock.first_token_at or finish
        eos = pipe.model.generation_config.eos_token_id
        stop = set(eos if isinstance(eos, list) else [eos])  # a row padded after its stop; one without ran to the end
        gens = []
        for i, row in enumerate(rows):
            new = out.sequences[i, end + width:].tolist()
            cut = next((k + 1 for k, t in enumerate(new) if t in stop), len(new))  # the stop token stays, as alone
            new = new[:cut]
            logits = [x[i:i + 1].detach() for x in out.logits[:cut]] if options.return_logits else None
            text = pipe.tokenizer.decode(new, skip_special_tokens=True).strip()
            gens.append(Generation(text, new, end + len(row), first - start, finish - first, logits))
        return gens

    def logits(self, inputs: dict[str, Any], count: int = 1, append: Sequence[int] = ()) -> tuple[Tensor, int]:
        """Float32 logits ``[count, vocab]`` at the last ``count`` positions of ``inputs`` followed by ``append``
        (placed as :meth:`Pipeline.append_tokens` places them; position i predicts token i + 1), as
        :meth:`Pipeline.last_logits` computes them but prefilling only what the cache does not share with that
        sequence (for eval's scoring: a question's options share its prompt, a video's questions its prefill).

        Returns ``(logits, reused)``: how many leading tokens came from the cache (0: a full prefill). The cache then
        holds the whole sequence. ``count`` at most ``len(append) + 1``. No in-LLM pruning or decoding sparsity:
        the caller scores those methods by :meth:`Pipeline.last_logits`. Raises ValueError for a bad ``count`` and
        NonFiniteLogitsError for NaN or infinite logits.
        """
        from .generation import raise_if_not_finite

        if not 1 <= count <= len(append) + 1:
            raise ValueError(f"count must be in 1..{len(append) + 1}, got {count}")
        full = self.pipe.append_tokens(inputs, append) if append else inputs
        self.pipe._check_inputs(full)
        total = int(full["input_ids"].shape[1])
        end = video_end(self.pipe, inputs["input_ids"])
        keep = min(self.shared(full, end), total - count)  # the scored positions are always computed
        if keep < end:
            keep = 0
        if keep:
            self.cache.crop(keep - self.cache.get_seq_length())
            step = {"input_ids": full["input_ids"][:, keep:]}
            if (positions := full.get("position_ids")) is not None:
                step["position_ids"] = positions[..., keep:]
        else:
            self.reset()
            step = full
        self.ids, self.positions = [], None  # until the forward finishes, the cache holds no known ids
        with torch.inference_mode():
            out = self.pipe.model(**step, past_key_values=self.cache, use_cache=True, logits_to_keep=count)
        if self.cache.get_seq_length() == total:  # never trust a cache whose contents are not known
            self.ids, self.positions = full["input_ids"][0].tolist(), full.get("position_ids")
        else:
            self.reset()
        result = out.logits[0].float()
        raise_if_not_finite(result, self.pipe.name, self.pipe.dtype)
        return result, keep
