"""``vidq eval``: multiple-choice accuracy per compression method and keep ratio; a table, JSON and a PNG."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..api import DEFAULT_MODEL
from .options import (
    DEFAULT_CACHE_SIZE, CacheSize, Decoder, Device, Dtype, Fps, Frames, MaxFrames, Model, NoCache, Opt, Seek,
    budget_lists, parse_list, parse_options,
)
from .shell import Command, app, err, open_cache, output_console, user_errors, warn_random


PARTIAL_EXIT = 3  # as annotate's: the run completed, but some questions could not be scored


@app.command("eval", cls=Command)
def evaluate(
    data: Annotated[Path, typer.Argument(help="JSON lines: video, question, options, answer (letter, index or "
                                              "text), optional type and id.")],
    model: Model = DEFAULT_MODEL,
    methods: Annotated[Optional[str], typer.Option(
        help="Comma-separated methods [default: every one `vidq methods` lists]; `none` (every token) runs once.")]
    = None,
    keep: Annotated[Optional[str], typer.Option(
        help="Comma-separated keep ratios, each in (0, 1] [default: 1.0,0.5,0.25,0.1].")] = None,
    tokens: Annotated[Optional[str], typer.Option(
        help="Comma-separated visual-token counts (instead of --keep): every method at each count, on each clip.")]
    = None,
    scoring: Annotated[str, typer.Option(help="likelihood: each option's summed log-probability as the answer; "
                                              "letter: the options listed, the logit of each one's letter.")]
    = "likelihood",
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N questions.")] = None,
    opt: Opt = None,
    frames: Frames = None,
    fps: Fps = None,
    max_frames: MaxFrames = 32,
    device: Device = "auto",
    dtype: Dtype = "auto",
    decoder: Decoder = "auto",
    seek: Seek = "exact",
    json_file: Annotated[
        Optional[Path], typer.Option("--json", metavar="FILE", help="Takes a file: write the rows, every "
                                     "prediction and the environment to FILE as JSON (the table still goes to stdout).")
    ] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw accuracy against keep, a line per method, to this PNG.")]
    = None,
    no_cache: NoCache = False,
    cache_size: CacheSize = DEFAULT_CACHE_SIZE,
) -> None:
    """Multiple-choice accuracy of each method at each keep ratio; every video is encoded once.

    Exit code 0 when every question was scored in every row, 3 when some could not be (the table and files are
    written without them, their errors in the JSON file), 1 when the run could not work."""
    with user_errors():
        from ..api import AskConfig, VideoQA
        from ..evaluate import DEFAULT_KEEPS, EvalConfig, plot_eval, read_dataset, run_eval
        from ..inputs import check_ask, check_output_file, check_plot_file, writing

        keeps, counts = budget_lists(keep, tokens, DEFAULT_KEEPS)
        config = EvalConfig(
            methods=tuple(parse_list(methods, str, "--methods")) if methods is not None else None,
            keeps=keeps,
            tokens=counts,
            scoring=scoring,
            limit=limit,
            ask=AskConfig(frames=frames, fps=fps, max_frames=max_frames, decoder=decoder, seek=seek,
                          options=parse_options(opt)),
        )
        for name in config.methods:  # everything that needs no model, before loading it; --opt against each method
            check_ask(dataclasses.replace(config.ask, method=name, options=config.options_for(name)), device=device,
                      dtype=dtype)
        if json_file is not None:
            check_output_file(json_file, "--json")
        if plot is not None:
            check_plot_file(plot)  # matplotlib, a format it writes, a path it can write to
        questions = read_dataset(data)[:limit]
        warn_random(model)
        qa = VideoQA(model, device=device, dtype=dtype, cache=open_cache(no_cache, cache_size))
        videos = len({q.video for q in questions})
        err.print(f"[dim]loaded {escape(model)} in {qa.load_s:.1f}s; {len(questions)} questions on {videos} videos x "
                  f"{len(config.runs())} rows, {scoring} scoring[/]", highlight=False, soft_wrap=True)
        with _progress() as progress:
            task = progress.add_task("evaluating", total=len(questions), failed="")
            result = run_eval(qa, questions, config, progress=lambda done, total, failed: progress.update(
                task, completed=done, failed=f"{failed} failed" if failed else ""))
        print_eval(result, output_console())
        if json_file is not None:
            with writing(json_file, "--json"):
                json_file.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
            err.print(f"wrote {json_file}", highlight=False, markup=False)
        if plot is not None:
            with writing(plot, "--plot"):
                plot_eval(result, plot)
            err.print(f"wrote {plot}", highlight=False, markup=False)
        if result.failed_questions:
            first = next(p for p in result.predictions if p.error is not None)
            err.print(f"[yellow]{result.failed_questions} of {len(questions)} questions failed and are left out of "
                      f"the accuracy (errors in --json); the first, {escape(first.id)}: {escape(first.error)}[/]",
                      highlight=False, soft_wrap=True)
        warn_random(model)  # again at the end, where the eye lands
    if result.failed_questions:
        # the table and files are written, but some questions are left out of them: `vidq eval ... && publish` stops
        raise typer.Exit(PARTIAL_EXIT)


def _progress():
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )

    return Progress(
        TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TextColumn("[red]{task.fields[failed]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=True,
        disable=not err.is_terminal,  # a log file gets the summary lines, not a blank line per redraw
    )


def print_eval(result, console: Console) -> None:
    """One row per (method, keep) that fits 80 columns: accuracy, correct of scored, failed, mean visual tokens
    (with --tokens: the count asked, the mean keep found and the search's seconds); then the chance level."""
    env = result.environment
    table = Table(title=f"vidq eval: {env['questions']} questions, {env['scoring']} scoring",
                  title_justify="left", show_edge=False, pad_edge=False, box=box.SIMPLE_HEAD, collapse_padding=True)
    by_tokens = bool(env.get("tokens"))
    # --tokens adds three columns: two-line headers keep the table in 80 columns with 5-digit counts
    names = (["method", "tokens\nasked", "keep\nfound", "accuracy", "correct", "failed", "visual\ntokens",
              "keep\nsearch"] if by_tokens else ["method", "keep", "accuracy", "correct", "failed", "visual tokens"])
    for name in names:
        table.add_column(name, justify="left" if name == "method" else "right", no_wrap=True)
    for r in result.rows:
        budget = [f"{r.tokens:,}" if r.tokens is not None else "-", f"{r.keep:.3g}"] if by_tokens else [f"{r.keep:g}"]
        search = [f"{r.token_search_s:.1f} s" if r.token_search_s is not None else "-"] if by_tokens else []
        table.add_row(
            r.method, *budget, f"[bold]{r.accuracy:.1%}[/]" if r.accuracy is not None else "-",
            f"{r.correct}/{r.total}", f"[yellow]{r.failed}[/]" if r.failed else "0",
            f"{r.visual_tokens:,.0f}" if r.visual_tokens is not None else "-", *search,
        )
    console.print(table)
    print_by_type(result.rows, console)
    console.print(f"chance: {env['chance']:.1%} (the mean of 1/options over the scored questions)", highlight=False)
    if env.get("frames", {}).get("seek") == "keyframe":
        console.print("frames: --seek keyframe, each snapped to its nearest keyframe (approximate sampling)",
                      highlight=False)
    searched = "; keep found: the mean over the clips, keep search: the seconds it took" if by_tokens else ""
    console.print(f"[dim]{env['model']} on {env['device']} ({env['dtype']}); visual tokens: the mean the LLM "
                  f"sees{searched}[/]", highlight=False)


def print_by_type(rows: list, console: Console) -> None:
    """Accuracy by question type when the set has more than one: a row per type (with the questions scored of it),
    a column per row of the main table (method and keep, or tokens), in as many tables as it takes to stay within
    the console's width (80 columns piped)."""
    from ..evaluate import TypeScore

    untyped = "(no type)"
    rows = [_with_untyped(r, untyped, TypeScore) for r in rows]
    types = sorted({t for r in rows for t in r.by_type}, key=lambda t: (t == untyped, t))
    if len(types) < 2:
        return
    counts = {t: max(r.by_type[t].total for r in rows if t in r.by_type) for t in types}
    cut = max(12, console.width // 3)  # a long type name is cut, so the columns keep room
    labels = [f"{_cut(t if t.strip() else '(empty)', cut)} ({counts[t]})" for t in types]
    label = max(len("question type (n)"), *(len(x) for x in labels))
    heads = [f"{r.method}\n{r.tokens:,} tok" if r.tokens is not None else f"{r.method}\n{r.keep:g}" for r in rows]
    widths = [max(len("100.0%"), *(len(line) for line in h.split("\n"))) for h in heads]
    groups, current, used = [], [], label
    for i, width in enumerate(widths):  # split the columns so each table fits: a column is its width + 3
        if current and used + width + 3 > console.width:
            groups.append(current)
            current, used = [], label
        current.append(i)
        used += width + 3
    groups.append(current)
    for n, group in enumerate(groups):
        table = Table(title=None if n else "accuracy by question type", title_justify="left", show_edge=False,
                      pad_edge=False, box=box.SIMPLE_HEAD)
        table.add_column("question type (n)", no_wrap=True, min_width=label)
        for i in group:
            table.add_column(heads[i], justify="right", no_wrap=True, min_width=widths[i])
        for t, name in zip(types, labels):
            scores = [rows[i].by_type.get(t) for i in group]
            table.add_row(name, *("-" if x is None or x.accuracy is None else f"{x.accuracy:.1%}" for x in scores))
        console.print(table)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _with_untyped(row, name: str, score_type):
    """``row`` with the questions it scored that carry no type as one more type, ``name``, so the types' counts
    add up to the row's."""
    typed = sum(s.total for s in row.by_type.values())
    if typed >= row.total or not row.by_type:
        return row
    correct = row.correct - sum(s.correct for s in row.by_type.values())
    n = row.total - typed
    return dataclasses.replace(row, by_type={**row.by_type, name: score_type(correct / n, correct, n)})
