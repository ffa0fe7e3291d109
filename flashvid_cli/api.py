"""The library API the CLI calls: load a model once, ask questions about videos, get typed, timed results.

    from flashvid_cli import ask
    result = ask("clip.mp4", "what happens last?", keep=0.1)
    print(result.answer, result.report.timings.time_to_first_token)

This module is the library's public facade: it hands on the names of :mod:`.config` (``AskConfig``, ``ConfigError``,
``DEFAULT_MODEL``, ``DEFAULT_METHOD``), :mod:`.results` (``Report``, ``AskResult``, ``PreparedVideo``,
``CompressedVideo``, ``VideoPrefix``, ``ModelInfo``...) and :mod:`.videoqa` (``VideoQA``, whose stages its module
docstring describes), and holds the two calls that load a model: :func:`ask` and :func:`load_and_decode`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_METHOD, DEFAULT_MODEL, AskConfig, ConfigError
from .results import (
    AskResult, CompressedVideo, ModelInfo, PreparedVideo, PrepareTimings, Report, Timings, TokenCounts, VideoInfo,
    VideoPrefix,
)
from .videoqa import VideoQA

if TYPE_CHECKING:
    from .pipelines.video import DecodedVideo
    from .pipelines.video.stream import FrameStream

__all__ = [
    "DEFAULT_METHOD", "DEFAULT_MODEL", "AskConfig", "AskResult", "CompressedVideo", "ConfigError", "ModelInfo",
    "PrepareTimings", "PreparedVideo", "Report", "Timings", "TokenCounts", "VideoInfo", "VideoPrefix", "VideoQA",
    "ask", "load_and_decode",
]


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
                    started: float | None = None, ahead_on_hit: bool = False
                    ) -> tuple[VideoQA, DecodedVideo | FrameStream | None]:
    """Load the model while the video decodes: ``(VideoQA, DecodedVideo)`` for ``qa.ask(..., decoded=...)``.

    When ``cache`` already holds this video's encoding (told from the checkpoint's config files before loading,
    :func:`~flashvid_cli.cache.probe.will_hit`) nothing is decoded and the second item is None: ``qa.ask`` reads
    the entry (and decodes itself should it miss after all). ``ahead_on_hit=True`` decodes anyway, for a caller
    that needs the frames (``--tokens auto``). A streamed request (``config.stream``) gets a ``FrameStream``
    instead (``pipelines.video.stream``): its decode starts before the model loads and runs at most a few chunks
    ahead, so the frames are never held whole; on a predicted hit of its compressed entry nothing decodes.

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
    from .pipelines.preflight import input_rules
    from .preflight import check_video_fits

    config = config or AskConfig()
    started = time.perf_counter() if started is None else started

    def decode_ahead() -> DecodedVideo:
        decoded = VideoQA.decode(video, config, resize=frame_resizer(model, device))
        decoded.stats["started_at"] = started
        return decoded

    check_video_fits(video, config, input_rules(model))  # before anything decodes or loads: a moment, from the map
    if cache is not None and not ahead_on_hit:
        from .cache.probe import will_hit

        # a decode ahead would be thrown away (streamed: the compressed entry of this method and keep will hit)
        if will_hit(cache, video, config, model, device, dtype):
            qa = VideoQA(model, device=device, dtype=dtype, cache=cache)
            qa.started_at = started
            return qa, None
    if config.stream:  # frames in chunks from a decode started now: a few chunks decode ahead while the model loads
        from .streaming import DEFAULT_CHUNK_FRAMES

        stream = VideoQA.decode_stream(video, config, DEFAULT_CHUNK_FRAMES, resize=frame_resizer(model, device))
        stream.stats["started_at"] = started
        try:
            return VideoQA(model, device=device, dtype=dtype, cache=cache), stream
        except BaseException:
            stream.close()
            raise
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(decode_ahead)
        qa = VideoQA(model, device=device, dtype=dtype, cache=cache)
        loaded = time.perf_counter()
        decoded = ahead.result()
        decoded.stats["waited_after_load_s"] = time.perf_counter() - loaded  # counted in the report's decode stage
        return qa, decoded
