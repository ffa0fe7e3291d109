"""Video decoding and one pipeline per model family, a file ``<model_type>.py`` each, found by :mod:`.registry`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Pipeline
    from .preprocess import FrameResizer


def load_pipeline(model: str, device: str = "auto", dtype: str = "auto") -> Pipeline:
    """Load a checkpoint (hub repo id or local directory) and wrap it in its family's pipeline.

    Raises :class:`~.errors.ModelError` (one line) for a missing, unreadable or unsupported model.
    """
    from .loading import load_config, resolve_checkpoint, resolve_device, resolve_dtype
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


def frame_resizer(model: str, device: str = "auto") -> FrameResizer | None:
    """The frame resizer ``load_pipeline(model, device)`` will have (its ``frame_resizer()``), read from the
    checkpoint's config and preprocessor config only (no weights), so frames can be resized to the model's input
    size while they decode, before and while the model loads.

    Best effort: None (frames then keep their decoded size) for anything it cannot read without a download,
    including every error loading the model would raise; loading reports those.
    """
    import json

    from .loading import checkpoint_preprocess, resolve_device
    from .random_init import is_random, random_preprocess
    from .registry import family

    try:
        torch_device = resolve_device(device)
        if is_random(model):
            adapter, cfg = random_preprocess(model)
        else:
            from pathlib import Path

            path = Path(model).expanduser()
            if not path.is_dir():
                from huggingface_hub import snapshot_download

                path = Path(snapshot_download(model, allow_patterns=["*.json"], local_files_only=True))
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
            adapter, cfg = family(model_type, repr(model)), checkpoint_preprocess(path, model)
        adapter.input_size(cfg, 2, 1080, 1920)  # a config the family cannot read: not here
        return adapter.resizer(cfg, torch_device)
    except Exception:  # noqa: BLE001 - loading the model says what is wrong, in one line
        return None


def llm_depth(model: str) -> int | None:
    """The language model's decoder layer count, read from ``model``'s config.json without loading anything: a
    local directory, a ``random:`` spec, or a hub repo whose config is already in the local cache. None when it
    cannot be told that cheaply or the file is not what it should be (loading the model then says what is wrong).
    """
    import json
    from pathlib import Path

    from .random_init import PREFIX, is_random

    if is_random(model):
        from .errors import ModelError
        from .random_init import read_config_file

        try:
            raw = read_config_file(model.removeprefix(PREFIX))[1]
        except ModelError:
            return None
    else:
        path = Path(model).expanduser() / "config.json"
        if not path.is_file():
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(model, "config.json")
            except Exception:  # noqa: BLE001 - not a repo id: loading says so
                return None
            if not isinstance(cached, str):
                return None
            path = Path(cached)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    if not isinstance(raw, dict):
        return None
    text = raw.get("text_config")  # LLaVA-OV, Qwen3-VL; Qwen2.5-VL checkpoints keep the LLM's fields at the top
    depth = (text.get("num_hidden_layers") if isinstance(text, dict) else None) or raw.get("num_hidden_layers")
    return depth if isinstance(depth, int) and not isinstance(depth, bool) and depth > 0 else None

