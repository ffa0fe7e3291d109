"""LLaVA-OneVision: SigLIP -> projector -> bilinear 2x2 pooling per frame -> tokens, one ``image_newline`` at the end.

What differs from the base: a fixed square resize, the pooling of the importance map exactly like the features,
and the newline token appended after the (compressed) video. Positions stay contiguous 1-D, as FlashVID does
on this family (ALGORITHMS.md 1.4), so the prompt just holds K + 1 video placeholders.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..kernels import Compressed, Grid
from .attention import capture_inputs, received_attention
from .base import EncodedVideo, Pipeline, Pixels
from .preprocess import normalize, resize, to_tensor


class LlavaOnevisionPipeline(Pipeline):
    model_type = "llava_onevision"
    model_class = "LlavaOnevisionForConditionalGeneration"
    video_token = "<video>"
    extra_video_tokens = 1  # one image_newline after the whole video

    def preprocess(self, frames: np.ndarray, timestamps: list[float]) -> Pixels:
        cfg = self.preprocess_config
        size = cfg.size or {}
        if "height" not in size or "width" not in size:
            raise ValueError(f"expected size {{height, width}} in the video preprocessor config, got {size}")
        video = resize(to_tensor(frames, self.device), size["height"], size["width"], cfg.resample)
        return Pixels(normalize(video, cfg), frames=len(frames))

    def _feature_layer(self) -> int:
        """Index of the SigLIP layer whose output is the feature (and whose attention is the importance)."""
        config = self.model.config
        layer = config.vision_feature_layer
        layer = layer[-1] if isinstance(layer, (list, tuple)) else layer
        depth = config.vision_config.num_hidden_layers
        return depth + layer if layer < 0 else layer - 1

    def encode(self, pixels: Pixels, need: frozenset[str] = frozenset()) -> EncodedVideo:
        inner = self.model.model
        config = self.model.config
        attn = _encoder_layers(inner.vision_tower)[self._feature_layer()].self_attn

        def layer_stats(mod: Any, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
            hidden = kwargs.get("hidden_states", args[0] if args else None)  # [T, L, C]
            shape = (*hidden.shape[:-1], -1, mod.head_dim)
            q = mod.q_proj(hidden).view(shape).transpose(1, 2)
            k = mod.k_proj(hidden).view(shape).transpose(1, 2)  # [T, heads, L, d]
            importance = received_attention(q, k, mod.scale) if "importance" in need else None
            metric = k.float().mean(1) if "metric" in need else None  # [T, L, d]
            return importance, metric

        values = pixels.values.to(self.dtype)[None]  # [1, T, 3, H, W]
        with torch.no_grad(), capture_inputs(attn, layer_stats) as stats:
            out = inner.get_video_features(
                values,
                vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
            )
        T = pixels.frames
        feats = out.pooler_output[0, :-1].reshape(T, -1, out.pooler_output.shape[-1])  # drop image_newline
        side = int(round(feats.shape[1] ** 0.5))
        importance, metric = stats[0] if stats else (None, None)
        drop_cls = config.vision_feature_select_strategy == "default"
        return EncodedVideo(
            feats=feats,
            grid=Grid(T, side, side),
            importance=self._pool(importance, drop_cls),
            metric=self._pool(metric, drop_cls),
        )

    def _pool(self, per_patch: Tensor | None, drop_cls: bool) -> Tensor | None:
        """Pool a per-patch map [T, L] or [T, L, d] exactly as the features are pooled (bilinear 2x2)."""
        if per_patch is None:
            return None
        x = per_patch[:, 1:] if drop_cls else per_patch
        squeeze = x.ndim == 2
        pooled = self.model.model.apply_pooling(x[..., None] if squeeze else x)
        return pooled[..., 0] if squeeze else pooled

    def inputs(self, encoded: EncodedVideo, compressed: Compressed, question: str,
               text_after_video: str | None = None) -> dict[str, Any]:
        newline = self.model.model.image_newline.to(compressed.tokens.device, compressed.tokens.dtype)
        video = torch.cat([compressed.tokens, newline[None]], dim=0)[None]  # [1, K + 1, D]
        input_ids = self.expand_prompt(question, video.shape[1])
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=video)},
        }


def _encoder_layers(tower: Any) -> Any:
    """SigLIP encoder layers, whether the tower is wrapped in ``vision_model`` or not (transformers versions)."""
    return getattr(tower, "vision_model", tower).encoder.layers
