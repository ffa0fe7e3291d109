"""``vidq chat VIDEO``: a conversation about one video, answers streamed, the KV cache kept between turns."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ..api import DEFAULT_METHOD, DEFAULT_MODEL
from .options import (
    DEFAULT_CACHE_SIZE, CacheSize, Decoder, Device, Dtype, Fps, Frames, Keep, MaxFrames, MaxNewTokens, Method, Model,
    NoCache, Opt, Seed, Seek, Temperature, TextAfterVideo, TokensChat, keep_or_tokens, parse_options, parse_tokens,
)
from .shell import Command, app, err, open_cache, user_errors, warn_random

HELP = "/reset starts over about the same video, /report shows the last turn's report, /exit (or Ctrl-D) ends"


@app.command(cls=Command)
def chat(
    video: Annotated[Path, typer.Argument(help="The video file.")],
    model: Model = DEFAULT_MODEL,
    method: Method = DEFAULT_METHOD,
    keep: Keep = None,
    tokens: TokensChat = None,
    opt: Opt = None,
    frames: Frames = None,
    fps: Fps = None,
    max_frames: MaxFrames = 32,
    max_new_tokens: MaxNewTokens = 256,
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
        "--json", help="A flag, no file: print one JSON object per turn (turn from 1, question, answer, report) on stdout instead of the "
        "streamed answer.")] = False,
) -> None:
    """Talk about VIDEO: each question sees the conversation so far; answers are streamed token by token.

    The video is decoded, encoded and compressed once and the prompt's KV cache grows turn by turn, so a follow-up
    prefills only its own tokens. With stdin piped, each line is one question and each answer is printed on one
    line. /reset, /report and /exit (or Ctrl-D, Ctrl-C) at the prompt.
    """
    started = time.perf_counter()  # the first report's wall time counts from here, imports and checks included
    interactive = sys.stdin.isatty()
    with user_errors():
        from ..api import AskConfig, ConfigError, load_and_decode
        from ..chat import Chat

        count, auto = parse_tokens(tokens)
        if auto:  # ask's and annotate's auto fill the context beside a known prompt; a conversation has none
            raise ConfigError("--tokens auto fills the context beside one prompt, and a chat's conversation grows "
                              "every turn: give --tokens N (vidq ask VIDEO Q --tokens auto --plan shows the budget)")
        config = AskConfig(
            method=method, keep=keep_or_tokens(keep, tokens), tokens=count, options=parse_options(opt),
            frames=frames, fps=fps, max_frames=max_frames,
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, decoder=decoder,
            seek=seek, text_after_video=text_after_video,
        )
        from ..inputs import check_ask, check_video_file

        check_video_file(video, probe=True)  # everything that needs no model, before loading it
        check_ask(config, device=device, dtype=dtype, model=model)
        warn_random(model)
        cache = open_cache(no_cache, cache_size)
        qa, decoded = load_and_decode(video, config, model=model, device=device, dtype=dtype, cache=cache,
                                      started=started)
        talk = Chat(qa, video, config, decoded=decoded)  # a bad video fails here
    if interactive:
        err.print(f"[dim]chatting about {video} ({len(talk.prepared.video.frame_indices)} frames); {HELP}[/]",
                  highlight=False)
    try:
        _loop(talk, interactive, as_json)
    except (KeyboardInterrupt, EOFError):
        if interactive:
            err.print()
    raise typer.Exit(0)


def _loop(talk, interactive: bool, as_json: bool) -> None:
    from ..report import print_report

    while True:
        asked = time.perf_counter()
        line = input("> ") if interactive else sys.stdin.readline()
        talk.waited(time.perf_counter() - asked)  # /report's wall time leaves out the typing
        if not interactive and not line:
            return  # end of the piped questions
        question = line.strip()
        if not question:
            continue
        if question == "/exit":
            return
        if question == "/reset":
            talk.reset()
            err.print("[dim]new conversation about the same video[/]")
            continue
        if question == "/report":
            if talk.last is None:
                err.print("[dim]no turn yet[/]")
            else:
                print_report(talk.last.report, err)
            continue
        if question.startswith("/"):
            err.print(f"[yellow]unknown command {question}[/]; {HELP}", highlight=False)
            continue
        _turn(talk, question, interactive, as_json)


def _turn(talk, question: str, interactive: bool, as_json: bool) -> None:
    """One question: streamed on a terminal, one line when piped. A failed turn is one red line; on a terminal the
    conversation goes on, piped it ends with exit 1. Ctrl-C during an answer ends the chat (exit 130)."""
    stream = interactive and not as_json
    try:
        with user_errors():
            result = talk.ask(question, on_text=_write if stream else None)
    except typer.Exit as stop:
        if stream:
            sys.stdout.write("\n")
        if interactive and stop.exit_code == 1:
            return
        raise
    if as_json:
        # turn: its number in the conversation, from 1 (a /reset starts again at 1)
        typer.echo(json.dumps({"turn": len(talk.turns), "question": question, **result.to_dict()}))
    elif stream:
        sys.stdout.write("\n")
        sys.stdout.flush()
    else:
        typer.echo(" ".join(result.answer.split()))  # one answer per line


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()
