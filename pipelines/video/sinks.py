"""Where a decode's frames go as they arrive: one preallocated array (`ArraySink`), or resized on the way in
(`ResizingSink`, for a caller that keeps only the model's input size)."""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np


RESIZE_CHUNK = 2  # full-size frames held at once when frames are resized as they arrive (2: ~30 MiB at 1080p)


class FrameResize(Protocol):
    """How a caller wants frames resized as they arrive (e.g. `pipelines.preprocess.FrameResizer`, the model's
    input size): only resized frames are kept, so memory does not grow with the video's resolution."""

    max_pixels: int | None  # an upper bound on height * width of the resized frames (None: unknown)

    def size(self, frames: int, height: int, width: int) -> tuple[int, int]:
        """(height, width) to resize `frames` frames of (height, width) to."""

    def __call__(self, frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """uint8 [k, H, W, 3] -> uint8 [k, *size, 3]."""


class ArraySink:
    """Receives the frames of a decode into one preallocated array, each in its slot, as they are decoded."""

    def start(self, n: int, hw: tuple[int, int]) -> None:
        """(Re)start the result: n slots of (H, W); a second call discards what was put (see `worker.serve`)."""
        self.array = np.empty((n, *hw, 3), np.uint8)  # [T, H, W, 3]

    def put(self, slot: int, rgb: np.ndarray) -> None:
        self.array[slot] = rgb

    def buffer(self, slot: int) -> np.ndarray:
        """Where frame `slot`'s bytes go when they arrive raw (then `filled(slot)`)."""
        return self.array[slot]

    def filled(self, slot: int) -> None:
        pass

    def result(self, kept: list[int]) -> np.ndarray:
        """The frames of the `kept` slots (all of them, without a copy, unless some did not decode)."""
        return self.array if len(kept) == len(self.array) else self.array[kept]


class ResizingSink:
    """Takes a decode's frames as they arrive and keeps them only resized (`FrameResize`), `chunk` at a time.

    Sink protocol (also `ArraySink`): `start(n, (H, W))`; per frame either `put(slot, rgb)` or
    `buffer(slot)` (a [H, W, 3] uint8 array to receive the bytes into) then `filled(slot)`; `result(kept)`.
    """

    def __init__(self, resize: FrameResize, chunk: int | None = None) -> None:
        self.resize, self.chunk = resize, chunk or RESIZE_CHUNK
        self.seconds = 0.0  # spent resizing

    def start(self, n: int, hw: tuple[int, int]) -> None:
        self.n, self.hw = n, tuple(hw)
        size = tuple(self.resize.size(n, *self.hw))
        if tuple(self.resize.size(n, *size)) != size:  # preprocessing would resize these again: keep decoded size
            size = self.hw
        self.size = size
        self.array = np.empty((n, *size, 3), np.uint8)  # [T, h, w, 3]
        self.staging = np.empty((min(n, self.chunk), *self.hw, 3), np.uint8) if size != self.hw else None
        self.pending: dict[int, int] = {}  # slot -> staging row, rows taken in order

    def buffer(self, slot: int) -> np.ndarray:
        if self.staging is None:
            return self.array[slot]
        if slot not in self.pending:
            if len(self.pending) == len(self.staging):
                self._flush()
            self.pending[slot] = len(self.pending)
        return self.staging[self.pending[slot]]

    def filled(self, slot: int) -> None:
        if self.staging is not None and len(self.pending) == len(self.staging):
            self._flush()

    def put(self, slot: int, rgb: np.ndarray) -> None:
        self.buffer(slot)[...] = rgb
        self.filled(slot)

    def _flush(self) -> None:
        if not self.pending:
            return
        started = time.perf_counter()
        self.array[list(self.pending)] = self.resize(self.staging[: len(self.pending)], self.size)
        self.pending.clear()
        self.seconds += time.perf_counter() - started

    def result(self, kept: list[int]) -> np.ndarray | None:
        """The resized frames of the `kept` slots; None when fewer frames decoded and that count calls for
        another size (only rules that depend on the frame count: Qwen3-VL's per-frame pixel budget)."""
        self._flush()
        if len(kept) != self.n and self.size != self.hw and tuple(self.resize.size(len(kept), *self.hw)) != self.size:
            return None
        self.staging = None
        return self.array if len(kept) == len(self.array) else self.array[kept]
