"""``vidq annotate``: answer questions about every video of a folder or glob into a resumable JSON-lines file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from ..api import DEFAULT_METHOD, DEFAULT_MODEL
from .options import (
    DEFAULT_CACHE_SIZE, CacheSize, Decoder, Device, Dtype, Fps, Frames, Keep, MaxFrames, MaxNewTokens, Method, Model,
    NoCache, Opt, Seed, Seek, Temperature, TokensAuto, keep_or_tokens, parse_options, parse_tokens,
)
from .shell import Command, app, err, open_cache, user_errors, warn_random


PARTIAL_EXIT = 3  # the exit code of a run that wrote every pair it could but some are error lines


@app.command(cls=Command)
def annotate(
    videos: Annotated[str, typer.Argument(help="A directory (searched recursively), a glob, or one video file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The JSON-lines file to write (appended, resumable).")],
    question: Annotated[Optional[list[str]], typer.Option("--question", "-q", help="A question; repeatable.")]
    = None,
    questions: Annotated[Optional[Path], typer.Option(help="A file with one question per line.")] = None,
    model: Model = DEFAULT_MODEL,
    method: Method = DEFAULT_METHOD,
    keep: Keep = None,
    tokens: TokensAuto = None,
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
    decode_timeout: Annotated[float, typer.Option(help="Seconds before a video's decoding is killed.")] = 120.0,
    prefetch: Annotated[int, typer.Option(help="Videos decoded ahead while the model runs.")] = 2,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data; pip install 'vidq\\[ray]').")]
    = "local",
    ray_actors: Annotated[int, typer.Option(help="Ray engine: model replicas (actors).")] = 1,
    gpus_per_actor: Annotated[float, typer.Option(help="Ray engine: GPUs per actor (0 on CPU).")] = 0.0,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Ask again the pairs whose last line in --out is an error (e.g. a decode timeout).")]
    = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="No progress bar or summary; only each failed video with its reason and warnings about --out.",
    )]
    = False,
    no_cache: NoCache = False,
    cache_size: CacheSize = DEFAULT_CACHE_SIZE,
) -> None:
    """Answer QUESTION(s) about every video in VIDEOS, one JSON line per (video, question); reruns skip done lines.

    Exit code 0 when every pair in --out is answered, 3 when some are error lines (the others are written), 1 when
    the run could not work (bad options, no videos, an unusable --out)."""
    with user_errors():
        from ..annotate import AnnotateConfig, annotate as run, find_videos, read_questions
        from ..api import AskConfig, ConfigError
        from ..inputs import check_ask, check_output_file

        if bool(question) == bool(questions):
            raise ConfigError("give --question (repeatable) or --questions FILE, one of the two")
        asked = list(dict.fromkeys(q.strip() for q in question)) if question else read_questions(questions)
        count, auto = parse_tokens(tokens)  # auto: per video, the budget that fills the context
        config = AnnotateConfig(
            model=model, device=device, dtype=dtype, prefetch=prefetch, engine=engine, ray_actors=ray_actors,
            ray_gpus_per_actor=gpus_per_actor, cache_size=None if no_cache else cache_size, tokens_auto=auto,
            ask=AskConfig(
                method=method, keep=keep_or_tokens(keep, tokens), tokens=count, options=parse_options(opt),
                frames=frames, fps=fps, max_frames=max_frames,
                max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, decoder=decoder,
                seek=seek, decode_timeout_s=decode_timeout,
            ),
        )
        check_output_file(out, "--out")  # a missing folder is refused, as bench and eval do; everything that needs no model, before loading it
        check_ask(config.ask, device=device, dtype=dtype, model=model)
        if auto:
            from ..plan import check_tokens_auto_method

            check_tokens_auto_method(config.ask, model)  # a method that cannot take it: one line, before loading
        open_cache(no_cache, cache_size)  # a bad size or an unwritable directory: said once, before any work
        found = find_videos(videos)
        if not quiet:
            warn_random(model)
        progress = _Progress(show_bar=not quiet)
        try:
            summary = run(found, asked, out, config, on_event=progress.event, retry_failed=retry_failed)
        finally:
            progress.stop()
        if not quiet:
            earlier = (f"; {summary.failed_before} of them failed earlier: --retry-failed asks them again"
                       if summary.failed_before else "")
            err.print(
                f"[bold]{summary.done} done[/], {summary.skipped} skipped (already in {summary.out}{earlier}), "
                f"[{'red' if summary.failed else 'dim'}]{summary.failed} failed[/], in {summary.elapsed_s:.1f}s",
                highlight=False,
            )
    if summary.failed or summary.failed_before:
        # every other pair is written, but --out is not complete: a script's `vidq annotate ... && next` must not go
        # on as if it were (3, not 1: the run itself worked; 1 is a run that could not work at all)
        raise typer.Exit(PARTIAL_EXIT)


def _line_numbers(numbers: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (f", ... ({len(numbers)} in all)" if len(numbers) > limit else "")


def rate_and_eta(done: int, left: int, elapsed_s: float | None) -> tuple[str, str]:
    """The progress bar's rate ("1.52 questions/s": lines written in this run per second of wall time since the
    bar started, so pairs skipped as already done never count) and ETA ("0:01:05", left / that rate); "" and
    "-:--:--" before the first line. Not rich's own speed: that one divides by the time between the first and the
    last line of a 30 s window, leaving out the model load and the first video, which read 20x too fast."""
    if not done or not elapsed_s or elapsed_s <= 0:
        return "", "-:--:--"
    rate = done / elapsed_s
    eta = round(left / rate)
    return f"{rate:.2f} questions/s", f"{eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"


class _Progress:
    """A rich progress bar on stderr (counts, rate, ETA; it starts when the work is known), each failed video with
    its reason above it, and what was found in --out; with ``show_bar=False`` (``--quiet``) only the last two.
    The bar counts (video, question) lines of this run; its rate and ETA come from ``rate_and_eta``."""

    def __init__(self, show_bar: bool = True, get_time: Callable[[], float] | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task) -> Text:  # re-rendered on every refresh, so it stays true between lines
                rate, eta = rate_and_eta(int(task.completed), int(task.remaining or 0), task.elapsed)
                return Text(f"{rate} ETA {eta}" if rate else f"ETA {eta}", style="cyan")

        self.show_bar = show_bar
        self.progress = Progress(  # the bar takes what the other columns leave of the console's width
            TextColumn("annotating"), BarColumn(bar_width=None, table_column=Column(ratio=1)), MofNCompleteColumn(),
            TimeElapsedColumn(), RateColumn(table_column=Column(no_wrap=True)),
            TextColumn("[red]{task.fields[failed]}", table_column=Column(no_wrap=True)),
            console=err, transient=False, expand=True, **({"get_time": get_time} if get_time else {}),
        )
        self.task = None
        self.failed = 0
        self.named: set[tuple[str, str]] = set()

    def event(self, kind: str, record: dict) -> None:
        if kind == "start":
            self._start(record)
            return
        if kind == "failed" and (record["video"], record["error"]) not in self.named:
            self.named.add((record["video"], record["error"]))  # a video's questions share their decode error
            from ..annotate.answer import short_question

            video, error, question = record["video"], record["error"], record["question"]
            # the video's own errors (decode, geometry) name the file and are its every line's; any other is the
            # question's (its prompt too long with the video, say): named, so it does not read as the whole video's
            named = error if error.startswith(video) else f"{video}, question {short_question(question)!r}: {error}"
            err.print(f"[red]failed:[/] {named}", highlight=False, soft_wrap=True)
        if self.task is None:
            return
        self.failed += kind == "failed"
        self.progress.update(self.task, advance=1, failed=f"{self.failed} failed" if self.failed else "")

    def _start(self, record: dict) -> None:
        if record.get("repaired_bytes"):
            err.print(f"[yellow]cut off a torn last line ({record['repaired_bytes']} bytes) left by an "
                      "interrupted run[/]", highlight=False)
        if record.get("newline_added"):
            err.print("[yellow]the last line was complete but had no newline: added one[/]", highlight=False)
        bad = record.get("bad_lines") or []
        if bad:
            many = len(bad) != 1
            err.print(f"[yellow]warning:[/] {len(bad)} line{'s' * many} of the output {'are' if many else 'is'} not "
                      f"vidq records (line{'s' * many} {_line_numbers(bad)}): kept as they are and ignored",
                      highlight=False, soft_wrap=True)
        todo = record["total"] - record["skipped"]
        if todo and self.show_bar:
            self.progress.start()
            self.task = self.progress.add_task("annotate", total=todo, failed="")

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()
