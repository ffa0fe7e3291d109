"""Video decoding and one pipeline per model family, a file ``<model_type>.py`` each, found by :mod:`.registry`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Pipeline


def load_pipeline(model: str, device: str = "auto", dtype: str = "auto") -> Pipeline:
    """Load a checkpoint (hub repo id or local directory) and wrap it in its family's pipeline.

    Raises :class:`~.errors.ModelError` (one line) for a missing, unreadable or unsupported model.
    """
    from .base import load_config, resolve_checkpoint, resolve_device, resolve_dtype
    from .random_init import is_random, load_random
    from .registry import family

    torch_device = resolve_device(device)  # before any download: a device that is not there fails at once
    torch_dtype = resolve_dtype(dtype, torch_device)
    if is_random(model):  # random:NAME or random:PATH, full-size architectures for timing (random_init.py)
        return load_random(model, torch_device, torch_dtype)
    path = resolve_checkpoint(model)
    config = load_config(path, model)
    adapter = family(getattr(config, "model_type", None), repr(model))
    return adapter.from_pretrained(path, model, config, torch_device, torch_dtype)
