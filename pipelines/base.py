"""The contract every model adapter implements (:class:`Pipeline`) and the data passed between its stages.

An adapter (one file per HF ``model_type``) writes only what its family does differently: preprocessing, how the
vision tower is run and its importance read, and how compressed tokens enter the prompt. The steps it shares live
beside this module: reading a checkpoint (:mod:`.loading`), the chat prompt (:mod:`.prompt`) and timed generation
(:mod:`.generation`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from transformers import LogitsProcessorList

from ..kernels import Compressed, Grid
from .errors import ModelError, PromptTooLongError
from .generation import Generation, GenerationOptions, _Clock, _FiniteLogits, raise_if_not_finite, synchronize
from .loading import _one_line, check_weights, checkpoint_preprocess, load_tokenizer, read_json, read_text
from .preprocess import FrameResizer, PreprocessConfig
from .prompt import chat_prompt, prompt_ids, question_margins

if TYPE_CHECKING:
    from ..kernels.traits import LLMPrune
    from .llm_prune import PruneRun


@dataclass
class Pixels:
    """Model-ready pixel values and what the adapter needs to read them (e.g. Qwen's grid)."""

    values: Tensor
    frames: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EncodedVideo:
    """Visual tokens of one clip before compression."""

    feats: Tensor  # [T, N, D] in the model dtype (post-projector/pooling or post-merger)
    grid: Grid
    importance: Tensor | None = None  # [T, N] float32, attention received in the hooked vision layer
    metric: Tensor | None = None  # [T, N, Dk] float32, that layer's keys averaged over heads
    # [T, N, Ds] float32: the mean vision hidden state over the tower's last third of layers, pooled (LLaVA) or
    # merged (Qwen) as the features are (Nüwa's similarity features, ALGORITHMS.md §12.4)
    similarity: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """Base of a model family. A family is one file ``pipelines/<model_type>.py`` (found by :mod:`.registry`)
    holding everything vidq knows about it: preprocessing, encoding with importance, the prompt and its positions,
    where the LLM body is, the stand-ins a ``random:`` model needs and the recipe of its tiny test checkpoint.
    Nothing outside that file names the family; callers read the class attributes below instead.
    """

    model_type: ClassVar[str]
    model_class: ClassVar[str]  # name of the transformers class
    video_token: ClassVar[str]
    extra_video_tokens: ClassVar[int] = 0  # tokens the family adds after the video (LLaVA-OneVision's newline)
    # Capability: the rules a family offers for where text after the video resumes (empty: the family has no
    # choice to make) and its default. Callers validate a user's ``--text-after-video`` against these.
    text_after_video_rules: ClassVar[tuple[str, ...]] = ()
    text_after_video: ClassVar[str | None] = None
    # Offline stand-ins of the checkpoint's non-weight files, for ``random:`` models (random_init.py) and the tiny
    # test checkpoints: the tokenizer's special tokens and a chat template reduced to one video and a question.
    special_tokens: ClassVar[tuple[str, ...]] = ()
    stand_in_chat_template: ClassVar[str] = ""

    def __init__(self, model: Any, tokenizer: Any, preprocess: PreprocessConfig, chat_template: str | None,
                 name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess_config = preprocess
        self.chat_template = chat_template
        self.name = name

    # -- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: Path, name: str, config: Any, device: torch.device, dtype: torch.dtype
                        ) -> Pipeline:
        import transformers

        model_cls = getattr(transformers, cls.model_class)
        kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
        if device.type == "cuda":
            kwargs["device_map"] = "auto" if device.index is None else {"": device.index}
        check_weights(path)
        try:
            net = model_cls.from_pretrained(path, config=config, **kwargs).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load {name!r}: {_one_line(exc)}") from None
        tokenizer = load_tokenizer(path, name)
        if device.type != "cuda":
            net.to(device)
        preprocess = checkpoint_preprocess(path, name)
        template = read_text(path, "chat_template.jinja")
        if template is None and (legacy := read_json(path, "chat_template.json")):
            template = legacy.get("chat_template")
        return cls(net, tokenizer, preprocess, template, name)

    # -- the family's offline stand-ins and its tiny checkpoint ---------------------------------------------------
    @classmethod
    def stand_in_preprocessor(cls, config: Any) -> dict[str, Any]:
        """The video preprocessor config the real checkpoints of this family ship (for a ``random:`` model)."""
        raise NotImplementedError

    @classmethod
    def point_special_tokens(cls, raw: dict[str, Any], ids: dict[str, int]) -> None:
        """Set the model config's (``raw``, a config.json dict) family-specific token ids to the stand-in
        tokenizer's ``ids`` (token -> id), in place. The text config's eos/pad ids are set by the caller."""
        raise NotImplementedError

    @classmethod
    def build_tiny(cls, out: Path, seed: int = 0) -> Path:
        """Write a tiny randomly initialised checkpoint of the real class to ``out`` (well under 1 MB, offline,
        a fraction of a second); tests build one per family in a session fixture. Returns ``out``."""
        raise NotImplementedError

    @property
    def language_model(self) -> Any:
        """The LLM's decoder body: ``.layers``, ``.rotary_emb``, ``.norm``, ``.embed_tokens``."""
        return self.model.model.language_model

    def question_embeddings(self, question: str) -> Tensor:
        """The LLM's input embeddings of the question's tokens (no chat template): [M, D] in the model dtype."""
        ids = self.tokenizer(question, add_special_tokens=False)["input_ids"] or [self.tokenizer.pad_token_id]
        with torch.no_grad():
            return self.language_model.embed_tokens(torch.tensor(ids, device=self.device))

    def visual_positions(self, input_ids: Tensor) -> Tensor:
        """Positions [Lv] of the compressed video tokens in ``input_ids [1, L]``, ascending: every video placeholder
        (in one run, or in blocks as Qwen3-VL lays them out), less the ``extra_video_tokens`` the family adds after
        the video (kept by an in-LLM stage, as FlashVID keeps LLaVA's trailing newline)."""
        where = (input_ids[0] == self.tokenizer.convert_tokens_to_ids(self.video_token)).nonzero()[:, 0]
        return where[: max(0, where.numel() - self.extra_video_tokens)]

    def question_span(self, input_ids: Tensor, end: int | None = None) -> tuple[int, int]:
        """[start, stop) of the question's tokens in a prompt ``input_ids [1, L]`` whose prompt ends before ``end``
        (None: L): after the last video placeholder and the template's text before the question, before the
        template's text after it. All text after the video when the template does not fit that layout."""
        ids = input_ids[0]
        end = int(ids.numel()) if end is None else end
        video = (ids[:end] == self.tokenizer.convert_tokens_to_ids(self.video_token)).nonzero()[:, 0]
        after = int(video[-1]) + 1 if video.numel() else 0
        middle, tail = question_margins(self.tokenizer, self.chat_template, self.video_token)
        start, stop = after + middle, end - tail
        return (start, stop) if start < stop else (after, end)

    def llm_pruning(self, inputs: dict[str, Any], stage: LLMPrune | None, scored_at: int | None = None) -> Any:
        """Context in which the model's prefill of ``inputs`` runs ``stage`` (a null context when None); it yields
        the :class:`~.llm_prune.PruneRun` (or None). ``scored_at``: the position whose attention selects (None:
        the last; see :func:`~.llm_prune.prune_in_llm`), also the prompt's end for a stage scored by the question."""
        if stage is None:
            return nullcontext(None)
        from .llm_prune import prune_in_llm

        visual = self.visual_positions(inputs["input_ids"])
        question = None
        if stage.score == "question":
            question = self.question_span(inputs["input_ids"], None if scored_at is None else scored_at + 1)
        return prune_in_llm(self.language_model, stage, int(inputs["input_ids"].shape[1]), visual,
                            self.extra_video_tokens, scored_at, question)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    # -- family steps --------------------------------------------------------------------------------------
    @classmethod
    def input_size(cls, cfg: PreprocessConfig, frames: int, height: int, width: int) -> tuple[int, int]:
        """(height, width) the HF processor resizes ``frames`` frames of (height, width) px to, for ``cfg``."""
        raise NotImplementedError

    @classmethod
    def max_input_pixels(cls, cfg: PreprocessConfig) -> int | None:
        """An upper bound on the pixels of one resized frame (None: no bound below the source size)."""
        return None

    @classmethod
    def visual_tokens(cls, cfg: PreprocessConfig, frames: int, height: int, width: int) -> int:
        """Visual tokens T x N the encoder makes of ``frames`` frames at the input size (height, width), before
        compression and without ``extra_video_tokens``: here Qwen's, frames padded to whole temporal patches and
        patch x merge squares merged into one token."""
        side = cfg.patch_size * cfg.merge_size
        return -(-max(frames, 1) // cfg.temporal_patch_size) * (height // side) * (width // side)

    @classmethod
    def resizer(cls, cfg: PreprocessConfig, device: torch.device) -> FrameResizer:
        """The input size rule of ``cfg`` as a frame resizer for ``video.decode(..., resize=...)``."""
        return FrameResizer(lambda n, h, w: cls.input_size(cfg, n, h, w), cfg.resample, device,
                            cls.max_input_pixels(cfg))

    def frame_resizer(self) -> FrameResizer:
        """This model's frame resizer (its preprocessor config, on its device)."""
        return self.resizer(self.preprocess_config, self.device)

    def preprocess(self, frames: np.ndarray, timestamps: list[float]) -> Pixels:
        """uint8 frames [T, H, W, 3] -> model pixel values, exactly as the HF processor makes them. Frames
        already at :meth:`input_size` (resized while decoding) are not resized again."""
        raise NotImplementedError

    def encode(self, pixels: Pixels, need: frozenset[str] = frozenset()) -> EncodedVideo:
        """Vision tower (+ projector/pooling or merger); ``need`` may ask for "importance", "metric" and
        "similarity"."""
        raise NotImplementedError

    def inputs(self, encoded: EncodedVideo, compressed: Compressed, question: str,
               text_after_video: str | None = None) -> dict[str, Any]:
        """generate() keyword arguments that put exactly the compressed tokens into the prompt.

        ``text_after_video`` picks one of ``text_after_video_rules`` for this call (None: the family default);
        families without rules ignore it. Nothing of the call is kept on the pipeline.
        """
        raise NotImplementedError

    def stock_inputs(self, pixels: Pixels, input_ids: Tensor) -> dict[str, Any]:
        """The stock model's own video keyword arguments for ``input_ids [1, L]`` (the uncompressed prompt of
        :meth:`inputs`): pixel values and whatever the family's ``forward`` needs to place them. The reference
        vidq's uncompressed logits are tested against, bit for bit."""
        raise NotImplementedError

    # -- shared steps ----------------------------------------------------------------------------------------
    def context_limit(self) -> int | None:
        """Most tokens the model takes: the text config's ``max_position_embeddings``, or the tokenizer's
        ``model_max_length`` when that is smaller and set (transformers' "unset" is ~1e30); None when neither."""
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        limit = getattr(text, "max_position_embeddings", None)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 10**8:
            limit = min(limit, tokenizer_limit) if limit else tokenizer_limit
        return int(limit) if limit else None

    def check_prompt_length(self, n_tokens: int, visual: int = 0, new_tokens: int = 0) -> None:
        """Refuse, before prefill, a prompt of ``n_tokens`` (``visual`` of them video) that with ``new_tokens`` to
        generate does not fit :meth:`context_limit`: PromptTooLongError saying the length, the limit and what to
        lower."""
        limit = self.context_limit()
        if limit is None or n_tokens + new_tokens <= limit:
            return
        generated = f" and {new_tokens:,} more to generate" if new_tokens else ""
        if n_tokens <= limit:  # only the answer overflows
            lower = f"lower --max-new-tokens to {limit - n_tokens:,} or fewer" + (
                ", or lower --keep or --frames" if visual else " (and leave room for the video)")
        elif n_tokens - visual + new_tokens < limit:  # fewer visual tokens fix it
            lower = "lower --keep or --frames (or --max-frames)"
        else:
            lower = "shorten the question" + (" or lower --max-new-tokens" if n_tokens - visual < limit else "")
        what = f"({visual:,} of them video)" if visual else "without the video"  # before any video work
        raise PromptTooLongError(
            f"the prompt is {n_tokens:,} tokens {what}{generated}, past the {limit:,}-token "
            f"context of {self.name!r}; {lower}"
        )

    def check_question_length(self, question: str, new_tokens: int = 0) -> None:
        """Before any video work: the prompt without its video tokens must fit (a 80,000-token question is refused
        before decoding, not after encoding)."""
        ids = prompt_ids(self.tokenizer, self.chat_template, self.video_token, question, 0, self.name)
        self.check_prompt_length(len(ids), 0, new_tokens)

    def _check_inputs(self, inputs: dict[str, Any], new_tokens: int = 0) -> None:
        ids = inputs["input_ids"]  # [1, L]
        visual = int((ids == self.tokenizer.convert_tokens_to_ids(self.video_token)).sum())
        self.check_prompt_length(int(ids.shape[1]), visual, new_tokens)

    def prompt_text(self, question: str) -> str:
        """The chat prompt with one video placeholder (expanded to the token count by the adapter)."""
        return chat_prompt(self.tokenizer, self.chat_template, question)

    def expand_prompt(self, question: str, count: int) -> Tensor:
        """Token ids [1, L] of the prompt with the video placeholder repeated ``count`` times."""
        ids = prompt_ids(self.tokenizer, self.chat_template, self.video_token, question, count, self.name)
        return torch.tensor([ids], device=self.device)

    def generate(self, inputs: dict[str, Any], options: GenerationOptions, prune: LLMPrune | None = None,
                 cache: Any = None, on_token: Any = None, question: str | None = None) -> Generation:
        """Run generate(); the streamer marks the first token so prefill and decoding are timed apart.

        ``prune``: an in-LLM pruning stage run during the prefill (:mod:`.llm_prune`). ``cache`` is a transformers
        ``DynamicCache`` already holding the keys and values of the prompt's first tokens (see :mod:`.prefix`): only
        the rest is prefilled, and the cache grows in place (never together with ``prune``, whose prefill must see
        the whole prompt). ``on_token(id)`` is called with each generated token id as it is produced.
        ``options.sparse``: decode over a compact per-layer cache of the visual keys the question attends to
        (:mod:`.sparse_decode`); ``cache`` then ends holding the prompt only, and ``question`` is the text of the
        question whose tokens score the visual keys (None: the prompt's :meth:`question_span`).
        """
        if prune is not None and cache is not None:
            raise ValueError("an in-LLM pruning stage needs the whole prompt's prefill: no reused prefix with it")
        if options.sparse is not None:
            if prune is not None:
                raise ValueError("decoding sparsity and an in-LLM pruning stage do not run together")
            from .sparse_decode import generate_sparse

            return generate_sparse(self, inputs, options, cache, on_token, question)
        clock = _Clock(self.device, on_token)
        prompt_len = int(inputs["input_ids"].shape[1])
        self._check_inputs(inputs, options.max_new_tokens)
        synchronize(self.device)
        start = time.perf_counter()
        with self.llm_pruning(inputs, prune) as run:
            out = self.stock_generate(inputs, options, options.max_new_tokens, cache, clock)
        synchronize(self.device)
        end = time.perf_counter()
        first = clock.first_token_at or end
        new_ids = out.sequences[0, prompt_len:].tolist()
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        logits = [x.detach() for x in out.logits] if options.return_logits else None
        by_layer = _visual_by_layer(run)
        return Generation(text, new_ids, prompt_len, first - start, end - first, logits, by_layer)

    def stock_generate(self, inputs: dict[str, Any], options: GenerationOptions, max_new_tokens: int, cache: Any,
                       streamer: Any) -> Any:
        """One stock ``model.generate()`` call with ``options``' sampling (greedy at temperature 0), at most
        ``max_new_tokens``, the first position's logits checked finite; returns transformers' output object."""
        sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if options.temperature > 0:
            sampling = {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p, "top_k": None}
        return self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            streamer=streamer,
            past_key_values=cache,
            return_dict_in_generate=True,
            output_logits=options.return_logits,
            pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([_FiniteLogits(self.name, self.dtype)]),
            **sampling,
        )

    def append_tokens(self, inputs: dict[str, Any], ids: Sequence[int]) -> dict[str, Any]:
        """``inputs`` with ``ids`` appended after the prompt, placed exactly as generate() would place them.

        ``position_ids`` (Qwen2.5-VL's [4, 1, L]: the sequence index, then M-RoPE t, h, w) grow by
        ``last + 1 + arange`` on every row, as generate() extends them. That is right because every prompt ends in
        text, where t, h and w are equal and advance by one per token. Without ``position_ids`` the model counts
        positions itself (LLaVA-OneVision).
        """
        input_ids = inputs["input_ids"]
        extra = torch.as_tensor(list(ids), dtype=input_ids.dtype, device=input_ids.device).view(1, -1)  # [1, n]
        out = dict(inputs)
        out["input_ids"] = torch.cat([input_ids, extra], dim=1)
        out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
        if (positions := inputs.get("position_ids")) is not None:
            step = torch.arange(1, extra.shape[1] + 1, dtype=positions.dtype, device=positions.device)
            out["position_ids"] = torch.cat([positions, positions[..., -1:] + step], dim=-1)  # [R, 1, L + n]
        return out

    def last_logits(self, inputs: dict[str, Any], count: int = 1, prune: LLMPrune | None = None,
                    scored_at: int | None = None) -> Tensor:
        """Float32 logits [count, vocab] at the last ``count`` positions of one forward pass (no generate, no cache).

        The logits at position i predict token i + 1; only ``count`` rows go through the LM head. ``prune``: an
        in-LLM stage (the last ``count`` positions must be text, which every stage keeps), selecting by the
        attention of position ``scored_at`` (None: the last).
        """
        self._check_inputs(inputs)
        with torch.inference_mode(), self.llm_pruning(inputs, prune, scored_at):
            out = self.model(**inputs, use_cache=False, logits_to_keep=count)
        logits = out.logits[0].float()
        raise_if_not_finite(logits, self.name, self.dtype)
        return logits


def _visual_by_layer(run: PruneRun | None) -> list[int] | None:
    if run is None:
        return None
    if run.keep is None:
        raise RuntimeError("the in-LLM pruning stage never saw the prefill")
    return run.visual_by_layer
