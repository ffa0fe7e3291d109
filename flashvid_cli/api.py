"""The library API the CLI calls: load a model once, ask questions about videos, get typed, timed results.

    from flashvid_cli import ask
    result = ask("clip.mp4", "what happens last?", keep=0.1)
    print(result.answer, result.report.timings.time_to_first_token)

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
  (flashvid_cli/cache.py); a hit skips the decode, preprocessing and vision tower. ``report.cache`` says what was
  reused (``{"encoded": ..., "prefix": ...}``, each "hit" | "miss" | "off"), ``report.notes`` why anything is off.

Reports built from the stages hold the stages' own times: ``answer`` on a shared ``PreparedVideo`` reports its
decode, preprocess and encode times again (and ``prepared.cache`` says whether they were paid now).
"""

from __future__ import annotations

import copy
import dataclasses
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .pipelines.errors import VidqError

if TYPE_CHECKING:
    from torch import Tensor

    from .kernels import Compressed, Method
    from .kernels.fastv import LLMPrune
    from .pipelines.base import EncodedVideo, Generation
    from .pipelines.preprocess import FrameResizer
    from .pipelines.video import DecodedVideo

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
DEFAULT_METHOD = "flashvid"


class ConfigError(VidqError):
    """Options that contradict each other or are out of range."""


@dataclass(frozen=True)
class AskConfig:
    """Everything about one question except the model: sampling, compression and generation."""

    method: str = DEFAULT_METHOD
    keep: float = 0.25
    options: dict[str, str] = field(default_factory=dict)  # the method's own options, e.g. {"reference": "true"}
    frames: int | None = None
    fps: float | None = None
    max_frames: int = 32
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    decoder: str = "auto"
    seek: str = "exact"  # "keyframe": each sampled frame snapped to the nearest keyframe (approximate, faster)
    decode_timeout_s: float | None = 120.0
    text_after_video: str | None = None  # Qwen2.5-VL only: "hf" (default) or "qwen"
    tokens: int | None = None  # visual tokens the LLM should see; replaces keep (searched per method and clip)

    def __post_init__(self) -> None:
        if not (0.0 < self.keep <= 1.0):
            raise ConfigError(f"--keep must be in (0, 1], got {self.keep}")
        if self.tokens is not None and (isinstance(self.tokens, bool) or not isinstance(self.tokens, int)
                                        or self.tokens < 1):
            raise ConfigError(f"--tokens must be an integer >= 1, got {self.tokens!r}")
        if self.frames is not None and self.fps is not None:
            raise ConfigError("give --frames or --fps, not both")
        if self.frames is not None and self.frames < 1:
            raise ConfigError(f"--frames must be at least 1, got {self.frames}")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"--fps must be positive, got {self.fps}")
        if self.max_frames < 1:
            raise ConfigError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")


@dataclass
class VideoInfo:
    path: str
    decoder: str
    fps: float
    duration_s: float
    total_frames: int
    sampling: str
    frame_indices: list[int]
    timestamps_s: list[float]
    notes: list[str]


@dataclass
class Timings:
    """Seconds per stage, each read after a device synchronisation."""

    decode: float  # includes resizing frames to the model's input size as they arrive (overlapped with decoding)
    preprocess: float
    encode: float
    compress: float
    prefill: float  # prompt assembly and the generate() call up to the first token
    generate: float  # every later token
    total: float
    time_to_first_token: float  # decode start to the first token
    # What this question adds to the work it shares with others about the same video: its compression when the
    # method reads the question, its prompt and its prefill (only its own tokens when the video's prefill is
    # reused), to its first token. For a follow-up question this is its time to first token.
    question_to_first_token: float = 0.0
    # When the video was decoded ahead (while the model loaded, or while the previous video was answered): the
    # decode's own seconds; ``decode`` is then only the wait for it. None when decoded in this call.
    decode_ahead: float | None = None
    # When the video was decoded while the model loaded (:func:`load_and_decode`): from the command's start (``vidq
    # ask``, ``chat``) or the model load's start (the library) to this answer's last token. None otherwise.
    wall: float | None = None


@dataclass
class TokenCounts:
    visual_before: int
    visual_after: int  # what the LLM sees, newline token included for LLaVA-OneVision
    ratio: float
    prompt: int
    generated: int
    asked: int | None = None  # --tokens K: the visual tokens asked for (visual_after is what was sent)
    visual_by_layer: list[int] | None = None  # in-LLM stage only: visual tokens each decoder layer saw in the prefill


@dataclass
class Report:
    model: str
    model_type: str
    device: str
    dtype: str
    method: str
    keep: float
    method_options: dict[str, Any]
    method_stats: dict[str, Any]
    video: VideoInfo
    tokens: TokenCounts
    timings: Timings
    peak_memory_bytes: int  # this process: the CUDA allocator's peak on a GPU, the peak RSS on CPU
    peak_memory_kind: str  # "cuda allocated" or "process RSS"
    text_after_video: str | None = None  # Qwen2.5-VL: the rule used for the positions after the video
    # The decode worker process's own peak RSS (host memory; None when decoded in this process). On CPU the
    # process tree's peak is at most peak_memory_bytes + this (the worker lives only during the decode).
    decode_worker_peak_rss_bytes: int | None = None
    token_search: dict[str, Any] | None = None  # --tokens: {"probes": compressions made, "seconds": their time}
    # What was reused: "encoded" (the vision tower's output from the on-disk cache) and "prefix" (the keys and
    # values of the prompt up to the video's end, from an earlier question or turn): "hit", "miss" (computed now
    # and kept) or "off" (disabled or not possible; ``notes`` says why).
    cache: dict[str, str] = field(default_factory=lambda: {"encoded": "off", "prefix": "off"})
    notes: list[str] = field(default_factory=list)


@dataclass
class AskResult:
    answer: str
    report: Report
    token_ids: list[int] = field(default_factory=list)  # the generated ids, to compare answers token by token

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PrepareTimings:
    """Seconds of the stages before compression, each read after a device synchronisation."""

    decode: float  # the decode, or only the wait for it when ``prepare`` was given the decoded video (then ~0)
    preprocess: float
    encode: float
    decode_ahead: float | None = None  # the decode's own seconds when it was given, decoded ahead


@dataclass
class PreparedVideo:
    """One video decoded, preprocessed and through the vision tower: what every method and question starts from.

    ``encoded`` is self-contained (tensors and plain metadata, no frames and no model weights), so it can be
    stored and reloaded: ``feats [T, N, D]`` in the model dtype on ``encoded.grid``, ``importance [T, N]`` and
    ``metric [T, N, Dk]`` in float32 when ``need`` held "importance" / "metric", else None; ``encoded.meta`` holds
    what the family's prompt needs (Qwen2.5-VL: ``grid_thw [1, 3]`` and seconds per temporal group).
    """

    video: VideoInfo
    encoded: EncodedVideo
    timings: PrepareTimings
    need: frozenset[str]  # the vision-tower inputs computed ("importance", "metric")
    visual_tokens: int  # what the LLM would see uncompressed: T * N plus the family's extra tokens
    cache: str = "off"  # "hit" | "miss" | "off": whether ``encoded`` came from the on-disk cache
    decode_worker_peak_rss_bytes: int | None = None  # the decode worker's own peak RSS; None if none decoded it
    cache_note: str | None = None  # why the cache was "off", or where a hit came from
    # time.perf_counter() at the start the report's wall time counts from (the command's, or the model load's) for a
    # video decoded while the model loaded; None otherwise
    started_at: float | None = None


@dataclass
class CompressedVideo:
    """One method at one keep applied to a :class:`PreparedVideo`."""

    method: Method  # the built method (name, keep, options)
    compressed: Compressed  # tokens [K, D] in the model dtype, index [K], groups, stats
    seconds: float  # the compression, after a device synchronisation
    visual_tokens: int  # what the LLM sees: K plus the family's extra tokens (LLaVA-OneVision's newline)
    question: str | None = None  # the question it was made for, when the method reads the question
    tokens_asked: int | None = None  # --tokens: the visual tokens asked (``method`` is then at the keep found)
    search: dict[str, Any] | None = None  # --tokens: {"probes": trial compressions, "seconds": the search's time}


@dataclass
class VideoPrefix:
    """The prompt's keys and values up to the end of one compressed video, kept for the questions asked about it.

    Made by :meth:`VideoQA.video_prefix`, used by :meth:`VideoQA.answer`: the first question prefills the whole
    prompt and keeps the cache ("miss"); each later one prefills only what follows the shared prefix, its own
    tokens ("hit"), with positions continuing as in a full prompt. ``reason`` says why it is "off" (a method that
    reads the question, a chat template that puts the question before the video, a cache that cannot be cut
    back); then every question prefills in full. One generation at a time (not thread-safe).
    """

    compressed: CompressedVideo
    reason: str | None  # None: reusable
    store: Any = None  # the pipelines.prefix.PromptCache, when reusable


@dataclass(frozen=True)
class ModelInfo:
    """What reports and benchmark environments say about the loaded model."""

    name: str  # --model as given (repo id, directory or random:NAME)
    model_type: str  # the HF model_type of the checkpoint (its family file in pipelines/)
    device: str
    dtype: str  # e.g. "float32"
    extra_video_tokens: int  # tokens the family adds after the video
    llm_params: int  # language-model parameters a token uses, without the input embedding (a lookup, not a matmul)
    llm_layers: int
    llm_hidden: int


def _peak_memory(device: Any) -> tuple[int, str]:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process RSS"


def _needs_question(method: Method) -> bool:
    return "question" in method.needs


class VideoQA:
    """A loaded model that answers questions about videos; load once, ask many times (see the module docstring).

    ``pipeline`` is the model family's adapter; callers use the public stages and accessors instead, which keep
    no per-call state on it.
    """

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", cache: Any = None):
        """``cache``: a :class:`~flashvid_cli.cache.EncodedCache` that :meth:`prepare` reads and writes (the CLI
        opens one unless ``--no-cache``), or None for no cache (the library default)."""
        from .pipelines import load_pipeline

        started = time.perf_counter()
        self.pipeline = load_pipeline(model, device=device, dtype=dtype)
        self.load_s = time.perf_counter() - started
        self._info: ModelInfo | None = None
        self.cache = cache
        self._model_fingerprint: dict[str, Any] | None = None

    @property
    def model_type(self) -> str:
        return self.pipeline.model_type

    # -- accessors ---------------------------------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        """Name, family, device, dtype and the language model's size (computed once)."""
        if self._info is None:
            pipe = self.pipeline
            model = pipe.model
            embed = model.get_input_embeddings().weight
            text = model.config.text_config
            # A mixture-of-experts LLM runs only its top-k experts per token: expert weights count k / experts.
            experts, active = getattr(text, "num_experts", None), getattr(text, "num_experts_per_tok", None)
            params = 0
            for name, p in pipe.language_model.named_parameters():
                if p is not embed:
                    moe = experts and active and ".experts." in f".{name}"
                    params += p.numel() * active // experts if moe else p.numel()
            self._info = ModelInfo(
                name=pipe.name, model_type=pipe.model_type, device=str(pipe.device),
                dtype=str(pipe.dtype).removeprefix("torch."), extra_video_tokens=pipe.extra_video_tokens,
                llm_params=params, llm_layers=text.num_hidden_layers, llm_hidden=text.hidden_size,
            )
        return self._info

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

    def build_method(self, config: AskConfig) -> Method:
        """``config``'s method at its keep with its options, the model family's recipe first; raises MethodError."""
        from .kernels import build

        return build(config.method, config.keep, model_type=self.model_type, options=config.options)

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
                    prune: LLMPrune | None = None) -> Tensor:
        """Float32 logits [count, vocab] at the last ``count`` positions of one forward pass over ``inputs`` with
        the token ids ``append`` placed after the prompt as generate() would place them (position i predicts
        token i + 1). ``prune``: a method's in-LLM stage (``Method.llm_prune()``), run in that forward pass; with
        ``append`` it selects by the prompt's last token, as ``generate()`` does, so the logits are those of
        generating ``append`` after the prompt."""
        pipe = self.pipeline
        if not append:
            return pipe.last_logits(inputs, count=count, prune=prune)
        last = int(inputs["input_ids"].shape[1]) - 1
        return pipe.last_logits(pipe.append_tokens(inputs, append), count=count, prune=prune, scored_at=last)

    # -- stages ------------------------------------------------------------------------------------------------
    @staticmethod
    def decode(video: str | Path, config: AskConfig | None = None, resize: FrameResizer | None = None) -> DecodedVideo:
        """Decode the frames ``config`` asks for (in a killable worker); safe to run ahead in another thread.

        ``resize``: resize frames to the model's input size as they are decoded (``qa.frame_resizer()``, or
        ``pipelines.frame_resizer(model)`` before the model is loaded), so that only model-size frames are held;
        preprocessing them then gives the same pixel values as preprocessing full-size frames. None: uint8
        frames [T, H, W, 3] at the decoded size (the longer side at most 1920 px)."""
        from .pipelines.video import decode

        config = config or AskConfig()
        return decode(
            video, frames=config.frames, fps=config.fps, max_frames=config.max_frames,
            decoder=config.decoder, timeout_s=config.decode_timeout_s, seek=config.seek, resize=resize,
        )

    def frame_resizer(self) -> FrameResizer:
        """The model's input size rule, for :meth:`decode` (``resize=``) of videos this model will answer about."""
        return self.pipeline.frame_resizer()

    def prepare(self, video: str | Path, config: AskConfig | None = None, decoded: DecodedVideo | None = None,
                need: frozenset[str] | None = None) -> PreparedVideo:
        """Decode (unless ``decoded`` is given, from :meth:`decode` with the same config), preprocess and encode.

        ``need`` names the vision-tower inputs to compute besides the features ("importance", "metric"); None takes
        the needs of ``config``'s method (building it, so a bad method raises MethodError here). The CUDA peak
        memory statistic starts over here. Raises VideoError when the video does not decode.
        """
        import torch

        from .pipelines.base import synchronize

        config = config or AskConfig()
        if need is None:
            need = self.build_method(config).needs
        need = frozenset(need) & {"importance", "metric"}
        pipe = self.pipeline
        device = pipe.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        marks = [time.perf_counter()]

        def lap() -> float:
            synchronize(device)
            marks.append(time.perf_counter())
            return marks[-1] - marks[-2]

        if decoded is not None:
            _check_decoded(decoded, video, config)
        waited = decoded.stats.get("waited_after_load_s", 0.0) if decoded is not None else 0.0
        key = self._cache_key(video, config, need, decoded)
        if key is not None and (hit := self.cache.get(key, device=device)) is not None:
            # The lookup (fingerprint and load) is this run's decode time; nothing was preprocessed or encoded.
            info = VideoInfo(**{**hit.video, "path": str(video)})
            info.notes = [*info.notes, "encoded video read from the on-disk cache: not decoded, not encoded"]
            encoded = hit.encoded
            return PreparedVideo(
                info, encoded, PrepareTimings(lap() + waited, 0.0, 0.0), hit.has, cache="hit",
                visual_tokens=encoded.grid.T * encoded.grid.N + pipe.extra_video_tokens,
                started_at=decoded.stats.get("started_at") if decoded is not None else None,
            )
        ahead = decoded is not None
        if decoded is None:
            decoded = self.decode(video, config, resize=pipe.frame_resizer())
        t_decode = lap() + waited  # with load_and_decode: the wait for frames after the model loaded, too
        with torch.inference_mode():
            pixels = pipe.preprocess(decoded.frames, decoded.timestamps)
            t_pre = lap()
            encoded = pipe.encode(pixels, need=need)
            t_enc = lap()
        info = VideoInfo(
            path=str(video), decoder=decoded.decoder, fps=decoded.fps, duration_s=decoded.duration,
            total_frames=decoded.total_frames, sampling=decoded.sampling, frame_indices=list(decoded.indices),
            timestamps_s=[round(t, 3) for t in decoded.timestamps], notes=list(decoded.notes),
        )
        own = decoded.stats.get("decode_s") if ahead else None
        state, note = "off", "no on-disk cache of encoded videos (--no-cache, or VideoQA(cache=None))"
        if key is not None:  # the entry keeps what is true of the video, not of this run's timing
            written = self.cache.put(key.with_indices(decoded.indices), encoded, video=dataclasses.asdict(info))
            state, note = ("miss", None) if written else ("off", self.cache.warning or "the entry was not written")
        elif self.cache is not None:
            state, note = "off", self.cache.warning or "the cache is off (--cache-size 0)"
        if own is not None and own > t_decode:
            when = "while the model loaded" if "started_at" in decoded.stats else "before this call"
            info.notes.append(f"decoded ahead ({when}): {own * 1e3:,.0f} ms of decoding, of which the decode stage "
                              f"and the time to first token count only the {t_decode * 1e3:,.0f} ms waited for it")
        return PreparedVideo(
            info, encoded, PrepareTimings(t_decode, t_pre, t_enc, own), need,
            visual_tokens=encoded.grid.T * encoded.grid.N + pipe.extra_video_tokens, cache=state, cache_note=note,
            decode_worker_peak_rss_bytes=decoded.stats.get("peak_rss_bytes"),
            started_at=decoded.stats.get("started_at") if ahead else None,
        )

    def _cache_key(self, video: str | Path, config: AskConfig, need: frozenset[str],
                   decoded: DecodedVideo | None) -> Any:
        """The encoded-video cache key of this prepare, or None when there is no usable cache."""
        from .cache import model_fingerprint, sampling_request

        if self.cache is None or not self.cache.enabled:
            return None
        pipe = self.pipeline
        if self._model_fingerprint is None:
            self._model_fingerprint = model_fingerprint(pipe.name)
        return self.cache.key(
            video, sampling=sampling_request(config.frames, config.fps, config.max_frames, seek=config.seek,
                                             decoder=config.decoder),
            model=self._model_fingerprint, dtype=pipe.dtype, device=pipe.device, preprocess=pipe.preprocess_config,
            frame_indices=decoded.indices if decoded is not None else None, need=need,
        )

    def compress(self, prepared: PreparedVideo, method: Method | AskConfig, question: str | None = None,
                 tokens: int | None = None) -> CompressedVideo:
        """Compress ``prepared`` with ``method`` (a built Method, or an AskConfig's method, keep, options and tokens).

        With ``tokens`` (or an AskConfig's ``tokens``) the method runs at the keep that makes the LLM see as close
        to ``tokens`` visual tokens as it can, found by :func:`kernels.tokens.fit_tokens` (its count rule, or a
        search compressing this clip; the result's ``search`` says what that cost, and its ``seconds`` include it).

        A method whose ``needs`` hold "question" reads ``question``: it gets the LLM's input embeddings of the
        question's tokens, ``method(..., question=[M, D])``; other methods ignore it. Raises ConfigError when such a method gets no question or when the method needs an
        input ``prepare`` did not compute, MethodError for a bad method or input.
        """
        import torch

        from .pipelines.base import synchronize

        if isinstance(method, AskConfig):
            tokens = method.tokens if tokens is None else tokens
            method = self.build_method(method)
        extra = self.pipeline.extra_video_tokens
        if tokens is not None and tokens <= extra:
            raise ConfigError(f"--tokens {tokens} leaves no visual token: this model adds {extra} after the video")
        missing = (method.needs & {"importance", "metric"}) - prepared.need
        if missing:
            raise ConfigError(f"method {method.name!r} needs {', '.join(sorted(missing))}, which this prepared video "
                              f"lacks; prepare it with need={sorted(method.needs)!r}")
        kwargs: dict[str, Any] = {}
        if _needs_question(method):
            if question is None or not question.strip():
                raise ConfigError(f"method {method.name!r} reads the question: give compress() the question")
            kwargs["question"] = self.pipeline.question_embeddings(question)  # [M, D]
        encoded = prepared.encoded
        device = encoded.feats.device
        synchronize(device)
        started = time.perf_counter()
        search = None
        with torch.inference_mode():
            if tokens is None:
                out = method(encoded.feats, encoded.grid, encoded.importance, encoded.metric, **kwargs)
            else:
                from .kernels.tokens import fit_tokens

                fit = fit_tokens(method, tokens - extra, encoded.feats, encoded.grid, encoded.importance,
                                 encoded.metric, **kwargs)
                method, out, search = fit.method, fit.compressed, {"probes": fit.probes, "seconds": fit.search_s}
        synchronize(device)
        seconds = time.perf_counter() - started
        visual = int(out.tokens.shape[0]) + extra
        return CompressedVideo(method, out, seconds, visual, question if kwargs else None, tokens, search)

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
        elif compressed.method.llm_prune() is not None:
            reason = (f"method {compressed.method.name!r} prunes inside the LLM by the last token's attention, which "
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

        from .pipelines.base import GenerationOptions, synchronize
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
        options = GenerationOptions(config.max_new_tokens, config.temperature)
        synchronize(pipe.device)
        started = time.perf_counter()
        with torch.inference_mode():
            inputs = pipe.inputs(prepared.encoded, compressed.compressed, question, text_after_video=rule)
            synchronize(pipe.device)
            prompt_s = time.perf_counter() - started
            torch.manual_seed(config.seed)
            if prefix is not None and prefix.store is not None:
                gen, reused = prefix.store.generate(inputs, options, video_end(pipe, inputs["input_ids"]))
                state, reason = ("hit" if reused else "miss"), None
            else:
                gen = pipe.generate(inputs, options, prune=compressed.method.llm_prune())
                state = "off"
                reason = prefix.reason if prefix is not None else "the video's prefill is not kept (no VideoPrefix)"
        report = self.report(prepared, compressed, gen, prompt_s, rule, prefix=state,
                             notes=[reason] if reason else [])
        return AskResult(gen.text, report, list(gen.token_ids))

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
                               compressed.tokens_asked, generation.visual_by_layer),
            timings=Timings(
                decode=t.decode, preprocess=t.preprocess, encode=t.encode, compress=compressed.seconds,
                prefill=prefill, generate=generation.decode_s, total=ttft + generation.decode_s,
                time_to_first_token=ttft, question_to_first_token=own, decode_ahead=t.decode_ahead,
                wall=time.perf_counter() - prepared.started_at if prepared.started_at is not None else None,
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

        Greedy answers equal those of separate :meth:`ask` calls (tests/test_prefix.py). The questions, method and
        rule are checked before anything is decoded; raises ConfigError for no or an empty question.
        """
        config = config or AskConfig()
        questions = list(questions)
        if not questions:
            raise ConfigError("no question to ask")
        if any(not q.strip() for q in questions):
            raise ConfigError("the question is empty")
        for question in questions:  # a question too long on its own is refused before any video work
            self.pipeline.check_question_length(question, config.max_new_tokens)
        method = self.build_method(config)
        self.text_after_video_rule(config.text_after_video)
        prepared = self.prepare(video, config, decoded=decoded, need=method.needs)
        if _needs_question(method):
            results = []
            for question in questions:
                compressed = self.compress(prepared, method, question, config.tokens)
                results.append(self.answer(prepared, question, config, compressed,
                                           self.video_prefix(compressed, reuse_prefix)))
            return results
        compressed = self.compress(prepared, method, tokens=config.tokens)
        prefix = self.video_prefix(compressed, reuse_prefix)
        return [self.answer(prepared, question, config, compressed, prefix) for question in questions]


def _resolved_options(method: Method, llm_layers: int) -> dict[str, Any]:
    """The method's options as this run used them: an in-LLM stage's pruning layer resolved for the model's depth
    (the option's None means "scaled to the model")."""
    options = {k: v for k, v in method.options().items() if k != "keep"}
    stage = method.llm_prune()
    if stage is not None and options.get("pruning_layer", 0) is None:
        options["pruning_layer"] = stage.layer_for(llm_layers)
    return options


def ask(
    video: str | Path,
    question: str,
    *,
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    **config: Any,
) -> AskResult:
    """One question about one video; ``config`` takes the fields of :class:`AskConfig` (method, keep, frames...).

    The video is decoded (in its worker process) while the model loads (:func:`load_and_decode`).
    """
    cfg = AskConfig(**config)
    qa, decoded = load_and_decode(video, cfg, model=model, device=device, dtype=dtype)
    return qa.ask(video, question, cfg, decoded=decoded)


def load_and_decode(video: str | Path, config: AskConfig | None = None, *, model: str = DEFAULT_MODEL,
                    device: str = "auto", dtype: str = "auto", cache: Any = None,
                    started: float | None = None) -> tuple[VideoQA, DecodedVideo]:
    """Load the model while the video decodes: ``(VideoQA, DecodedVideo)`` for ``qa.ask(..., decoded=...)``.

    The decode runs in its worker process, started before the model loads, and its frames are resized to the
    model's input size as they arrive (read from the checkpoint's preprocessor config, without the weights), so
    a long or high-resolution video holds only model-size frames. The reports of this video then give
    ``timings.decode`` (the wait for frames after the load), ``timings.decode_ahead`` (the decode's own time)
    and ``timings.wall`` (from ``started``, a ``time.perf_counter()`` value such as the command's start, by default
    the load's start, to each answer); for them it adds ``started_at`` and ``waited_after_load_s`` to
    ``decoded.stats``. Raises what :class:`VideoQA` and :meth:`VideoQA.decode` raise (ModelError first when both
    fail).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .pipelines import frame_resizer

    config = config or AskConfig()
    started = time.perf_counter() if started is None else started

    def decode_ahead() -> DecodedVideo:
        decoded = VideoQA.decode(video, config, resize=frame_resizer(model, device))
        decoded.stats["started_at"] = started
        return decoded

    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(decode_ahead)
        qa = VideoQA(model, device=device, dtype=dtype, cache=cache)
        loaded = time.perf_counter()
        decoded = ahead.result()
        decoded.stats["waited_after_load_s"] = time.perf_counter() - loaded  # counted in the report's decode stage
        return qa, decoded


def _check_decoded(decoded: DecodedVideo, video: str | Path, config: AskConfig) -> None:
    """ConfigError unless ``decoded`` is ``video`` decoded as ``config`` asks (a decoded video of another file or
    sampling would be answered about, and cached, under this one's name)."""
    import os

    asked = decoded.request
    if not asked:  # made by hand, not by decode(): nothing to compare
        return
    if asked.get("file") and os.path.abspath(os.fspath(video)) != asked["file"]:
        raise ConfigError(f"the decoded video given is {asked['file']}, not {video}: decode this video with "
                          "VideoQA.decode(video, config)")
    mine = {"frames": config.frames, "fps": config.fps, "max_frames": config.max_frames, "decoder": config.decoder,
            "seek": config.seek}
    if diff := [k for k, v in mine.items() if asked.get(k, v) != v]:
        raise ConfigError(f"the decoded video given was sampled with other {', '.join(diff)} than this config's: "
                          "decode it with the same config")
