"""Control tokens in a request's text: refused, so that a message can never inject a video placeholder or a turn.

A Hugging Face tokenizer reads the text of each of its added tokens (``<|im_start|>``, LLaVA-OneVision's ``<video>``
and ``<image>``, Qwen's ``<|vision_start|>`` and ``<|video_pad|>``, ...) as that one token wherever it appears, so a
user who writes ``<video>`` would get the video placeholder's id, and ``<|im_end|><|im_start|>assistant`` a forged
turn. The server refuses such text with 400 ``control_token`` before anything is decoded, in every system and user
message and in an assistant message whose text is not an answer the server gave (those re-enter as the ids it
generated, never tokenized again).
"""

from __future__ import annotations

from typing import Any

from .errors import APIError
from .request import ChatRequest


def control_tokens(tokenizer: Any) -> tuple[str, ...]:
    """The texts ``tokenizer`` reads as one added or special token (its ``added_tokens_decoder`` and
    ``all_special_tokens``), longest first, blanks left out."""
    texts = {getattr(t, "content", str(t)) for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values()}
    texts |= set(getattr(tokenizer, "all_special_tokens", None) or [])
    return tuple(sorted((t for t in texts if t.strip()), key=lambda t: (-len(t), t)))


def refuse(text: str | None, role: str, tokens: tuple[str, ...]) -> None:
    """Raise APIError 400 ``control_token`` when ``text`` (a ``role`` message's text) holds one of ``tokens``."""
    if not text:
        return
    for token in tokens:
        if token in text:
            raise APIError(400, f"{'an' if role == 'assistant' else 'a'} {role} message's text holds {token!r}, one of the model's control tokens, which "
                           "the tokenizer would read as that token, not as text: remove or rephrase it",
                           "control_token")


def refuse_in_request(req: ChatRequest, tokens: tuple[str, ...]) -> None:
    """Refuse (APIError 400 ``control_token``) a control token in ``req``'s system and user messages; assistant
    messages are checked where they are tokenized (the engine), since the server's own answers are not."""
    refuse(req.system, "system", tokens)
    for question, _ in req.turns:
        refuse(question, "user", tokens)
    refuse(req.question, "user", tokens)
