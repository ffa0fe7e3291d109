"""A conversation about one video: the video is decoded, encoded and compressed once, and the prompt's KV cache
grows turn by turn.

    qa = VideoQA(model)
    chat = Chat(qa, "clip.mp4", AskConfig(keep=0.25))   # VideoError here, before any question
    chat.ask("What happens first?", on_text=print)      # AskResult; the answer streamed as it is generated
    chat.ask("And then?")                               # sees the first question and answer
    chat.reset()                                        # a new conversation about the same video

Each turn is rendered through the model's own chat template as the whole conversation so far (earlier answers as
the tokens the model generated), so a follow-up sees every earlier turn; the cache already holds all of it but the
last answer's final token, and only the new tokens are prefilled (pipelines/prefix.py). Where the template renders
an earlier turn differently from how it was asked (e.g. another separator after the assistant's role), the cache is
kept up to the first differing token and the rest is prefilled: the result is what a fresh prefill of the whole
conversation gives (tests/test_chat.py), within float rounding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import AskConfig, ConfigError
from .results import AskResult, CompressedVideo
from .video_stages import _needs_question
from .videoqa import VideoQA

if TYPE_CHECKING:
    from .pipelines.generation import Generation
    from .pipelines.video import DecodedVideo


class Chat:
    """One video, many turns; see the module docstring.

    ``config`` gives the sampling, method, keep and generation options of every turn. A method that reads the
    question compresses the video for the conversation's first question (the video tokens then stay as they are for
    the follow-ups). ``logits=True`` keeps each turn's per-step logits in ``last_generation`` (tests). Raises
    VideoError (a video that does not decode), MethodError and ConfigError when constructed.
    """

    def __init__(self, qa: VideoQA, video: str | Path, config: AskConfig | None = None,
                 decoded: DecodedVideo | None = None, logits: bool = False):
        from .pipelines.generation import GenerationOptions
        from .pipelines.prefix import PromptCache

        self.qa = qa
        self.config = config or AskConfig()
        self.method = qa.build_method(self.config)
        self.rule = qa.text_after_video_rule(self.config.text_after_video)
        self.prepared = qa.prepare(video, self.config, decoded=decoded, need=self.method.needs)
        self.options = GenerationOptions(self.config.max_new_tokens, self.config.temperature, return_logits=logits,
                                         sparse=self.method.decode_sparsity())
        self._shared = None if _needs_question(self.method) else qa.compress(self.prepared, self.method,
                                                                                     tokens=self.config.tokens)
        if (reason := PromptCache.unsupported_reason(qa.pipeline)) is not None:
            raise ConfigError(f"vidq chat needs a KV cache it can keep between turns: {reason}")
        self.store = PromptCache(qa.pipeline)
        self.turns: list[tuple[str, list[int]]] = []  # (question, generated ids) of this conversation
        self.last: AskResult | None = None
        self.last_generation: Generation | None = None
        self._compressed: CompressedVideo | None = None
        self._first: dict[str, Any] | None = None  # the first turn's model inputs (video and its positions)

    def waited(self, seconds: float) -> None:
        """``seconds`` spent waiting for the user's next question: left out of the reports' wall time (which
        counts from the command's start) so ``/report`` shows the work, not the typing."""
        if self.prepared.started_at is not None:
            self.prepared.started_at += seconds

    def reset(self) -> None:
        """Start a new conversation about the same video (the video's prefill stays cached where it can)."""
        self.turns, self._compressed, self._first = [], None, None

    def inputs(self, question: str) -> dict[str, Any]:
        """The model inputs of the whole conversation so far followed by ``question`` and the assistant's turn:
        ``input_ids [1, L]``, ``attention_mask [1, L]``, the video and (Qwen2.5-VL) ``position_ids [4, 1, L]``."""
        import torch

        from .pipelines.prefix import conversation_ids, extend_inputs, video_end

        pipe = self.qa.pipeline
        if self._first is None:
            self._compressed = self._shared or self.qa.compress(self.prepared, self.method, question,
                                                                      self.config.tokens)
            with torch.inference_mode():
                self._first = pipe.inputs(self.prepared.encoded, self._compressed.compressed, question,
                                          text_after_video=self.rule)
        if not self.turns:
            return self._first
        first_ids = self._first["input_ids"]
        end = video_end(pipe, first_ids)
        try:
            ids = conversation_ids(pipe, self.turns, question, first_ids[0, :end].tolist())
            return extend_inputs(self._first, ids, end)
        except ValueError as exc:
            raise ConfigError(f"vidq chat cannot render this conversation: {exc}") from None

    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> AskResult:
        """Answer ``question`` as the next turn; ``on_text(piece)`` receives the answer's text as it is generated.

        Raises ConfigError for an empty question."""
        import torch

        from .pipelines.generation import synchronize
        from .pipelines.prefix import video_end

        if not question.strip():
            raise ConfigError("the question is empty")
        pipe = self.qa.pipeline
        synchronize(pipe.device)
        started = time.perf_counter()
        fresh = self._first is None
        inputs = self.inputs(question)
        compressed = self._compressed
        # A method that reads the question compressed now, for this first question: not part of the prompt time.
        prompt_s = time.perf_counter() - started - (compressed.seconds if fresh and compressed.question else 0.0)
        stream = _TextStream(pipe.tokenizer, on_text) if on_text is not None else None
        with torch.inference_mode():
            torch.manual_seed(self.config.seed)
            gen, reused = self.store.generate(inputs, self.options, video_end(pipe, inputs["input_ids"]),
                                              on_token=stream.put if stream else None, question=question)
        if stream is not None:
            stream.end()
        self.turns.append((question, list(gen.token_ids)))
        notes = [f"turn {len(self.turns)}: {reused:,} of {gen.prompt_tokens:,} prompt tokens came from the KV cache"]
        if not fresh:  # the stage rows are the video's, paid once; this turn paid its prompt and generation only
            notes.append("decode, preprocess, vision encode and compress are the first turn's: the video was not "
                         "decoded or encoded again")
        if compressed.question is not None and not fresh:
            notes.append(f"method {compressed.method.name!r} compressed the video for this conversation's first "
                         "question")
        report = self.qa.report(self.prepared, compressed, gen, prompt_s, self.rule,
                                prefix="hit" if reused else "miss", notes=notes)
        self.last, self.last_generation = AskResult(gen.text, report, list(gen.token_ids)), gen
        return self.last


class _TextStream:
    """Token ids in, text pieces out: decodes everything so far and hands on what is new, holding back an
    incomplete multi-byte character (as transformers' TextStreamer does). Special tokens are skipped."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.sent = 0

    def put(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        text = text.lstrip()  # the answer as reported is stripped; so is the stream's start
        if piece := text[self.sent:]:
            self.on_text(piece)
            self.sent = len(text)

    def end(self) -> None:
        pass
