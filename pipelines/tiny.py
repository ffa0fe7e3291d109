"""Offline stand-ins for a checkpoint's non-weight files: a byte-level BPE tokenizer, chat templates, preprocessor configs.

Shared by ``samples/build_tiny_models.py`` (tiny checkpoints for tests) and :mod:`.random_init` (full-size
architectures with random weights for timing), so neither needs a download. The tokenizer is the real
``Qwen2Tokenizer`` class trained on a few sentences; its special tokens take the lowest ids, so they fall inside
any model's vocabulary.
"""

from __future__ import annotations

import json
from typing import Any

# The chat templates of the real checkpoints' processors, reduced to what a video question needs.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{{'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'video' %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAVA_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
QWEN_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_CORPUS = [
    "What happens last in the video? The red square moves to the right and a blue circle appears.",
    "Describe the video. A person walks into the room, picks up a cup and leaves.",
    "How many objects are there? There are three objects: a square, a circle and a triangle.",
    "Which way does the object move? It moves from left to right, then up.",
    "What colour is the background at the end? The background turns green.",
    "system You are a helpful assistant. user assistant",
] * 4


def build_tokenizer(special: list[str], vocab_size: int = 420, corpus: list[str] | None = None) -> Any:
    """A byte-level BPE trained on ``corpus`` (default: a few sentences), wrapped in the real ``Qwen2Tokenizer``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus or _CORPUS, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Qwen2Tokenizer(vocab=state["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": [s for s in special if s != "<|endoftext|>"]})
    return tok


def llava_preprocessors(image_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
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


def qwen_preprocessor(min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 16384) -> dict[str, Any]:
    """The one preprocessor config a Qwen2.5-VL checkpoint ships; its min/max pixels size the video too."""
    return dict(
        image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2_5_VLProcessor",
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2,
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )
