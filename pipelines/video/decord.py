"""decord side of decoding: fast batched sampling, used only where decord agrees with the verified frame map.

decord counts packets, not pictures: where the container over-reports, it silently pads with copies of the
last frame, and `get_batch` can return a neighbouring frame on edit-listed files. decord runs only when
asked for (`--decoder decord`), only on files the frame map shows it can handle (`unfit_reason`), and its
output is checked: count and timestamps against the map, the last frame and any repeats against PyAV.
Any disagreement raises `DecordUnfit`, which the caller turns into a one-line VideoError.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import VideoError
from . import exact
from .container import clean_cause
from .frame_map import FrameMap
from .rgb import to_rgb


class DecordUnfit(Exception):
    """decord cannot be trusted (or failed) on this file; the message says why, in a few words."""


def sample(path: str, fmap: FrameMap, indices: list[int], out_hw: tuple[int, int], notes: list[str]) -> np.ndarray:
    """Frames at `indices` as uint8 RGB [T, H, W, 3] via decord's get_batch, after checking decord against the map.

    decord's own fps (`get_avg_fps`, the container's claim) is never used: it can be off by 30x.
    """
    import decord  # here, not at module top: the PyAV-only path should not pay for loading decord

    try:
        # width/height are the output size after decord applies the display rotation; pass them only to
        # downscale (decord 3.4 fails on a 32x32 clip when told its own size).
        size = {} if out_hw == fmap.display_hw else {"width": out_hw[1], "height": out_hw[0]}
        vr = decord.VideoReader(path, ctx=decord.cpu(0), **size)
        _check_frame_map(vr, fmap, notes)
        frames = vr.get_batch(indices).asnumpy()
    except DecordUnfit:
        raise
    except Exception as e:  # decord raises DECORDError/RuntimeError with raw C++ check failures
        raise DecordUnfit(f"decord failed: {clean_cause(e)}") from None
    if frames.shape != (len(indices), *out_hw, 3):
        raise DecordUnfit(f"decord returned frames of shape {frames.shape[1:3]}, expected {out_hw}")
    return frames


def unfit_reason(fmap: FrameMap) -> str:
    """Why decord would return wrong frames on this file, judged from the frame map alone ("" if none known).

    Each rule is a failure seen on ../shared/videos (see its README): decord counts packets, not pictures
    (pads with copies where they differ), picks its own stream, cannot decode MPEG-TS B-frame streams or
    odd-size VP9, and seeks into the wrong GOP on variable-frame-rate multi-GOP files.
    """
    if fmap.video_streams > 1:
        return f"{fmap.video_streams} video streams (decord cannot choose the stream)"
    if fmap.claimed != len(fmap.pts) or fmap.skipped:
        return f"the container lists {fmap.claimed} frames, {len(fmap.pts)} are shown"
    if fmap.decode_errors:
        return f"{fmap.decode_errors} packets fail to decode"
    if fmap.container in ("mpegts", "mpegtsraw"):
        return "MPEG-TS container"
    if fmap.codec in ("vp9", "libvpx-vp9") and (fmap.coded_hw[0] % 2 or fmap.coded_hw[1] % 2):
        return "odd-size VP9"
    gaps = np.diff(fmap.seconds)
    if len(gaps) > 1 and len(fmap.keyframes) > 1 and gaps.max() > 1.5 * max(float(np.median(gaps)), 1e-9):
        return "variable frame rate with several groups of pictures"
    return ""


def check_against(frames: np.ndarray, reference: np.ndarray, index: int) -> None:
    """Raise DecordUnfit unless decord's frame matches PyAV's decode of the same frame (both uint8 [H, W, 3]).

    decord can return a frame from the wrong GOP with no error at all (on a VFR multi-GOP HEVC file, index
    23 came back as frame 0, 72 as 43), so one sampled frame is always cross-decoded with PyAV. Same-frame
    differences between the two (colour conversion, scaler) stay well under 4/255; a wrong frame is ~40.
    """
    diff = float(np.abs(frames.astype(np.int16) - reference.astype(np.int16)).mean())
    if diff > 4.0:
        raise DecordUnfit(f"decord's frame {index} differs from FFmpeg's (mean abs diff {diff:.1f})")


def _check_frame_map(vr, fmap: FrameMap, notes: list[str]) -> None:
    """Raise DecordUnfit unless decord's index i is the map's frame i (same count, same timestamps)."""
    n = len(vr)
    if n != len(fmap.pts):
        raise DecordUnfit(f"decord counts {n} frames, {len(fmap.pts)} decode")
    ts = vr.get_frame_timestamp(list(range(n)))[:, 0].astype(np.float64)
    if not _timestamps_sane(ts):
        notes.append("decord frame timestamps are unusable; container timestamps used")
        return
    ours = fmap.seconds
    gap = float(np.median(np.diff(ours))) if n > 1 else 0.0
    if np.abs((ts - ts[0]) - ours).max() > max(gap / 2, 0.002):
        raise DecordUnfit("decord frame timestamps disagree with the container's")


def _timestamps_sane(ts: np.ndarray) -> bool:
    """Finite, strictly increasing and not absurd (decord reports -1.8e17 s on some AVI files)."""
    return bool(np.isfinite(ts).all() and (len(ts) < 2 or (np.diff(ts) > 0).all()) and np.abs(ts).max() < 1e7)


def repeated_pairs(frames: np.ndarray) -> list[tuple[int, int]]:
    """(earlier, later) positions of byte-identical frames [T, H, W, 3]: decord's signature of padding or of a
    wrong seek, unless the video's own frames are identical there (a static shot), which the caller checks."""
    seen: dict[bytes, int] = {}
    pairs = []
    for i, f in enumerate(frames):
        key = hashlib.blake2b(np.ascontiguousarray(f), digest_size=16).digest()  # no copy of the frame
        if key in seen and np.array_equal(frames[seen[key]], f):
            pairs.append((seen[key], i))
        else:
            seen[key] = i
    return pairs


def _decode_decord(req, fmap, indices, out_hw, cache, counter, notes) -> np.ndarray:
    """decord's get_batch, checked cheaply: timestamps against the map, the last frame against PyAV's
    decode of it (from the tail pass), and repeated frames against PyAV's decode of those frames."""
    try:
        frames = sample(req.path, fmap, indices, out_hw, notes)
        last = cache.get(fmap.pts[indices[-1]])
        if last is not None and last.shape == frames.shape[1:]:
            check_against(frames[-1], last, indices[-1])
        repeats = repeated_pairs(frames)
        if repeats:
            a, b = repeats[0]
            ref = {}
            put = lambda j, f: ref.__setitem__(j, to_rgb(f, out_hw, fmap.rotation))  # noqa: E731
            exact.sample(req.path, fmap, [fmap.pts[indices[a]], fmap.pts[indices[b]]], put, counter)
            if len(ref) < 2 or not np.array_equal(ref[0], ref[1]):
                raise DecordUnfit("decord returned repeated frames where the video's differ")
    except DecordUnfit as e:
        raise VideoError(f"{req.path}: decord cannot be trusted on this file: {e} (use --decoder auto)") from None
    return frames
