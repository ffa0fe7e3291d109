"""The library API the CLI calls: load a model once, ask questions about videos, get typed, timed results.

    from flashvid_cli import ask
    result = ask("clip.mp4", "what happens last?", keep=0.1)
    print(result.answer, result.report.timings.time_to_first_token)
"""

from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .pipelines.errors import VidqError

if TYPE_CHECKING:
    from .pipelines.video import DecodedVideo

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
    decode_timeout_s: float | None = 120.0
    text_after_video: str | None = None  # Qwen2.5-VL only: "hf" (default) or "qwen"

    def __post_init__(self) -> None:
        if not (0.0 < self.keep <= 1.0):
            raise ConfigError(f"--keep must be in (0, 1], got {self.keep}")
        if self.frames is not None and self.fps is not None:
            raise ConfigError("give --frames or --fps, not both")
        if self.frames is not None and self.frames < 1:
            raise ConfigError(f"--frames must be at least 1, got {self.frames}")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"--fps must be positive, got {self.fps}")
        if self.max_frames < 1:
            raise ConfigError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")


@dataclass
class VideoInfo:
    path: str
    decoder: str
    fps: float
    duration_s: float
    total_frames: int
    sampling: str
    frame_indices: list[int]
    timestamps_s: list[float]
    notes: list[str]


@dataclass
class Timings:
    """Seconds per stage, each read after a device synchronisation."""

    decode: float
    preprocess: float
    encode: float
    compress: float
    prefill: float  # prompt assembly and the generate() call up to the first token
    generate: float  # every later token
    total: float
    time_to_first_token: float  # decode start to the first token


@dataclass
class TokenCounts:
    visual_before: int
    visual_after: int  # what the LLM sees, newline token included for LLaVA-OneVision
    ratio: float
    prompt: int
    generated: int


@dataclass
class Report:
    model: str
    model_type: str
    device: str
    dtype: str
    method: str
    keep: float
    method_options: dict[str, Any]
    method_stats: dict[str, Any]
    video: VideoInfo
    tokens: TokenCounts
    timings: Timings
    peak_memory_bytes: int
    peak_memory_kind: str  # "cuda allocated" or "process RSS"
    text_after_video: str | None = None  # Qwen2.5-VL: the rule used for the positions after the video


@dataclass
class AskResult:
    answer: str
    report: Report
    token_ids: list[int] = field(default_factory=list)  # the generated ids, to compare answers token by token

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def set_text_after_video(pipe: Any, requested: str | None) -> str | None:
    """Set Qwen2.5-VL's text-after-video rule on ``pipe`` (the family default when None) and return it; other
    families have no such rule, so asking for one is a ConfigError."""
    if pipe.model_type != "qwen2_5_vl":
        if requested is not None:
            raise ConfigError("--text-after-video applies to Qwen2.5-VL models only")
        return None
    from .pipelines.qwen2_5_vl import TEXT_AFTER_VIDEO_RULES

    rule = requested or type(pipe).text_after_video
    if rule not in TEXT_AFTER_VIDEO_RULES:
        raise ConfigError(f"--text-after-video must be one of {', '.join(TEXT_AFTER_VIDEO_RULES)}")
    pipe.text_after_video = rule
    return rule


def _peak_memory(device: Any) -> tuple[int, str]:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process RSS"


class VideoQA:
    """A loaded model that answers questions about videos; load once, ask many times."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto"):
        from .pipelines import load_pipeline

        started = time.perf_counter()
        self.pipeline = load_pipeline(model, device=device, dtype=dtype)
        self.load_s = time.perf_counter() - started

    @property
    def model_type(self) -> str:
        return self.pipeline.model_type

    @staticmethod
    def decode(video: str | Path, config: AskConfig | None = None) -> DecodedVideo:
        """Decode the frames ``config`` asks for (in a killable worker); safe to run ahead in another thread."""
        from .pipelines.video import decode

        config = config or AskConfig()
        return decode(
            video, frames=config.frames, fps=config.fps, max_frames=config.max_frames,
            decoder=config.decoder, timeout_s=config.decode_timeout_s,
        )

    def ask(
        self, video: str | Path, question: str, config: AskConfig | None = None, decoded: DecodedVideo | None = None
    ) -> AskResult:
        """Decode, encode, compress, generate; every stage timed after a device synchronisation.

        ``decoded`` is the video already decoded by :meth:`decode` with the same config (batch work decodes the
        next video while the model runs); the report's decode time is then only the wait for it, here zero.
        """
        import torch

        from .kernels import build
        from .pipelines.base import GenerationOptions, synchronize

        config = config or AskConfig()
        if not question.strip():
            raise ConfigError("the question is empty")
        pipe = self.pipeline
        method = build(config.method, config.keep, model_type=pipe.model_type, options=config.options)
        rule = set_text_after_video(pipe, config.text_after_video)  # every call: no rule leaks to the next
        device = pipe.device
        torch.manual_seed(config.seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        marks = [time.perf_counter()]

        def lap() -> float:
            synchronize(device)
            marks.append(time.perf_counter())
            return marks[-1] - marks[-2]

        if decoded is None:
            decoded = self.decode(video, config)
        t_decode = lap()
        with torch.inference_mode():
            pixels = pipe.preprocess(decoded.frames, decoded.timestamps)
            t_pre = lap()
            encoded = pipe.encode(pixels, need=method.needs)
            t_enc = lap()
            compressed = method(encoded.feats, encoded.grid, encoded.importance, encoded.metric)
            t_comp = lap()
            inputs = pipe.inputs(encoded, compressed, question)
            t_prompt = lap()
            gen = pipe.generate(inputs, GenerationOptions(config.max_new_tokens, config.temperature))
        lap()
        total = marks[-1] - marks[0]
        peak, peak_kind = _peak_memory(device)

        before = encoded.grid.T * encoded.grid.N + pipe.extra_video_tokens
        after = int(compressed.tokens.shape[0]) + pipe.extra_video_tokens
        stats = {k: v for k, v in compressed.stats.items() if k not in {"tokens_in", "tokens_out"}}
        report = Report(
            model=pipe.name,
            model_type=pipe.model_type,
            device=str(device),
            dtype=str(pipe.dtype).removeprefix("torch."),
            method=method.name,
            keep=method.keep,
            method_options={k: v for k, v in method.options().items() if k != "keep"},
            method_stats=stats,
            video=VideoInfo(
                path=str(video), decoder=decoded.decoder, fps=decoded.fps, duration_s=decoded.duration,
                total_frames=decoded.total_frames, sampling=decoded.sampling,
                frame_indices=list(decoded.indices), timestamps_s=[round(t, 3) for t in decoded.timestamps],
                notes=list(decoded.notes),
            ),
            tokens=TokenCounts(before, after, after / before, gen.prompt_tokens, len(gen.token_ids)),
            timings=Timings(
                decode=t_decode, preprocess=t_pre, encode=t_enc, compress=t_comp, prefill=t_prompt + gen.prefill_s,
                generate=gen.decode_s, total=total,
                time_to_first_token=t_decode + t_pre + t_enc + t_comp + t_prompt + gen.prefill_s,
            ),
            peak_memory_bytes=peak,
            peak_memory_kind=peak_kind,
            text_after_video=rule,
        )
        return AskResult(gen.text, report, list(gen.token_ids))


def ask(
    video: str | Path,
    question: str,
    *,
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    **config: Any,
) -> AskResult:
    """One question about one video; ``config`` takes the fields of :class:`AskConfig` (method, keep, frames...)."""
    return VideoQA(model, device=device, dtype=dtype).ask(video, question, AskConfig(**config))
