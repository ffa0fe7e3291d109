"""What an annotate run is asked to do: its config (model, how each question is asked, the engine), the videos
found under a folder or glob, and the questions read from a file."""

from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api import DEFAULT_MODEL, AskConfig, ConfigError

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts",
    ".3gp", ".ogv",
})
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class AnnotateConfig:
    """The model, how each question is asked, and how the work is spread."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    ask: AskConfig = field(default_factory=AskConfig)
    prefetch: int = 2  # videos decoded ahead of the model (local engine)
    engine: str = "local"
    ray_actors: int = 1  # model replicas (ray engine)
    ray_gpus_per_actor: float = 0.0
    cache_size: str | None = None  # the encoded-video cache's cap (flashvid_cli/cache/); None: no cache
    tokens_auto: bool = False  # --tokens auto: each video gets the visual budget that fills the context (plan.py)

    def open_cache(self) -> Any:
        """The EncodedCache each model replica reads and writes, or None."""
        from ..cache import EncodedCache

        return EncodedCache(max_bytes=self.cache_size) if self.cache_size is not None else None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.prefetch < 0:
            raise ConfigError(f"--prefetch must be >= 0, got {self.prefetch}")
        if self.ray_actors < 1:
            raise ConfigError(f"--ray-actors must be at least 1, got {self.ray_actors}")
        if self.ray_gpus_per_actor < 0:
            raise ConfigError(f"--gpus-per-actor must be >= 0, got {self.ray_gpus_per_actor}")

    def checked(self) -> AskConfig:
        """What a video is checked against before it decodes (``preflight.check_video_fits``): ``ask``, except that
        with ``tokens_auto`` the count is the fewest the budget may give (1), so only a video that cannot fit even
        then is refused undecoded; its real budget is set once it is decoded (``answer_video``)."""
        return dataclasses.replace(self.ask, tokens=1) if self.tokens_auto else self.ask

    def options(self) -> dict[str, Any]:
        """What each line records about how it was made."""
        ask = dataclasses.asdict(self.ask)
        ask.pop("decode_timeout_s")
        if self.tokens_auto:  # the count differs per video (its report has it): the line records the request
            ask["tokens"] = "auto"
        return {"model": self.model, "device": self.device, "dtype": self.dtype, **ask}



def find_videos(spec: str | os.PathLike) -> list[str]:
    """Video files (by extension) under a directory (recursively), matching a glob, or the one file named."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [os.path.abspath(path)]
    roots = [path] if path.is_dir() else [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
    if not roots:
        raise ConfigError(f"{spec}: no such file, directory or matching path")
    found: set[str] = set()
    for root in roots:
        files = root.rglob("*") if root.is_dir() else [root]
        found.update(os.path.abspath(f) for f in files if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file())
    if not found:
        raise ConfigError(f"{spec}: no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    return sorted(found)


def read_questions(path: str | os.PathLike) -> list[str]:
    """One question per non-empty line (duplicates dropped, order kept); UTF-8, a BOM and CRLF line ends handled."""
    from ..inputs import read_text_lines

    lines = read_text_lines(path, "--questions")
    questions = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not questions:
        raise ConfigError(f"--questions {path} holds no questions")
    return questions
