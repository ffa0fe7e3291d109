"""A request planned before any frame is decoded (issue 27 item 2): frames, visual tokens before and after the
method, the prompt against the model's context, and the peak memory of the whole-clip and the streaming paths.

Everything comes from the frame map (``pipelines.video.plan``), the sampling in :class:`AskConfig`, the model
family's resize rule and token count and the checkpoint's config files (``pipelines.preflight.input_rules``): no
weights load and nothing decodes. :func:`choose_path` turns the plan and a memory budget (``--max-memory``) into
"whole clip", "stream" or a one-line refusal naming what to lower. docs/STREAMING.md ("Planning") states the same.

The memory estimate counts what grows with the video, in bytes, with T sampled frames at the model's input size
H x W, N visual tokens a frame, D the feature width (the LLM's hidden size), b the model dtype's bytes, c the
stream chunk (frames), q the chunks a streamed decode runs ahead at most, K the tokens the method keeps::

    frames(t) = t x H x W x 3          (uint8 frames as decoded: all T on the whole-clip path; streamed, the
                                        decode's queue of q chunks, the chunk being filled and the one encoded)
    pixels  = t x 3 x H x W x 4        (float32 pixel values of t frames)
    feats   = t x N x D x b            (uncompressed visual features of t frames)
    vision  = t x P x (Dv x (Lv + 1) + D) x b
                                       (the vision tower's hidden states of t frames, P patches a frame, Dv wide,
                                        every one of its Lv layers and the embeddings, as HF's LLaVA-OneVision
                                        returns them to pick the feature layer, plus the projector's output
                                        before pooling; an upper bound for families that keep fewer)
    kept    = K x D x b
    whole   = frames(T) + pixels(T) + feats(T) + vision(T) + kept
    stream  = frames(min((q + 2) x c, T)) + pixels(min(c, T)) + feats(min(s, T)) + vision(min(c, T)) + kept
              (s: the frames of features the method holds, Method.stream_frames_held: c, or FlashVID's
              stream_window + c - 1, since it compresses a window at a time)

It leaves out what does not grow with the video or is not known before loading: the weights, the interpreter,
what a method reads besides the features (importance ``[T, N]`` float32, a key metric), copies of the frames on
their way from the decode worker (a few at decoded size, and a streamed decode's frames that arrive before their
turn: the last group of pictures'), the LLM's KV cache and activations of the prompt.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import AskConfig, ConfigError

if TYPE_CHECKING:
    from .pipelines.preflight import InputRules

PIXEL_BYTES = 4  # preprocessing hands float32 pixel values to the vision tower


@dataclass(frozen=True)
class Plan:
    """What a request will hold and send, known before decoding. Token counts are per video; bytes are bytes."""

    video: str
    frames: int  # T sampled (an upper bound: frames of a tail that does not decode give fewer)
    height: int  # the model's input size, px
    width: int
    tokens_before: int  # T x N visual tokens the encoder makes (without the family's extra tokens)
    tokens_after: int  # visual tokens the method sends (without the family's extra tokens), as ``after_is`` says
    after_is: str  # "exact", "about" (--tokens: the count the search aims at) or "at least" (keep x T x N, floored)
    extra_tokens: int  # the family's tokens after the video (LLaVA-OneVision's newline)
    new_tokens: int  # --max-new-tokens
    context: int | None  # the model's context (None: not known before loading, e.g. random: models)
    hidden: int | None  # D, the feature width (None: not known)
    dtype_bytes: int  # b
    chunk_frames: int  # c
    frames_bytes: int  # the decoded frames of the whole clip, frames(T)
    whole_bytes: int | None  # None when D is not known
    stream_bytes: int | None
    stream_refusal: str | None  # why this request cannot stream (None: it can)

    @property
    def stream_frames_bytes(self) -> int:
        """The decoded frames a streamed run holds at once, frames(min((q + 2) x c, T))."""
        from .pipelines.video.stream import DEFAULT_MAX_CHUNKS

        return min(self.frames, (DEFAULT_MAX_CHUNKS + 2) * self.chunk_frames) * self.height * self.width * 3

    @property
    def prompt_tokens(self) -> int:
        """Tokens the prompt and the answer take at least: the video's after the method, plus the generated ones
        (the question's text is not counted: the tokenizer is not loaded)."""
        return self.tokens_after + self.extra_tokens + self.new_tokens

    def to_dict(self) -> dict:
        """The plan as plain JSON-able values (``vidq ask --plan --json``)."""
        import dataclasses

        return {**dataclasses.asdict(self), "prompt_tokens": self.prompt_tokens}

    def lines(self) -> list[str]:
        """The plan as short lines for people (``vidq ask --plan``)."""
        from .cache import format_size

        per_frame = self.tokens_before // max(self.frames, 1)
        after = f"{self.tokens_after:,}" if self.after_is == "exact" else f"{self.after_is} {self.tokens_after:,}"
        context = f"{self.context:,}" if self.context is not None else "not known before loading"
        out = [f"video: {self.video}",
               f"frames: {self.frames:,} at {self.width}x{self.height} ({per_frame:,} visual tokens a frame)",
               f"visual tokens: {self.tokens_before:,} before compression, {after} after",
               f"prompt: {self.prompt_tokens:,} tokens at least (video + {self.new_tokens:,} to generate, "
               f"question not counted) against a context of {context}"]
        if self.whole_bytes is None or self.stream_bytes is None:
            out.append("memory: not estimated (the feature width is not known before loading)")
        else:
            stream = (f"{format_size(self.stream_bytes)} streamed ({self.chunk_frames} frames a chunk)"
                      if self.stream_refusal is None else f"cannot stream: {self.stream_refusal}")
            held = "" if self.stream_refusal is not None else f", {format_size(self.stream_frames_bytes)} streamed"
            out.append(f"memory: {format_size(self.whole_bytes)} whole clip, {stream}; of it the decoded frames "
                       f"{format_size(self.frames_bytes)} whole clip{held} (weights not counted)")
        return out


def make_plan(video: str | Path, config: AskConfig, rules: InputRules, dtype_bytes: int = 4,
              chunk_frames: int | None = None) -> Plan:
    """Plan ``video`` under ``config`` for the model of ``rules`` (``input_rules(model)``; its ``hidden`` may be
    None) in a dtype of ``dtype_bytes`` bytes, streamed ``chunk_frames`` frames at a time (the stream default when
    None). Reads the frame map only. Raises VideoError (the file, or a geometry the family refuses), MethodError
    (a bad method or option)."""
    from .kernels import build
    from .pipelines.video.stream import DEFAULT_MAX_CHUNKS
    from .streaming import DEFAULT_CHUNK_FRAMES, refusal

    chunk = DEFAULT_CHUNK_FRAMES if chunk_frames is None else chunk_frames
    T, (height, width), _ = _frame_map(video, config)
    h, w = rules.input_size(os.fspath(video), T, height, width)
    per_unit = rules.adapter.visual_tokens(rules.cfg, 1, h, w)  # N (a temporal group's, for families that group)
    before = rules.adapter.visual_tokens(rules.cfg, T, h, w)
    method = build(config.method, config.keep, model_type=rules.adapter.model_type, options=config.options)
    after, after_is = kept_tokens(method, config, before, rules.adapter.extra_video_tokens)
    frames_bytes = T * h * w * 3
    whole = stream = None
    if rules.hidden is not None:
        feats = lambda t: -(-t * before // max(T, 1)) * rules.hidden * dtype_bytes  # noqa: E731
        kept = after * rules.hidden * dtype_bytes
        c = min(chunk, T)
        vision = lambda t: 0  # noqa: E731 - a tower not read from the config
        if rules.vision is not None:
            patches = (h // rules.cfg.patch_size) * (w // rules.cfg.patch_size)
            width, layers = rules.vision
            vision = lambda t: t * patches * (width * (layers + 1) + rules.hidden) * dtype_bytes  # noqa: E731
        whole = frames_bytes + T * 3 * h * w * PIXEL_BYTES + feats(T) + vision(T) + kept
        held = min((DEFAULT_MAX_CHUNKS + 2) * chunk, T) * h * w * 3  # frames(min((q + 2) x c, T)): decoded in chunks
        kept_back = min(method.stream_frames_held(c), T)  # frames of features a method holds (FlashVID: a window)
        stream = held + c * 3 * h * w * PIXEL_BYTES + feats(kept_back) + vision(c) + kept
    why = refusal(method, config)
    if why is None and per_unit * T != before:
        why = f"model family {rules.adapter.model_type!r} encodes frames together"
    return Plan(os.fspath(video), T, h, w, before, after, after_is, rules.adapter.extra_video_tokens,
                config.max_new_tokens, rules.context, rules.hidden, dtype_bytes, chunk, frames_bytes, whole, stream,
                why)


def kept_tokens(method: object, config: AskConfig, before: int, extra: int = 0) -> tuple[int, str]:
    """(visual tokens ``method`` sends of ``before``, how far that is known): all of them, "exact", for a method
    that ignores keep or at keep 1; ``--tokens`` less the family's ``extra`` tokens (``--tokens`` counts them),
    "about" (the search comes as close as the method can); else keep x before rounded down, "at least" (methods
    round per frame or merge by the data)."""
    if getattr(method, "ignores_keep", False) or getattr(method, "keep", 1.0) >= 1.0:
        return before, "exact"
    if config.tokens is not None:
        return min(before, max(config.tokens - extra, 0)), "about"
    return math.floor(config.keep * before), "at least"


def choose_path(plan: Plan, budget: int | None, stream: bool, available: bool = False) -> tuple[bool, str | None]:
    """(stream or not, a one-line note when the path was chosen for the budget) for ``plan`` under a memory budget
    of ``budget`` bytes (None: no budget; the path asked, ``stream``, is kept); ``available``: the budget is the
    machine's available memory (:func:`choose_path_by_memory`), not ``--max-memory``, and the messages say so.

    The whole clip when its estimate fits (or streaming was not asked and nothing is over the budget); streaming,
    with a note, when only the streamed estimate fits and the request can stream. Raises ConfigError (one line,
    naming what to lower) when it fits neither way, or only streamed and the request cannot stream. Raises
    PromptTooLongError when the prompt alone passes the context, on either path.
    """
    from .cache import format_size
    from .pipelines.errors import PromptTooLongError

    limit = (f"the {format_size(budget)} of memory available" if available else
             f"--max-memory {format_size(budget)}" if budget is not None else "")
    if plan.context is not None and plan.prompt_tokens > plan.context:
        raise PromptTooLongError(
            f"{plan.video}: the video is {plan.tokens_after:,} tokens after compression ({plan.frames:,} frames) and "
            f"{plan.new_tokens:,} more to generate, past the {plan.context:,}-token context on either path; lower "
            "--fps or --max-frames, or --keep / --tokens")
    if budget is None or plan.whole_bytes is None or plan.stream_bytes is None:
        return stream, None
    if not stream and plan.whole_bytes <= budget:
        return False, None
    alone = f" (the decoded frames alone are {format_size(plan.frames_bytes)})" if plan.frames_bytes > budget else ""
    lower = "lower --fps or --max-frames" + alone
    if plan.stream_refusal is not None:
        raise ConfigError(f"{plan.video}: an estimated {format_size(plan.whole_bytes)} whole clip is past "
                          f"{limit} and this request cannot stream ({plan.stream_refusal}); {lower}, "
                          f"or use a method that streams ({', '.join(_streaming_methods())})")
    if plan.stream_bytes > budget:
        raise ConfigError(f"{plan.video}: an estimated {format_size(plan.stream_bytes)} streamed "
                          f"({format_size(plan.whole_bytes)} whole clip) is past {limit}; "
                          f"{lower}")
    if stream:
        return True, None
    return True, (f"streaming: the whole clip's estimated {format_size(plan.whole_bytes)} is past {limit}; "
                  f"streamed it is {format_size(plan.stream_bytes)}")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (psutil's ``available``: Linux's MemAvailable), None
    where that cannot be read."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - unknown: no automatic choice
        return None


def plan_or_none(video: str | Path, config: AskConfig, model: str, device: str = "auto", dtype: str = "auto"
                 ) -> Plan | None:
    """:func:`plan_request`, or None where it raises: for a check nobody asked for (no ``--max-memory``), whose
    errors the run itself then reports as it would have."""
    try:
        return plan_request(video, config, model, device=device, dtype=dtype)
    except Exception:  # noqa: BLE001 - not a plan: the run says what is wrong
        return None


def choose_path_by_memory(plan: Plan, stream: bool) -> tuple[bool, str | None]:
    """:func:`choose_path` with no ``--max-memory``: the machine's available memory (:func:`available_memory`) is the
    budget, so a whole clip whose estimate passes it streams (a note) when the request can, and is refused (one
    line, before decoding) when it cannot; where the memory is unknown, the path asked."""
    budget = available_memory()
    if budget is None or plan.whole_bytes is None or plan.whole_bytes <= budget:
        return stream, None  # (a prompt past the context is left to the run's own check, as without this)
    return choose_path(plan, budget, stream, available=True)


def plan_request(video: str | Path, config: AskConfig, model: str, device: str = "auto", dtype: str = "auto",
                 chunk_frames: int | None = None) -> Plan:
    """:func:`make_plan` for ``model`` read from its config files (no weights), in the dtype ``device`` and
    ``dtype`` resolve to. Raises ModelError when the model's config files cannot be read without loading it (a hub
    model not in the cache), and what :func:`make_plan` raises."""
    import torch

    from .pipelines.errors import ModelError
    from .pipelines.loading import resolve_device, resolve_dtype
    from .pipelines.preflight import input_rules

    rules = input_rules(model)
    if rules is None:
        raise ModelError(f"cannot plan for {model!r}: its config files cannot be read without loading it (not a "
                         "local directory, a cached hub model or a random: config)")
    size = torch.empty(0, dtype=resolve_dtype(dtype, resolve_device(device))).element_size()
    return make_plan(video, config, rules, dtype_bytes=size, chunk_frames=chunk_frames)


def parse_budget(text: str | None) -> int | None:
    """``--max-memory`` (``"8GiB"``, ``"500MB"``) -> bytes; None for None. ConfigError for 0 or what does not read."""
    from .cache import CacheError, parse_size

    if text is None:
        return None
    try:
        budget = parse_size(text)
    except CacheError:
        raise ConfigError(f"--max-memory: cannot read {text!r} as a size; write e.g. 800MiB, 4GB or 16GiB") from None
    if budget < 1:
        raise ConfigError(f"--max-memory must be more than 0, got {text!r}")
    return budget


def context_budget(units: int, per_unit: int, context: int, new_tokens: int, text_tokens: int, extra: int) -> int:
    """``--tokens auto``: the visual tokens (the family's ``extra`` included, as ``--tokens`` counts them) that fill
    ``context`` after ``text_tokens`` of prompt text and ``new_tokens`` to generate, a whole number ``k`` a frame
    (a temporal group for families that group frames) of ``units`` frames: ``k x units + extra`` with
    ``text + k x units + extra + new <= context < text + (k + 1) x units + extra + new``, at most every token
    (``k <= per_unit``). Raises PromptTooLongError when not even 1 token a frame fits."""
    from .pipelines.errors import PromptTooLongError

    room = context - new_tokens - text_tokens - extra
    k = min(per_unit, room // max(units, 1))
    if text_tokens and room < 1:  # no frame setting can help: the text alone fills the context
        raise PromptTooLongError(
            f"--tokens auto: not even 1 visual token a frame fits: the prompt's text ({text_tokens:,} tokens) and "
            f"{new_tokens:,} to generate already fill the {context:,}-token context; shorten the question or lower "
            "--max-new-tokens")
    if k < 1:
        raise PromptTooLongError(
            f"--tokens auto: not even 1 visual token a frame fits: {units:,} frames, "
            f"{f'{text_tokens:,} tokens of text' if text_tokens else 'the text not counted'} "
            f"and {new_tokens:,} to generate against a {context:,}-token context; lower --fps or --max-frames, or "
            "--max-new-tokens")
    return k * units + extra


def check_tokens_auto_method(config: AskConfig, model: str) -> InputRules | None:
    """The part of :func:`check_tokens_auto` that needs no video: refuse ``--stream`` and a method that cannot take
    ``--tokens`` (it ignores keep, or prunes inside the LLM), in one line. Returns the model's input rules read from
    its config files (``pipelines.preflight.input_rules``), None when they cannot be read before loading. Raises
    ConfigError, MethodError."""
    from .kernels import build
    from .pipelines.preflight import input_rules

    if config.stream:
        raise ConfigError("--tokens auto fits the keep to the whole clip: give --keep to stream")
    rules = input_rules(model)
    model_type = rules.adapter.model_type if rules is not None else None
    method = build(config.method, config.keep, model_type=model_type, options=config.options)
    if method.ignores_keep or method.llm_prune() is not None:
        why = "it ignores --keep" if method.ignores_keep else "its in-LLM stage prunes inside the LLM"
        raise ConfigError(f"--tokens auto does not apply to method {config.method!r}: {why}; give --keep, or a "
                          "method that takes --tokens")
    return rules


def check_tokens_auto(video: str | Path, config: AskConfig, model: str) -> int | None:
    """Refuse ``--tokens auto`` before anything decodes (one line): with ``--stream``, for a method that cannot take
    ``--tokens`` (it ignores keep, or prunes inside the LLM), and when the video's frames alone, at 1 token a
    frame, with ``--max-new-tokens`` pass the context read from the model's config files (text not counted:
    the tokenizer is not loaded). Returns that budget without the text (an upper bound of the run's), None when the
    context is not known before loading. Raises ConfigError, PromptTooLongError, VideoError."""
    rules = check_tokens_auto_method(config, model)
    if rules is None or rules.context is None:
        return None  # the context is known once the model loads: auto_tokens checks it then
    plan = make_plan(video, config, rules)
    per_unit = rules.adapter.visual_tokens(rules.cfg, 1, plan.height, plan.width)
    return context_budget(plan.tokens_before // per_unit, per_unit, rules.context, config.max_new_tokens, 0,
                          plan.extra_tokens)


def auto_tokens(pipeline: object, questions: list[str], config: AskConfig, frames: int, height: int,
                width: int) -> int:
    """``--tokens auto`` once the model is loaded: :func:`context_budget` for ``frames`` decoded frames of
    (height, width) px and the longest prompt text of ``questions`` (the template and the question, tokenized as
    the run does). Raises PromptTooLongError as :func:`context_budget` does, ConfigError when the model states
    no context."""
    from .pipelines.preflight import rules_of
    from .pipelines.prompt import prompt_ids

    rules = rules_of(pipeline)
    if rules.context is None:
        raise ConfigError(f"--tokens auto: {rules.name!r} states no context length to fit; give --tokens N")
    h, w = rules.input_size("the video", frames, height, width)
    per_unit = rules.adapter.visual_tokens(rules.cfg, 1, h, w)
    units = rules.adapter.visual_tokens(rules.cfg, frames, h, w) // per_unit
    text = max(len(prompt_ids(pipeline.tokenizer, pipeline.chat_template, pipeline.video_token, q, 0,
                              pipeline.name)) for q in questions)
    return context_budget(units, per_unit, rules.context, config.max_new_tokens, text,
                          rules.adapter.extra_video_tokens)


def _streaming_methods() -> list[str]:
    """The registered methods that can stream (read from their class, never a list of names)."""
    from .kernels import methods

    return sorted(name for name, cls in methods().items() if cls.stream_unit is not None)


def _frame_map(video: str | Path, config: AskConfig) -> tuple[int, tuple[int, int], tuple[int, int]]:
    from .pipelines.video import plan

    return plan(video, frames=config.frames, fps=config.fps, max_frames=config.max_frames, seek=config.seek)
