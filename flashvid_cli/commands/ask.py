"""``vidq ask VIDEO QUESTION...``: answers on stdout, a per-stage timing and token report on stderr."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..api import DEFAULT_METHOD, DEFAULT_MODEL
from .options import (
    DEFAULT_CACHE_SIZE, CacheSize, Decoder, Device, Dtype, Fps, Frames, Keep, MaxFrames, MaxNewTokens, Method, Model,
    NoCache, Opt, Seed, Seek, Stream, Temperature, TextAfterVideo, TokensAuto, keep_or_tokens, parse_options,
    parse_tokens,
)
from .shell import Command, app, err, open_cache, user_errors, warn_random


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
    text_after_video: TextAfterVideo = None,
    no_cache: NoCache = False,
    cache_size: CacheSize = DEFAULT_CACHE_SIZE,
    stream: Stream = False,
    show_plan: Annotated[bool, typer.Option(
        "--plan", help="Print the plan (frames, visual tokens before and after, prompt against the context, estimated "
        "memory whole clip and streamed; docs/STREAMING.md) and exit: nothing decodes, no model loads.")] = False,
    max_memory: Annotated[Optional[str], typer.Option(
        metavar="SIZE", help="A memory budget, e.g. 8GiB: a request whose whole-clip estimate is past it streams "
        "(said in one line) when its method can, else is refused naming what to lower; by default the memory "
        "available.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="A flag, no file: print one JSON object per question (index from 0, question, answer, report) "
        "on stdout, one per line, in order. (bench and eval take --json FILE.)")] = False,
) -> None:
    """Ask QUESTIONS about VIDEO: the answers on stdout, one per question, and a per-stage timing and token report
    on stderr. Several questions share the decode, the vision encoder, the compression and, where the chat template
    puts the video first, the video's prefill: each later question prefills only its own tokens."""
    started = time.perf_counter()  # the report's wall time counts from here, imports and checks included
    with user_errors():

        from ..annotate import read_questions
        from ..api import AskConfig, ConfigError, load_and_decode
        from ..report import print_reports

        asked = list(questions or []) + (read_questions(questions_file) if questions_file is not None else [])
        if not asked:
            raise ConfigError("give a question after the video, or --questions FILE")

        from ..inputs import check_ask, check_question, check_video_file

        count, auto = parse_tokens(tokens)
        config = AskConfig(
            method=method, keep=keep_or_tokens(keep, tokens), tokens=count, options=parse_options(opt),
            frames=frames, fps=fps, max_frames=max_frames,
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, decoder=decoder,
            seek=seek, text_after_video=text_after_video, stream=stream,
        )
        check_video_file(video, probe=True)  # everything that needs no model, before loading it
        for i, question in enumerate(asked):
            check_question(question, f"question {i + 1} of {len(asked)}" if len(asked) > 1 else "the question")
        check_ask(config, device=device, dtype=dtype, model=model)
        if stream:
            from ..streaming import check_streamable

            check_streamable(config)  # before the model loads
        if auto:
            from ..plan import check_tokens_auto

            ceiling = check_tokens_auto(video, config, model)  # before anything decodes or loads
        if show_plan or max_memory is not None:
            from ..plan import choose_path, parse_budget, plan_request

            budget = parse_budget(max_memory)
            planned = plan_request(video, dataclasses.replace(config, tokens=ceiling) if auto else config, model,
                                   device=device, dtype=dtype)  # --tokens auto: the budget before the text
            if show_plan:
                typer.echo(json.dumps(planned.to_dict()) if as_json else "\n".join(planned.lines()))
            streamed, note = choose_path(planned, budget, stream)  # refuses here, before decoding
            if show_plan:
                if budget is not None:
                    path = "streamed" if streamed else "whole clip"
                    typer.echo(json.dumps({"path": path, "note": note}) if as_json
                               else note or f"path: {path} within --max-memory")
                return
            if streamed and not stream:
                err.print(note, markup=False, highlight=False, soft_wrap=True)
                stream, config = True, dataclasses.replace(config, stream=True)
        elif not stream:  # no budget given: a whole clip past the memory available streams, or is refused, undecoded
            from ..plan import choose_path_by_memory, plan_or_none

            planned = plan_or_none(video, dataclasses.replace(config, tokens=ceiling) if auto else config, model,
                                   device=device, dtype=dtype)
            streamed, note = choose_path_by_memory(planned, stream) if planned is not None else (False, None)
            if streamed:  # (one that cannot stream was refused in one line)
                err.print(note, markup=False, highlight=False, soft_wrap=True)
                stream, config = True, dataclasses.replace(config, stream=True)
        warn_random(model)
        cache = open_cache(no_cache, cache_size)
        qa, decoded = load_and_decode(video, config, model=model, device=device, dtype=dtype, cache=cache,
                                      started=started, ahead_on_hit=auto)  # --tokens auto reads the frames
        if auto:
            from ..plan import auto_tokens

            height, width = decoded.frames.shape[1:3]  # already at (or near) the model's input size
            config = dataclasses.replace(config, tokens_at_most=True, tokens=auto_tokens(
                qa.pipeline, asked, config, len(decoded.frames), height, width))  # a ceiling: never past it
        with stream_progress(err.is_terminal and stream) as qa.progress:
            results = qa.ask_many(video, asked, config, decoded=decoded)
        for index, (question, result) in enumerate(zip(asked, results)):
            # a line says which question it answers: piped lines are matched by index, not by their order alone
            typer.echo(json.dumps({"index": index, "question": question, **result.to_dict()}) if as_json
                       else result.answer)
        if not as_json:
            print_reports([r.report for r in results], asked, err)


@contextmanager
def stream_progress(show: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich bar on stderr per stage of a streamed video (frames decoded, encoded, compressed; ETA), or None
    (not streaming, or stderr is not a terminal: piped output gets no bar)."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=err, transient=True)
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    with bars:
        yield update
