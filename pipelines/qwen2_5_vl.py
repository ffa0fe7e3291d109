"""Qwen2.5-VL: patches of two frames -> windowed ViT -> 2x2 merger -> tokens with 3-D M-RoPE positions.

What differs from the base: the dynamic "smart" resize and patch layout, importance read in window order and
averaged over each 2x2 merge unit, and explicit ``position_ids`` for the kept tokens: the full sequence's
positions are computed and the columns of the kept tokens taken (a merged token takes its representative's
position). Without explicit positions generate() would silently fall back to 1-D positions.

Text after the video, two rules (the ``text_after_video`` argument of ``inputs``, per call; None = ``"hf"``):
* ``"hf"`` (default): as transformers 5.x computes it, text resumes at ``start + max(H', W')`` of the video.
  This is what the stock HF model does, so vidq's uncompressed logits equal it bit for bit.
* ``"qwen"``: as the original Qwen2.5-VL code did, text resumes at ``max(video positions) + 1``. On long videos
  the temporal positions pass ``max(H', W')``, so under ``"hf"`` the question's positions overlap the video's;
  ``"qwen"`` avoids that and matches how the model was trained.
Both are computed on the uncompressed sequence, so compression never moves the text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..kernels import Compressed, Grid
from .attention import capture_inputs, mean_outputs, packed_vision_stats, similarity_band
from .base import EncodedVideo, Pipeline, Pixels
from .errors import ModelError
from .preprocess import PreprocessConfig, normalize, patchify, resize, smart_resize, to_tensor
from .tiny import CLIP_MEAN, CLIP_STD, build_tokenizer, point_vision_token_ids, save_checkpoint, special_ids

TEXT_AFTER_VIDEO_RULES = ("hf", "qwen")
# The chat template of the real checkpoints, reduced to what a video question needs.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'video' %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)


def preprocessor(min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 16384) -> dict[str, Any]:
    """The one preprocessor config a Qwen2.5-VL checkpoint ships; its min/max pixels size the video too."""
    return dict(
        image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2_5_VLProcessor",
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2,
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )


class Qwen2_5_VLPipeline(Pipeline):
    model_type = "qwen2_5_vl"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    video_token = "<|video_pad|>"
    text_after_video_rules = TEXT_AFTER_VIDEO_RULES
    text_after_video = "hf"
    special_tokens = SPECIAL_TOKENS
    stand_in_chat_template = CHAT_TEMPLATE

    @classmethod
    def stand_in_preprocessor(cls, config: Any) -> dict[str, Any]:
        return preprocessor()

    @classmethod
    def point_special_tokens(cls, raw: dict[str, Any], ids: dict[str, int]) -> None:
        point_vision_token_ids(raw, ids)

    @classmethod
    def build_tiny(cls, out: Path, seed: int = 0) -> Path:
        """Tiny ``Qwen2_5_VLForConditionalGeneration``: vision depth 2 x 32 wide (window attention + one full block)."""
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        tok = build_tokenizer(SPECIAL_TOKENS)
        ids = special_ids(tok, SPECIAL_TOKENS)
        text = dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None,
        )
        vision = dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
            tokens_per_second=2,
        )
        tokens: dict[str, Any] = {}
        point_vision_token_ids(tokens, ids)
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **tokens)
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
        return save_checkpoint(model, tok, Path(out), CHAT_TEMPLATE, preprocessor(56 * 56, 112 * 112))

    @classmethod
    def input_size(cls, cfg: PreprocessConfig, frames: int, height: int, width: int) -> tuple[int, int]:
        """Qwen2-VL's ``smart_resize`` per frame: multiples of patch x merge, area within min/max pixels."""
        size = cfg.size or {}
        if "shortest_edge" not in size or "longest_edge" not in size:
            raise ModelError(f"expected min/max pixels in the preprocessor config, got {size}")
        return smart_resize(height, width, cfg.patch_size * cfg.merge_size, size["shortest_edge"], size["longest_edge"])

    @classmethod
    def max_input_pixels(cls, cfg: PreprocessConfig) -> int | None:
        size = cfg.size or {}
        low, high = int(size.get("shortest_edge") or 0), size.get("longest_edge")
        return max(int(high), low) if high else None

    def preprocess(self, frames: np.ndarray, timestamps: list[float]) -> Pixels:
        cfg = self.preprocess_config
        height, width = self.input_size(cfg, len(frames), frames.shape[1], frames.shape[2])
        video = normalize(resize(to_tensor(frames, self.device), height, width, cfg.resample), cfg)
        patches, grid = patchify(video, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size)
        # Seconds per temporal group, from the true sampling rate (as qwen-vl-utils passes fps to the processor).
        span = (timestamps[-1] - timestamps[0]) if len(timestamps) > 1 else 0.0
        sample_fps = (len(timestamps) - 1) / span if span > 0 else 1.0
        return Pixels(
            patches,
            frames=len(frames),
            meta={"grid_thw": torch.tensor([grid], device=self.device),
                  "second_per_grid": cfg.temporal_patch_size / sample_fps},
        )

    def encode(self, pixels: Pixels, need: frozenset[str] = frozenset()) -> EncodedVideo:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
        from transformers.vision_utils import get_vision_window_index

        visual = self.model.model.visual
        grid_thw = pixels.meta["grid_thw"]
        merge = visual.spatial_merge_size

        layer_stats = packed_vision_stats(need, apply_rotary_pos_emb_vision)  # tokens in window order

        band = [visual.blocks[i] for i in similarity_band(len(visual.blocks))] if "similarity" in need else []
        with torch.no_grad(), capture_inputs(visual.blocks[-1].attn, layer_stats) as stats, \
                mean_outputs(band) as banded:
            out = self.model.model.get_video_features(pixels.values.to(self.dtype), grid_thw)
        t, h, w = (int(v) for v in grid_thw[0])
        grid = Grid(t, h // merge, w // merge)
        feats = torch.cat(out.pooler_output, dim=0).view(grid.T, grid.N, -1)
        importance, metric = stats[0] if stats else (None, None)
        similarity = None
        if banded:  # the merger on the band's mean, in window order like the tower's own output
            with torch.no_grad():
                similarity = visual.merger(banded[0].to(self.dtype)).float()  # [T*N, Ds] window order
        if importance is not None or metric is not None or similarity is not None:
            window_index, _ = get_vision_window_index(
                grid_thw, spatial_merge_size=merge, window_size=visual.window_size, patch_size=visual.patch_size
            )
            raster = torch.argsort(window_index)
            unit = merge * merge  # the patches of one merge unit are contiguous in window order
            if importance is not None:
                importance = importance.view(-1, unit).mean(1)[raster].view(grid.T, grid.N)
            if metric is not None:
                metric = metric.view(-1, unit, metric.shape[-1]).mean(1)[raster].view(grid.T, grid.N, -1)
            if similarity is not None:
                similarity = similarity[raster].view(grid.T, grid.N, -1)
        return EncodedVideo(feats, grid, importance, metric, similarity, meta=dict(pixels.meta))

    def stock_inputs(self, pixels: Pixels, input_ids: Tensor) -> dict[str, Any]:
        return {
            "pixel_values_videos": pixels.values,
            "video_grid_thw": pixels.meta["grid_thw"],
            "second_per_grid_ts": torch.tensor([pixels.meta["second_per_grid"]]),
            "mm_token_type_ids": (input_ids == self.model.config.video_token_id).long() * 2,
        }

    def full_positions(self, encoded: EncodedVideo, question: str, rule: str | None = None) -> tuple[Tensor, Tensor]:
        """Input ids [1, L] of the uncompressed prompt and its M-RoPE positions [3, 1, L] under ``rule``."""
        rule = rule or self.text_after_video
        if rule not in TEXT_AFTER_VIDEO_RULES:
            raise ValueError(f"text_after_video must be one of {TEXT_AFTER_VIDEO_RULES}, got {rule!r}")
        ids = self.expand_prompt(question, encoded.grid.T * encoded.grid.N)
        video = ids[0] == self.model.config.video_token_id
        types = video.long()[None] * 2
        positions, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=types, video_grid_thw=encoded.meta["grid_thw"],
            second_per_grid_ts=torch.tensor([encoded.meta["second_per_grid"]], device=ids.device),
        )
        if rule == "qwen":
            after = torch.nonzero(video)[-1].item() + 1
            shift = positions[:, 0, : after].max() + 1 - positions[:, 0, after].min()
            positions[:, 0, after:] += shift
        return ids, positions

    def inputs(self, encoded: EncodedVideo, compressed: Compressed, question: str,
               text_after_video: str | None = None) -> dict[str, Any]:
        full_ids, full_pos = self.full_positions(encoded, question, rule=text_after_video)
        video = (full_ids[0] == self.model.config.video_token_id).nonzero()[:, 0]
        first, last = int(video[0]), int(video[-1])
        columns = torch.cat([
            torch.arange(first, device=full_ids.device),
            first + compressed.placement.to(full_ids.device),
            torch.arange(last + 1, full_ids.shape[1], device=full_ids.device),
        ])
        input_ids = full_ids[:, columns]
        mrope = full_pos[:, :, columns]  # [3, 1, L']
        text = torch.arange(input_ids.shape[1], device=input_ids.device).view(1, 1, -1)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "position_ids": torch.cat([text, mrope], dim=0),  # [4, 1, L']: text row, then (t, h, w)
            "mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=(compressed.tokens,))},
        }
