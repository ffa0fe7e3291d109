"""A video checked against a model family's input rules before anything is decoded or loaded: the geometry the
family's resize rule refuses (Qwen's aspect ratio over 200), and a video whose visual tokens alone do not fit the
model's context. Read from the frame map's size and count and the checkpoint's config files, never the weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PromptTooLongError, VideoError

if TYPE_CHECKING:
    from .base import Pipeline
    from .preprocess import PreprocessConfig


class InputRules:
    """A family's input rules for one checkpoint: its resize rule, its visual token count, its context, and the
    width D of its visual features (the LLM's hidden size; None when not read) and its vision tower's (hidden size,
    layers) (None when not read), for memory plans."""

    def __init__(self, adapter: type[Pipeline], cfg: PreprocessConfig, context: int | None, name: str,
                 hidden: int | None = None, vision: tuple[int, int] | None = None):
        self.adapter, self.cfg, self.context, self.name, self.hidden = adapter, cfg, context, name, hidden
        self.vision = vision

    def input_size(self, path: str, frames: int, height: int, width: int) -> tuple[int, int]:
        """(height, width) the family resizes ``frames`` frames of (height, width) px to; VideoError (one line
        naming the file and its size) where the family's rule refuses that geometry."""
        try:
            return tuple(self.adapter.input_size(self.cfg, frames, height, width))
        except ValueError as exc:  # the family's own rule (e.g. Qwen's smart_resize: aspect ratio below 200)
            raise VideoError(f"{path}: its {width}x{height} frames cannot be given to {self.name!r}: {exc}") from None

    def check(self, path: str, frames: int, height: int, width: int, kept: Callable[[int], int],
              new_tokens: int = 0) -> int:
        """Refuse, before decoding, ``frames`` frames of (height, width) px whose video tokens, ``kept(N)`` of the
        N the encoder makes (a lower bound of what the method keeps), and ``new_tokens`` already pass the context.
        Returns N. Raises VideoError for a refused geometry, PromptTooLongError for the length."""
        h, w = self.input_size(path, frames, height, width)
        n = self.adapter.visual_tokens(self.cfg, frames, h, w)
        k = kept(n)
        if self.context is not None and k + new_tokens > self.context:
            generated = f" and {new_tokens:,} more to generate" if new_tokens else ""
            lower = "lower --frames or --max-frames (or --fps)" + (
                ", or --keep" if k < n else ", or compress the video (--method, --keep)")
            raise PromptTooLongError(
                f"{path}: the video alone is {k:,} tokens ({frames:,} frames of {width}x{height}, {n:,} visual "
                f"tokens before compression){generated}, past the {self.context:,}-token context of {self.name!r}; "
                f"{lower}")
        return n


def input_rules(model: str) -> InputRules | None:
    """``model``'s input rules read from its config files only (a local directory or the hub cache; ``random:``
    specs have no context read). None for anything that cannot be read cheaply: loading the model says why."""
    from .loading import checkpoint_preprocess
    from .random_init import is_random, random_preprocess
    from .registry import family

    try:
        if is_random(model):
            from .random_init import read_config_file

            adapter, cfg = random_preprocess(model)
            raw = read_config_file(model.removeprefix("random:"))[1]
            return InputRules(adapter, _patched(cfg, raw.get("vision_config")), None, model, _hidden(raw),
                              _vision(raw.get("vision_config")))
        path = Path(model).expanduser()
        if not path.is_dir():
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model, allow_patterns=["*.json"], local_files_only=True))
        config = json.loads((path / "config.json").read_text())
        adapter, cfg = family(config.get("model_type"), repr(model)), checkpoint_preprocess(path, model)
        cfg = _patched(cfg, config.get("vision_config"))
        adapter.input_size(cfg, 2, 1080, 1920)  # a config the family cannot read: not here
    except Exception:  # noqa: BLE001 - loading the model says what is wrong, in one line
        return None
    return InputRules(adapter, cfg, _context(path, config), model, _hidden(config),
                      _vision(config.get("vision_config")))


def rules_of(pipeline: Pipeline) -> InputRules:
    """The input rules of a loaded pipeline (its own preprocessor config, context and hidden size)."""
    config = pipeline.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return InputRules(type(pipeline), _patched(pipeline.preprocess_config, getattr(config, "vision_config", None)),
                      pipeline.context_limit(), pipeline.name, getattr(text, "hidden_size", None),
                      _vision(getattr(config, "vision_config", None)))


def _hidden(config: dict) -> int | None:
    """The text config's hidden size (the width of the projected visual features), or None."""
    hidden = (config.get("text_config") or config).get("hidden_size") or config.get("hidden_size")
    return int(hidden) if isinstance(hidden, int) and hidden > 0 else None


def _context(path: Path, config: dict) -> int | None:
    """As ``Pipeline.context_limit``: the text config's max_position_embeddings, or the tokenizer's smaller limit."""
    text = config.get("text_config") or config
    limit = text.get("max_position_embeddings") or config.get("max_position_embeddings")
    try:
        tokenizer_limit = json.loads((path / "tokenizer_config.json").read_text()).get("model_max_length")
    except (OSError, ValueError):
        tokenizer_limit = None
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 10**8:
        limit = min(limit, tokenizer_limit) if limit else tokenizer_limit
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def _vision(vision: object) -> tuple[int, int] | None:
    """(hidden size, layers) of a vision config (a dict or a config object; SigLIP's names or Qwen's), or None."""
    get = vision.get if isinstance(vision, dict) else (lambda k: getattr(vision, k, None))
    hidden = get("hidden_size") or get("embed_dim")
    layers = get("num_hidden_layers") or get("depth")
    ok = all(isinstance(v, int) and v > 0 for v in (hidden, layers))
    return (int(hidden), int(layers)) if vision is not None and ok else None


def _patched(cfg: PreprocessConfig, vision: object) -> PreprocessConfig:
    """``cfg`` with the vision config's patch size: LLaVA-OneVision's preprocessor config states none (the default
    14 then undercounts a patch-8 tower's tokens 4x, as on the demo model); Qwen's states the same as its tower."""
    import dataclasses

    patch = vision.get("patch_size") if isinstance(vision, dict) else getattr(vision, "patch_size", None)
    return dataclasses.replace(cfg, patch_size=patch) if isinstance(patch, int) and patch > 0 else cfg
