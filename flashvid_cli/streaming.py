"""Streaming: a long video through preprocessing, the vision tower and the method a chunk of frames at a time.

The whole-clip path (:meth:`~flashvid_cli.video_stages.VideoStages.prepare` then ``compress``) holds the pixel
values ``[T, 3, S, S]`` float and the features ``[T, N, D]`` of every sampled frame at once. :func:`stream_video`
holds them for ``chunk_frames`` frames only: each chunk is preprocessed, encoded and compressed, and only its
compressed tokens are kept. That is exact (the same tokens, index, groups and weights as the whole-clip path)
for methods whose output on a frame depends on that frame alone: their ``stream_unit`` is "frame" (see
:class:`kernels.base.Method`), and for a method whose own ``stream_start``/``stream_chunk``/``stream_finish`` carry
what spans chunks (EVS: the previous frame and a running top-budget). FlashVID streams per window of
``stream_window`` frames: exact up to one window, a stated approximation past it. Methods that select over the
whole clip are refused with the reason, in one line (:func:`refusal`). docs/STREAMING.md gives the formulations,
how far FlashVID's is from the whole clip, and what is not covered yet.

The decoded frames (uint8 at the model's input size, e.g. 384x384x3 = 432 KiB a frame on LLaVA-OneVision) flow
in chunks too: the decode worker's frames are passed on in order as they decode, at most a few chunks ahead of
the encode (:mod:`pipelines.video.stream`), so no array of the whole video's frames is held.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import AskConfig, ConfigError
from .results import CompressedVideo, PreparedVideo, PrepareTimings

if TYPE_CHECKING:
    from .kernels import Compressed, Method
    from .pipelines.video import DecodedVideo
    from .pipelines.video.stream import FrameStream
    from .video_stages import VideoStages

# progress(stage, done, total): stage is "decoded", "encoded" or "compressed"; done and total count frames.
Progress = Callable[[str, int, int], None]

DEFAULT_CHUNK_FRAMES = 16

# Why a method without a stream_unit cannot stream yet, by what it reads of the clip (not by its name).
_WHOLE_CLIP = ("it selects over the whole clip (its choice on a frame depends on the other frames), so a chunk "
               "at a time would change its tokens")


def refusal(method: Method | type[Method], config: AskConfig | None = None) -> str | None:
    """Why ``method`` (a built method or its class; with ``config``'s ``tokens``) cannot stream, in one line; None
    when it can."""
    if config is not None and config.tokens is not None:
        return (f"--tokens {config.tokens} fits the keep to the whole clip's token count (a search over the clip "
                "for most methods): give --keep instead to stream")
    if getattr(method, "stream_unit", None) is None:  # "frame", or a unit the method's own stream_* carry
        return f"method {method.name!r} cannot stream: {_WHOLE_CLIP}; use a per-frame method or drop --stream"
    return None


def check_streamable(config: AskConfig) -> None:
    """ConfigError (one line) when ``config`` asks to stream a method or ``--tokens`` that cannot; read from the
    method's class, so it runs before the model loads (an unknown method is left to the method checks)."""
    from .kernels import methods

    cls = methods().get(config.method)
    if not config.stream or cls is None:
        return
    if (why := refusal(cls, config)) is not None:
        raise ConfigError(why)


def merge(parts: list[tuple[int, Compressed]], grid: Any) -> Compressed:
    """Per-chunk outputs ``[(first frame, Compressed on that chunk's grid)]`` -> one Compressed on ``grid``
    (:func:`kernels.stream.merge_chunks`, the default streaming protocol's join; MethodError as it raises)."""
    from .kernels.stream import merge_chunks

    return merge_chunks(parts, grid)


def stream_video(stages: VideoStages, video: str | Path, config: AskConfig | None = None,
                 question: str | None = None, chunk_frames: int = DEFAULT_CHUNK_FRAMES,
                 progress: Progress | None = None, decoded: DecodedVideo | FrameStream | None = None
                 ) -> tuple[PreparedVideo, CompressedVideo]:
    """Decode ``video`` as ``config`` asks, then preprocess, encode and compress it ``chunk_frames`` frames at a
    time, keeping only the compressed tokens.

    Returns (PreparedVideo, CompressedVideo) as ``prepare`` then ``compress`` would, except that
    ``prepared.encoded.feats`` is empty (``[0, N, D]``: the features were not kept) and ``encoded.meta`` says
    ``streamed``; ``compressed.compressed`` equals the whole-clip result for a per-frame method (tests/
    test_streaming.py). ``progress(stage, done, total)`` is called as frames are decoded, encoded and compressed.
    ``decoded``: the frames already decoded with this config, or a streamed decode started ahead
    (``load_and_decode``); else decoded here as a stream: the frames come from the decode worker a chunk at a time,
    at most a few chunks ahead of the encode (``VideoStages.frame_chunks``); the decode stage's time is then the
    wait for frames, and ``timings.decode_ahead`` the decode's own (overlapped) time. An error or Ctrl-C stops the
    decode worker.
    With a cache (``stages.cache``) and a method that does not read the question, the merged output is stored per
    method and keep once the last chunk is compressed (``prepared.cache`` "miss"), and a later call with the same
    video, sampling, model, method and keep reads it instead ("hit": nothing decoded unless ``decoded`` was given,
    nothing preprocessed, encoded or compressed; flashvid_cli/cache/compressed.py).
    Raises ConfigError when the method cannot stream (:func:`refusal`), when the model family's encoding spans
    frames (its features carry per-clip metadata), or for ``chunk_frames < 1``; VideoError when the video does
    not decode; MethodError for a bad method.
    """
    try:
        return _stream_video(stages, video, config, question, chunk_frames, progress, decoded)
    except BaseException:
        if (stop := getattr(decoded, "close", None)) is not None:
            stop()  # a decode started ahead (load_and_decode's FrameStream) that this call refused or failed on
        raise


def _stream_video(stages: VideoStages, video: str | Path, config: AskConfig | None = None,
                  question: str | None = None, chunk_frames: int = DEFAULT_CHUNK_FRAMES,
                  progress: Progress | None = None, decoded: DecodedVideo | FrameStream | None = None
                  ) -> tuple[PreparedVideo, CompressedVideo]:
    """The body of :func:`stream_video`, which stops a stream given as ``decoded`` when this raises."""
    import torch

    from .pipelines.generation import synchronize
    from .video_stages import VISION_NEEDS, video_info

    config = config or AskConfig()
    if not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ConfigError(f"the stream chunk must be at least 1 frame, got {chunk_frames!r}")
    method = stages.build_method(config)
    if (why := refusal(method, config)) is not None:
        raise ConfigError(why)
    pipe = stages.pipeline
    need = frozenset(method.needs) & VISION_NEEDS
    kwargs = stages.question_input(method, question, "stream_video()")  # {"question": [M, D]} or {}
    device = pipe.device
    marks = [time.perf_counter()]

    def lap() -> float:
        synchronize(device)
        marks.append(time.perf_counter())
        return marks[-1] - marks[-2]

    ckey = _compressed_key(stages, video, config, method, kwargs, decoded)
    if ckey is not None:
        from .cache.compressed import get_compressed

        if (hit := get_compressed(stages.cache, ckey, device)) is not None:
            if (stop := getattr(decoded, "close", None)) is not None:  # a stream started ahead: not needed
                stop()
            return _from_cache(stages, video, method, hit, lap(), decoded, question if kwargs else None)
    ahead = decoded is not None
    # the frames as they decode, a chunk at a time (at most a few chunks held); or those decoded ahead, chunked
    source = stages.frame_chunks(video, config, chunk_frames, decoded)
    t_decode = lap() + getattr(decoded, "stats", {}).get("waited_after_load_s", 0.0)
    total = 0
    t_pre = t_enc = t_comp = 0.0
    stream: Any = None  # the method's stream state (kernels/base.py, Method.stream_start), once a chunk's grid is known
    shape: tuple[int, int, int] | None = None
    with torch.inference_mode(), source:  # leaving it (an error, Ctrl-C) stops the decode and its worker
        for chunk in source:  # FrameChunk: frames uint8 [c, h, w, 3] from frame chunk.first on
            if chunk.restart:  # the decode started over (a damaged file): what was made of earlier chunks is void
                stream = None
            first, stop, total = chunk.first, chunk.first + len(chunk.frames), chunk.total
            t_decode += lap()  # the wait for this chunk's frames: the decode overlaps the work on earlier chunks
            if progress is not None:
                progress("decoded", stop, total)
            pixels = pipe.preprocess(chunk.frames, list(chunk.timestamps))
            t_pre += lap()
            encoded = pipe.encode(pixels, need=need)
            t_enc += lap()
            if encoded.meta or encoded.grid.T != stop - first:
                raise ConfigError(f"model family {pipe.model_type!r} encodes frames together (per-clip metadata "
                                  "or temporal groups), so it cannot stream yet; drop --stream")
            if progress is not None:
                progress("encoded", stop, total)
            extra = dict(kwargs)
            if "similarity" in method.needs:
                extra["similarity"] = encoded.similarity  # [t, N, Ds]
            if stream is None:
                stream = method.stream_start((encoded.grid.H, encoded.grid.W), total)
            method.stream_chunk(stream, encoded.feats, encoded.grid, encoded.importance, encoded.metric, **extra)
            t_comp += lap()
            shape = (encoded.grid.H, encoded.grid.W, int(encoded.feats.shape[-1]))
            del pixels, encoded
            if progress is not None:
                progress("compressed", stop, total)
    decoded = source.decoded  # the whole decode's DecodedVideo (its frames not kept)
    if stream is None or shape is None:
        raise ConfigError(f"no frame of {video} was decoded to stream")
    from .kernels import Grid
    from .pipelines.base import EncodedVideo

    grid = Grid(total, shape[0], shape[1])
    merged = method.stream_finish(stream)
    lap()
    feats = torch.empty(0, grid.N, shape[2], dtype=pipe.dtype, device=device)  # not kept: [0, N, D]
    info = video_info(video, decoded)
    state, note = "off", "no on-disk cache (--no-cache), or a method that reads the question"
    if ckey is not None:
        import dataclasses

        from .cache.compressed import put_compressed

        written = put_compressed(stages.cache, ckey.with_indices(decoded.indices), merged, dataclasses.asdict(info))
        state, note = ("miss", None) if written else ("off", stages.cache.warning or "the entry was not written")
    if (said := decoded.stats.get("stream_note")) is not None:  # how this run's decode overlapped (not cached)
        info.notes.append(said)
    info.notes.append(f"streamed in {stream.chunks} chunk(s) of up to {chunk_frames} frames: only compressed tokens "
                      "were kept" + (", and cached per method and keep" if state == "miss" else ""))
    extra_tokens = pipe.extra_video_tokens
    prepared = PreparedVideo(
        info, EncodedVideo(feats, grid, meta={"streamed": True}),
        PrepareTimings(t_decode, t_pre, t_enc, decoded.stats.get("decode_s")), need,
        visual_tokens=grid.T * grid.N + extra_tokens, cache=state, cache_note=note,
        decode_worker_peak_rss_bytes=decoded.stats.get("peak_rss_bytes"),
        started_at=decoded.stats.get("started_at") if ahead else None,
    )
    visual = int(merged.tokens.shape[0]) + extra_tokens
    compressed = CompressedVideo(method, merged, t_comp, visual, question if kwargs else None, None, None)
    return prepared, compressed


def _compressed_key(stages: VideoStages, video: str | Path, config: AskConfig, method: Method,
                    question_input: dict, decoded: DecodedVideo | None) -> Any:
    """The cache key of ``method``'s streamed output on ``video`` (flashvid_cli/cache/compressed.py), or None: no
    usable cache, or a method that reads the question (its tokens are the question's, not the video's)."""
    if question_input:
        return None
    from .cache.compressed import compressed_key

    key = stages._cache_key(video, config, frozenset(), decoded)  # the encoded-video key of the same run
    return None if key is None else compressed_key(key, method)


def _from_cache(stages: VideoStages, video: str | Path, method: Method, hit: Any, t_read: float,
                decoded: DecodedVideo | None, question: str | None) -> tuple[PreparedVideo, CompressedVideo]:
    """A streamed run answered from a cached compressed entry: nothing preprocessed, encoded or compressed here
    (the read is the decode stage's time), and nothing decoded unless ``decoded`` was decoded ahead."""
    import torch

    from .pipelines.base import EncodedVideo
    from .results import VideoInfo
    from .video_stages import VISION_NEEDS

    pipe = stages.pipeline
    out = hit.compressed
    grid = out.grid
    info = VideoInfo(**{**hit.video, "path": str(video)})
    info.notes = [*info.notes, "compressed tokens of this method and keep read from the on-disk cache (a streamed "
                  "run's entry): not " + ("encoded or compressed" if decoded is not None else
                                          "decoded, encoded or compressed")]
    feats = torch.empty(0, grid.N, int(out.tokens.shape[-1]), dtype=pipe.dtype, device=pipe.device)
    extra = pipe.extra_video_tokens
    prepared = PreparedVideo(
        info, EncodedVideo(feats, grid, meta={"streamed": True}),
        PrepareTimings(t_read + (decoded.stats.get("waited_after_load_s", 0.0) if decoded is not None else 0.0),
                       0.0, 0.0), frozenset(method.needs) & VISION_NEEDS, visual_tokens=grid.T * grid.N + extra,
        cache="hit",
        started_at=decoded.stats.get("started_at") if decoded is not None else _started_at(stages),
    )
    visual = int(out.tokens.shape[0]) + extra
    return prepared, CompressedVideo(method, out, 0.0, visual, question, None, None)


def _started_at(stages: VideoStages) -> float | None:
    """The command's start that ``load_and_decode`` left when it decoded nothing ahead (a predicted hit), taken once
    (the report's wall then counts the model load too)."""
    started, stages.started_at = getattr(stages, "started_at", None), None
    return started
