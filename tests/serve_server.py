"""The one test helper that serves a ``vidq serve`` app: uvicorn in a thread, on a free port of 127.0.0.1. Shared by
tests/test_serve*.py."""

from __future__ import annotations

import socket
import threading
import time

from flashvid_cli.serve import ServeConfig, create_app
from flashvid_cli.serve.engine import Engine


def free_port() -> int:
    """A port nothing listens on now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One app served by uvicorn in a thread. With ``qa`` (a loaded VideoQA) the engine uses it and is ready at once;
    without, the app loads ``config.model`` at startup and the server waits until it is ready (``wait_ready``)."""

    def __init__(self, config: ServeConfig, qa=None, engine: Engine | None = None, wait_ready: bool = False,
                 timeout: float = 30.0):
        import uvicorn

        self.engine = engine or Engine(config)
        if qa is not None:
            self.engine.qa = qa
        self.app = create_app(config, self.engine)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + timeout
        while not (self.server.started and (self.engine.ready or not wait_ready)):
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "none"):
        """An ``openai.OpenAI`` client of this server, without retries."""
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
