"""A decode request: what may be asked, the validated `Request` a decode runs, its memory check and output size,
and the `DecodedVideo` that answers it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import VideoError


DECODERS = ("auto", "decord", "pyav")
SEEKS = ("exact", "keyframe")  # how a sampled frame is reached: exactly, or snapped to the nearest keyframe


class VideoTooLarge(VideoError):
    """The frames a request asks for would not fit in memory; raised before any frame is decoded."""


@dataclass(frozen=True)
class Request:
    """What to decode; validated by `video.decode` before it gets here."""

    path: str
    frames: int | None
    fps: float | None
    max_frames: int
    decoder: str  # "auto" | "decord" | "pyav"
    max_side: int | None
    max_bytes: int | None = None  # refuse requests whose frames need more; None: the memory available now
    keep_pixels: int | None = None  # the caller resizes as frames arrive and keeps at most this many px per frame...
    chunk: int = 2  # ...holding this many at decoded size meanwhile (for the memory estimate)
    held: int | None = None  # frames the caller holds at once (a streamed decode, `stream.decode_stream`); None: all
    file: str = ""  # the absolute path opened (a long-lived worker's working directory is not the caller's)
    hang_in: str = ""  # test hook: "start" or a decoder phase ("decord", "pyav") in which to stall...
    hang_s: float = 0.0  # ...for this long, to exercise the deadline
    seek: str = "exact"  # "exact" | "keyframe": each sampled frame snapped to the nearest keyframe (approximate)


@dataclass
class DecodedVideo:
    """Sampled frames of one video and what is known about it."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB, the sampled frames (at `resize`'s size when decode was given one)
    indices: list[int]  # frame index of each sampled frame among the frames that decode
    timestamps: list[float]  # presentation time of each sampled frame, seconds since the first frame
    fps: float  # true average fps from the frame timestamps (the container's claim is only cross-checked)
    total_frames: int  # frames that really decode (not the container's claim)
    duration: float  # seconds, first frame to the end of the last
    decoder: str  # "decord" or "pyav"
    sampling: str  # e.g. "32 frames uniform", "fps=1 (max 32): 12 frames", "... snapped to keyframes (approximate...)"
    notes: list[str]  # what was noticed and handled, e.g. "container claims 30 frames, 5 decodable"
    source_size: tuple[int, int]  # (height, width) in display orientation, before any decode-time downscale
    # pyav_frames_decoded, pyav_passes, decode_s; worker_pid, peak_rss_bytes; with `resize`: resized_to (h, w) or
    # None (kept at decoded size) and resize_s (seconds the caller spent resizing, overlapped with the decode)
    # seek keyframe adds seek_offset_mean_s, seek_offset_max_s: seconds from the asked frames' times
    stats: dict = field(default_factory=dict)
    # What was asked: the file opened (absolute) and the sampling request (frames, fps, max_frames, decoder, seek),
    # so a caller handed a decoded video can check it is the one it means.
    request: dict = field(default_factory=dict)


def frame_bytes(n: int, hw: tuple[int, int]) -> int:
    """Bytes of n uint8 RGB frames of (height, width)."""
    return n * hw[0] * hw[1] * 3


def check_memory(req: Request, n: int, hw: tuple[int, int]) -> None:
    """Refuse (VideoTooLarge) a request whose frames would not fit in the caller's array (the worker holds
    only frames in flight). The limit is `req.max_bytes`, else the memory available now (psutil). A caller that
    resizes as frames arrive (`req.keep_pixels`) holds n frames of at most that many pixels and `req.chunk` at
    decoded size; one that streams them (`req.held`) holds only that many frames of the n."""
    kept = n if req.held is None else min(n, req.held)
    need = frame_bytes(kept, hw)
    if req.keep_pixels is not None:
        need = kept * 3 * min(hw[0] * hw[1], req.keep_pixels) + frame_bytes(min(n, req.chunk), hw)
    if req.max_bytes is not None:
        limit, what = req.max_bytes, "the limit"
    else:
        import psutil

        limit, what = psutil.virtual_memory().available, "available"
    if need > limit:
        size = f"at {hw[1]}x{hw[0]}" if req.keep_pixels is None else f"of {hw[1]}x{hw[0]} resized for the model"
        raise VideoTooLarge(
            f"{req.path}: {n} frames {size} need {_gib(need)} of memory ({_gib(limit)} {what}): "
            "ask for fewer frames (--frames, --max-frames, --fps)"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def fit_within(hw: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(height, width) scaled down, keeping aspect, so the longer side is at most max_side (never scaled up)."""
    h, w = hw
    if max_side is None or max(h, w) <= max_side:
        return (h, w)
    scale = max_side / max(h, w)
    return (max(1, round(h * scale)), max(1, round(w * scale)))
