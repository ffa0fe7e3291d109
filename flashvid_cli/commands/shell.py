"""The frame every ``vidq`` command runs in: the typer ``app``, the consoles, known errors as one red line, the
``Command`` class, the encoded-video cache a command opens, and the random-weights warning."""

from __future__ import annotations

import errno
import inspect
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def _untyped_flags(params: list[Any]) -> list[Any]:
    """typer 0.29 shows a flag's type as "<bool>", which reads as an option taking a value: show none."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Group(TyperGroup):
    """The top-level ``vidq --help``: its ``--help`` flag shows no type, as in every command's help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


app = typer.Typer(
    name="vidq",
    cls=Group,
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


def open_cache(no_cache: bool, cache_size: str):
    """The encoded-video cache the command uses (None with ``--no-cache``); an unwritable directory gives one
    warning line and a cache that is off. Raises CacheError for a size that does not parse."""
    import logging

    from ..cache import EncodedCache, parse_size

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
    from ..errors import VidqError
    from ..inputs import USER_ERRNOS, os_error_line

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
    Every command passes ``cls=Command``; a test checks every registered command's usage line. The help text's
    paragraphs are joined into one line each: typer's rich help keeps the docstring's own line breaks after the
    first paragraph, so they broke mid-sentence at every terminal width.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            paragraphs = inspect.cleandoc(self.help).split("\n\n")
            self.help = "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper() + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


def _quiet_transformers(debug: bool) -> None:
    """Keep stderr for the report: no weight-loading bars or config chatter unless debugging."""
    if not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def warn_random(model: str) -> None:
    """Say loudly that a ``random:`` model's answers mean nothing (its timings are real)."""
    if model.startswith("random:"):
        err.print(f"[bold red]WARNING: {escape(model)} has RANDOM WEIGHTS: its answers are meaningless; only timings, "
                  "token counts and memory are real.[/]", highlight=False)
