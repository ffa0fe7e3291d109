"""decord side of decoding: fast batched sampling, used only where decord agrees with the verified frame map.

decord counts packets, not pictures: where the container over-reports, it silently pads with copies of the
last frame, and `get_batch` can return a neighbouring frame on edit-listed files. So decord is trusted only
when its frame count and timestamps match FFmpeg's frame map, and its output is checked for repeats.
Any disagreement raises `DecordUnfit`, and the caller falls back to PyAV.
"""

from __future__ import annotations

import numpy as np

from .video_pyav import FrameMap, clean_cause


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
    if _has_repeats(frames):
        raise DecordUnfit("decord returned repeated frames")
    return frames


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


def _has_repeats(frames: np.ndarray) -> bool:
    """Whether two sampled frames are byte-identical: decord's signature of padding or of a wrong seek."""
    return len({hash(f.tobytes()) for f in frames}) < len(frames)

