"""Decoded frames to uint8 RGB arrays in display orientation: conversion, downscale and rotation."""

from __future__ import annotations

import threading

import av
import numpy as np
from av.video.reformatter import VideoReformatter


def _rotation(frame: av.VideoFrame) -> int:
    """The frame's display rotation rounded to a multiple of 90 degrees (counter-clockwise)."""
    return int(round((frame.rotation or 0) / 90.0)) * 90 % 360


_LOCAL = threading.local()


def to_rgb(frame: av.VideoFrame, out_hw: tuple[int, int], rotation: int) -> np.ndarray:
    """Convert (and downscale) one frame to uint8 RGB [H, W, 3] in display orientation, like decord returns.

    Bit-equal to `frame.to_ndarray(format="rgb24", ...)`, but through one VideoReformatter per thread, which
    keeps FFmpeg's scaler between frames: 0.7 ms instead of 17 ms for a 1080x720 frame here.
    """
    reformatter = getattr(_LOCAL, "reformatter", None)
    if reformatter is None:
        reformatter = _LOCAL.reformatter = VideoReformatter()
    h, w = out_hw if rotation % 180 == 0 else out_hw[::-1]  # scale in coded orientation, then rotate
    if (h, w) != (frame.height, frame.width):
        rgb = reformatter.reformat(frame, format="rgb24", width=w, height=h, interpolation="AREA").to_ndarray()
    else:
        rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
    if rotation:
        rgb = rotate(rgb, rotation)
    return rgb


def rotate(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """`np.rot90(rgb, rotation // 90)` as a new contiguous array [H', W', 3], moving whole 3-byte pixels.

    The same bytes as `np.ascontiguousarray(np.rot90(rgb, k))`, 2x faster: numpy's strided copy of a
    1-byte channel axis costs more than the decode of a 1080p frame.
    """
    pixels = rgb.view(np.dtype("V3"))[..., 0]  # [H, W], one 3-byte element per pixel (a view)
    turned = np.ascontiguousarray(np.rot90(pixels, k=rotation // 90))  # [W, H] (or [H, W] for 180)
    return turned.view(np.uint8).reshape(*turned.shape, 3)
