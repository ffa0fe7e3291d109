"""The browser page of ``vidq serve`` (``GET /``) and the list of videos it may pick (``GET /v1/vidq/media``).

The page is one static HTML file with its own JavaScript (no build step, nothing fetched from elsewhere); it talks
to the same ``/v1/chat/completions`` API as any client. It holds no secret and no data, so it is served without the
API key (a browser cannot send a header when it opens a URL); every API call it makes, the media list included,
carries the key the user types into its field, which it keeps in the tab's ``sessionStorage`` (so a reload keeps
it, closing the tab forgets it)."""

from __future__ import annotations

import asyncio
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .config import ServeConfig

OPEN_PATHS = frozenset({"/health", "/"})  # paths served without the API key
MEDIA = "/v1/vidq/media"
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg"})
MAX_LISTED = 1000


def page_html() -> str:
    """The page's HTML, as shipped in the package (``serve/static/index.html``)."""
    return files("flashvid_cli.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def list_media(root: Path | None, limit: int = MAX_LISTED) -> list[dict[str, Any]]:
    """Video files under ``root`` a ``file://`` URL may name: ``[{"name", "url", "bytes"}]`` sorted by name.

    Files whose real path leaves ``root`` (a symlink out) are left out, as the server would refuse them; at most
    ``limit`` entries. An empty list when ``root`` is None (no ``--allowed-local-media-path``)."""
    if root is None:
        return []
    found = []
    for path in sorted(root.rglob("*")):
        if len(found) >= limit:
            break
        if path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
            continue
        real = path.resolve()
        if not real.is_relative_to(root):
            continue
        found.append({"name": path.relative_to(root).as_posix(), "url": real.as_uri(), "bytes": real.stat().st_size})
    return found


def register_page(app: FastAPI, config: ServeConfig) -> None:
    """Add ``GET /`` (the page) and ``GET /v1/vidq/media`` (what it may pick, and the upload size cap) to ``app``."""
    html = page_html()

    @app.get("/")
    async def page() -> Response:
        return HTMLResponse(html)

    @app.get(MEDIA)
    async def media() -> Response:
        return JSONResponse({"object": "list", "data": await asyncio.to_thread(list_media, config.allowed_local_media_path),
                             "max_data_bytes": config.max_data_bytes, "model": config.name})
