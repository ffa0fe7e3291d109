"""The ``vidq`` command line: parse, build a config, call the library API, render. No torch code here."""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperOption

from .api import DEFAULT_METHOD, DEFAULT_MODEL

app = typer.Typer(
    name="vidq",
    help="Answer questions about videos with a vision-language model, fast, with visual token compression.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def output_console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) as wide as the terminal, or 80 columns when that stream is a pipe or a
    file (rich would otherwise take the width of whatever terminal another stream is on); $COLUMNS, when set, wins."""
    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return console
    return Console(stderr=stderr, width=80)


err = output_console(stderr=True)
DEBUG_VARIABLE = "VIDQ_DEBUG"

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
Keep = Annotated[Optional[float], typer.Option(help="Share of visual tokens to keep, 0 < keep <= 1 [default: 0.25].")]
Tokens = Annotated[Optional[int], typer.Option(
    help="Visual tokens the LLM should see (instead of --keep): each method gets the keep that comes closest.")]
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
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache of encoded videos "
                                       "($VIDQ_CACHE_DIR, else ~/.cache/vidq; see `vidq cache info`).")]
CacheSize = Annotated[str, typer.Option(help="Size cap of the encoded-video cache, least recently used entries "
                                        "evicted first: e.g. 500MiB, 2GB, 10GiB; 0 turns it off.")]
DEFAULT_CACHE_SIZE = "10GiB"


def open_cache(no_cache: bool, cache_size: str):
    """The encoded-video cache the command uses (None with ``--no-cache``); an unwritable directory gives one
    warning line and a cache that is off. Raises CacheError for a size that does not parse."""
    import logging

    from .cache import EncodedCache, parse_size

    max_bytes = parse_size(cache_size)  # checked even with --no-cache: a typo is an error either way
    if no_cache:
        return None
    logging.getLogger("vidq.cache").addHandler(logging.NullHandler())  # the warning is printed here, once
    cache = EncodedCache(max_bytes=max_bytes)
    if cache.warning:
        err.print(f"[yellow]warning:[/] {cache.warning}", highlight=False, soft_wrap=True)
    return cache


@contextmanager
def user_errors() -> Iterator[None]:
    """Known errors become one red line on stderr and exit 1; set VIDQ_DEBUG=1 to get the traceback instead.

    Known: every :class:`~flashvid_cli.errors.VidqError` (``kernels.MethodError`` is one), and an OSError of the
    user's machine (a full disk, a read-only file system, no permission) naming its file. Anything else is a
    bug and is labelled "internal error".
    """
    from .errors import VidqError
    from .inputs import USER_ERRNOS, os_error_line

    debug = os.environ.get(DEBUG_VARIABLE, "") not in {"", "0"}
    _quiet_transformers(debug)
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        err.print("[red]vidq: interrupted[/]")
        raise typer.Exit(130) from None
    except BrokenPipeError:  # the reader went away (`vidq cache info | head -1`): nothing to say to anyone
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush cannot fail again
        raise typer.Exit(141) from None
    except VidqError as exc:
        if debug:
            raise
        _error_line(str(exc))
        raise typer.Exit(1) from None
    except OSError as exc:
        if debug:
            raise
        if exc.errno in USER_ERRNOS and (exc.filename or exc.errno in {errno.ENOSPC, errno.EROFS, errno.EDQUOT}):
            _error_line(os_error_line(exc))
        else:
            _internal_error(exc)
        raise typer.Exit(1) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a bare traceback
        if debug:
            raise
        _internal_error(exc)
        raise typer.Exit(1) from None


def _error_line(message: str) -> None:
    """``error: message`` on one line; the message is text, never markup (``vidq[plot]`` stays as written)."""
    first = (message.strip().splitlines() or [""])[0]
    err.print(f"[red]error:[/] {escape(first)}", highlight=False, soft_wrap=True)


def _internal_error(exc: BaseException) -> None:
    first = (str(exc).strip().splitlines() or [""])[0]
    err.print(f"[red]internal error:[/] {escape(type(exc).__name__)}: {escape(first)} "
              f"(set {DEBUG_VARIABLE}=1 for the traceback)", highlight=False, soft_wrap=True)


class Command(TyperCommand):
    """A command whose usage line reads ``vidq ask [OPTIONS] VIDEO QUESTION`` and whose help shows no type for a
    flag (``--json`` of ask takes nothing; bench's ``--json FILE`` takes a file).

    typer 0.29 writes required arguments as ``{video}`` in usage lines, which reads as a template left unfilled.
    Every command passes ``cls=Command``; a test checks every registered command's usage line.
    """

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper() + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:  # typer 0.29 shows a flag's type as "<bool>", which reads as an option taking a value
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
        return params


def _quiet_transformers(debug: bool) -> None:
    """Keep stderr for the report: no weight-loading bars or config chatter unless debugging."""
    if not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``; a pair without ``=`` is a user error."""
    from .api import ConfigError

    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--opt expects key=value, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def parse_list(text: str, kind: type, option: str) -> list:
    """``"a,b"`` -> ``[kind(a), kind(b)]``; a value that does not parse is a user error naming the option."""
    from .api import ConfigError

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
    from .api import ConfigError

    if keep is not None and tokens is not None:
        raise ConfigError("give --keep or --tokens, not both")
    return default if keep is None else keep


def budget_lists(keep: str | None, tokens: str | None, default_keeps: tuple[float, ...]
                 ) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """``(keeps, tokens)`` of bench and eval: ``--keep`` and ``--tokens`` exclude each other."""
    from .api import ConfigError

    if keep is not None and tokens is not None:
        raise ConfigError("give --keep or --tokens, not both")
    keeps = tuple(parse_list(keep, float, "--keep")) if keep is not None else default_keeps
    counts = tuple(parse_list(tokens, int, "--tokens")) if tokens is not None else ()
    if tokens is not None and not counts:
        raise ConfigError("--tokens is empty")
    return keeps, counts


def warn_random(model: str) -> None:
    """Say loudly that a ``random:`` model's answers mean nothing (its timings are real)."""
    if model.startswith("random:"):
        err.print(f"[bold red]WARNING: {escape(model)} has RANDOM WEIGHTS: its answers are meaningless; only timings, "
                  "token counts and memory are real.[/]", highlight=False)


@app.command(cls=Command)
def ask(
    video: Annotated[Path, typer.Argument(help="The video file.")],
    questions: Annotated[Optional[list[str]], typer.Argument(
        help="One or more questions, answered in order about one decoded, encoded and compressed video.")] = None,
    questions_file: Annotated[Optional[Path], typer.Option(
        "--questions", help="A file of questions, one per line, asked after any given as arguments.")] = None,
    model: Model = DEFAULT_MODEL,
    method: Method = DEFAULT_METHOD,
    keep: Keep = None,
    tokens: Tokens = None,
    opt: Opt = None,
    frames: Frames = None,
    fps: Fps = None,
    max_frames: MaxFrames = 32,
    max_new_tokens: MaxNewTokens = 64,
    temperature: Temperature = 0.0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    decoder: Decoder = "auto",
    seek: Seek = "exact",
    text_after_video: TextAfterVideo = None,
    no_cache: NoCache = False,
    cache_size: CacheSize = DEFAULT_CACHE_SIZE,
    as_json: Annotated[bool, typer.Option(
        "--json", help="A flag, no file: print one JSON object per question (answer and report) on stdout, one per "
        "line, in order. (bench and eval take --json FILE.)")] = False,
) -> None:
    """Ask QUESTIONS about VIDEO: the answers on stdout, one per question, and a per-stage timing and token report
    on stderr. Several questions share the decode, the vision encoder, the compression and, where the chat template
    puts the video first, the video's prefill: each later question prefills only its own tokens."""
    started = time.perf_counter()  # the report's wall time counts from here, imports and checks included
    with user_errors():

        from .annotate import read_questions
        from .api import AskConfig, ConfigError, load_and_decode
        from .report import print_reports

        asked = list(questions or []) + (read_questions(questions_file) if questions_file is not None else [])
        if not asked:
            raise ConfigError("give a question after the video, or --questions FILE")

        from .inputs import check_ask, check_question, check_video_file

        config = AskConfig(
            method=method, keep=keep_or_tokens(keep, tokens), tokens=tokens, options=parse_options(opt),
            frames=frames, fps=fps, max_frames=max_frames,
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, decoder=decoder,
            seek=seek, text_after_video=text_after_video,
        )
        check_video_file(video, probe=True)  # everything that needs no model, before loading it
        for question in asked:
            check_question(question)
        check_ask(config, device=device, dtype=dtype, model=model)
        warn_random(model)
        cache = open_cache(no_cache, cache_size)
        qa, decoded = load_and_decode(video, config, model=model, device=device, dtype=dtype, cache=cache,
                                      started=started)
        results = qa.ask_many(video, asked, config, decoded=decoded)
        for result in results:
            typer.echo(json.dumps(result.to_dict()) if as_json else result.answer)
        if not as_json:
            print_reports([r.report for r in results], asked, err)


@app.command(cls=Command)
def methods() -> None:
    """List the compression methods, their options and the defaults a run uses (per model family where they differ)."""
    with user_errors():
        from rich.table import Table

        from .kernels import methods as registered
        from .kernels.registry import option_defaults
        from .pipelines.registry import families

        table = Table(show_edge=False, expand=True)
        # every cell wraps, none is cut: the options and their defaults are what this command is for, so they get
        # the largest share of the width
        table.add_column("method", no_wrap=True)
        table.add_column("needs", overflow="fold", ratio=2)
        table.add_column("options (default a run uses)", overflow="fold", ratio=5)
        table.add_column("--tokens reaches", overflow="fold", ratio=3)
        for name, cls in registered().items():
            defaults = option_defaults(name, families())  # resolved as a run resolves them, for every family
            options = "\n".join(f"{key}={value}" for key, value in defaults.items()) or "-"  # one per line
            needs = sorted(cls.needs - {"question"})
            if "question" in cls.needs:
                needs.append("the question")
            elif cls.prunes_in_llm:  # the in-LLM stage reads the question through the last token's attention
                on = cls().llm_prune() is not None
                needs.append("the question (in-LLM stage)" if on else "the question, with its in-LLM stage on")
            table.add_row(name, "\n".join(needs) or "-", options, cls.granularity)
        output_console().print(table)


# Commands that live in their own modules register themselves on `app` when imported.
from .commands import annotate as _annotate, bench as _bench, evaluate as _evaluate  # noqa: E402, F401
from .commands import cache as _cache  # noqa: E402, F401
from .commands import chat as _chat  # noqa: E402, F401


def main() -> None:
    """Console-script entry point."""
    app(prog_name="vidq")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
