"""``vidq cache info`` / ``vidq cache clear``: the on-disk cache of encoded videos (flashvid_cli/cache/)."""

from __future__ import annotations

import json
import textwrap
from typing import Annotated

import typer

from .shell import Command, app, err, user_errors

cache_app = typer.Typer(
    help="The cache of encoded videos (in $VIDQ_CACHE_DIR, else the platform cache directory, e.g. ~/.cache/vidq).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")


@cache_app.command("info", cls=Command)
def info(
    as_json: Annotated[bool, typer.Option(
        "--json", help="A flag, no file: print one JSON object on stdout instead of the text lines.")] = False,
) -> None:
    """Show the cache directory, its entries, their size and the size cap."""
    with user_errors():
        from ..cache import DEFAULT_MAX_BYTES, EncodedCache, format_size

        cache = EncodedCache()
        if cache.warning:
            err.print(f"[yellow]warning:[/] {cache.warning}", highlight=False, soft_wrap=True)
        state = cache.info()
        if as_json:
            typer.echo(json.dumps({"directory": str(state.root), "entries": state.entries, "bytes": state.bytes,
                                   "max_bytes": state.max_bytes, "temporary_files": state.temporary_files,
                                   "writable": state.enabled}))
            return
        cap = format_size(state.max_bytes)
        if state.max_bytes == DEFAULT_MAX_BYTES:
            cap += " (the default; commands that use the cache take --cache-size)"
        typer.echo(f"directory  {state.root}")
        typer.echo(f"entries    {state.entries}")
        typer.echo(f"size       {format_size(state.bytes)} ({state.bytes} bytes)")
        typer.echo(_fill(f"cap        {cap}"))
        if state.temporary_files:
            typer.echo(_fill(f"partial    {state.temporary_files} temporary file(s) of unfinished writes (never read; "
                             "the next write removes those whose writer died, `vidq cache clear` removes all)"))


def _fill(line: str) -> str:
    """A value longer than 80 columns goes on under its own column (paths are left whole)."""
    return textwrap.fill(line, width=80, subsequent_indent=" " * 11, break_long_words=False, break_on_hyphens=False)


@cache_app.command("clear", cls=Command)
def clear() -> None:
    """Delete every cached entry (and any partial write); say how many and how much."""
    with user_errors():
        from ..cache import EncodedCache, format_size

        cache = EncodedCache()
        removed = cache.clear()
        extra = f" and {removed.temporary_files} partial file(s)" if removed.temporary_files else ""
        typer.echo(f"removed {removed.entries} {'entry' if removed.entries == 1 else 'entries'}{extra}, {format_size(removed.bytes)}, from {cache.root}")
