"""Full-size architectures with random weights, built from a config JSON: timing on a GPU with no download.

    load_random("llava-onevision-7b", device, dtype)      # a config kept in pipelines/configs/
    load_random("/path/to/config.json" or "/path/to/checkpoint-dir", device, dtype)

The model is built on the target device inside ``no_init_weights()`` (no slow default init), then every
parameter is filled with ``normal_(0, 0.02)`` and norm weights with 1 (biases of norms 0). Not meta +
``to_empty``: that leaves computed buffers such as the rotary ``inv_freq`` as garbage. The tokenizer is the
offline stand-in of :mod:`.tiny` with the family's special tokens; the chat template and preprocessor config are
the family's stand-ins (its file in this package); the special tokens' ids in the config are replaced by the
tokenizer's (all below 8, so inside any vocabulary), the vocabulary size stays the
real one so the embedding and LM head cost what they really cost. Answers are meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .base import Pipeline
from .errors import ModelError
from .preprocess import PreprocessConfig
from .tiny import build_tokenizer, special_ids

PREFIX = "random:"
CONFIGS = Path(__file__).parent / "configs"
INIT_STD = 0.02


def full_size_configs() -> list[str]:
    """Names of the config JSONs kept in the package (``random:NAME``)."""
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


def is_random(model: str) -> bool:
    return model.startswith(PREFIX)


def read_config_file(spec: str) -> tuple[Path, dict[str, Any]]:
    """``NAME`` of a kept config (``pipelines/configs/NAME.json``), a config.json path, or a checkpoint directory ->
    (the config.json file, its dict), read without loading any weights. Raises ModelError for no such config or a
    file that is not JSON."""
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    elif not path.exists() and (CONFIGS / f"{spec}.json").is_file():
        path = CONFIGS / f"{spec}.json"
    if not path.is_file():
        raise ModelError(
            f"--model {PREFIX}{spec}: no such config; use one of {', '.join(full_size_configs())} "
            "or a path to a config.json"
        )
    try:
        return path, json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"--model {PREFIX}{spec}: cannot read {path}: {exc}") from None


def _preprocessor(config_file: Path, adapter: type[Pipeline], config: Any) -> dict[str, Any]:
    """The preprocessor config beside the config file if there is one, else the real family's."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (config_file.parent / name).is_file() and config_file.parent != CONFIGS:
            return json.loads((config_file.parent / name).read_text())
    return adapter.stand_in_preprocessor(config)


def _point_special_tokens(raw: dict[str, Any], adapter: type[Pipeline], tok: Any) -> dict[str, Any]:
    """Replace the config's special-token ids with the stand-in tokenizer's."""
    ids = special_ids(tok, adapter.special_tokens)
    raw = json.loads(json.dumps(raw))
    text = raw.setdefault("text_config", {})
    text.update(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None)
    adapter.point_special_tokens(raw, ids)
    if max(ids.values()) >= text.get("vocab_size", 0):
        raise ModelError(f"the config's vocab_size {text.get('vocab_size')} is too small for the stand-in tokenizer")
    return raw


@torch.no_grad()
def fill_random(model: torch.nn.Module, std: float = INIT_STD, seed: int = 0) -> None:
    """Parameters ~ N(0, std); weights of norm layers 1 and their biases 0."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for module in model.modules():
        is_norm = isinstance(module, torch.nn.LayerNorm) or "norm" in type(module).__name__.lower()
        for name, param in module.named_parameters(recurse=False):
            if is_norm:
                param.fill_(1.0 if name == "weight" else 0.0)
            else:
                param.normal_(0.0, std, generator=generator)


def random_preprocess(spec: str) -> tuple[type[Pipeline], PreprocessConfig]:
    """The family and preprocessor config ``random:SPEC`` will have, without building the model."""
    import transformers

    from .registry import family

    config_file, raw = read_config_file(spec.removeprefix(PREFIX))
    adapter = family(raw.get("model_type"), str(config_file))
    config = transformers.AutoConfig.for_model(**raw)
    return adapter, PreprocessConfig.from_dict(_preprocessor(config_file, adapter, config))


def load_random(spec: str, device: torch.device, dtype: torch.dtype) -> Pipeline:
    """Build ``random:SPEC`` on ``device`` in ``dtype`` and wrap it in its family's adapter."""
    import transformers
    from transformers.initialization import no_init_weights

    from .registry import family

    spec = spec.removeprefix(PREFIX)
    config_file, raw = read_config_file(spec)
    adapter = family(raw.get("model_type"), str(config_file))
    tok = build_tokenizer(adapter.special_tokens)
    raw = _point_special_tokens(raw, adapter, tok)
    config = transformers.AutoConfig.for_model(**raw)
    model_cls = getattr(transformers, adapter.model_class)
    with torch.device(device), no_init_weights():
        model = model_cls._from_config(config, dtype=dtype, attn_implementation="sdpa")
    fill_random(model)
    model.eval()
    preprocess = PreprocessConfig.from_dict(_preprocessor(config_file, adapter, config))
    return adapter(model, tok, preprocess, adapter.stand_in_chat_template, f"{PREFIX}{spec}")
