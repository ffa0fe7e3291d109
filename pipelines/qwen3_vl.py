"""Qwen3-VL (dense, and the MoE variant): 16-px patches of two frames -> ViT -> 2x2 merger, plus DeepStack.

What differs from Qwen2.5-VL:

* Layout. Each temporal group (two frames) is its own block in the prompt, as the stock processor and the model's
  training lay it out: ``<{t:.1f} seconds><|vision_start|>`` + the group's video tokens + ``<|vision_end|>``, t the
  mean timestamp of the group's two frames. The chat template's ``<|vision_start|><|video_pad|><|vision_end|>``
  is replaced by those blocks, as the processor Qwen3-VL was released with did (transformers 5.x expands only the
  ``<|video_pad|>`` and would nest the blocks inside the template's marks); a template holding a bare
  ``<|video_pad|>`` works too.
* Positions (interleaved M-RoPE, ``get_rope_index``): every block restarts at the running text position, with
  ``t`` constant and ``h, w`` counting from it; text after a block resumes at ``start + max(H', W')``. There is
  no text-after-video choice to make. After compression the full positions are computed and the columns of the
  kept tokens taken (a merged token takes its representative's), so no token moves; a frame left with no token
  keeps its timestamp and its empty start/end pair.
* Pixel budget: the video ``smart_resize`` counts the frames (``t * h * w`` within ``size``), and
  ``cap_pixels_per_frame`` (from the preprocessor config; off when unset, as the HF processor) caps each frame
  at ``min(max_video_tokens * factor**2, longest_edge // T)``, floored at ``1.05 * shortest_edge``.
* DeepStack: the vision tower also emits features of a few inner layers (``deepstack_visual_indexes``), one per
  early LLM layer, added to the hidden states of the video tokens after those layers. They follow the
  compression (:meth:`~flashvid_cli.kernels.Compressed.carry`): a kept token takes its own; a merged token the
  same weighted merge of its sources' DeepStack features as of its main features; with methods that state no
  weights (FlashVID's ``reference=true``, as the FlashVID reference code does) a merged token takes its
  representative's.
* Importance: attention received in the last vision block (no window permutation here: patches come in merge
  units, raster order), averaged over each 2x2 unit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..kernels import Compressed, Grid
from .attention import capture_inputs, mean_outputs, packed_vision_stats, similarity_band
from .base import EncodedVideo, Pipeline, Pixels
from .errors import ModelError
from .preprocess import PreprocessConfig, normalize, patchify, resize, to_tensor
from .prompt import slot_ids, slotted_prompt
from .tiny import build_tokenizer, point_vision_token_ids, save_checkpoint, special_ids

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)
# The chat template of the real checkpoints (no default system turn), reduced to what a video question needs.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'video' %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


def video_preprocessor(shortest_edge: int = 128 * 32 * 32, longest_edge: int = 768 * 32 * 32 * 32,
                       patch_size: int = 16) -> dict[str, Any]:
    """The video preprocessor config a Qwen3-VL checkpoint ships (``video_preprocessor_config.json``)."""
    return dict(
        video_processor_type="Qwen3VLVideoProcessor", processor_class="Qwen3VLProcessor",
        size={"shortest_edge": shortest_edge, "longest_edge": longest_edge}, patch_size=patch_size,
        temporal_patch_size=2, merge_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True, resample=3,
        fps=2, min_frames=4, max_frames=768, do_sample_frames=True,
    )


def video_smart_resize(frames: int, height: int, width: int, factor: int, temporal: int, min_pixels: int,
                       max_pixels: int) -> tuple[int, int]:
    """Qwen3-VL's video target size: multiples of ``factor``, ``t * h * w`` within [min_pixels, max_pixels].

    The arithmetic of ``Qwen3VLVideoProcessor``'s ``smart_resize`` (frames count in the budget; sides below
    ``factor`` are scaled up first). A clip shorter than ``temporal`` frames (the processor refuses it) is sized
    as the padded clip of ``temporal`` frames that the model sees. Raises ValueError for an aspect ratio over 200.
    """
    frames = max(frames, temporal)
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {max(height, width) / min(height, width):.1f}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(frames / temporal) * temporal
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def pixel_budget(cfg: PreprocessConfig, frames: int) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a ``frames``-frame clip: ``size``, and the per-frame cap when it is on."""
    size = cfg.size or {}
    if "shortest_edge" not in size or "longest_edge" not in size:
        raise ModelError(f"expected size {{shortest_edge, longest_edge}} in the video preprocessor config, got {size}")
    low, high = int(size["shortest_edge"]), int(size["longest_edge"])
    if cfg.cap_pixels_per_frame:
        factor = cfg.patch_size * cfg.merge_size
        per_frame = max(min(cfg.max_video_tokens * factor * factor, high // frames), int(low * 1.05))
        high = per_frame * frames
    return low, high


def group_timestamps(timestamps: list[float], temporal: int) -> list[float]:
    """Seconds of each temporal group: the last frame's time repeated to fill the last group, then the mean of
    each group's first and last frame (the processor's ``_calculate_timestamps``)."""
    times = list(timestamps)
    if pad := -len(times) % temporal:
        times += [times[-1]] * pad
    return [(times[i] + times[i + temporal - 1]) / 2 for i in range(0, len(times), temporal)]


class Qwen3VLPipeline(Pipeline):
    model_type = "qwen3_vl"
    model_class = "Qwen3VLForConditionalGeneration"
    video_token = "<|video_pad|>"
    special_tokens = SPECIAL_TOKENS
    stand_in_chat_template = CHAT_TEMPLATE

    # -- stand-ins and the tiny checkpoint ------------------------------------------------------------------------
    @classmethod
    def stand_in_preprocessor(cls, config: Any) -> dict[str, Any]:
        return video_preprocessor(patch_size=config.vision_config.patch_size)

    @classmethod
    def point_special_tokens(cls, raw: dict[str, Any], ids: dict[str, int]) -> None:
        point_vision_token_ids(raw, ids)

    @classmethod
    def _tiny_text_config(cls, tok: Any, ids: dict[str, int]) -> dict[str, Any]:
        return dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [2, 3, 3],
                             "mrope_interleaved": True},
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None,
        )

    @classmethod
    def build_tiny(cls, out: Path, seed: int = 0) -> Path:
        """Tiny ``Qwen3VLForConditionalGeneration``: vision depth 3 x 32 wide (DeepStack from blocks 0 and 1 into
        LLM layers 0 and 1), text 2 layers x 64, 16-px patches, at most 24 tokens a frame over 8 frames."""
        import transformers

        tok = build_tokenizer(SPECIAL_TOKENS)
        ids = special_ids(tok, SPECIAL_TOKENS)
        vision = dict(
            depth=3, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
        )
        tokens: dict[str, Any] = {}
        point_vision_token_ids(tokens, ids)
        config_cls = getattr(transformers, cls.model_class.replace("ForConditionalGeneration", "Config"))
        config = config_cls(text_config=cls._tiny_text_config(tok, ids), vision_config=vision,
                            tie_word_embeddings=True, **tokens)
        torch.manual_seed(seed)
        model = getattr(transformers, cls.model_class)(config).eval()
        video = video_preprocessor(shortest_edge=32 * 32 * 4, longest_edge=32 * 32 * 24 * 8, patch_size=16)
        image = {k: v for k, v in video.items() if k != "video_processor_type"}
        image.update(image_processor_type="Qwen2VLImageProcessorFast")
        return save_checkpoint(model, tok, Path(out), CHAT_TEMPLATE, image, video)

    # -- family steps ---------------------------------------------------------------------------------------------
    @classmethod
    def input_size(cls, cfg: PreprocessConfig, frames: int, height: int, width: int) -> tuple[int, int]:
        """Qwen3-VL's video ``smart_resize``: the budget counts every frame (:func:`pixel_budget`)."""
        low, high = pixel_budget(cfg, frames)
        return video_smart_resize(frames, height, width, cfg.patch_size * cfg.merge_size, cfg.temporal_patch_size,
                                  low, high)

    def preprocess(self, frames: np.ndarray, timestamps: list[float]) -> Pixels:
        cfg = self.preprocess_config
        height, width = self.input_size(cfg, len(frames), frames.shape[1], frames.shape[2])
        video = normalize(resize(to_tensor(frames, self.device), height, width, cfg.resample), cfg)
        patches, grid = patchify(video, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size)
        seconds = group_timestamps(timestamps, cfg.temporal_patch_size)
        return Pixels(
            patches,
            frames=len(frames),
            meta={"grid_thw": torch.tensor([grid], device=self.device),
                  "timestamps": torch.tensor(seconds, dtype=torch.float64)},  # [T] seconds of each group
        )

    def encode(self, pixels: Pixels, need: frozenset[str] = frozenset()) -> EncodedVideo:
        """Main features [T, N, D], DeepStack features (``meta["deepstack"]`` [L, T, N, D]: one per injected LLM
        layer), importance [T, N] and key metric [T, N, d] of the last vision block; T temporal groups. The meta
        holds only tensors, so the encoded video can be stored and reloaded."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

        visual = self.model.model.visual
        grid_thw = pixels.meta["grid_thw"]
        merge = visual.spatial_merge_size

        # the last block's tokens: merge units in raster order, one attention segment per temporal group
        layer_stats = packed_vision_stats(need, apply_rotary_pos_emb_vision)

        band = [visual.blocks[i] for i in similarity_band(len(visual.blocks))] if "similarity" in need else []
        with torch.no_grad(), capture_inputs(visual.blocks[-1].attn, layer_stats) as stats, \
                mean_outputs(band) as banded:
            out = self.model.model.get_video_features(pixels.values.to(self.dtype), grid_thw)
        t, h, w = (int(v) for v in grid_thw[0])
        grid = Grid(t, h // merge, w // merge)
        feats = torch.cat(out.pooler_output, dim=0).view(grid.T, grid.N, -1)  # [T, N, D]
        deepstack = torch.stack([torch.cat(layer, dim=0).view(grid.T, grid.N, -1) for layer in out.deepstack_features])
        importance, metric = stats[0] if stats else (None, None)
        unit = merge * merge  # the patches of one merge unit are contiguous, units in raster order
        if importance is not None:
            importance = importance.view(-1, unit).mean(1).view(grid.T, grid.N)
        if metric is not None:
            metric = metric.view(-1, unit, metric.shape[-1]).mean(1).view(grid.T, grid.N, -1)
        similarity = None
        if banded:  # the merger on the band's mean (merge units already in raster order)
            with torch.no_grad():
                similarity = visual.merger(banded[0].to(self.dtype)).float().view(grid.T, grid.N, -1)
        return EncodedVideo(feats, grid, importance, metric, similarity,
                            meta={**pixels.meta, "deepstack": deepstack})

    # -- prompt and positions -----------------------------------------------------------------------------------
    def prompt_ids(self, question: str, counts: list[int], timestamps: list[float]) -> list[int]:
        """Token ids of the chat prompt with the video laid out as one block per temporal group: group ``g`` is
        ``<{t:.1f} seconds><|vision_start|>`` + ``counts[g]`` video tokens + ``<|vision_end|>``."""
        # the question (and a system prompt) are text, never control: <|video_pad|> typed into a question must not
        # become a video token (pipelines/prompt.py, slot_ids)
        text = slotted_prompt(self.tokenizer, self.chat_template, self.video_token, self.name)
        wrapped = VISION_START + self.video_token + VISION_END
        placeholder = wrapped if text.count(wrapped) == 1 else self.video_token
        before, after = text.split(placeholder)
        tok = self.tokenizer
        start, end, pad = (tok.convert_tokens_to_ids(s) for s in (VISION_START, VISION_END, self.video_token))
        ids = slot_ids(tok, before, question)
        for count, seconds in zip(counts, timestamps):
            ids += tok(f"<{seconds:.1f} seconds>", add_special_tokens=False)["input_ids"]
            ids += [start] + [pad] * count + [end]
        return ids + slot_ids(tok, after, question)

    def full_positions(self, encoded: EncodedVideo, question: str) -> tuple[Tensor, Tensor]:
        """Input ids [1, L] of the uncompressed prompt and its M-RoPE positions [3, 1, L] (``get_rope_index``)."""
        grid = encoded.grid
        ids = torch.tensor([self.prompt_ids(question, [grid.N] * grid.T, encoded.meta["timestamps"].tolist())],
                           device=self.device)
        types = (ids == self.model.config.video_token_id).long() * 2
        positions, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=types,
                                                        video_grid_thw=encoded.meta["grid_thw"])
        return ids, positions

    def columns(self, full_ids: Tensor, compressed: Compressed) -> Tensor:
        """Columns [L'] of the full prompt that the compressed prompt is made of, in prompt order.

        Every text column stays; video token k takes the column of its placement (its representative unless the
        method places it elsewhere, ``Compressed.placement``), and the tokens of one
        temporal group sit in their group's block in the method's order. Raises ValueError when the method's
        order is not by group (no method here does that).
        """
        N = compressed.grid.N
        video = (full_ids[0] == self.model.config.video_token_id).nonzero()[:, 0]  # [T*N] raster order
        text = (full_ids[0] != self.model.config.video_token_id).nonzero()[:, 0]
        index = compressed.placement.to(full_ids.device)
        group = index // N
        if group.numel() > 1 and bool((group[1:] < group[:-1]).any()):
            raise ValueError("Qwen3-VL needs the compressed tokens ordered by temporal group")
        block = video[group * N]  # the first column of each token's block sorts it into that block
        keys = torch.cat([text, block])
        order = torch.argsort(keys, stable=True)
        return torch.cat([text, video[index]])[order]

    def inputs(self, encoded: EncodedVideo, compressed: Compressed, question: str,
               text_after_video: str | None = None) -> dict[str, Any]:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        full_ids, full_pos = self.full_positions(encoded, question)
        columns = self.columns(full_ids, compressed)
        input_ids = full_ids[:, columns]
        mrope = full_pos[:, :, columns]  # [3, 1, L']
        text = torch.arange(input_ids.shape[1], device=input_ids.device).view(1, 1, -1)
        deepstack = [compressed.carry(layer) for layer in encoded.meta["deepstack"]]  # each [K, D]
        video = BaseModelOutputWithDeepstackFeatures(
            pooler_output=(compressed.tokens,), deepstack_features=[(layer,) for layer in deepstack]
        )
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "position_ids": torch.cat([text, mrope], dim=0),  # [4, 1, L']: text row, then (t, h, w)
            "mm_encoder_outputs": {"video": video},
        }

    def stock_inputs(self, pixels: Pixels, input_ids: Tensor) -> dict[str, Any]:
        return {
            "pixel_values_videos": pixels.values,
            "video_grid_thw": pixels.meta["grid_thw"],
            "mm_token_type_ids": (input_ids == self.model.config.video_token_id).long() * 2,
        }


class Qwen3VLMoePipeline(Qwen3VLPipeline):
    """Qwen3-VL-MoE: the same vision tower, layout and DeepStack; the LLM's MLPs are mixtures of experts."""

    model_type = "qwen3_vl_moe"
    model_class = "Qwen3VLMoeForConditionalGeneration"

    @classmethod
    def _tiny_text_config(cls, tok: Any, ids: dict[str, int]) -> dict[str, Any]:
        text = super()._tiny_text_config(tok, ids)
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
        return text
