"""The model behind the server: one :class:`VideoQA`, an in-memory LRU of compressed videos over the on-disk cache of
encoded ones, and an LRU of prompt caches (``pipelines.prefix.PromptCache``) shared across requests.

One request is generated at a time, under :attr:`Engine.lock`, so a prompt cache is never read by one request while
another writes it. A request whose conversation extends a kept one (the OpenAI API resends the whole conversation)
continues that cache and prefills only its new tokens; one that shares only part of a kept cache (another
conversation about the same video) gets a copy cut back to the shared prefix, so the kept one stays whole.
Earlier answers are re-entered as the token ids the server generated for them when the client sends their text
back unchanged, else as their text's tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..results import AskResult, CompressedVideo, PreparedVideo, PrepareTimings
from ..video_stages import _needs_question
from ..videoqa import VideoQA
from .config import ServeConfig
from .control import control_tokens, refuse
from .errors import Cancelled, Deadline
from .request import ChatRequest

_ANSWERS_KEPT = 1024  # answers whose generated ids are remembered, to re-enter them exactly in a follow-up


@dataclass
class Outcome:
    """One answered request: the result (its report's ``cache`` says what was reused), the text after ``stop``."""

    result: AskResult
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    reused_tokens: int
    video_memory: str  # "hit": the compressed video came from memory


@dataclass
class _Entry:
    key: tuple
    store: Any  # PromptCache


class Engine:
    """The served model and its caches; :meth:`load` once, then :meth:`answer` per request (under :attr:`lock`)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.qa: VideoQA | None = None
        self.lock = threading.Lock()
        self.videos: OrderedDict[tuple, tuple[PreparedVideo, CompressedVideo, str | None]] = OrderedDict()
        self.prompts: list[_Entry] = []  # least recently used first
        self.answers: OrderedDict[tuple, list[int]] = OrderedDict()
        self._control: tuple[VideoQA, tuple[str, ...]] | None = None

    def load(self) -> None:
        c = self.config
        self.qa = VideoQA(c.model, device=c.device, dtype=c.dtype, cache=c.encoded_cache)

    @property
    def ready(self) -> bool:
        return self.qa is not None

    def answer(self, req: ChatRequest, video: Path, on_text: Callable[[str], None] | None = None,
               cancel: threading.Event | None = None, deadline: Deadline | None = None) -> Outcome:
        """Answer ``req`` about the local file ``video``; call with :attr:`lock` held. Raises what the library
        raises for a bad option (ConfigError, MethodError) or a video that does not decode (VideoError), a
        ConfigError when the model's template takes no system message and ``req`` has one, :class:`Cancelled` at
        the first generated token after ``cancel`` is set (the client went away), and :class:`TimedOut` before
        prefill or at the first generated token once ``deadline`` has passed."""
        from ..config import ConfigError
        from ..pipelines.prompt import NoSystemPrompt, system_prompt

        try:
            with system_prompt(req.system):  # every prompt this request builds opens with its system message
                return self._answer(req, video, on_text, cancel, deadline or Deadline(None))
        except NoSystemPrompt as exc:
            raise ConfigError(f"{exc}: send the instructions in the user message") from None

    def _answer(self, req: ChatRequest, video: Path, on_text: Callable[[str], None] | None,
                cancel: threading.Event | None, deadline: Deadline) -> Outcome:
        import torch

        from ..pipelines.generation import GenerationOptions, synchronize
        from ..pipelines.prefix import conversation_ids, extend_inputs, video_end

        qa, config = self.qa, req.config
        pipe = qa.pipeline
        method = qa.build_method(config)
        rule = qa.text_after_video_rule(config.text_after_video)
        pipe.check_question_length(req.question, config.max_new_tokens)
        prepared, compressed, reason, memory, key = self._video(video, req, method)
        deadline.check("before prefill, after the video was prepared")  # decode and encode run to their end
        synchronize(pipe.device)
        started = time.perf_counter()
        with torch.inference_mode():
            first = pipe.inputs(prepared.encoded, compressed.compressed, req.first_question, text_after_video=rule)
            end = video_end(pipe, first["input_ids"])
            inputs = first
            if req.turns:
                turns = [(q, self._answer_ids(key, a)) for q, a in req.turns]
                try:
                    ids = conversation_ids(pipe, turns, req.question, first["input_ids"][0, :end].tolist())
                    inputs = extend_inputs(first, ids, end)
                except ValueError as exc:
                    from ..config import ConfigError

                    raise ConfigError(f"this model cannot render a multi-turn conversation: {exc}") from None
            synchronize(pipe.device)
            prompt_s = time.perf_counter() - started
            options = GenerationOptions(config.max_new_tokens, config.temperature, top_p=req.top_p,
                                        sparse=method.decode_sparsity())
            stream = _Stream(pipe.tokenizer, req.stop, on_text, cancel, deadline)
            torch.manual_seed(config.seed)
            if reason is None:
                store = self._store(key, inputs, end)
                try:
                    gen, reused = store.generate(inputs, options, end, on_token=stream.put, question=req.question)
                except BaseException:  # a cancelled or failed generation leaves a cache of unknown contents
                    self.prompts = [e for e in self.prompts if e.store is not store]
                    raise
            else:
                gen, reused = pipe.generate(inputs, options, prune=compressed.method.llm_prune(),
                                            on_token=stream.put, question=req.question), 0
        text, stopped = _cut(gen.text, req.stop)
        stream.end(text)
        if not stopped:
            self._remember(key, text, gen.token_ids)
        state = "off" if reason is not None else ("hit" if reused else "miss")
        notes = [reason] if reason else [f"{reused:,} of {gen.prompt_tokens:,} prompt tokens came from the KV cache"]
        if memory == "hit":
            notes.append("compressed video kept in the server's memory: not decoded, encoded or compressed again")
        report = qa.report(prepared, compressed, gen, prompt_s, rule, prefix=state, notes=notes)
        report.cache.update(video_memory=memory, reused_tokens=reused)
        done = stopped or len(gen.token_ids) < config.max_new_tokens
        return Outcome(AskResult(text, report, list(gen.token_ids)), text, "stop" if done else "length", reused,
                       memory)

    def _video(self, video: Path, req: ChatRequest, method: Any) -> tuple:
        """(prepared, compressed, why the prompt cache is off or None, "hit"/"miss" in memory, the video's key)."""
        config, qa = req.config, self.qa
        stat = video.stat()
        question = req.first_question if _needs_question(method) else None
        key = (str(video), stat.st_mtime_ns, stat.st_size, config.frames, config.fps, config.max_frames,
               config.decoder, config.seek, method.name, repr(sorted(method.options().items())), config.tokens,
               question)
        if (kept := self.videos.get(key)) is not None:
            self.videos.move_to_end(key)
            prepared, compressed, reason = kept
            # Paid by an earlier request: this one's report counts none of it.
            prepared = dataclasses.replace(prepared, timings=PrepareTimings(0.0, 0.0, 0.0), cache="hit",
                                           started_at=None)
            return prepared, dataclasses.replace(compressed, seconds=0.0), reason, "hit", key
        prepared = qa.prepare(video, config, need=method.needs)
        compressed = qa.compress(prepared, method, question, config.tokens)
        reason = self._prefix_off(compressed)
        if self.config.video_cache_size:
            self.videos[key] = (prepared, compressed, reason)
            while len(self.videos) > self.config.video_cache_size:
                self.videos.popitem(last=False)
        return prepared, compressed, reason, "miss", key

    def _prefix_off(self, compressed: CompressedVideo) -> str | None:
        """Why this video's requests prefill in full, or None. Unlike ``VideoQA.video_prefix`` the chat template's
        order does not matter: entries are per compressed video (per first question for a method that reads it),
        and a follow-up shares its whole first turn whichever comes first in it, the question or the video."""
        from ..pipelines.prefix import PromptCache

        if self.config.kv_cache_size == 0:
            return "the prompt cache is off (--kv-cache-size 0)"
        if compressed.method.llm_prune() is not None:
            return (f"method {compressed.method.name!r} prunes inside the LLM by the last token's attention, which "
                    "needs the whole prompt's prefill, so no prefix is reused")
        return PromptCache.unsupported_reason(self.qa.pipeline)

    def _store(self, key: tuple, inputs: dict[str, Any], end: int) -> Any:
        """The prompt cache this request generates with: a kept one it extends, a copy of the one it shares the
        longest prefix with, or a new one; the least recently used past ``--kv-cache-size`` are dropped."""
        from ..pipelines.prefix import PromptCache

        best, shared = None, 0
        for entry in self.prompts:
            if entry.key == key and (n := entry.store.shared(inputs, end)) > shared:
                best, shared = entry, n
        if best is not None and shared == len(best.store.ids):
            self.prompts.remove(best)  # extended in place: this conversation's newest turn replaces its last
            entry = best
        else:
            store = PromptCache(self.qa.pipeline)
            if best is not None:  # another conversation's cache: copied, so that one stays whole
                store.cache, store.ids = copy.deepcopy(best.store.cache), list(best.store.ids)
                store.positions = None if best.store.positions is None else best.store.positions.clone()
            entry = _Entry(key, store)
        self.prompts.append(entry)
        while len(self.prompts) > self.config.kv_cache_size:
            self.prompts.pop(0)
        return entry.store

    def _answer_ids(self, key: tuple, text: str) -> list[int]:
        ids = self.answers.get((key, text.strip()))
        if ids is not None:
            return list(ids)
        refuse(text, "assistant", self.control_tokens)  # tokenized now: it must hold no control token
        return self.qa.token_ids(text)

    @property
    def control_tokens(self) -> tuple[str, ...]:
        """The texts the loaded model's tokenizer reads as control tokens (:func:`.control.control_tokens`)."""
        if self._control is None or self._control[0] is not self.qa:
            self._control = (self.qa, control_tokens(self.qa.pipeline.tokenizer))
        return self._control[1]

    def _remember(self, key: tuple, text: str, ids: list[int]) -> None:
        self.answers[(key, text.strip())] = list(ids)
        self.answers.move_to_end((key, text.strip()))
        while len(self.answers) > _ANSWERS_KEPT:
            self.answers.popitem(last=False)

    def cached_conversations(self) -> int:
        return len(self.prompts)


def _cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [i for s in stops if (i := text.find(s)) >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


class _Stream:
    """Generated token ids in, text pieces out (``on_text``), stopping at a stop string: what might be the start of
    one is held back until it is not, and an incomplete multi-byte character until it is whole."""

    def __init__(self, tokenizer: Any, stops: list[str], on_text: Callable[[str], None] | None,
                 cancel: threading.Event | None = None, deadline: Deadline | None = None):
        self.tokenizer, self.stops, self.on_text, self.cancel = tokenizer, stops, on_text, cancel
        self.deadline = deadline or Deadline(None)
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.ids: list[int] = []
        self.sent, self.stopped = 0, False

    def put(self, token: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the client disconnected: generation stopped")  # out of generate(), at this token
        self.deadline.check("while generating: generation stopped")
        if self.on_text is None or self.stopped:
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        text, self.stopped = _cut(text.lstrip(), self.stops)
        safe = len(text) if self.stopped else len(text) - self.hold
        if safe > self.sent:
            self.on_text(text[self.sent:safe])
            self.sent = safe

    def end(self, text: str) -> None:
        """Send what is left of the final ``text`` (the stripped answer, cut at a stop string)."""
        if self.on_text is not None and len(text) > self.sent:
            self.on_text(text[self.sent:])
