"""``vidq bench``: every method x keep on every video with one loaded model; a table, JSON and a PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..api import DEFAULT_MODEL
from ..cli import (
    Decoder, Device, Dtype, Fps, Frames, MaxFrames, MaxNewTokens, Model, app, err, parse_list, user_errors, warn_random,
)


@app.command()
def bench(
    videos: Annotated[list[Path], typer.Argument(help="One or more video files.")],
    model: Model = DEFAULT_MODEL,
    methods: Annotated[str, typer.Option(help="Comma-separated methods; `none` is the reference for agreement.")]
    = "flashvid,divprune,visionzip,pool,none",
    keep: Annotated[str, typer.Option(help="Comma-separated keep ratios, each in (0, 1].")] = "0.1,0.25",
    question: Annotated[str, typer.Option(help="The question asked in every run.")] = "",
    repeat: Annotated[int, typer.Option(help="Timed runs per row; timings are their median, min and max.")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed runs before each row's timed ones.")] = 1,
    frames: Frames = None,
    fps: Fps = None,
    max_frames: MaxFrames = 32,
    max_new_tokens: MaxNewTokens = 16,
    device: Device = "auto",
    dtype: Dtype = "auto",
    decoder: Decoder = "auto",
    json_file: Annotated[
        Optional[Path], typer.Option("--json", help="Write every row and the environment to this JSON file.")
    ] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw time to first token and visual tokens to this PNG.")]
    = None,
) -> None:
    """Compare compression methods: visual tokens, stage timings, time to first token, memory, TFLOPs, answers."""
    with user_errors():
        from ..api import AskConfig, VideoQA
        from ..bench import DEFAULT_QUESTION, BenchConfig, plot_bench, run_bench

        config = BenchConfig(
            methods=tuple(parse_list(methods, str, "--methods")),
            keeps=tuple(parse_list(keep, float, "--keep")),
            question=question or DEFAULT_QUESTION,
            repeat=repeat,
            warmup=warmup,
            ask=AskConfig(frames=frames, fps=fps, max_frames=max_frames, max_new_tokens=max_new_tokens,
                          decoder=decoder),
        )
        warn_random(model)
        qa = VideoQA(model, device=device, dtype=dtype)
        err.print(f"[dim]loaded {model} in {qa.load_s:.1f}s; {len(config.runs()) * len(videos)} rows x "
                  f"({warmup} warm-up + {repeat} timed) runs[/]", highlight=False)
        with err.status("benchmarking") as status:
            result = run_bench(
                qa, [str(v) for v in videos], config,
                on_run=lambda video, method, k, done, total: status.update(
                    f"benchmarking: {done}/{total} rows done ({Path(video).name}, {method} {k:g})"
                ),
            )
        out = Console()
        print_bench(result, out if out.is_terminal else Console(width=200))  # a pipe gets every column
        if json_file is not None:
            json_file.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
            err.print(f"wrote {json_file}", highlight=False)
        if plot is not None:
            plot_bench(result, plot)
            err.print(f"wrote {plot}", highlight=False)
        warn_random(model)  # again at the end, where the eye lands


def print_bench(result, console: Console) -> None:
    """One table per video: tokens, stage medians, time to first token with its spread, memory, TFLOPs, answer."""
    from ..bench import agreement_label, row_label

    env = result.environment
    for video in dict.fromkeys(r.video for r in result.rows):
        rows = [r for r in result.rows if r.video == video]
        table = Table(title=f"vidq bench: {video} ({rows[0].frames} frames; times in ms, medians)",
                      title_justify="left", show_edge=False, pad_edge=False)
        for name in ["method", "tokens", "decode", "prep", "encode", "comp", "prefill", "TTFT", "min-max",
                     "MiB", "TFLOPs"]:
            table.add_column(name, justify="left" if name == "method" else "right", no_wrap=True)
        table.add_column("vs none", no_wrap=True)
        table.add_column("answer", overflow="ellipsis", no_wrap=True, max_width=32)
        for r in rows:
            t = r.timings
            ttft = t["time_to_first_token"]
            agree = agreement_label(r).replace("same answer as none", "same").replace("differs from none at ", "")
            table.add_row(
                row_label(r), f"{r.visual_tokens:,}",
                *(f"{t[s].median * 1000:,.1f}" for s in ("decode", "preprocess", "encode", "compress", "prefill")),
                f"[bold]{ttft.median * 1000:,.1f}[/]", f"[dim]{ttft.min * 1000:,.0f}-{ttft.max * 1000:,.0f}[/]",
                f"{r.peak_memory_bytes / 2**20:,.0f}", f"{r.prefill_tflops:.3g}", agree or "-", r.answer,
            )
        console.print(table)
        console.print()
    console.print(
        f"[dim]{env['model']} on {env['device']} ({env['dtype']}); medians of {env['repeat']} runs after "
        f"{env['warmup']} warm-up; MiB is peak {result.rows[0].peak_memory_kind if result.rows else '-'}; "
        "TFLOPs is the estimated LLM prefill[/]",
        highlight=False,
    )
