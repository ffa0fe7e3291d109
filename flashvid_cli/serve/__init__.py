"""``vidq serve``: an OpenAI-compatible HTTP server that keeps one model, its encoded videos and their prompt caches warm.

Library layer (docs/ARCHITECTURE.md): it imports the library, never the commands. FastAPI, uvicorn and
prometheus-client are imported only by :mod:`.app`, :mod:`.metrics` and :func:`run_server`, so ``vidq ask`` never
pays for them. docs/SERVING.md describes every field and status code.

    from flashvid_cli.serve import ServeConfig, create_app
    app = create_app(ServeConfig(model="samples/vidq-demo-llava-ov", allowed_local_media_path="clips/"))
"""

from __future__ import annotations

from typing import Any

from .config import ServeConfig
from .errors import APIError

__all__ = ["APIError", "ServeConfig", "create_app", "run_server"]


def create_app(config: ServeConfig, engine: Any = None) -> Any:
    """The FastAPI app of ``config`` (the model loads in the app's startup; ``/health`` is 503 until it has)."""
    from .app import create_app as create

    return create(config, engine)


def run_server(config: ServeConfig) -> None:
    """Serve ``config`` with uvicorn until SIGINT/SIGTERM, which drain in-flight requests and return."""
    import uvicorn

    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning")
