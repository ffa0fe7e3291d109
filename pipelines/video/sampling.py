"""Which frames to sample: the uniform rule and the frames-per-second rule, over the frames that really decode."""

from __future__ import annotations

import numpy as np


def uniform_indices(total: int, n: int) -> list[int]:
    """`n` indices spread evenly over `total` frames: `np.linspace(0, total - 1, n)` rounded to nearest.

    This is the LLaVA-OneVision / lmms-eval rule, except that lmms-eval truncates (`dtype=int`) where this
    rounds, so the last frame is always included. When n <= total the indices are distinct (the spacing is
    at least 1); when n > total every frame is returned once.
    """
    if n >= total:
        return list(range(total))
    return np.linspace(0, total - 1, n).round().astype(int).tolist()


def fps_indices(seconds: np.ndarray, fps: float, max_frames: int, duration: float | None = None) -> list[int]:
    """The frame on screen at every 1/fps seconds of true time in [0, duration), without repeats, capped.

    `seconds` is the sorted presentation time of every frame [N]; `duration` (default: the last timestamp,
    inclusive) is when the last frame leaves the screen. When more than max_frames are selected, max_frames
    of them are kept uniformly (the same rule as `uniform_indices`, over the selection).
    Memory and time are O(N + max(N, duration x fps) up to a bound): a rate far above the frames that exist
    (`fps=1e9`) is answered per frame, never by building duration x fps sample times.
    """
    end = float(seconds[-1]) + 1e-9 if duration is None else max(float(duration), 1e-9)
    if end * fps <= _TICKS_PER_FRAME * len(seconds) + 64:
        times = np.arange(0.0, end, 1.0 / fps)
        # The frame shown at time t is the last one whose timestamp is <= t (1 us slack for float rounding).
        picked = np.searchsorted(seconds, times + 1e-6, side="right") - 1
        picked = np.unique(np.clip(picked, 0, len(seconds) - 1))
    else:
        picked = _frames_with_a_tick(np.asarray(seconds, dtype=np.float64), fps, end)
    if len(picked) > max_frames:
        picked = picked[uniform_indices(len(picked), max_frames)]
    return picked.tolist()


_TICKS_PER_FRAME = 4  # above this many sample times per frame, `_frames_with_a_tick` answers per frame instead


def _frames_with_a_tick(seconds: np.ndarray, fps: float, end: float) -> np.ndarray:
    """The same selection as the sample-time rule, per frame: frame i is on screen over [s_i - 1us, s_i+1 - 1us)
    (frame 0 from time 0, the last until `end`) and is picked when a time k/fps (k >= 0, < end) falls there."""
    step = 1.0 / fps
    lo = seconds - 1e-6
    a = np.maximum(lo, 0.0)
    a[0] = 0.0  # before the first timestamp the first frame is shown (the clip to index 0)
    b = np.append(lo[1:], np.inf)
    b = np.minimum(b, end)
    first_tick = np.ceil(a / step) * step  # [N] the earliest sample time at or after each frame's start
    return np.flatnonzero((a < b) & (first_tick < b))
