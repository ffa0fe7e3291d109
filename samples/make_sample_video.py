"""Write a small deterministic H.264 mp4 of moving coloured shapes: every frame differs from every other.

    python samples/make_sample_video.py [out.mp4]        # default: samples/sample.mp4

A red square moves left to right, a blue circle appears halfway through, and the background colour drifts,
so any two sampled frames can be told apart (useful to check that decoding returns distinct frames).
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def draw_frame(i: int, frames: int, size: tuple[int, int]) -> np.ndarray:
    """Frame i of `frames` as uint8 RGB [H, W, 3]."""
    h, w = size
    t = i / max(frames - 1, 1)
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = (int(40 + 150 * t), 90, int(200 - 150 * t))  # background drifts from blue-ish to red-ish
    side = max(h // 5, 4)
    x0 = int(t * (w - side))
    y0 = (h - side) // 2
    img[y0 : y0 + side, x0 : x0 + side] = (230, 20, 20)  # red square, left to right
    if i >= frames // 2:
        yy, xx = np.mgrid[0:h, 0:w]
        r = max(h // 8, 3)
        cy, cx = h // 4, w - w // 4
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (20, 40, 230)  # blue circle, second half only
    return img


def write_sample_video(path: str | Path, frames: int = 48, size: tuple[int, int] = (224, 320), fps: int = 8) -> Path:
    """Encode `frames` frames of `size` (height, width) at `fps` as H.264 yuv420p; returns the path."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        # Fixed settings and one thread keep the bytes deterministic; crf 28 keeps the file tiny.
        stream.options = {"crf": "28", "preset": "medium", "threads": "1", "g": str(fps * 2)}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(draw_frame(i, frames, size), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("sample.mp4")
    written = write_sample_video(target)
    print(f"{written} ({written.stat().st_size} bytes)")
