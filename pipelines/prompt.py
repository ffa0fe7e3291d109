"""The chat prompt of one question about one video, as text and as token ids with the video placeholder repeated."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .errors import ModelError
from .loading import _one_line

# The system prompt of the prompts built in this thread (None: the template's own default, if it has one). A context
# variable rather than an argument so that every family's ``inputs`` builds it without a parameter of its own.
_SYSTEM: ContextVar[str | None] = ContextVar("vidq_system_prompt", default=None)


@contextmanager
def system_prompt(text: str | None) -> Iterator[None]:
    """Within the block, :func:`chat_prompt` and :func:`prompt_ids` (so every pipeline's ``inputs``) put ``text`` as
    the system message, where the family's chat template puts one: before the user turn and its video, so the
    video-first prefix of a conversation still starts the same. None keeps the template's default."""
    token = _SYSTEM.set(text)
    try:
        yield
    finally:
        _SYSTEM.reset(token)


def chat_prompt(tokenizer: Any, chat_template: str | None, question: str, system: str | None = None) -> str:
    """The chat prompt of one user turn (a video, then the question) ready for the assistant's answer, after the
    system message ``system`` (default: the one :func:`system_prompt` set, if any)."""
    system = _SYSTEM.get() if system is None else system
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    return tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                         add_generation_prompt=True)


class NoSystemPrompt(ModelError):
    """The chat template drops (or repeats) a system message: the model cannot take one."""


# Stand for the question and the system prompt while the chat template is rendered: plain letters no template or
# tokenizer treats specially.
_QUESTION_SLOT = "VIDQQUESTIONSLOTf3a9c1"
_SYSTEM_SLOT = "VIDQSYSTEMSLOTb7e2d4"


def prompt_ids(tokenizer: Any, chat_template: str | None, video_token: str, question: str, count: int,
               name: str = "the model") -> list[int]:
    """Token ids of :func:`chat_prompt` with its one ``video_token`` placeholder repeated ``count`` times.

    The single place that builds a prompt's ids: inference and the demo model's training both call it.
    The question is text, never control: the template is rendered around a stand-in, its own parts are tokenized
    with special tokens parsed (``<|im_start|>``...), and the question with them split
    (``split_special_tokens=True``), so ``<video>``, ``<|video_pad|>`` or ``<|im_end|>`` typed into a question are
    ordinary characters and cannot change the prompt's structure. Each part starts and ends at a pre-tokenizer
    boundary (after a template newline or special token, before a special token), so an ordinary question gets
    the ids of the whole prompt tokenized in one piece (a test checks it on both families' tokenizers).
    """
    if chat_template is None and getattr(tokenizer, "chat_template", None) is None:
        raise ModelError(f"{name!r} has no chat template; copy chat_template.jinja from the checkpoint it came from "
                         "into the model directory")
    text = slotted_prompt(tokenizer, chat_template, video_token, name)
    ids: list[int] = []
    for part in re.split(f"({re.escape(video_token)})", text):
        if part == video_token:
            ids += [tokenizer.convert_tokens_to_ids(video_token)] * count
        else:
            ids += slot_ids(tokenizer, part, question)
    return ids


def slotted_prompt(tokenizer: Any, chat_template: str | None, video_token: str, name: str = "the model") -> str:
    """The chat prompt's text with stand-ins for the question and the system prompt (the one :func:`system_prompt`
    set, if any), for :func:`slot_ids` to tokenize. Raises ModelError for a template that cannot make a prompt or
    holds the video placeholder or the question other than once, NoSystemPrompt where a system prompt was set and
    the template drops it."""
    system = _SYSTEM.get()
    try:
        text = chat_prompt(tokenizer, chat_template, _QUESTION_SLOT, None if system is None else _SYSTEM_SLOT)
    except ValueError as exc:  # a template that raises on a video and a text part (or on a system message)
        raise ModelError(f"the chat template of {name!r} cannot make a prompt: {_one_line(exc, 200)}") from None
    if text.count(video_token) != 1 or text.count(_QUESTION_SLOT) != 1:
        raise ModelError(f"the chat template of {name!r} must hold one {video_token} placeholder and the question "
                         "once")
    if system is not None and text.count(_SYSTEM_SLOT) != 1:
        raise NoSystemPrompt(f"the chat template of {name!r} does not render a system message")
    return text


def slot_ids(tokenizer: Any, text: str, question: str) -> list[int]:
    """Token ids of a piece of :func:`slotted_prompt`'s text with no video placeholder: the question and the system
    prompt in place of their stand-ins, as :func:`text_ids` tokenizes them."""
    system = _SYSTEM.get()
    return text_ids(tokenizer, text, {_QUESTION_SLOT: question, **({} if system is None else {_SYSTEM_SLOT: system})})


def text_ids(tokenizer: Any, text: str, said: dict[str, str]) -> list[int]:
    """Token ids of rendered template ``text`` in which each key of ``said`` (a stand-in no template or tokenizer
    treats specially) stands for its value: the template's own parts with special tokens parsed
    (``<|im_start|>``...), each value as text, never control (``split_special_tokens=True``: ``<video>`` or
    ``<|im_end|>`` typed into a question stay characters and cannot forge a placeholder or a turn)."""
    ids: list[int] = []
    stand_ins = "|".join(re.escape(k) for k in sorted(said, key=len, reverse=True))
    for part in re.split(f"({stand_ins})", text) if said else [text]:
        if part in said:
            ids += tokenizer(said[part], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        elif part:
            ids += tokenizer(part, add_special_tokens=False)["input_ids"]
    return ids


def question_margins(tokenizer: Any, chat_template: str | None, video_token: str) -> tuple[int, int]:
    """(template tokens between the video placeholder and the question, template tokens after the question) in
    :func:`prompt_ids`, which tokenizes those parts on their own: where the question sits in a prompt's ids."""
    text = chat_prompt(tokenizer, chat_template, _QUESTION_SLOT)
    after_video = text.split(video_token, 1)[1]
    middle, tail = after_video.split(_QUESTION_SLOT, 1) if _QUESTION_SLOT in after_video else ("", "")
    count = [len(tokenizer(part, add_special_tokens=False)["input_ids"]) if part else 0 for part in (middle, tail)]
    return count[0], count[1]
