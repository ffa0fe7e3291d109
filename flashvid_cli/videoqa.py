""":class:`VideoQA`: a loaded model that answers questions about videos, its stages composed into ``ask``.

``VideoQA.ask`` is four public stages, which ``annotate``, ``eval`` and ``bench`` compose the same way, so a
video is decoded and encoded once however many methods, keeps and questions it serves::

    qa = VideoQA(model)
    prepared = qa.prepare("clip.mp4", config)        # decode -> preprocess -> vision tower: PreparedVideo
    small = qa.compress(prepared, config)             # one method at one keep: CompressedVideo
    result = qa.answer(prepared, "what happens last?", config, small)   # prompt + generate: AskResult

* :meth:`VideoQA.decode` ``(video, config) -> DecodedVideo``: uint8 frames [T, H, W, 3] and their timestamps,
  decoded in a killable worker (safe to run ahead in a thread). Raises ``VideoError`` (missing, unreadable,
  corrupt or too slow a video).
* :meth:`VideoQA.prepare` ``(video, config, decoded=None, need=None) -> PreparedVideo``: the visual tokens before
  compression, ``encoded.feats [T, N, D]`` in the model dtype on a ``Grid(T, H, W)``, with ``importance [T, N]``
  and ``metric [T, N, Dk]`` (float32) when ``need`` (default: the needs of ``config``'s method) asks for them;
  the frames are not kept. Raises ``VideoError`` from decoding, ``MethodError`` for a bad method when ``need``
  is taken from ``config``.
* :meth:`VideoQA.compress` ``(prepared, method_or_config, question=None) -> CompressedVideo``: the method's
  ``Compressed`` (``tokens [K, D]``) and its time. Raises ``MethodError`` (bad method or option) and
  ``ConfigError`` when the method reads the question and none is given, or needs an input ``prepare`` did not
  compute.
* :meth:`VideoQA.answer` ``(prepared, question, config, compressed=None) -> AskResult``: the prompt, greedy or
  sampled generation, and the :class:`Report`. Compresses first when ``compressed`` is None. Per-call choices
  (``config.text_after_video``, the generation options, the seed) are arguments of this call only: nothing is
  left set on the shared model. Raises ``ConfigError`` (empty question, a text-after-video rule the model has
  not, ``compressed`` made for another question).
* :meth:`VideoQA.ask` = ``prepare`` + ``compress`` + ``answer``; everything is checked before the video is
  decoded. :meth:`VideoQA.ask_many` answers several questions about one video on one ``prepare`` and one
  ``compress`` (per question for a method that reads it).
* :meth:`VideoQA.video_prefix` ``(compressed) -> VideoPrefix``: the prompt's KV cache up to the video's end, kept
  by the first ``answer`` given it and reused by the next ones, which prefill only their own tokens; "off" (with
  the reason) for a method that reads the question or a chat template that puts the question first (decided by
  rendering it). Logits after a reused prefix match a full prefill within float rounding (other matmul shapes),
  not bit for bit; greedy answers are the same (tests/test_prefix.py). ``flashvid_cli.chat.Chat`` grows one
  such cache turn by turn.
* ``VideoQA(model, cache=EncodedCache())``: ``prepare`` reads and writes the on-disk cache of encoded videos
  (flashvid_cli/cache/); a hit skips the decode, preprocessing and vision tower. ``report.cache`` says what was
  reused (``{"encoded": ..., "prefix": ...}``, each "hit" | "miss" | "off"), ``report.notes`` why anything is off.

Reports built from the stages hold the stages' own times: ``answer`` on a shared ``PreparedVideo`` reports its
decode, preprocess and encode times again (and ``prepared.cache`` says whether they were paid now).
"""

from __future__ import annotations

import copy
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import AskConfig, ConfigError
from .pipelines.errors import PromptTooLongError
from .results import AskResult, CompressedVideo, PreparedVideo, Report, Timings, TokenCounts, VideoPrefix
from .video_stages import VideoStages, _needs_question

if TYPE_CHECKING:
    from torch import Tensor

    from .kernels import Method
    from .kernels.traits import DecodeSparsity, LLMPrune
    from .pipelines.generation import Generation
    from .pipelines.video import DecodedVideo


def _peak_memory(device: Any) -> tuple[int, str]:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process RSS"


class VideoQA(VideoStages):
    """A loaded model that answers questions about videos; load once, ask many times (see the module docstring).

    ``pipeline`` is the model family's adapter; callers use the public stages and accessors instead, which keep
    no per-call state on it.
    """

    # -- accessors ---------------------------------------------------------------------------------------------
    def text_after_video_rule(self, requested: str | None) -> str | None:
        """The text-after-video rule a call uses: ``requested`` or the family default; None for families without
        such a rule. Raises ConfigError for a rule the family does not have."""
        from .inputs import check_text_after_video

        check_text_after_video(requested)  # a wrong value first: it is wrong whatever the model
        rules = self.pipeline.text_after_video_rules
        if not rules:
            if requested is not None:
                raise ConfigError(f"--text-after-video does not apply to {self.model_type} models")
            return None
        rule = requested or type(self.pipeline).text_after_video
        if rule not in rules:
            raise ConfigError(f"--text-after-video must be one of {', '.join(rules)}")
        return rule

    def token_ids(self, text: str) -> list[int]:
        """The tokenizer's ids of ``text`` as text: no special tokens added, none parsed ("<|im_end|>" in an
        option is its characters, not a control token)."""
        return list(self.pipeline.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def token_text(self, ids: int | Sequence[int]) -> str:
        """The text of one token id or a sequence of ids (special tokens kept)."""
        return self.pipeline.tokenizer.decode([ids] if isinstance(ids, int) else list(ids))

    def prompt_inputs(self, prepared: PreparedVideo, compressed: CompressedVideo, prompt: str,
                      text_after_video: str | None = None) -> dict[str, Any]:
        """The model's keyword inputs for ``prompt`` about the compressed video (``input_ids [1, L]``...), with
        Qwen2.5-VL's text after the video placed by ``text_after_video`` (the family default when None).

        Raises ConfigError for a rule the family does not have."""
        import torch

        rule = self.text_after_video_rule(text_after_video)
        with torch.inference_mode():
            return self.pipeline.inputs(prepared.encoded, compressed.compressed, prompt, text_after_video=rule)

    def last_logits(self, inputs: dict[str, Any], count: int = 1, append: Sequence[int] = (),
                    prune: LLMPrune | None = None, sparse: DecodeSparsity | None = None) -> Tensor:
        """Float32 logits [count, vocab] at the last ``count`` positions of one forward pass over ``inputs`` with
        the token ids ``append`` placed after the prompt as generate() would place them (position i predicts
        token i + 1). ``prune``: a method's in-LLM stage (``Method.llm_prune()``), run in that forward pass; with
        ``append`` it selects by the prompt's last token, as ``generate()`` does, so the logits are those of
        generating ``append`` after the prompt. ``sparse`` (``Method.decode_sparsity()``): the appended positions
        are decoded over the compact cache generate() would use (:func:`~.pipelines.sparse_decode.sparse_logits`)."""
        pipe = self.pipeline
        if sparse is not None:
            from .pipelines.sparse_decode import sparse_logits

            return sparse_logits(pipe, inputs, list(append), count, sparse)
        if not append:
            return pipe.last_logits(inputs, count=count, prune=prune)
        last = int(inputs["input_ids"].shape[1]) - 1
        return pipe.last_logits(pipe.append_tokens(inputs, append), count=count, prune=prune, scored_at=last)

    # -- stages ------------------------------------------------------------------------------------------------
    def video_prefix(self, compressed: CompressedVideo, reuse: bool = True) -> VideoPrefix:
        """A :class:`VideoPrefix` for the questions about ``compressed``: reusable unless ``reuse`` is False, the
        method reads the question (its video tokens differ per question), the chat template puts the question before
        the video (decided by rendering it), or the model's cache cannot be cut back to a prefix."""
        from .pipelines.prefix import PromptCache, template_order_reason

        pipe = self.pipeline
        reason = None
        if not reuse:
            reason = "the video's prefill is not reused (turned off)"
        elif compressed.question is not None:
            reason = (f"method {compressed.method.name!r} reads the question, so the video's tokens differ per "
                      "question and its prefill is not reused")
        elif (prune := compressed.method.llm_prune()) is not None:
            by = "the last token's attention" if prune.score == "attention" else "similarity to the question"
            reason = (f"method {compressed.method.name!r} prunes inside the LLM by {by}, which "
                      "depends on the question, so the video's prefill is not reused")
        else:
            reason = template_order_reason(pipe) or PromptCache.unsupported_reason(pipe)
        return VideoPrefix(compressed, reason, PromptCache(pipe) if reason is None else None)

    def answer(self, prepared: PreparedVideo, question: str, config: AskConfig | None = None,
               compressed: CompressedVideo | None = None, prefix: VideoPrefix | None = None) -> AskResult:
        """Prompt and generate: the answer to ``question`` about ``compressed`` (compressed here with ``config``'s
        method when None), with the report of every stage.

        From ``config`` this call reads the generation options (max_new_tokens, temperature, seed) and
        ``text_after_video``, passed down as arguments; the method, keep and sampling only when it compresses.
        ``prefix`` (from :meth:`video_prefix` for this ``compressed``) keeps the prompt's prefill up to the video's
        end for the next question and reuses the one an earlier question left; ``report.cache["prefix"]`` says
        which. Raises ConfigError for an empty question, a rule the model family has not, ``compressed`` made for
        another question by a method that reads it, or a ``prefix`` made for another compressed video.
        """
        import torch

        from .pipelines.generation import GenerationOptions, synchronize
        from .pipelines.prefix import video_end

        config = config or AskConfig()
        if not question.strip():
            raise ConfigError("the question is empty")
        rule = self.text_after_video_rule(config.text_after_video)
        if compressed is None:
            compressed = prefix.compressed if prefix is not None else self.compress(prepared, config, question)
        elif compressed.question is not None and compressed.question != question:
            raise ConfigError(f"method {compressed.method.name!r} compressed this video for another question; "
                              "compress it again for this one")
        if prefix is not None and prefix.compressed is not compressed:
            raise ConfigError("this VideoPrefix was made for another compressed video; make one with video_prefix()")
        pipe = self.pipeline
        options = GenerationOptions(config.max_new_tokens, config.temperature,
                                    sparse=compressed.method.decode_sparsity())
        synchronize(pipe.device)
        started = time.perf_counter()
        with torch.inference_mode():
            inputs = pipe.inputs(prepared.encoded, compressed.compressed, question, text_after_video=rule)
            synchronize(pipe.device)
            prompt_s = time.perf_counter() - started
            torch.manual_seed(config.seed)
            if prefix is not None and prefix.store is not None:
                gen, reused = prefix.store.generate(inputs, options, video_end(pipe, inputs["input_ids"]),
                                                    question=question)
                state, reason = ("hit" if reused else "miss"), None
            else:
                gen = pipe.generate(inputs, options, prune=compressed.method.llm_prune(), question=question)
                state = "off"
                reason = prefix.reason if prefix is not None else "the video's prefill is not kept (no VideoPrefix)"
        report = self.report(prepared, compressed, gen, prompt_s, rule, prefix=state,
                             notes=[reason] if reason else [])
        return AskResult(gen.text, report, list(gen.token_ids))

    def answer_batch(self, prepared: PreparedVideo, questions: Sequence[str], config: AskConfig,
                     prefix: VideoPrefix) -> list[AskResult]:
        """Greedy answers to ``questions`` about ``prefix``'s compressed video from one batched generate() over the
        video's cached prefill (:meth:`PromptCache.generate_batch`): answers equal one-at-a-time :meth:`answer`
        calls' up to float rounding of the logits, for about the cost of one. The prefill must be in ``prefix``
        already (answer one question first). Each report's prefill and generate are the batch's, and say so.
        Raises ConfigError for an empty question and ValueError when the batch cannot run
        (:meth:`PromptCache.batch_reason`); the caller then answers one at a time."""
        import torch

        from .pipelines.generation import GenerationOptions, synchronize
        from .pipelines.prefix import video_end

        if any(not q.strip() for q in questions):
            raise ConfigError("a question is empty")
        if prefix.store is None:
            raise ValueError(prefix.reason or "no reusable prefill")
        pipe, compressed = self.pipeline, prefix.compressed
        options = GenerationOptions(config.max_new_tokens, config.temperature,
                                    sparse=compressed.method.decode_sparsity())
        rule = self.text_after_video_rule(config.text_after_video)
        synchronize(pipe.device)
        started = time.perf_counter()
        with torch.inference_mode():
            prompts = [pipe.inputs(prepared.encoded, compressed.compressed, q, text_after_video=rule)
                       for q in questions]
            synchronize(pipe.device)
            prompt_s = (time.perf_counter() - started) / len(questions)
            gens = prefix.store.generate_batch(prompts, options, video_end(pipe, prompts[0]["input_ids"]))
        note = (f"one of {len(questions)} questions answered together in one batched generate() over the video's "
                "cached prefill: generate, and prefill but for this question's own prompt building, are the batch's")
        return [AskResult(g.text, self.report(prepared, compressed, g, prompt_s, rule, prefix="hit", notes=[note]),
                          list(g.token_ids)) for g in gens]

    def report(self, prepared: PreparedVideo, compressed: CompressedVideo, generation: Generation, prompt_s: float,
               text_after_video: str | None, prefix: str = "off", notes: Sequence[str] = ()) -> Report:
        """The one place a :class:`Report` is built: the stages' times, token counts, method, video, what was
        reused (``prefix``: the video's prefill, "hit" | "miss" | "off") and ``notes`` saying why a reuse is off."""
        t = prepared.timings
        prefill = prompt_s + generation.prefill_s
        ttft = t.decode + t.preprocess + t.encode + compressed.seconds + prefill
        own = prefill + (compressed.seconds if compressed.question is not None else 0.0)
        notes = list(notes)
        if prepared.cache == "off" and prepared.cache_note:
            notes.append(prepared.cache_note)
        dense = generation.decode_visual_by_layer
        if dense and min(dense) >= compressed.visual_tokens:  # e.g. --opt sinks=1000, or decode_keep=1
            notes.append(f"decoding sparsity dropped nothing: every layer kept all {compressed.visual_tokens:,} "
                         "cached visual tokens (sinks plus decode_keep's share reach them all)")
        peak, peak_kind = _peak_memory(self.pipeline.device)
        method, info = compressed.method, self.info
        before, after = prepared.visual_tokens, compressed.visual_tokens
        return Report(
            model=info.name,
            model_type=info.model_type,
            device=info.device,
            dtype=info.dtype,
            method=method.name,
            keep=method.keep,
            method_options=_resolved_options(method, info.llm_layers),
            method_stats={k: v for k, v in compressed.compressed.stats.items() if k not in {"tokens_in", "tokens_out"}},
            video=copy.deepcopy(prepared.video),
            tokens=TokenCounts(before, after, after / before, generation.prompt_tokens, len(generation.token_ids),
                               compressed.tokens_asked, generation.visual_by_layer,
                               generation.decode_visual_by_layer),
            timings=Timings(
                decode=t.decode, preprocess=t.preprocess, encode=t.encode, compress=compressed.seconds,
                prefill=prefill, generate=generation.decode_s, total=ttft + generation.decode_s,
                time_to_first_token=ttft, question_to_first_token=own, decode_ahead=t.decode_ahead,
                wall=time.perf_counter() - prepared.started_at if prepared.started_at is not None else None,
                decode_build=generation.decode_build_s,
            ),
            peak_memory_bytes=peak,
            peak_memory_kind=peak_kind,
            text_after_video=text_after_video,
            decode_worker_peak_rss_bytes=prepared.decode_worker_peak_rss_bytes,
            token_search=compressed.search,
            cache={"encoded": prepared.cache, "prefix": prefix},
            notes=notes,
        )

    def ask(
        self, video: str | Path, question: str, config: AskConfig | None = None, decoded: DecodedVideo | None = None
    ) -> AskResult:
        """:meth:`prepare`, :meth:`compress`, :meth:`answer`; every stage timed after a device synchronisation.

        ``decoded`` is the video already decoded by :meth:`decode` with the same config (batch work decodes the
        next video while the model runs); the report's decode time is then only the wait for it, here zero.
        The question, method and rule are checked before anything is decoded.
        """
        return self.ask_many(video, [question], config, decoded)[0]

    def ask_many(self, video: str | Path, questions: Sequence[str], config: AskConfig | None = None,
                 decoded: DecodedVideo | None = None, reuse_prefix: bool = True) -> list[AskResult]:
        """Answer each of ``questions`` about one video in order, sharing one :meth:`prepare` and one
        :meth:`compress` (one per question for a method that reads it) and, where :meth:`video_prefix` allows and
        ``reuse_prefix``, the prompt's prefill up to the video's end.

        Greedy answers equal those of separate :meth:`ask` calls (tests/test_prefix.py). Each report's time to
        first token counts from the decode's start, the earlier questions' answers included. The encoded video is
        written to the on-disk cache after the answers. The questions, method and
        rule are checked before anything is decoded; raises ConfigError for no or an empty question.
        """
        config = config or AskConfig()
        questions = list(questions)
        if not questions:
            raise ConfigError("no question to ask")
        def named(i: int) -> str:  # which question an error is about, when there are several
            return f"question {i + 1} of {len(questions)}" if len(questions) > 1 else "the question"

        if (empty := next((i for i, q in enumerate(questions) if not q.strip()), None)) is not None:
            raise ConfigError(f"{named(empty)} is empty")
        for i, question in enumerate(questions):  # a question too long on its own is refused before any video work
            try:
                self.pipeline.check_question_length(question, config.max_new_tokens)
            except PromptTooLongError as exc:
                raise PromptTooLongError(f"{named(i)}: {exc}" if len(questions) > 1 else str(exc)) from None
        method = self.build_method(config)
        self.text_after_video_rule(config.text_after_video)
        if config.stream:  # a chunk of frames at a time, only compressed tokens kept (docs/STREAMING.md)
            from .streaming import stream_video

            made: dict[str | None, Any] = {}  # one stream per question for a method that reads it, else one
            results = []
            for question in questions:
                key = question if _needs_question(method) else None
                if key not in made:
                    streamed = stream_video(self, video, config, key, decoded=decoded, progress=self.progress)
                    made[key] = (*streamed, self.video_prefix(streamed[1], reuse_prefix))
                prepared, compressed, prefix = made[key]
                results.append(self.answer(prepared, question, config, compressed, prefix))
            return _in_turn(results)
        prepared = self.prepare(video, config, decoded=decoded, need=method.needs, write_cache=False)
        try:
            results = self._answer_all(prepared, method, questions, config, reuse_prefix)
        finally:  # written even when an answer fails: the encode is done work
            written = self.write_cache(prepared)
        if written == "off":  # after the answers: the write is in no time to first token
            for result in results:
                result.report.cache["encoded"] = "off"
                result.report.notes.append(prepared.cache_note or "the entry was not written")
        return _in_turn(results)

    def _answer_all(self, prepared: PreparedVideo, method: Method, questions: list[str], config: AskConfig,
                    reuse_prefix: bool) -> list[AskResult]:
        """Each question's answer on one prepared video: one compression for all, or one each for a method that
        reads the question."""
        if _needs_question(method):
            results = []
            for question in questions:
                compressed = self.compress(prepared, method, question, config.tokens, config.tokens_at_most)
                results.append(self.answer(prepared, question, config, compressed,
                                           self.video_prefix(compressed, reuse_prefix)))
            return results
        compressed = self.compress(prepared, method, tokens=config.tokens, at_most=config.tokens_at_most)
        prefix = self.video_prefix(compressed, reuse_prefix)
        return [self.answer(prepared, question, config, compressed, prefix) for question in questions]


def _in_turn(results: list[AskResult]) -> list[AskResult]:
    """Questions answered one after another: each one's time to first token (and total) counts from the decode's
    start, so it includes the earlier questions' own work and answers; ``question_to_first_token`` stays its own."""
    waited = 0.0
    for result in results:
        t = result.report.timings
        t.time_to_first_token += waited
        t.total += waited
        waited += t.question_to_first_token + t.generate
    return results


def _resolved_options(method: Method, llm_layers: int) -> dict[str, Any]:
    """The method's options as this run used them: an in-LLM stage's pruning layer resolved for the model's depth
    (the option's None means "scaled to the model")."""
    options = {k: v for k, v in method.options().items() if k != "keep"}
    stage = method.llm_prune()
    if stage is not None and options.get("pruning_layer", 0) is None:
        options["pruning_layer"] = stage.layer_for(llm_layers)
    return options
