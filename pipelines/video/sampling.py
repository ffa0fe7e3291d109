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
    """
    end = float(seconds[-1]) + 1e-9 if duration is None else max(float(duration), 1e-9)
    times = np.arange(0.0, end, 1.0 / fps)
    # The frame shown at time t is the last one whose timestamp is <= t (1 us slack for float rounding).
    picked = np.searchsorted(seconds, times + 1e-6, side="right") - 1
    picked = np.unique(np.clip(picked, 0, len(seconds) - 1))
    if len(picked) > max_frames:
        picked = picked[uniform_indices(len(picked), max_frames)]
    return picked.tolist()
