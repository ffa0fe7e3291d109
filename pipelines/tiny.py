"""Offline stand-ins for a checkpoint's non-weight files: a byte-level BPE tokenizer and a checkpoint writer.

Shared by every family's tiny-checkpoint recipe (``Pipeline.build_tiny``, for tests) and :mod:`.random_init`
(full-size architectures with random weights for timing), so neither needs a download. What differs per family
(special tokens, chat template, preprocessor config) lives in the family's own file. The tokenizer is the real
``Qwen2Tokenizer`` class trained on a few sentences; its special tokens take the lowest ids, so they fall inside
any model's vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def build_tokenizer(special: Sequence[str], vocab_size: int = 420, corpus: list[str] | None = None) -> Any:
    """A byte-level BPE trained on ``corpus`` (default: a few sentences), wrapped in the real ``Qwen2Tokenizer``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus or _CORPUS, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Qwen2Tokenizer(vocab=state["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": [s for s in special if s != "<|endoftext|>"]})
    return tok


def save_checkpoint(model: Any, tok: Any, out: Path, chat_template: str, preprocessor: dict[str, Any],
                    video_preprocessor: dict[str, Any] | None = None) -> Path:
    """Write ``model`` and its stand-in files to ``out`` the way a hub checkpoint lays them out; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.chat_template = chat_template
    tok.save_pretrained(out)
    (out / "chat_template.jinja").write_text(chat_template)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    if video_preprocessor is not None:
        (out / "video_preprocessor_config.json").write_text(json.dumps(video_preprocessor, indent=2))
    return out


def special_ids(tok: Any, special: Sequence[str]) -> dict[str, int]:
    """Token -> id of the stand-in tokenizer's special tokens."""
    return {s: tok.convert_tokens_to_ids(s) for s in special}


def point_vision_token_ids(raw: dict[str, Any], ids: dict[str, int]) -> None:
    """The four vision token ids a Qwen-VL config (or tokenizer config) holds, set to the stand-in tokenizer's."""
    raw.update(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
