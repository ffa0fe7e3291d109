"""The video side of :class:`~flashvid_cli.videoqa.VideoQA`: the loaded model and the stages up to the compressed video.

:class:`VideoStages` loads the model family's pipeline and holds the stages every question starts from: ``decode``
(in a killable worker), ``prepare`` (preprocess and the vision tower, through the on-disk cache of encoded videos)
and ``compress`` (one method at one keep, or at the keep that gives ``tokens``). ``VideoQA`` adds the answering side
(prompt, generation, the report); see :mod:`flashvid_cli.videoqa` for the stages together.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_MODEL, AskConfig, ConfigError
from .results import CompressedVideo, ModelInfo, PreparedVideo, PrepareTimings, VideoInfo

if TYPE_CHECKING:
    from .kernels import Method
    from .pipelines.preflight import InputRules
    from .pipelines.preprocess import FrameResizer
    from .pipelines.video import DecodedVideo
    from .pipelines.video.stream import DecodedChunks, FrameStream


# What ``prepare`` can compute besides the features (EncodedVideo fields, held by the cache when computed).
VISION_NEEDS = frozenset({"importance", "metric", "similarity"})


def _needs_question(method: Method) -> bool:
    return "question" in method.needs


class VideoStages:
    """The loaded model and its video stages (decode, prepare, compress); :class:`~flashvid_cli.videoqa.VideoQA` is
    what callers make, adding the answering stages."""

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
        # progress(stage, done, total) of a streamed video (flashvid_cli/streaming.py): frames decoded, encoded,
        # compressed; the CLI sets a progress bar here on a terminal
        self.progress: Any = None
        # When load_and_decode skipped the decode ahead (the cache will hit): the command's start, for the next
        # prepare's report (its wall time counts from there, the model load included), then cleared
        self.started_at: float | None = None

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

    def build_method(self, config: AskConfig) -> Method:
        """``config``'s method at its keep with its options, the model family's recipe first; raises MethodError."""
        from .kernels import build

        return build(config.method, config.keep, model_type=self.model_type, options=config.options)

    # -- stages ------------------------------------------------------------------------------------------------
    @staticmethod
    def decode(video: str | Path, config: AskConfig | None = None, resize: FrameResizer | None = None,
               rules: InputRules | None = None) -> DecodedVideo:
        """Decode the frames ``config`` asks for (in a killable worker); safe to run ahead in another thread.

        ``resize``: resize frames to the model's input size as they are decoded (``qa.frame_resizer()``, or
        ``pipelines.frame_resizer(model)`` before the model is loaded), so that only model-size frames are held;
        preprocessing them then gives the same pixel values as preprocessing full-size frames. None: uint8
        frames [T, H, W, 3] at the decoded size (the longer side at most 1920 px). ``rules`` (the answering
        model's, ``pipelines.preflight.rules_of(pipeline)``): a video it cannot take is refused first, undecoded
        (:func:`~flashvid_cli.preflight.check_video_fits`)."""
        from .pipelines.video import decode
        from .preflight import check_video_fits

        config = config or AskConfig()
        check_video_fits(video, config, rules)
        return decode(
            video, frames=config.frames, fps=config.fps, max_frames=config.max_frames,
            decoder=config.decoder, timeout_s=config.decode_timeout_s, seek=config.seek, resize=resize,
        )

    @staticmethod
    def decode_stream(video: str | Path, config: AskConfig, chunk: int, resize: FrameResizer | None = None,
                      rules: InputRules | None = None) -> FrameStream:
        """:meth:`decode`'s frames ``chunk`` at a time as they decode (``pipelines.video.stream``): the decode starts
        here, runs at most a bounded number of chunks ahead of its consumer, and its frames are never held whole.
        Same arguments and refusals as :meth:`decode`; the decode's errors are raised by the iteration."""
        from .pipelines.video.stream import decode_stream
        from .preflight import check_video_fits

        check_video_fits(video, config, rules)
        return decode_stream(
            video, chunk=chunk, frames=config.frames, fps=config.fps, max_frames=config.max_frames,
            decoder=config.decoder, timeout_s=config.decode_timeout_s, seek=config.seek, resize=resize,
        )

    def frame_chunks(self, video: str | Path, config: AskConfig, chunk: int,
                     decoded: DecodedVideo | FrameStream | None = None) -> FrameStream | DecodedChunks:
        """The frames of ``video`` for a streamed run, ``chunk`` at a time (``FrameChunk``s; ``.decoded`` after the
        last): ``decoded``'s when it is this video decoded as ``config`` asks (a DecodedVideo, or a FrameStream
        started ahead with this chunk and not yet read), else a streamed decode started here at the model's size.
        Raises ConfigError for a ``decoded`` of another video or sampling."""
        from .pipelines.preflight import rules_of
        from .pipelines.video.stream import DecodedChunks, FrameStream

        if isinstance(decoded, FrameStream):
            _check_decoded(decoded, video, config)
            if not decoded.consumed and decoded.chunk == chunk:
                return decoded
            decoded.close()  # read already (another question's stream), or chunked otherwise: decode again
        elif decoded is not None:
            _check_decoded(decoded, video, config)
            return DecodedChunks(decoded, chunk)
        pipe = self.pipeline
        return self.decode_stream(video, config, chunk, resize=pipe.frame_resizer(), rules=rules_of(pipe))

    def frame_resizer(self) -> FrameResizer:
        """The model's input size rule, for :meth:`decode` (``resize=``) of videos this model will answer about."""
        return self.pipeline.frame_resizer()

    def prepare(self, video: str | Path, config: AskConfig | None = None, decoded: DecodedVideo | None = None,
                need: frozenset[str] | None = None, write_cache: bool = True) -> PreparedVideo:
        """Decode (unless ``decoded`` is given, from :meth:`decode` with the same config), preprocess and encode.

        The encoded video goes into the on-disk cache here, or with ``write_cache=False`` when :meth:`write_cache`
        is called (after the answers, so the write is not in anyone's time to first token; ``cache`` is then
        "miss" until it says otherwise).

        ``need`` names the vision-tower inputs to compute besides the features ("importance", "metric",
        "similarity"); None takes
        the needs of ``config``'s method (building it, so a bad method raises MethodError here). The CUDA peak
        memory statistic starts over here. Raises VideoError when the video does not decode.
        """
        import torch

        from .pipelines.generation import synchronize

        config = config or AskConfig()
        if need is None:
            need = self.build_method(config).needs
        need = frozenset(need) & VISION_NEEDS
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
        started_at, self.started_at = self.started_at, None
        key = self._cache_key(video, config, need, decoded)
        if key is not None and (hit := self.cache.get(key, device=device)) is not None:
            # The lookup (fingerprint and load) is this run's decode time; nothing was preprocessed or encoded.
            info = VideoInfo(**{**hit.video, "path": str(video)})
            info.notes = [*info.notes, "encoded video read from the on-disk cache: not decoded, not encoded"]
            encoded = hit.encoded
            return PreparedVideo(
                info, encoded, PrepareTimings(lap() + waited, 0.0, 0.0), hit.has, cache="hit",
                visual_tokens=encoded.grid.T * encoded.grid.N + pipe.extra_video_tokens,
                started_at=decoded.stats.get("started_at") if decoded is not None else started_at,
            )
        ahead = decoded is not None
        if decoded is None:
            from .pipelines.preflight import rules_of

            # a video the model cannot take is refused undecoded
            decoded = self.decode(video, config, resize=pipe.frame_resizer(), rules=rules_of(pipe))
        t_decode = lap() + waited  # with load_and_decode: the wait for frames after the model loaded, too
        with torch.inference_mode():
            pixels = pipe.preprocess(decoded.frames, decoded.timestamps)
            t_pre = lap()
            encoded = pipe.encode(pixels, need=need)
            t_enc = lap()
        info = video_info(video, decoded)
        own = decoded.stats.get("decode_s") if ahead else None
        state, note = "off", "no on-disk cache of encoded videos (--no-cache, or VideoQA(cache=None))"
        pending = None
        if key is not None:  # the entry keeps what is true of the video, not of this run's timing
            pending = (key.with_indices(decoded.indices), dataclasses.asdict(info))
            state, note = "miss", None
        elif self.cache is not None:
            state, note = "off", self.cache.warning or "the cache is off (--cache-size 0)"
        if own is not None and own > t_decode:
            when = "while the model loaded" if "started_at" in decoded.stats else "before this call"
            info.notes.append(f"decoded ahead ({when}): {own * 1e3:,.0f} ms of decoding, of which the decode stage "
                              f"and the time to first token count only the {t_decode * 1e3:,.0f} ms waited for it")
        prepared = PreparedVideo(
            info, encoded, PrepareTimings(t_decode, t_pre, t_enc, own), need,
            visual_tokens=encoded.grid.T * encoded.grid.N + pipe.extra_video_tokens, cache=state, cache_note=note,
            decode_worker_peak_rss_bytes=decoded.stats.get("peak_rss_bytes"),
            started_at=decoded.stats.get("started_at") if ahead else started_at, pending_write=pending,
        )
        if write_cache:
            self.write_cache(prepared)
        return prepared

    def write_cache(self, prepared: PreparedVideo) -> str:
        """Write ``prepared``'s encoded video to the on-disk cache if :meth:`prepare` left it to write; returns
        ``prepared.cache``: "miss" (written), or "off" with ``cache_note`` saying why not. Safe to call twice."""
        if prepared.pending_write is None:
            return prepared.cache
        key, info = prepared.pending_write
        prepared.pending_write = None
        if not self.cache.put(key, prepared.encoded, video=info):
            prepared.cache, prepared.cache_note = "off", self.cache.warning or "the entry was not written"
        return prepared.cache

    def holds_encoded(self, video: str | Path, config: AskConfig, need: frozenset[str]) -> bool:
        """Whether :meth:`prepare` of ``video`` with ``config`` and ``need`` (a method's needs) will read the
        on-disk cache instead of decoding: the entry's header only, no tensor read (so a caller decoding ahead,
        such as annotate's engines, can skip a decode that would be thrown away). A wrong guess costs time, never
        an answer: ``prepare`` looks the entry up itself and decodes when it misses."""
        key = self._cache_key(video, config, frozenset(need) & VISION_NEEDS, None)
        return key is not None and self.cache.holds(key)

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
            frame_indices=getattr(decoded, "indices", None), need=need,  # a FrameStream: not known yet
        )

    def question_input(self, method: Method, question: str | None, caller: str) -> dict[str, Any]:
        """``{"question": [M, D]}`` (the LLM's input embeddings of the question's tokens) for a method that reads
        the question, else ``{}``. Raises ConfigError, naming ``caller``, when such a method gets no question."""
        if not _needs_question(method):
            return {}
        if question is None or not question.strip():
            raise ConfigError(f"method {method.name!r} reads the question: give {caller} the question")
        return {"question": self.pipeline.question_embeddings(question)}

    def compress(self, prepared: PreparedVideo, method: Method | AskConfig, question: str | None = None,
                 tokens: int | None = None, at_most: bool = False) -> CompressedVideo:
        """Compress ``prepared`` with ``method`` (a built Method, or an AskConfig's method, keep, options and tokens).

        With ``tokens`` (or an AskConfig's ``tokens``) the method runs at the keep that makes the LLM see as close
        to ``tokens`` visual tokens as it can (``at_most``, or an AskConfig's ``tokens_at_most``: never more), found
        by :func:`kernels.tokens.fit_tokens` (its count rule, or a
        search compressing this clip; the result's ``search`` says what that cost, and its ``seconds`` include it).

        A method whose ``needs`` hold "question" reads ``question``: it gets the LLM's input embeddings of the
        question's tokens, ``method(..., question=[M, D])``; other methods ignore it. Raises ConfigError when such a method gets no question or when the method needs an
        input ``prepare`` did not compute, MethodError for a bad method or input.
        """
        import torch

        from .pipelines.generation import synchronize

        if isinstance(method, AskConfig):
            tokens = method.tokens if tokens is None else tokens
            at_most = at_most or method.tokens_at_most
            method = self.build_method(method)
        extra = self.pipeline.extra_video_tokens
        if tokens is not None and tokens <= extra:
            raise ConfigError(f"--tokens {tokens} leaves no visual token: this model adds {extra} after the video")
        missing = (method.needs & VISION_NEEDS) - prepared.need
        if missing:
            raise ConfigError(f"method {method.name!r} needs {', '.join(sorted(missing))}, which this prepared video "
                              f"lacks; prepare it with need={sorted(method.needs)!r}")
        kwargs = self.question_input(method, question, "compress()")
        if "similarity" in method.needs:
            kwargs["similarity"] = prepared.encoded.similarity  # [T, N, Ds]
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
                                 encoded.metric, at_most=at_most, **kwargs)
                method, out, search = fit.method, fit.compressed, {"probes": fit.probes, "seconds": fit.search_s}
        synchronize(device)
        seconds = time.perf_counter() - started
        visual = int(out.tokens.shape[0]) + extra
        return CompressedVideo(method, out, seconds, visual, question if kwargs else None, tokens, search)


def video_info(video: str | Path, decoded: DecodedVideo) -> VideoInfo:
    """What the report and the cache entry say of ``video`` as ``decoded`` sampled it."""
    return VideoInfo(
        path=str(video), decoder=decoded.decoder, fps=decoded.fps, duration_s=decoded.duration,
        total_frames=decoded.total_frames, sampling=decoded.sampling, frame_indices=list(decoded.indices),
        timestamps_s=[round(t, 3) for t in decoded.timestamps], notes=list(decoded.notes),
    )


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
