"""Build tiny, randomly initialised checkpoints of the real LLaVA-OneVision and Qwen2.5-VL classes, offline.

They load with the same ``from_pretrained(local_dir)`` path as the real models, so the whole pipeline runs with
no network: ``python samples/build_tiny_models.py /tmp/tiny`` then ``vidq ask VIDEO Q --model /tmp/tiny/llava``.
Answers are nonsense (random weights); the point is the plumbing. Each checkpoint is well under 1 MB and takes a
fraction of a second to build, so tests build them in a session fixture instead of committing binaries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flashvid_cli.pipelines.tiny import (  # shared with the random full-size builder
    LLAVA_CHAT_TEMPLATE,
    LLAVA_SPECIAL,
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIAL,
    build_tokenizer,
    llava_preprocessors,
    qwen_preprocessor,
)


def _save_common(model, tok, out: Path, chat_template: str, preprocessor: dict, video_preprocessor: dict | None):
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.chat_template = chat_template
    tok.save_pretrained(out)
    (out / "chat_template.jinja").write_text(chat_template)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    if video_preprocessor is not None:
        (out / "video_preprocessor_config.json").write_text(json.dumps(video_preprocessor, indent=2))
    return out


def build_llava_onevision(out: str | Path, seed: int = 0) -> Path:
    """Tiny ``LlavaOnevisionForConditionalGeneration``: SigLIP 2 layers x 32 wide at 112 px, Qwen2 2 layers x 64."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    tok = build_tokenizer(LLAVA_SPECIAL)
    vision = dict(
        model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, image_size=112, patch_size=14,
    )
    text = dict(
        model_type="qwen2", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[[112, 112], [112, 224], [224, 112], [224, 224]], tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image, video = llava_preprocessors(112)
    return _save_common(model, tok, Path(out), LLAVA_CHAT_TEMPLATE, image, video)


def build_qwen2_5_vl(out: str | Path, seed: int = 0) -> Path:
    """Tiny ``Qwen2_5_VLForConditionalGeneration``: vision depth 2 x 32 wide (window attention + one full block)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = build_tokenizer(QWEN_SPECIAL)
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIAL}
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
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    preprocessor = qwen_preprocessor(min_pixels=56 * 56, max_pixels=112 * 112)
    return _save_common(model, tok, Path(out), QWEN_CHAT_TEMPLATE, preprocessor, None)


BUILDERS = {"llava_onevision": build_llava_onevision, "qwen2_5_vl": build_qwen2_5_vl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write <out>/llava_onevision and <out>/qwen2_5_vl into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, build in BUILDERS.items():
        path = build(args.out / name, seed=args.seed)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
