"""vidq's torch preprocessing equals the HF video processors' pixel values (needs torchvision: the GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashvid_cli.pipelines.loading import read_json
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


@needs_torchvision
@pytest.mark.parametrize("cap", [False, True])
@pytest.mark.parametrize("shape", [(4, 90, 150), (5, 241, 433), (2, 720, 1280), (8, 20, 300)])
def test_qwen3_vl_pixels_and_prompt_equal_hf(tiny_models, shape, cap):
    """Pixels, grid, per-frame timestamps and placeholder expansion equal Qwen3VLVideoProcessor/Qwen3VLProcessor's,
    with and without the per-frame pixel cap (a small ``max_video_tokens`` makes the cap bind)."""
    import dataclasses

    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    from flashvid_cli.pipelines import load_pipeline
    from flashvid_cli.pipelines.prompt import chat_prompt

    path = tiny_models["qwen3_vl"]
    pipe = load_pipeline(str(path), device="cpu", dtype="float32")
    pipe.preprocess_config = dataclasses.replace(pipe.preprocess_config, cap_pixels_per_frame=cap, max_video_tokens=6)
    frames = _frames(*shape)
    indices, fps = [3 + 7 * i for i in range(len(frames))], 8.0
    ours = pipe.preprocess(frames, [i / fps for i in indices])
    settings = {**read_json(path, "video_preprocessor_config.json"), "cap_pixels_per_frame": cap, "max_video_tokens": 6}
    video_processor = Qwen3VLVideoProcessor(**settings)
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=pipe.tokenizer,
                                 video_processor=video_processor)
    # transformers 5.x expands a bare <|video_pad|> (it would nest the template's start/end marks around the blocks).
    text = chat_prompt(pipe.tokenizer, pipe.chat_template, "What happens?").replace(
        "<|vision_start|><|video_pad|><|vision_end|>", "<|video_pad|>")
    metadata = VideoMetadata(total_num_frames=indices[-1] + 1, fps=fps, frames_indices=indices)
    out = processor(text=[text], videos=[frames], return_tensors="pt",
                    videos_kwargs={"video_metadata": [metadata], "do_sample_frames": False})
    assert ours.meta["grid_thw"].tolist() == out["video_grid_thw"].tolist()
    torch.testing.assert_close(ours.values, out["pixel_values_videos"], rtol=0, atol=0)
    t, h, w = out["video_grid_thw"][0].tolist()
    ids = pipe.prompt_ids("What happens?", [h * w // 4] * t, ours.meta["timestamps"].tolist())
    assert ids == out["input_ids"][0].tolist()


def test_smart_resize_and_patchify_shapes():
    cfg = PreprocessConfig(mean=(0.5,) * 3, std=(0.5,) * 3)
    assert smart_resize(90, 150, 28, 56 * 56, 112 * 112) == (84, 140)
    patches, grid = patchify(torch.zeros(3, 3, 56, 84), cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size)
    assert grid == (2, 4, 6) and patches.shape == (2 * 4 * 6, 3 * 2 * 14 * 14)
