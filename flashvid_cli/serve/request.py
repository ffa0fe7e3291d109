"""A chat-completion request body, checked and turned into what the engine answers: the video URL, the
conversation's turns, the final question, an :class:`AskConfig` and the generation options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import AskConfig, ConfigError
from .errors import APIError, bad_request

# The fields of the ``vidq`` extension object and the AskConfig field each sets.
VIDQ_FIELDS = {"method": "method", "keep": "keep", "tokens": "tokens", "opt": "options", "seek": "seek",
               "frames": "frames", "fps": "fps", "max_frames": "max_frames", "decoder": "decoder",
               "text_after_video": "text_after_video"}
_IGNORED = {"user", "metadata", "store", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
            "logit_bias", "parallel_tool_calls", "service_tier"}


@dataclass
class ChatRequest:
    model: str
    video_url: str
    turns: list[tuple[str, str]]  # the earlier (question, answer text) pairs; the video is in the first question
    question: str
    config: AskConfig
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    image_urls: list[str] = field(default_factory=list)  # the frames of the video when video_url is ""
    system: str | None = None  # the system (or developer) messages' text, joined by newlines; None without any
    timeout: float | None = None  # seconds from arrival this request may take (vidq.timeout); None: the server's

    @property
    def first_question(self) -> str:
        return self.turns[0][0] if self.turns else self.question


def parse_request(body: Any, defaults: AskConfig) -> ChatRequest:
    """The request of ``body`` (the decoded JSON) over the server's ``defaults``; APIError 400 when it is not one
    vidq can answer. The AskConfig is checked as the CLI's is (ConfigError, turned into 400 by the app)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required")
    if body.get("n", 1) != 1:
        raise bad_request("n > 1 is not supported: ask once per completion", "n_not_supported")
    for name in ("tools", "tool_choice", "functions", "response_format"):
        if body.get(name) is not None:
            raise bad_request(f"{name!r} is not supported by vidq serve", "unsupported_parameter")
    known = {"model", "messages", "n", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop",
             "stream", "stream_options", "media_io_kwargs", "vidq", "tools", "tool_choice", "functions",
             "response_format"}
    unknown = set(body) - known - _IGNORED
    if unknown:
        raise bad_request(f"unknown field(s): {', '.join(sorted(unknown))}", "unknown_parameter")
    system, messages = _system(body.get("messages"))
    url, images, turns, question = _conversation(messages)
    changes: dict[str, Any] = {}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        changes["max_new_tokens"] = _number(limit, "max_tokens", int)
    if body.get("temperature") is not None:
        changes["temperature"] = _number(body["temperature"], "temperature", float)
    if body.get("seed") is not None:
        changes["seed"] = _number(body["seed"], "seed", int)
    changes.update(_media(body.get("media_io_kwargs")))
    ext = body.get("vidq")
    timeout = ext.get("timeout") if isinstance(ext, dict) else None  # the server's, not an AskConfig field
    ext = {k: v for k, v in ext.items() if k != "timeout"} if isinstance(ext, dict) else ext
    if timeout is not None:
        timeout = _number(timeout, "vidq.timeout", float)
        if not timeout > 0:
            raise bad_request(f"vidq.timeout must be > 0 seconds, got {timeout}")
    changes.update(_vidq(ext))
    if "tokens" in changes and "keep" not in changes:
        changes["keep"] = defaults.keep
    try:
        config = dataclasses.replace(defaults, **changes)
    except ConfigError as exc:  # the CLI's check, said with the request's field names, not the CLI's options
        raise bad_request(_field_names(str(exc)), "invalid_option") from None
    top_p = 1.0 if body.get("top_p") is None else _number(body["top_p"], "top_p", float)
    if not 0.0 < top_p <= 1.0:
        raise bad_request(f"top_p must be in (0, 1], got {top_p}")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise bad_request("'stop' must be a non-empty string or a list of at most 4 of them")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object")
    return ChatRequest(model, url, turns, question, config, top_p, stop, bool(body.get("stream", False)),
                       bool(options.get("include_usage", False)), images, system, timeout)


# the CLI option an AskConfig check names -> the request field that sets it
_FIELD_OF = {"--max-new-tokens": "max_tokens", "--temperature": "temperature", "--seed": "seed",
             "--keep": "vidq.keep", "--tokens": "vidq.tokens", "--max-frames": "vidq.max_frames",
             "--frames": "num_frames (media_io_kwargs.video) or vidq.frames",
             "--fps": "fps (media_io_kwargs.video) or vidq.fps", "--seek": "vidq.seek", "--decoder": "vidq.decoder",
             "--method": "vidq.method", "--opt": "vidq.opt", "--text-after-video": "vidq.text_after_video"}


def _field_names(message: str) -> str:
    """``message`` with each CLI option replaced by the request field that sets it (longest names first)."""
    import re

    names = sorted(_FIELD_OF, key=len, reverse=True)
    return re.sub("|".join(re.escape(n) + r"\b" for n in names), lambda m: _FIELD_OF[m.group(0)], message)


def _number(value: Any, name: str, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise bad_request(f"{name!r} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def _media(kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    video = kwargs.get("video") if isinstance(kwargs, dict) else None
    if not isinstance(kwargs, dict) or set(kwargs) - {"video"} or not isinstance(video or {}, dict):
        raise bad_request('media_io_kwargs takes {"video": {"num_frames": N, "fps": F}}')
    video = video or {}
    if set(video) - {"num_frames", "fps"}:
        raise bad_request(f"media_io_kwargs.video takes num_frames and fps, not {', '.join(sorted(video))}")
    out: dict[str, Any] = {}
    if video.get("num_frames") is not None:
        out.update(frames=_number(video["num_frames"], "num_frames", int), fps=None)
    if video.get("fps") is not None:
        out.update(fps=_number(video["fps"], "fps", float), **({} if "frames" in out else {"frames": None}))
    return out


def _vidq(ext: Any) -> dict[str, Any]:
    if ext is None:
        return {}
    if not isinstance(ext, dict):
        raise bad_request("'vidq' must be an object")
    if unknown := set(ext) - set(VIDQ_FIELDS):
        known = ", ".join([*VIDQ_FIELDS, "timeout"])
        raise bad_request(f"unknown vidq field(s): {', '.join(sorted(unknown))}; known: {known}")
    out = {VIDQ_FIELDS[k]: v for k, v in ext.items() if v is not None}
    if "options" in out:
        opt = out["options"]
        if isinstance(opt, list) and all(isinstance(p, str) and "=" in p for p in opt):
            opt = dict(p.split("=", 1) for p in opt)
        if not isinstance(opt, dict):
            raise bad_request('vidq.opt must be an object {"name": "value"} or a list of "name=value"')
        out["options"] = {str(k): str(v) for k, v in opt.items()}
    for name, kind in (("keep", float), ("fps", float), ("tokens", int), ("frames", int), ("max_frames", int)):
        if name in out:
            out[name] = _number(out[name], f"vidq.{name}", kind)
    if "frames" in out:
        out.setdefault("fps", None)
    elif "fps" in out:
        out["frames"] = None
    for name in ("method", "seek", "decoder", "text_after_video"):
        if name in out and not isinstance(out[name], str):
            raise bad_request(f"vidq.{name} must be a string")
    return out


def _text(content: Any, role: str, allow_video: bool) -> tuple[str, list[str], list[str]]:
    """The text of one message's content, the video URLs in it, and the URLs of its one run of image_url parts."""
    if isinstance(content, str):
        return content, [], []
    if not isinstance(content, list):
        raise bad_request(f"a {role} message's content must be a string or a list of parts")
    texts, videos, images = [], [], []
    previous = None
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "video_url" and allow_video:
            url = (part.get("video_url") or {}).get("url") if isinstance(part.get("video_url"), dict) else None
            videos.append(url)
        elif kind == "video_url":
            raise bad_request("only the first user message may hold the video", "video_position")
        elif kind == "image_url" and allow_video:
            if images and previous != "image_url":
                raise bad_request("the image_url parts (a video's frames) must be consecutive: one run of them",
                                  "video_position")
            url = part.get("image_url")
            images.append(url.get("url") if isinstance(url, dict) else url)
        elif kind == "image_url":
            raise bad_request("only the first user message may hold the video (or its frames as image_url parts)",
                              "video_position")
        else:
            raise bad_request(f"unsupported content part {kind!r} in a {role} message", "unsupported_content")
        previous = kind
    return "\n".join(texts), videos, images


def _system(messages: Any) -> tuple[str | None, list[dict]]:
    """The text of the system (or developer) messages that open ``messages``, and the messages after them."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list")
    if not all(isinstance(m, dict) for m in messages):
        raise bad_request("every message must be an object")
    lead = next((i for i, m in enumerate(messages) if m.get("role") not in {"system", "developer"}), len(messages))
    if any(m.get("role") in {"system", "developer"} for m in messages[lead:]):
        raise bad_request("system messages must come first, before the first user message", "invalid_messages")
    texts = [_text(m.get("content"), "system", allow_video=False)[0] for m in messages[:lead]]
    return ("\n".join(texts) if lead else None), messages[lead:]


def _conversation(messages: Any) -> tuple[str, list[str], list[tuple[str, str]], str]:
    if not messages:
        raise bad_request("'messages' holds no user message", "invalid_messages")
    roles = [m.get("role") for m in messages]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(messages))]
    if roles != expected or roles[-1] != "user":
        raise bad_request("messages must alternate user, assistant, ..., user (the video in the first user message)",
                          "invalid_messages")
    first, videos, images = _text(messages[0].get("content"), "user", allow_video=True)
    if len(videos) + bool(images) != 1:
        raise APIError(400, "the first user message must hold exactly one video: one video_url part or one run "
                       f"of image_url parts (its frames), got {len(videos)} video_url and {len(images)} image_url",
                       "video_required")
    texts = [first] + [_text(m.get("content"), m["role"], allow_video=False)[0] for m in messages[1:]]
    if any(not texts[i].strip() for i in range(0, len(texts), 2)):
        raise bad_request("a user message has no text: ask a question about the video", "empty_question")
    turns = [(texts[i], texts[i + 1]) for i in range(0, len(texts) - 1, 2)]
    return (videos[0] if videos else ""), images, turns, texts[-1]
