"""The FastAPI app: ``POST /v1/chat/completions`` (JSON or SSE), ``GET /v1/models``, ``GET /health``,
``GET /metrics``; the API key, the queue limit and OpenAI-shaped errors. docs/SERVING.md is its reference."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..errors import InputError, VidqError
from ..inputs import check_ask
from ..pipelines.errors import ModelError, VideoError
from .config import ServeConfig
from .control import refuse_in_request
from .engine import Engine, Outcome
from .errors import APIError, Cancelled, Deadline, TimedOut, bad_request, error_body
from .media import MediaStore
from .metrics import Metrics
from .page import OPEN_PATHS, register_page
from .request import ChatRequest, parse_request

log = logging.getLogger("vidq.serve")
CHAT = "/v1/chat/completions"


def create_app(config: ServeConfig, engine: Engine | None = None) -> FastAPI:
    """The app of ``config``; the model loads in a thread at startup (``/health`` is 503 until it has)."""
    engine = engine or Engine(config)
    metrics, media = Metrics(), MediaStore(config)
    pool = ThreadPoolExecutor(config.max_queue + 1, thread_name_prefix="vidq-serve")
    state: dict[str, Any] = {"active": 0, "load_error": None}
    guard = threading.Lock()

    def load() -> None:
        try:
            engine.load()
        except Exception as exc:  # noqa: BLE001 - reported by /health and every request, never a traceback
            state["load_error"] = str(exc) if isinstance(exc, VidqError) else f"{type(exc).__name__}: {exc}"
            log.error("vidq serve: the model did not load: %s", state["load_error"])

    def close(wait: bool = True) -> None:
        """Stop the request threads (with ``wait``, after the generations in flight finish; without, the queued
        ones are dropped) and remove the media folder. Idempotent."""
        state["closed"] = True
        pool.shutdown(wait=wait, cancel_futures=not wait)
        media.close()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not engine.ready:
            threading.Thread(target=load, name="vidq-load", daemon=True).start()
        yield
        close()  # SIGTERM: uvicorn stops accepting, the running generations finish

    app = FastAPI(title="vidq serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.metrics, app.state.serve = engine, metrics, state
    app.state.media, app.state.close = media, close  # close: the lifespan's end, for a host that runs none (Ray)
    register_page(app, config)  # GET / (the browser page) and GET /v1/vidq/media

    @app.middleware("http")
    async def guard_and_count(request: Request, call_next: Any) -> Response:
        if config.api_key is not None and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {config.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                response: Response = _error(APIError(401, "missing or wrong API key: send Authorization: Bearer KEY",
                                                     "invalid_api_key"))
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        if request.url.path == CHAT and not getattr(request.state, "counted_when_done", False):
            metrics.requests.labels(str(response.status_code)).inc()
        return response

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        return _error(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(APIError(exc.status_code, str(exc.detail), code))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        return _error(as_api_error(exc))

    @app.get("/health")
    async def health() -> Response:
        if engine.ready:
            return JSONResponse({"status": "ok", "model": config.name})
        if state["load_error"]:
            return JSONResponse({"status": "error", "error": state["load_error"]}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, kind = metrics.text()
        return Response(body, media_type=kind)

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": config.name, "object": "model", "created": 0, "owned_by": "vidq"}]})

    @app.post(CHAT)
    async def chat(request: Request) -> Response:
        arrived = time.perf_counter()  # the deadline counts from here: reading, download, queue and generation
        if not engine.ready:
            message = state["load_error"] or "the model is still loading: retry when GET /health is ok"
            raise APIError(503, message, "model_not_ready", "server_error", {"Retry-After": "5"})
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise bad_request("the request body is not JSON", "invalid_json") from None
        try:
            req = parse_request(body, config.defaults)
            check_ask(req.config)  # the request's own method, options, decoder and seek, as the CLI checks them
        except VidqError as exc:
            raise as_api_error(exc) from None
        if req.model != config.name:
            raise APIError(404, f"model {req.model!r} is not served here; GET /v1/models lists {config.name!r}",
                           "model_not_found")
        refuse_in_request(req, engine.control_tokens)  # no <video>, <|im_start|>, ... in a system or user message
        timeout = req.timeout if req.timeout is not None else config.request_timeout
        deadline = Deadline(None if timeout is None else arrived + timeout)
        video = await asyncio.to_thread(media.frames, req.image_urls) if req.image_urls else \
            await asyncio.to_thread(media.resolve, req.video_url)  # a download must not stall other requests
        with guard:
            if state["active"] >= 1 + config.max_queue:
                raise APIError(429, f"the server is busy: {state['active']} requests running or queued "
                               f"(--max-queue {config.max_queue}); retry later", "queue_full", "rate_limit_error",
                               {"Retry-After": "1"})
            state["active"] += 1
            metrics.in_flight.inc()
        waiting = time.perf_counter()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()  # set when the client disconnects: the engine stops at its next token
        watcher = asyncio.ensure_future(_watch_disconnect(request, cancel))

        def work() -> tuple[Outcome, float]:
            try:
                deadline.check("before it was queued")
                left = deadline.left()
                if not engine.lock.acquire(timeout=-1 if left is None else left):
                    raise TimedOut("the request passed its deadline while it waited in the queue "
                                   "(--request-timeout, or vidq.timeout)")
                try:
                    if cancel.is_set():
                        raise Cancelled("the client disconnected while its request waited")
                    queued = time.perf_counter() - waiting
                    on_text = (lambda piece: loop.call_soon_threadsafe(events.put_nowait, ("text", piece))) \
                        if req.stream else None
                    outcome = engine.answer(req, video, on_text, cancel, deadline)
                finally:
                    engine.lock.release()
                metrics.observe(outcome, queued, queued + outcome.result.report.timings.time_to_first_token)
                return outcome, queued
            except Cancelled:
                with guard:
                    state["cancelled"] = state.get("cancelled", 0) + 1
                raise
            finally:
                with guard:
                    state["active"] -= 1
                    metrics.in_flight.dec()

        future = loop.run_in_executor(pool, work)
        if not req.stream:
            try:
                outcome, _ = await future
            except Exception as exc:  # noqa: BLE001
                raise as_api_error(exc) from None
            finally:
                watcher.cancel()
            return JSONResponse(_completion(req, config.name, outcome, config.replica))
        future.add_done_callback(lambda f: events.put_nowait(("done", f)))
        first = await events.get()  # an error before the first token is still a status code, not a stream
        if first[0] == "done" and first[1].exception() is not None:
            raise as_api_error(first[1].exception())
        # Its status is the generation's outcome (a client gone mid-stream is 499), not the 200 already sent.
        request.state.counted_when_done = True
        future.add_done_callback(lambda f: metrics.requests.labels(str(status_of(f.exception()))).inc())
        return StreamingResponse(_sse(req, config.name, first, events, config.replica),
                                 media_type="text/event-stream")

    return app


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` when the connection closes (the client went away, or the response is complete)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()


def status_of(exc: BaseException | None) -> int:
    """The HTTP status ``exc`` is answered with (200 for None), as :func:`as_api_error` gives it, without logging."""
    if exc is None:
        return 200
    known = (APIError, Cancelled, TimedOut, VideoError, ModelError, VidqError, InputError)
    return as_api_error(exc).status if isinstance(exc, known) else 500


def as_api_error(exc: BaseException) -> APIError:
    """The HTTP error of an exception: a user's error by its kind, anything else a 500 without a traceback."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, Cancelled):  # nobody reads it; 499 (nginx's "client closed request") counts it in /metrics
        return APIError(499, str(exc), "client_disconnected")
    if isinstance(exc, TimedOut):  # 504: the server, not the client, took too long (408 is a slow request body)
        return APIError(504, str(exc), "request_timeout", "timeout_error")
    if isinstance(exc, VideoError):
        return APIError(422, str(exc), "video_decode_error")
    if isinstance(exc, ModelError):
        return APIError(500, str(exc), "model_error", "server_error")
    if isinstance(exc, (VidqError, InputError)):
        return bad_request(str(exc), "invalid_option")
    log.exception("vidq serve: internal error", exc_info=exc)
    return APIError(500, f"internal error ({type(exc).__name__}); the server log has the details", "internal_error",
                    "server_error")


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.type, exc.code), status_code=exc.status, headers=exc.headers)


def _usage(outcome: Outcome) -> dict[str, Any]:
    tokens = outcome.result.report.tokens
    return {"prompt_tokens": tokens.prompt, "completion_tokens": tokens.generated,
            "total_tokens": tokens.prompt + tokens.generated,
            "prompt_tokens_details": {"cached_tokens": outcome.reused_tokens}}


def _vidq(outcome: Outcome, replica: str | None) -> dict[str, Any]:
    """The response's ``vidq`` report; on a Ray replica (``--engine ray``) it names the replica that answered."""
    report = outcome.result.to_dict()
    return report if replica is None else {**report, "replica": replica}


def _completion(req: ChatRequest, model: str, outcome: Outcome, replica: str | None = None) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.text},
                                         "finish_reason": outcome.finish_reason, "logprobs": None}],
            "usage": _usage(outcome), "vidq": _vidq(outcome, replica)}


async def _sse(req: ChatRequest, model: str, first: tuple, events: asyncio.Queue, replica: str | None = None):
    """The stream's chunks: the role, each text piece, the finish reason (with the ``vidq`` report), the usage when
    asked, then ``[DONE]``. An error after the first token ends the stream with an error event."""
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    event = first
    while event[0] == "text":
        yield chunk({"content": event[1]})
        event = await events.get()
    exc = event[1].exception()
    if exc is not None:
        err = as_api_error(exc)
        yield f"data: {json.dumps(err.body())}\n\n"
    else:
        outcome, _ = event[1].result()
        yield chunk({}, outcome.finish_reason, vidq=_vidq(outcome, replica))
        if req.include_usage:
            yield chunk(None, usage=_usage(outcome))
    yield "data: [DONE]\n\n"
