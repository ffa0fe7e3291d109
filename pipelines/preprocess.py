"""Frame preprocessing in plain torch, equal to the HF video processors' pixel values.

The HF video processors need torchvision, which has no CPU build here; these functions read the same
preprocessor config keys and do the same arithmetic: torchvision's uint8 antialiased resize (see ``resize``),
then the processors' fused rescale-and-normalise ``(x - mean/scale) / (std/scale)`` in float32. ``tests/test_preprocess_hf.py`` proves the equality wherever
torchvision is installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

# PIL resample codes used in preprocessor configs -> torch interpolate modes.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class PreprocessConfig:
    """The preprocessor-config keys vidq reads (image or video processor JSON of the checkpoint)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale_factor: float = 1 / 255
    resample: int = 3
    size: dict[str, int] | None = None  # {"height", "width"} (LLaVA) or {"shortest_edge", "longest_edge"} (Qwen)
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    # Qwen3-VL's per-frame pixel cap (qwen-vl-utils' rule; the HF processor's default when unset is off).
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 768

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> PreprocessConfig:
        """Read a processor config dict; Qwen's legacy ``min_pixels``/``max_pixels`` override ``size``."""
        size = dict(cfg.get("size") or {}) or None
        if "min_pixels" in cfg or "max_pixels" in cfg:
            size = dict(size or {})
            size["shortest_edge"] = cfg.get("min_pixels", size.get("shortest_edge"))
            size["longest_edge"] = cfg.get("max_pixels", size.get("longest_edge"))
        return cls(
            mean=tuple(cfg.get("image_mean", (0.5, 0.5, 0.5))),
            std=tuple(cfg.get("image_std", (0.5, 0.5, 0.5))),
            rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
            resample=int(cfg.get("resample", 3)),
            size=size,
            patch_size=int(cfg.get("patch_size", 14)),
            temporal_patch_size=int(cfg.get("temporal_patch_size", 2)),
            merge_size=int(cfg.get("merge_size", 2)),
            cap_pixels_per_frame=bool(cfg.get("cap_pixels_per_frame") or False),
            max_video_tokens=int(cfg.get("max_video_tokens", 768)),
        )

    @classmethod
    def from_file(cls, path: str) -> PreprocessConfig:
        with open(path) as f:
            return cls.from_dict(json.load(f))


def to_tensor(frames: np.ndarray | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """uint8 frames [T, H, W, 3] -> uint8 [T, 3, H, W] on ``device``."""
    video = torch.as_tensor(frames) if isinstance(frames, np.ndarray) else frames
    return video.to(device).permute(0, 3, 1, 2).contiguous()


def resize(video: Tensor, height: int, width: int, resample: int = 3) -> Tensor:
    """uint8 [T, 3, H, W] -> uint8 [T, 3, height, width], exactly as torchvision resizes uint8 tensors.

    torchvision (which the HF processors call) returns the input when the size is unchanged, resizes uint8 natively
    on CPU (torch's fixed-point antialiased kernels), and elsewhere goes through float32, clamps and rounds; the
    two differ by a grey level here and there, so vidq follows the same per-device rule.
    """
    mode = _RESAMPLE.get(resample, "bicubic")
    if tuple(video.shape[-2:]) == (height, width):
        return video
    if mode == "nearest" or (video.device.type == "cpu" and _native_uint8_on_cpu(mode)):
        antialias = mode != "nearest"
        return torch.nn.functional.interpolate(
            video, size=(height, width), mode=mode, align_corners=None if mode == "nearest" else False,
            antialias=antialias,
        )
    out = torch.nn.functional.interpolate(
        video.float(), size=(height, width), mode=mode, align_corners=False, antialias=True
    )
    return out.clamp_(0, 255).round_().to(torch.uint8)


def _native_uint8_on_cpu(mode: str) -> bool:
    """torchvision's rule: bicubic always, bilinear only with AVX2/AVX512 (or on ARM)."""
    if mode != "bilinear":
        return True
    import platform

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def normalize(video: Tensor, cfg: PreprocessConfig) -> Tensor:
    """uint8 [.., 3, H, W] -> float32, the processors' fused ``(x - mean/s) / (std/s)`` with s the rescale factor."""
    mean = torch.tensor(cfg.mean, device=video.device) * (1.0 / cfg.rescale_factor)
    std = torch.tensor(cfg.std, device=video.device) * (1.0 / cfg.rescale_factor)
    return (video.to(torch.float32) - mean[:, None, None]) / std[:, None, None]


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's target size: multiples of ``factor``, area within [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {max(height, width) / min(height, width):.1f}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(video: Tensor, patch: int, merge: int, temporal: int) -> tuple[Tensor, tuple[int, int, int]]:
    """Normalised [T, 3, H, W] -> Qwen flat patches [t*h*w, 3*temporal*patch*patch] and the grid (t, h, w).

    An odd frame count is padded by repeating the last frame, as the HF processor does.
    """
    if pad := -video.shape[0] % temporal:
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)], dim=0)
    T, C, H, W = video.shape
    t, h, w = T // temporal, H // patch, W // patch
    x = video.view(t, temporal, C, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * h * w, C * temporal * patch * patch), (t, h, w)


@dataclass(frozen=True)
class FrameResizer:
    """A model's input size for frames, applied as frames are decoded (``video.decode(..., resize=...)``).

    ``rule(frames, height, width) -> (h, w)`` is the family's ``input_size`` for its preprocessor config; the
    resize is :func:`resize` on ``device`` (torchvision's per-device rule), so frames resized here, a chunk at a
    time, and then preprocessed (the resize a no-op at that size) give the same pixel values, bit for bit, as
    preprocessing the full-size frames. ``max_pixels``: an upper bound on ``h * w`` (None when the rule has none
    cheaper than the source size), for the decoder's memory estimate.
    """

    rule: Callable[[int, int, int], tuple[int, int]]
    resample: int
    device: torch.device
    max_pixels: int | None = None

    def size(self, frames: int, height: int, width: int) -> tuple[int, int]:
        """(height, width) the model's preprocessing resizes ``frames`` frames of (height, width) to."""
        return tuple(self.rule(frames, height, width))

    def __call__(self, frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """uint8 [k, H, W, 3] -> uint8 [k, *size, 3] (on the host)."""
        video = resize(to_tensor(frames, self.device), size[0], size[1], self.resample)  # [k, 3, h, w]
        return video.permute(0, 2, 3, 1).cpu().numpy()
