"""vidq's torch preprocessing equals the HF video processors' pixel values (needs torchvision: the GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashvid_cli.pipelines.base import read_json
from flashvid_cli.pipelines.preprocess import PreprocessConfig, patchify, smart_resize

try:
    import torchvision  # noqa: F401
except ImportError:
    torchvision = None
needs_torchvision = pytest.mark.skipif(
    torchvision is None,
    reason="HF video processors need torchvision (no CPU build on PyPI; the README's Tests section says how to run this)",
)


def _frames(count: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _ours(tiny_models, family: str, shape: tuple[int, int, int]):
    """The family's tiny checkpoint, a random clip of ``shape`` and vidq's pixels for it."""
    from flashvid_cli.pipelines import load_pipeline

    path = tiny_models[family]
    pipe = load_pipeline(str(path), device="cpu", dtype="float32")
    frames = _frames(*shape)
    return path, frames, pipe.preprocess(frames, list(range(len(frames))))


@needs_torchvision
@pytest.mark.parametrize("shape", [(4, 90, 150), (3, 384, 384), (5, 241, 433)])
def test_llava_onevision_pixels_equal_hf(tiny_models, shape):
    from transformers import LlavaOnevisionVideoProcessor

    path, frames, ours = _ours(tiny_models, "llava_onevision", shape)
    hf = LlavaOnevisionVideoProcessor(**read_json(path, "video_preprocessor_config.json"))
    expected = hf(videos=[frames], return_tensors="pt")["pixel_values_videos"][0]
    torch.testing.assert_close(ours.values, expected, rtol=0, atol=0)


@needs_torchvision
@pytest.mark.parametrize("shape", [(4, 90, 150), (5, 241, 433), (2, 720, 1280)])
def test_qwen2_5_vl_pixels_equal_hf(tiny_models, shape):
    from transformers import Qwen2VLVideoProcessor

    path, frames, ours = _ours(tiny_models, "qwen2_5_vl", shape)
    hf = Qwen2VLVideoProcessor(**read_json(path, "preprocessor_config.json"))
    out = hf(videos=[frames], return_tensors="pt", cap_pixels_per_frame=False)
    assert ours.meta["grid_thw"].tolist() == out["video_grid_thw"].tolist()
    torch.testing.assert_close(ours.values, out["pixel_values_videos"], rtol=0, atol=0)


def test_smart_resize_and_patchify_shapes():
    cfg = PreprocessConfig(mean=(0.5,) * 3, std=(0.5,) * 3)
    assert smart_resize(90, 150, 28, 56 * 56, 112 * 112) == (84, 140)
    patches, grid = patchify(torch.zeros(3, 3, 56, 84), cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size)
    assert grid == (2, 4, 6) and patches.shape == (2 * 4 * 6, 3 * 2 * 14 * 14)
