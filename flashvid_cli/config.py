"""What one question asks besides the model: :class:`AskConfig` (sampling, compression, generation) checked as it is
made, its defaults, and :class:`ConfigError`, the error of an option out of range or contradicting another."""

from __future__ import annotations

from dataclasses import dataclass, field

from .pipelines.errors import VidqError

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
DEFAULT_METHOD = "flashvid"


class ConfigError(VidqError):
    """Options that contradict each other or are out of range."""


@dataclass(frozen=True)
class AskConfig:
    """Everything about one question except the model: sampling, compression and generation."""

    method: str = DEFAULT_METHOD
    keep: float = 0.25
    options: dict[str, str] = field(default_factory=dict)  # the method's own options, e.g. {"reference": "true"}
    frames: int | None = None
    fps: float | None = None
    max_frames: int = 32
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    decoder: str = "auto"
    seek: str = "exact"  # "keyframe": each sampled frame snapped to the nearest keyframe (approximate, faster)
    decode_timeout_s: float | None = 120.0
    text_after_video: str | None = None  # Qwen2.5-VL only: "hf" (default) or "qwen"
    tokens: int | None = None  # visual tokens the LLM should see; replaces keep (searched per method and clip)
    tokens_at_most: bool = False  # tokens is a ceiling, not a target (--tokens auto): never more, as close as it can
    stream: bool = False  # preprocess, encode and compress a chunk of frames at a time (flashvid_cli/streaming.py)

    def __post_init__(self) -> None:
        if not (0.0 < self.keep <= 1.0):
            raise ConfigError(f"--keep must be in (0, 1], got {self.keep}")
        if self.tokens is not None and (isinstance(self.tokens, bool) or not isinstance(self.tokens, int)
                                        or self.tokens < 1):
            raise ConfigError(f"--tokens must be an integer >= 1, got {self.tokens!r}")
        if self.frames is not None and self.fps is not None:
            raise ConfigError("give --frames or --fps, not both")
        if self.frames is not None and self.frames < 1:
            raise ConfigError(f"--frames must be at least 1, got {self.frames}")
        if self.fps is not None and not 0 < self.fps < float("inf"):  # nan and inf are no rate
            raise ConfigError(f"--fps must be positive and finite, got {self.fps}")
        if self.decoder != "auto" or self.seek != "exact":  # the defaults need no check (nor the import)
            from .pipelines.video import DECODERS, SEEKS

            if self.decoder not in DECODERS:
                raise ConfigError(f"--decoder {self.decoder!r} is unknown; choose one of: {', '.join(DECODERS)}")
            if self.seek not in SEEKS:
                raise ConfigError(f"--seek {self.seek!r} is unknown; choose one of: {', '.join(SEEKS)}")
            if self.seek == "keyframe" and self.decoder == "decord":
                raise ConfigError("--seek keyframe decodes keyframes with PyAV: use --decoder auto or pyav, not decord")
        if self.max_frames < 1:
            raise ConfigError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")
