"""The options the ``vidq`` commands share (``Annotated`` typer aliases) and the parsing of their values."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

# Options shared by the commands that load a model.
Model = Annotated[
    str, typer.Option("--model", "-m", help="Hugging Face repo id, local model directory, or random:NAME "
                      "(llava-onevision-0.5b, llava-onevision-7b, qwen2.5-vl-7b, qwen3-vl-8b, qwen3-vl-30b-a3b, or a "
                      "config.json path): the real "
                      "architecture with random weights, for timing.")
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Dtype = Annotated[str, typer.Option(help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16.")]
Method = Annotated[str, typer.Option(help="Compression method; `vidq methods` lists them and their options.")]
# the default is written out (escaped from rich markup) because ask's is None: --tokens may be given instead
Keep = Annotated[Optional[float], typer.Option(help=r"Share of visual tokens to keep, 0 < keep <= 1 \[default: 0.25].",
                                               show_default=False)]
Tokens = Annotated[Optional[int], typer.Option(
    help="Visual tokens the LLM should see (instead of --keep): each method gets the keep that comes closest.")]
TokensAuto = Annotated[Optional[str], typer.Option(
    "--tokens", metavar="N|auto", help="Visual tokens the LLM should see (instead of --keep): each method gets the keep that comes "
    "closest; auto: as many as fit the context with the prompt and --max-new-tokens (docs/STREAMING.md).")]
TokensChat = Annotated[Optional[str], typer.Option(
    "--tokens", metavar="N", help="Visual tokens the LLM should see (instead of --keep): the method gets the keep "
    "that comes closest. Not auto: a conversation grows every turn, so no budget fills the context.")]
Opt = Annotated[
    Optional[list[str]], typer.Option("--opt", help="A method option as key=value; repeat for several.")
]
Frames = Annotated[Optional[int], typer.Option(help="Sample N frames uniformly over the video.")]
Fps = Annotated[Optional[float], typer.Option(help="Sample F frames per second (capped by --max-frames).")]
MaxFrames = Annotated[int, typer.Option(help="Most frames to sample; the default count without --frames/--fps.")]
MaxNewTokens = Annotated[int, typer.Option(help="Most tokens to generate.")]
Temperature = Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")]
Seed = Annotated[int, typer.Option(help="Seed for sampling (and anything random).")]
Decoder = Annotated[str, typer.Option(help="Video decoder: auto, decord or pyav.")]
Seek = Annotated[str, typer.Option(help="exact (the sampled frames themselves) or keyframe: each sampled frame snapped "
                                   "to the nearest keyframe, only keyframes decoded (approximate, faster; the report "
                                   "gives the true timestamps and the offset). Not with --decoder decord.")]
TextAfterVideo = Annotated[
    Optional[str], typer.Option(help="Qwen2.5-VL: where text after the video resumes: hf (default) or qwen.")
]
Stream = Annotated[bool, typer.Option("--stream", help="Preprocess, encode and compress a chunk of frames at a "
                                     "time, keeping only compressed tokens (long videos). `vidq methods` says how "
                                     "each method streams (docs/STREAMING.md). A progress bar on a terminal.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache of encoded videos "
                                       "($VIDQ_CACHE_DIR, else ~/.cache/vidq; see `vidq cache info`).")]
CacheSize = Annotated[str, typer.Option(help="Size cap of the encoded-video cache, least recently used entries "
                                        "evicted first: e.g. 500MiB, 2GB, 10GiB; 0 turns it off.")]
DEFAULT_CACHE_SIZE = "10GiB"


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``; a pair without ``=`` is a user error."""
    from ..api import ConfigError

    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--opt expects key=value, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def parse_list(text: str, kind: type, option: str) -> list:
    """``"a,b"`` -> ``[kind(a), kind(b)]``; a value that does not parse is a user error naming the option."""
    from ..api import ConfigError

    values = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            values.append(kind(item))
        except ValueError:
            raise ConfigError(f"{option}: cannot read {item!r} as {kind.__name__}") from None
    return values


def keep_or_tokens(keep: float | None, tokens: int | None, default: float = 0.25) -> float:
    """The keep to use: ``--keep`` and ``--tokens`` exclude each other (with --tokens keep is searched)."""
    from ..api import ConfigError

    if keep is not None and tokens is not None:
        raise ConfigError("give --keep or --tokens, not both")
    return default if keep is None else keep


def parse_tokens(text: str | None) -> tuple[int | None, bool]:
    """``--tokens`` of ask -> (the count, or None; whether it is ``auto``). A value that is neither an integer nor
    ``auto`` is a user error."""
    from ..api import ConfigError

    if text is None:
        return None, False
    if text.strip().lower() == "auto":
        return None, True
    try:
        return int(text), False
    except ValueError:
        raise ConfigError(f"--tokens must be an integer >= 1 or auto, got {text!r}") from None


def budget_lists(keep: str | None, tokens: str | None, default_keeps: tuple[float, ...]
                 ) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """``(keeps, tokens)`` of bench and eval: ``--keep`` and ``--tokens`` exclude each other."""
    from ..api import ConfigError

    if keep is not None and tokens is not None:
        raise ConfigError("give --keep or --tokens, not both")
    keeps = tuple(parse_list(keep, float, "--keep")) if keep is not None else default_keeps
    counts = tuple(parse_list(tokens, int, "--tokens")) if tokens is not None else ()
    if tokens is not None and not counts:
        raise ConfigError("--tokens is empty")
    return keeps, counts
