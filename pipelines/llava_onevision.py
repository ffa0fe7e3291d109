"""LLaVA-OneVision: SigLIP -> projector -> bilinear 2x2 pooling per frame -> tokens, one ``image_newline`` at the end.

What differs from the base: a fixed square resize, the pooling of the importance map exactly like the features,
and the newline token appended after the (compressed) video. Positions stay contiguous 1-D, as FlashVID does
on this family (ALGORITHMS.md 1.4), so the prompt just holds K + 1 video placeholders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..kernels import Compressed, Grid
from .attention import capture_inputs, mean_outputs, received_attention, similarity_band
from .base import EncodedVideo, Pipeline, Pixels
from .errors import ModelError
from .preprocess import PreprocessConfig, normalize, resize, to_tensor
from .tiny import build_tokenizer, save_checkpoint, special_ids

# The chat template of the real checkpoints' processors, reduced to what a video question needs.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{{'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")


def preprocessors(image_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(image, video) preprocessor configs of a LLaVA-OneVision checkpoint: square resize, mean = std = 0.5."""
    video = dict(
        video_processor_type="LlavaOnevisionVideoProcessor", processor_class="LlavaOnevisionProcessor",
        size={"height": image_size, "width": image_size}, resample=3, do_resize=True, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    image = dict(video, image_processor_type="LlavaOnevisionImageProcessor")
    image.pop("video_processor_type")
    return image, video


class LlavaOnevisionPipeline(Pipeline):
    model_type = "llava_onevision"
    model_class = "LlavaOnevisionForConditionalGeneration"
    video_token = "<video>"
    extra_video_tokens = 1  # one image_newline after the whole video
    special_tokens = SPECIAL_TOKENS
    stand_in_chat_template = CHAT_TEMPLATE

    @classmethod
    def stand_in_preprocessor(cls, config: Any) -> dict[str, Any]:
        return preprocessors(config.vision_config.image_size)[1]

    @classmethod
    def point_special_tokens(cls, raw: dict[str, Any], ids: dict[str, int]) -> None:
        raw.update(image_token_index=ids["<image>"], video_token_index=ids["<video>"])

    @classmethod
    def build_tiny(cls, out: Path, seed: int = 0) -> Path:
        """Tiny ``LlavaOnevisionForConditionalGeneration``: SigLIP 2 layers x 32 wide at 112 px, Qwen2 2 layers x 64."""
        from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

        tok = build_tokenizer(SPECIAL_TOKENS)
        ids = special_ids(tok, SPECIAL_TOKENS)
        vision = dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, image_size=112, patch_size=14,
        )
        text = dict(
            model_type="qwen2", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None,
        )
        config = LlavaOnevisionConfig(
            vision_config=vision, text_config=text, image_token_index=ids["<image>"], video_token_index=ids["<video>"],
            vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
            image_grid_pinpoints=[[112, 112], [112, 224], [224, 112], [224, 224]], tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config).eval()
        image, video = preprocessors(112)
        return save_checkpoint(model, tok, Path(out), CHAT_TEMPLATE, image, video)

    @classmethod
    def input_size(cls, cfg: PreprocessConfig, frames: int, height: int, width: int) -> tuple[int, int]:
        """The config's fixed square (any aspect is squashed, as the HF processor does)."""
        size = cfg.size or {}
        if "height" not in size or "width" not in size:
            raise ModelError(f"expected size {{height, width}} in the video preprocessor config, got {size}")
        return int(size["height"]), int(size["width"])

    @classmethod
    def max_input_pixels(cls, cfg: PreprocessConfig) -> int | None:
        h, w = cls.input_size(cfg, 1, 1, 1)
        return h * w

    @classmethod
    def visual_tokens(cls, cfg: PreprocessConfig, frames: int, height: int, width: int) -> int:
        """Each frame's patch grid pooled 2x2 (bilinear, sides rounded up), as ``apply_pooling`` does."""
        return frames * -(-(height // cfg.patch_size) // 2) * -(-(width // cfg.patch_size) // 2)

    def preprocess(self, frames: np.ndarray, timestamps: list[float]) -> Pixels:
        cfg = self.preprocess_config
        height, width = self.input_size(cfg, len(frames), frames.shape[1], frames.shape[2])
        video = resize(to_tensor(frames, self.device), height, width, cfg.resample)
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
        used = _encoder_layers(inner.vision_tower)[: self._feature_layer() + 1]
        band = [used[i] for i in similarity_band(len(used))] if "similarity" in need else []
        with torch.no_grad(), capture_inputs(attn, layer_stats) as stats, mean_outputs(band) as banded:
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
            similarity=self._pool(banded[0], drop_cls) if banded else None,
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

    def stock_inputs(self, pixels: Pixels, input_ids: Tensor) -> dict[str, Any]:
        return {"pixel_values_videos": pixels.values[None]}  # [1, T, 3, H, W]


def _encoder_layers(tower: Any) -> Any:
    """SigLIP encoder layers, whether the tower is wrapped in ``vision_model`` or not (transformers versions)."""
    return getattr(tower, "vision_model", tower).encoder.layers
