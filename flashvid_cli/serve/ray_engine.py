"""``vidq serve --engine ray``: model replicas as Ray Serve deployments behind one OpenAI-compatible ingress.

Each replica (:class:`Replica`, ``vidq-replica-<i>``, one Ray Serve deployment of one replica each so the ingress can
pick it) builds the local server's own :class:`~.engine.Engine` and :func:`~.app.create_app` app and answers the
HTTP requests the ingress forwards by calling that ASGI app in-process: the same parsing, checks, caches, queue
limit, errors and report as ``--engine local``, and its answer's ``vidq.replica`` names it. The ingress
(:func:`create_ingress`) is a FastAPI app served by uvicorn in the ``vidq serve`` process on ``--host``/``--port``;
it forwards each request through a Ray Serve handle and streams the answer back (SSE included).

Routing (:func:`choose`): a chat completion's affinity key is the SHA-256 of its video's URL (the ``file://`` path,
the whole ``data:`` URL, the ``http(s)://`` URL, or the ``image_url`` frames' URLs joined). Reading the video's
content fingerprint would mean reading the file in the ingress, which may not even see it, so the URL stands in:
the same video under another path may land on another replica, which costs its cache, never a wrong answer. The
key is rendezvous-hashed over the live replicas (those Serve's status calls HEALTHY, polled every
:data:`HEALTH_POLL_S` seconds, less one whose call failed in the last :data:`DOWN_S` seconds; only their keys move); when that replica holds ``1 + --max-queue`` requests, the least loaded one takes the request,
and when all are full the ingress answers 429 with ``Retry-After``. Other routes go to the least loaded replica;
``/health`` and ``/metrics`` ask every replica (``/metrics`` adds a ``replica`` label to each sample).

Checked before start like annotate's Ray engine: ``--replicas`` x 1 CPU and x ``--gpus-per-replica`` GPUs against
this machine before a local Ray starts, or against the cluster (``RAY_ADDRESS``) and what it has free now.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..annotate.ray_engine import RAY_QUIET_ENV, RayEngineError, RayResourceError, local_resources
from ..config import ConfigError
from .config import ServeConfig
from .errors import error_body
from .routing import affinity_key, choose, merge_metrics

REPLICA_CPUS = 1.0
DOWN_S = 10.0  # seconds a replica whose call failed is left out of the routing (Ray Serve restarts it meanwhile)
HEALTH_POLL_S = 1.0  # seconds between the ingress's reads of Serve's status (one controller call each)
APP_NAME = "vidq-serve"
_RUNNING: set = set()  # the app calls in flight: asyncio keeps only weak references to tasks
_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length"}


def replica_name(index: int) -> str:
    """The Ray Serve deployment name of replica ``index``, also its ``vidq.replica`` id."""
    return f"vidq-replica-{index}"


def needed(replicas: int, gpus_per_replica: float) -> dict[str, float]:
    """What the deployment asks of the cluster: ``{"CPU": replicas x 1, "GPU": replicas x gpus_per_replica}``."""
    return {"CPU": replicas * REPLICA_CPUS, "GPU": replicas * gpus_per_replica}


def check_resources(replicas: int, gpus_per_replica: float, cluster: Mapping[str, float], where: str) -> None:
    """Raise RayResourceError, one line naming what is missing, when ``cluster`` (Ray's resource dict, e.g.
    ``ray.cluster_resources()``) cannot hold the replicas."""
    need = needed(replicas, gpus_per_replica)
    have_cpu, have_gpu = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    count = f"--replicas {replicas}"
    if need["GPU"] > have_gpu:
        raise RayResourceError(
            f"--engine ray: {count} x --gpus-per-replica {gpus_per_replica:g} need {need['GPU']:g} GPUs; {where} has "
            f"{have_gpu:g}: lower --gpus-per-replica (0 runs on CPU) or --replicas")
    if need["CPU"] > have_cpu:
        fits = int(have_cpu // REPLICA_CPUS)
        fix = f"lower --replicas to {fits}" if fits >= 1 else "use --engine local"
        raise RayResourceError(f"--engine ray: {count} x {REPLICA_CPUS:g} CPU need {need['CPU']:g} CPUs; {where} "
                               f"has {have_cpu:g}: {fix} or add CPUs")


def preflight(config: ServeConfig) -> None:
    """Fail in a second, before Ray or a model is loaded, on a request a local Ray started here cannot hold."""
    import sys

    ray = sys.modules.get("ray")
    if not (ray is not None and ray.is_initialized()) and not os.environ.get("RAY_ADDRESS"):
        check_resources(config.replicas or 1, config.gpus_per_replica or 0.0, local_resources(), "this machine")


class Replica:
    """A Ray Serve replica: the local server's engine and app, answering what the ingress forwards to :meth:`call`."""

    def __init__(self, config: ServeConfig, cache_size: str | None):
        from ..cache import EncodedCache, parse_size
        from .app import create_app
        from .engine import Engine

        cache = EncodedCache(max_bytes=parse_size(cache_size)) if cache_size is not None else None
        config = dataclasses.replace(config, encoded_cache=cache)
        engine = Engine(config)
        engine.load()  # before the replica counts as started, so a deployment that is up answers at once
        self.app = create_app(config, engine)

    def __del__(self) -> None:
        """Serve's shutdown hook (a graceful stop: after the replica's requests drained, or at garbage collection):
        the app's lifespan never runs here, so its end is run by hand, removing the replica's media folder."""
        app = getattr(self, "app", None)
        if app is not None:
            app.state.close(wait=False)

    def check_health(self) -> None:
        """Serve's health check (every 10 s; a raise marks the replica unhealthy and Serve replaces it): the model
        is loaded and the app still takes requests."""
        if not self.app.state.engine.ready or self.app.state.serve.get("closed"):
            raise RuntimeError("the replica's model is not loaded or its app is closed")

    async def call(self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes):
        """Run one HTTP request through the app; yields ``{"status", "headers"}``, then the body's chunks. Closing
        the generator (the client went away) is the app's ``http.disconnect``: its generation stops."""
        messages: asyncio.Queue = asyncio.Queue()
        gone, sent = asyncio.Event(), False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await messages.put(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                 "root_path": "", "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
                 "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
        task = asyncio.ensure_future(self.app(scope, receive, send))
        _RUNNING.add(task)  # it outlives a closed generator: the app sees the disconnect, stops at the next token
        task.add_done_callback(_RUNNING.discard)
        task.add_done_callback(lambda _: messages.put_nowait(None))
        try:
            while (message := await messages.get()) is not None:
                if message["type"] == "http.response.start":
                    yield {"status": message["status"],
                           "headers": [(k.decode(), v.decode()) for k, v in message.get("headers", [])]}
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        yield message["body"]
                    if not message.get("more_body"):
                        break
        finally:
            gone.set()


class _Directory:
    """The application's root: it holds the replicas' deployments so that one ``serve.run`` starts them all."""

    def __init__(self, *replicas: Any):
        self.count = len(replicas)


def create_ingress(config: ServeConfig, handles: Sequence[Any],
                   status: Callable[[], Mapping[str, str]] | None = None) -> Any:
    """The ingress app: every route forwarded to a replica's :meth:`Replica.call` through its Ray Serve handle
    (``handles[i]`` is ``vidq-replica-<i>``), chat completions by :func:`choose`. ``status`` (blocking; run in a
    thread every :data:`HEALTH_POLL_S` seconds while the app runs) gives each deployment's Serve status by name; a
    replica whose status is not ``HEALTHY`` gets no requests until it is. A failed poll keeps the last answer."""
    capacity = 1 + config.max_queue
    load = {i: 0 for i in range(len(handles))}
    down: dict[int, float] = {}
    unhealthy: set[int] = set()

    async def poll() -> None:
        while True:
            try:
                states = await asyncio.to_thread(status)
                unhealthy.clear()
                unhealthy.update(i for i in load if states.get(replica_name(i)) != "HEALTHY")
            except Exception:  # noqa: BLE001 - the controller is busy or gone: the failed-call rule still holds
                pass
            await asyncio.sleep(HEALTH_POLL_S)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(poll()) if status is not None else None
        yield
        if task is not None:
            task.cancel()

    app = FastAPI(title="vidq serve (ray)", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    def live() -> list[int]:
        now = time.monotonic()
        return [i for i in load if down.get(i, 0.0) <= now and i not in unhealthy]

    def fail(status: int, message: str, code: str, retry: str | None = None) -> Response:
        kind = "rate_limit_error" if status == 429 else "server_error"
        return JSONResponse(error_body(message, kind, code), status_code=status,
                            headers={"Retry-After": retry} if retry else None)

    async def start(i: int, request: Request, body: bytes, path: str | None = None) -> tuple[Any, dict]:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        gen = handles[i].options(stream=True).call.remote(request.method, path or request.url.path,
                                                          request.url.query, headers, body)
        try:
            return gen, await gen.__anext__()
        except Exception:  # a replica that died or is restarting: left out of the routing for a while
            down[i] = time.monotonic() + DOWN_S
            gen.cancel()
            raise

    async def collect(i: int, request: Request, path: str) -> tuple[int, bytes]:
        gen, head = await start(i, request, b"", path)
        return head["status"], b"".join([chunk async for chunk in gen])

    @app.get("/health")
    async def health(request: Request) -> Response:
        alive = live()
        answers = await asyncio.gather(*(collect(i, request, "/health") for i in alive), return_exceptions=True)
        replicas = {replica_name(i): (json.loads(a[1]).get("status") if not isinstance(a, BaseException)
                                      else "unreachable") for i, a in zip(alive, answers)}
        ok = any(status == "ok" for status in replicas.values())
        return JSONResponse({"status": "ok" if ok else "error", "model": config.name, "replicas": replicas},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        alive = live()
        answers = await asyncio.gather(*(collect(i, request, "/metrics") for i in alive), return_exceptions=True)
        refused = [a for a in answers if not isinstance(a, BaseException) and a[0] != 200]
        if refused:  # a wrong API key: the replicas' own 401
            return Response(refused[0][1], status_code=refused[0][0], media_type="application/json")
        texts = {replica_name(i): a[1].decode() for i, a in zip(alive, answers) if not isinstance(a, BaseException)}
        return Response(merge_metrics(texts), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def forward(request: Request, path: str) -> Response:
        body = await request.body()
        key = None
        if request.url.path == "/v1/chat/completions":
            try:
                key = affinity_key(json.loads(body))
            except (ValueError, UnicodeDecodeError):
                key = affinity_key(None)
        for _ in range(2):  # a replica found down before its first byte: once more on the next choice
            alive = live()
            i = choose(key, alive, load, capacity) if key is not None else \
                min((j for j in alive if load[j] < capacity), key=lambda j: load[j], default=None)
            if i is None:
                if not alive:
                    return fail(503, "no replica is reachable: retry later", "no_replica", "5")
                return fail(429, f"every replica is busy ({len(alive)} x {capacity} requests running or queued, "
                            f"--max-queue {config.max_queue}); retry later", "queue_full", "1")
            load[i] += 1
            try:
                gen, head = await start(i, request, body)
            except Exception:  # noqa: BLE001 - the replica is marked down; the next choice is tried
                load[i] -= 1
                continue
            break
        else:
            return fail(503, "the replicas did not answer: retry later", "no_replica", "5")

        def release(i: int = i) -> None:
            load[i] -= 1
            gen.cancel()  # the client went away: the replica's app sees http.disconnect

        headers = {k: v for k, v in head["headers"] if k.lower() not in {"transfer-encoding", "connection"}}
        headers["x-vidq-replica"] = replica_name(i)
        return _Forwarded(gen, release, status_code=head["status"], headers=headers)

    return app


class _Forwarded(StreamingResponse):
    """A replica's answer streamed on; ``release`` runs once when it ends however it ends (sent, the client gone
    mid-stream, or gone before a byte was sent, when the body's iterator never starts and so cannot clean up)."""

    def __init__(self, gen: Any, release: Any, **kw: Any):
        super().__init__(gen, **kw)
        self.release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def _import_serve() -> Any:
    for key, value in RAY_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError("--engine ray needs Ray Serve: pip install 'vidq[ray]' (or pip install 'ray[serve]')") \
            from None
    return ray, serve


def deployment_states(serve: Any) -> dict[str, str]:
    """Each deployment of this application by name: its Serve status (``"HEALTHY"``, ``"UNHEALTHY"``,
    ``"UPDATING"``, ...), which Serve keeps from the replicas' health checks (:meth:`Replica.check_health`)."""
    deployments = serve.status().applications[APP_NAME].deployments
    return {name: str(getattr(state.status, "value", state.status)) for name, state in deployments.items()}


def _deploy_failure(serve: Any) -> str | None:
    """The last line of the first failed replica's error (its constructor's exception), from Serve's status."""
    try:
        deployments = serve.status().applications[APP_NAME].deployments
    except Exception:  # noqa: BLE001 - the controller is gone too: the caller's message stands
        return None
    for name, state in sorted(deployments.items()):
        lines = [line.strip() for line in (state.message or "").splitlines() if line.strip()]
        if state.status != "HEALTHY" and lines:
            last = re.sub(r"^[\w.]+\.(\w+: )", r"\1", lines[-1])  # "ModelError: ...", without its module path
            return f"{name}: {last}"
    return None


class RayServe:
    """The running deployment: :meth:`start` it, serve :attr:`app` (the ingress), then :meth:`stop`."""

    def __init__(self, config: ServeConfig, cache_size: str | None):
        self.config, self.cache_size = config, cache_size
        self.app: Any = None
        self._started_ray = False

    def start(self) -> RayServe:
        """Start Ray (local when ``RAY_ADDRESS`` is unset) and the replicas, each with its model loaded. Raises
        RayResourceError (one line) before anything starts that the cluster cannot hold, RayEngineError when a
        replica does not start."""
        c = self.config
        replicas, gpus = c.replicas or 1, c.gpus_per_replica or 0.0
        ray, serve = _import_serve()
        if not ray.is_initialized():
            handler = signal.getsignal(signal.SIGTERM)
            if not os.environ.get("RAY_ADDRESS"):
                here = local_resources()
                check_resources(replicas, gpus, here, "this machine")
                ray.init(num_cpus=int(here["CPU"]), num_gpus=int(here["GPU"]), include_dashboard=False,
                         log_to_driver=False, logging_level="ERROR", configure_logging=True)
            else:
                ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
                check_resources(replicas, gpus, ray.available_resources(), "the Ray cluster (free now)")
            self._started_ray = True
            if handler is not None:
                signal.signal(signal.SIGTERM, handler)  # ray.init sets its own; the command's drains and exits 0
        check_resources(replicas, gpus, ray.cluster_resources(), "the Ray cluster")
        for name in ("ray.serve", "ray"):
            logging.getLogger(name).setLevel(logging.ERROR)
        device = "cpu" if gpus == 0 and c.device == "auto" else c.device  # a replica holding no GPU runs on CPU
        serve.start(proxy_location="Disabled")  # the ingress below is the one HTTP server
        deployment = serve.deployment(Replica)
        bound = [deployment.options(
            name=replica_name(i), num_replicas=1, max_ongoing_requests=c.max_queue + 2,
            ray_actor_options={"num_cpus": REPLICA_CPUS, "num_gpus": gpus},
        ).bind(dataclasses.replace(c, device=device, replica=replica_name(i), encoded_cache=None), self.cache_size)
            for i in range(replicas)]
        root = serve.deployment(_Directory).options(name="vidq-directory", ray_actor_options={"num_cpus": 0})
        try:
            serve.run(root.bind(*bound), name=APP_NAME, route_prefix=None)
        except Exception as exc:  # noqa: BLE001 - a replica's constructor failed (the model did not load)
            why = _deploy_failure(serve) or str(exc)
            self.stop()
            raise RayEngineError(f"--engine ray: the replicas did not start: {why}") from None
        handles = [serve.get_deployment_handle(replica_name(i), app_name=APP_NAME) for i in range(replicas)]
        self.app = create_ingress(c, handles, lambda: deployment_states(serve))
        return self

    def stop(self) -> None:
        """Stop the replicas gracefully (each runs its ``__del__``, removing its media folder), then shut down the
        Ray this started, or on a cluster it joined delete only this application (other jobs' applications stay)."""
        ray, serve = _import_serve()
        if not ray.is_initialized():
            return
        if self._started_ray:
            serve.shutdown()  # graceful, unlike ray.shutdown alone, which kills the replicas' processes
            ray.shutdown()
        else:
            serve.delete(APP_NAME)


def run_ray_server(config: ServeConfig, cache_size: str | None) -> None:
    """Serve ``config`` on Ray Serve until SIGINT/SIGTERM, which drain the ingress's requests and stop the replicas.
    ``cache_size`` is each replica's on-disk encoded-video cache size (None: no cache). Raises what
    :meth:`RayServe.start` raises."""
    import uvicorn

    running = RayServe(config, cache_size).start()
    try:
        uvicorn.run(running.app, host=config.host, port=config.port, log_level="warning")
    finally:
        running.stop()
