"""``vidq serve``: an OpenAI-compatible HTTP server for one model (docs/SERVING.md)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..api import DEFAULT_METHOD, DEFAULT_MODEL
from .options import (
    DEFAULT_CACHE_SIZE, CacheSize, Decoder, Device, Dtype, Fps, Frames, Keep, MaxFrames, MaxNewTokens, Method, Model,
    NoCache, Opt, Seed, Seek, Temperature, TextAfterVideo, Tokens, keep_or_tokens, parse_options,
)
from .shell import Command, app, err, open_cache, user_errors, warn_random


@app.command(cls=Command)
def serve(
    model: Model = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    served_model_name: Annotated[Optional[str], typer.Option(
        help="The model id clients send and /v1/models lists (default: the --model value).")] = None,
    api_key: Annotated[Optional[str], typer.Option(
        envvar="VIDQ_API_KEY", help="Every route but /health and the page at / needs 'Authorization: Bearer KEY' "
        "(the page asks for it; or set VIDQ_API_KEY).",
        show_envvar=False)] = None,
    allowed_local_media_path: Annotated[Optional[Path], typer.Option(
        help="file:// video URLs are served only from under this folder (symlinks and ../ resolved first); "
        "without it file:// URLs are refused.")] = None,
    allow_url_download: Annotated[bool, typer.Option(
        "--allow-url-download", help="Download http(s):// video URLs (at most --max-data-bytes, within "
        "--download-timeout; redirects followed and each hop checked again).")] = False,
    allow_private_urls: Annotated[bool, typer.Option(
        "--allow-private-urls", help="With --allow-url-download, also download from hosts that resolve to private, "
        "loopback or link-local addresses (refused with a 400 otherwise).")] = False,
    download_timeout: Annotated[float, typer.Option(help="Seconds one video download may take; longer is a 400.")]
    = 30.0,
    max_data_bytes: Annotated[int, typer.Option(help="Largest data: video URL (in decoded bytes) or downloaded "
                                                "video; larger is 413.")] = 64 * 1024 * 1024,
    kv_cache_size: Annotated[int, typer.Option(
        help="Conversations whose KV cache is kept across requests (least recently used dropped first); 0 "
        "prefills every request in full.")] = 16,
    video_cache_size: Annotated[int, typer.Option(help="Compressed videos kept in memory (least recently used "
                                                  "dropped first), over the on-disk encoded-video cache.")] = 8,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait behind the one being answered; more get "
                                           "429 with Retry-After.")] = 16,
    request_timeout: Annotated[Optional[float], typer.Option(
        help="Seconds a request may take from arrival (queue included) unless it sends its own vidq.timeout; past "
        "it the request ends with 504 request_timeout and its generation stops at the next token.")] = None,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Serve replicas behind one ingress on "
                                        "--host/--port; pip install 'vidq\\[ray]').")] = "local",
    replicas: Annotated[Optional[int], typer.Option(
        help="--engine ray: model replicas, 1 CPU each; a video's requests go to the same one (default 1).")] = None,
    gpus_per_replica: Annotated[Optional[float], typer.Option(
        help="--engine ray: GPUs each replica holds (default 0: on CPU; 0.5 puts two on a GPU).")] = None,
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
) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API: POST /v1/chat/completions (a video as a video_url part, or
    its frames as image_url parts; stream or not), GET /v1/models, GET /health, GET /metrics. The method, keep, sampling and generation options
    are the defaults of every request, which may override them (its "vidq" object, media_io_kwargs, max_tokens,
    temperature, seed). Encoded videos and conversations' KV caches are kept across requests. See docs/SERVING.md."""
    with user_errors():
        from ..api import AskConfig
        from ..inputs import check_ask
        from ..serve import ServeConfig, run_server

        defaults = AskConfig(
            method=method, keep=keep_or_tokens(keep, tokens), tokens=tokens, options=parse_options(opt),
            frames=frames, fps=fps, max_frames=max_frames, max_new_tokens=max_new_tokens, temperature=temperature,
            seed=seed, decoder=decoder, seek=seek, text_after_video=text_after_video,
        )
        check_ask(defaults, device=device, dtype=dtype, model=model)
        config = ServeConfig(
            model=model, served_model_name=served_model_name, device=device, dtype=dtype, host=host, port=port,
            defaults=defaults, allowed_local_media_path=allowed_local_media_path,
            allow_url_download=allow_url_download, allow_private_urls=allow_private_urls,
            download_timeout=download_timeout, max_data_bytes=max_data_bytes, kv_cache_size=kv_cache_size,
            video_cache_size=video_cache_size, max_queue=max_queue, request_timeout=request_timeout,
            api_key=_api_key(api_key),
            encoded_cache=open_cache(no_cache, cache_size), engine=engine, replicas=replicas,
            gpus_per_replica=gpus_per_replica,
        )
        if config.engine == "ray":
            from ..serve.ray_engine import preflight

            preflight(config)  # an impossible --replicas / --gpus-per-replica is one line before Ray starts
        warn_random(model)
        # uvicorn drains on SIGTERM, then re-raises it to the handler it found: make that an exit with status 0.
        signal.signal(signal.SIGTERM, _exit_zero)
        if config.engine == "ray":
            count = config.replicas or 1
            err.print(f"vidq serve: {config.name} on http://{host}:{port} (starting {count} Ray Serve "
                      f"replica{'s' if count != 1 else ''})", highlight=False)
        else:
            err.print(f"vidq serve: {config.name} on http://{host}:{port} (loading; GET /health says when ready)",
                      highlight=False)
        if config.engine == "ray":
            from dataclasses import replace

            from ..serve.ray_engine import run_ray_server

            # Each replica opens its own encoded-video cache of this size (None: --no-cache).
            run_ray_server(replace(config, encoded_cache=None), None if no_cache else cache_size)
        else:
            run_server(config)


def _exit_zero(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _api_key(given: str | None) -> str | None:
    """--api-key, else $VIDQ_API_KEY, else None (no key asked). An empty or blank key is refused in one line: it is
    what `--api-key "$KEY"` with KEY unset gives, and it served with no authentication at all."""
    from ..api import ConfigError

    for key, where in ((given, "--api-key"), (os.environ.get("VIDQ_API_KEY"), "VIDQ_API_KEY")):
        if key is None:
            continue
        if not key.strip():
            raise ConfigError(f"{where} is empty: give the key clients must send, or leave {where} out to serve "
                              "without one")
        return key
    return None
