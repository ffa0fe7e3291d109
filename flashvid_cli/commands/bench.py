"""``vidq bench``: every method x keep on every video with one loaded model; a table, JSON and a PNG."""

from __future__ import annotations

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
    DEFAULT_CACHE_SIZE, CacheSize, Decoder, Device, Dtype, Fps, Frames, MaxFrames, MaxNewTokens, Model, Seek,
    budget_lists, parse_list, parse_options,
)
from .shell import Command, app, err, open_cache, output_console, user_errors, warn_random


@app.command(cls=Command)
def bench(
    videos: Annotated[list[Path], typer.Argument(help="One or more video files.")],
    model: Model = DEFAULT_MODEL,
    methods: Annotated[Optional[str], typer.Option(
        help="Comma-separated methods [default: every one `vidq methods` lists]; answers are compared with `none`'s.")]
    = None,
    keep: Annotated[Optional[str], typer.Option(
        help="Comma-separated keep ratios, each in (0, 1] [default: 0.1,0.25].")] = None,
    tokens: Annotated[Optional[str], typer.Option(
        help="Comma-separated visual-token counts (instead of --keep): every method at each count.")] = None,
    opt: Annotated[Optional[list[str]], typer.Option(
        "--opt", help="A method option as key=value (every method that has it) or method.key=value; repeatable.")]
    = None,
    question: Annotated[str, typer.Option(help="The question asked in every run.")] = "",
    follow_up: Annotated[str, typer.Option(help="A follow-up asked after it on the same prepared video (its time "
                                           "to first token is follow_up_ttft in --json).")] = "",
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Read and write the encoded-video cache (off "
                                        "by default: bench times the decode and the vision tower).")] = False,
    cache_size: CacheSize = DEFAULT_CACHE_SIZE,
    repeat: Annotated[int, typer.Option(help="Timed runs per row; timings are their median, min and max.")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed runs before each row's timed ones.")] = 1,
    frames: Frames = None,
    fps: Fps = None,
    max_frames: MaxFrames = 32,
    max_new_tokens: MaxNewTokens = 16,
    device: Device = "auto",
    dtype: Dtype = "auto",
    decoder: Decoder = "auto",
    seek: Seek = "exact",
    json_file: Annotated[
        Optional[Path], typer.Option("--json", metavar="FILE", help="Takes a file: write every row and the "
                                     "environment to FILE as JSON (the table still goes to stdout).")
    ] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw time to first token and visual tokens to this PNG.")]
    = None,
) -> None:
    """Compare compression methods: visual tokens, stage timings, time to first token, memory, TFLOPs, answers."""
    with user_errors():
        from ..api import AskConfig, VideoQA
        from ..bench import DEFAULT_FOLLOW_UP, DEFAULT_KEEPS, DEFAULT_QUESTION, BenchConfig, plot_bench, run_bench
        from ..inputs import check_ask, check_output_file, check_plot_file, check_video_file, writing

        keeps, counts = budget_lists(keep, tokens, DEFAULT_KEEPS)
        config = BenchConfig(
            methods=tuple(parse_list(methods, str, "--methods")) if methods is not None else None,
            keeps=keeps,
            tokens=counts,
            question=question or DEFAULT_QUESTION,
            follow_up=follow_up or DEFAULT_FOLLOW_UP,
            repeat=repeat,
            warmup=warmup,
            options=parse_options(opt),
            ask=AskConfig(frames=frames, fps=fps, max_frames=max_frames, max_new_tokens=max_new_tokens,
                          decoder=decoder, seek=seek),
        )
        for video in videos:  # everything that needs no model, before loading it
            check_video_file(video, empty_ok=True)
        check_ask(config.ask, device=device, dtype=dtype)
        if json_file is not None:
            check_output_file(json_file, "--json")
        if plot is not None:
            check_plot_file(plot)  # matplotlib, a format it writes, a path it can write to
        warn_random(model)
        qa = VideoQA(model, device=device, dtype=dtype, cache=open_cache(not cache, cache_size))
        err.print(f"[dim]loaded {escape(model)} in {qa.load_s:.1f}s; {len(config.runs()) * len(videos)} rows x "
                  f"({warmup} warm-up + {repeat} timed) runs[/]", highlight=False)
        with err.status("benchmarking") as status:
            result = run_bench(
                qa, [str(v) for v in videos], config,
                on_run=lambda video, method, k, done, total: status.update(
                    f"benchmarking: {done}/{total} rows done ({Path(video).name}, {method} {k:g})"
                ),
            )
        print_bench(result, output_console())
        if json_file is not None:
            with writing(json_file, "--json"):
                json_file.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
            err.print(f"wrote {json_file}", highlight=False, markup=False)
        if plot is not None and result.measured:
            with writing(plot, "--plot"):
                plot_bench(result, plot)
            err.print(f"wrote {plot}", highlight=False, markup=False)
        warn_random(model)  # again at the end, where the eye lands
        if not result.measured:
            err.print("[red]error:[/] nothing could be measured: every row failed (the reasons are above)",
                      highlight=False)
            raise typer.Exit(1)


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"


def print_bench(result, console: Console) -> None:
    """One table per video that fits 80 columns: visual tokens, compress and prefill, time to first token with its
    spread, peak memory, agreement with `none`; then each failed row's reason. Every other figure is in --json."""
    from ..bench import agreement_label, plural, row_label

    env = result.environment
    for video in dict.fromkeys(r.video for r in result.rows):
        rows = [r for r in result.rows if r.video == video]
        frames = next((r.frames for r in rows if r.error is None), None)
        approx = "keyframe-snapped (approximate), " if env.get("frames", {}).get("seek") == "keyframe" else ""
        table = Table(title=f"{video}: " + (f"{frames} frames, {approx}" if frames else "") + "ms, medians",
                      title_justify="left", show_edge=False, pad_edge=False, box=box.SIMPLE_HEAD,
                      collapse_padding=True)
        for name in ["method", "tokens", "compress", "prefill", "TTFT", "spread", "MiB", "vs none"]:
            table.add_column(name, justify="left" if name in {"method", "vs none"} else "right", no_wrap=True)
        for r in rows:
            if r.error is not None:
                table.add_row(row_label(r), "-", "-", "-", "[red]failed[/]", "-", "-", "-")
                continue
            t = r.timings
            ttft = t["time_to_first_token"]
            spread = (ttft.max - ttft.min) / ttft.median if ttft.median else 0.0
            agree = agreement_label(r) and ("same" if r.agreement.identical_tokens
                                            else f"token {r.agreement.first_divergence.index}")
            table.add_row(
                row_label(r), f"{r.visual_tokens:,}", _ms(t["compress"].median), _ms(t["prefill"].median),
                f"[bold]{_ms(ttft.median)}[/]", f"[dim]{spread:.0%}[/]", f"{r.peak_memory_bytes / 2**20:,.0f}",
                agree.replace("token ", "tok ") or "-",
            )
        console.print(table)
        for video_, error in dict.fromkeys((r.video, r.error) for r in rows if r.error is not None):
            console.print(f"[red]failed:[/] {error if error.startswith(video_) else f'{video_}: {error}'}",
                          highlight=False)
        console.print()
    kind = next((r.peak_memory_kind for r in result.rows if r.error is None), "-")
    console.print(
        f"[dim]{env['model']} on {env['device']} ({env['dtype']}); medians of {plural(env['repeat'], 'run')} after "
        f"{env['warmup']} warm-up; spread = (max - min) / median of TTFT; MiB = peak {kind}; every stage, "
        "min/max, TFLOPs, the answers and follow_up_ttft (a follow-up question's TTFT on the same prepared video) "
        "are in --json[/]",
        highlight=False,
    )
