"""Video decoding and one adapter per model family (keyed by the checkpoint's ``model_type``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Pipeline

# model_type -> "module:Class"; adapters are imported only when a model of that family is loaded.
ADAPTERS = {
    "llava_onevision": "llava_onevision:LlavaOnevisionPipeline",
    "qwen2_5_vl": "qwen2_5_vl:Qwen2_5_VLPipeline",
}


def load_pipeline(model: str, device: str = "auto", dtype: str = "auto") -> Pipeline:
    """Load a checkpoint (hub repo id or local directory) and wrap it in its family's adapter."""
    import importlib

    from .base import load_config, resolve_checkpoint, resolve_device, resolve_dtype
    from .errors import ModelError
    from .random_init import is_random, load_random

    if is_random(model):  # random:NAME or random:PATH, full-size architectures for timing (random_init.py)
        torch_device = resolve_device(device)
        return load_random(model, torch_device, resolve_dtype(dtype, torch_device))
    path = resolve_checkpoint(model)
    config = load_config(path, model)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ModelError(
            f"{model!r} is a {model_type or 'unknown'} model; vidq supports {', '.join(ADAPTERS)}"
        )
    module, cls = ADAPTERS[model_type].split(":")
    adapter = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    torch_device = resolve_device(device)
    return adapter.from_pretrained(path, model, config, torch_device, resolve_dtype(dtype, torch_device))
