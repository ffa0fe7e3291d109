"""``vidq serve --engine ray``: the router's choice and the pre-start check without Ray; then one local Ray with
two CPU replicas of the demo model (one replica when this machine has one CPU) behind the ingress on 127.0.0.1,
asked through the real ``openai`` client and compared with the local engine on the same model."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from flashvid_cli.annotate.ray_engine import RayResourceError, local_resources  # noqa: E402
from flashvid_cli.cli import app as cli  # noqa: E402
from flashvid_cli.config import AskConfig, ConfigError  # noqa: E402
from flashvid_cli.serve import ServeConfig  # noqa: E402
from flashvid_cli.serve.ray_engine import (  # noqa: E402
    affinity_key, check_resources, choose, merge_metrics, replica_name,
)
from serve_server import Server, free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "samples" / "demo" / "clips"
DEMO = REPO / "samples" / "vidq-demo-llava-ov"
DEFAULTS = AskConfig(method="divprune", keep=0.5, max_new_tokens=6)
COUNT = "How many shapes appear in the video?"


def first(path: Path, question: str = COUNT) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{path}"}},
                                         {"type": "text", "text": question}]}]


# --- without Ray -------------------------------------------------------------------------------------------------


def test_the_same_key_goes_to_the_same_replica_and_keys_spread():
    picks = {key: choose(key, [0, 1, 2], {}, 2) for key in (f"video-{n}" for n in range(60))}
    assert all(choose(key, [0, 1, 2], {}, 2) == pick for key, pick in picks.items())
    assert set(picks.values()) == {0, 1, 2}  # 60 keys: each replica gets some (rendezvous hashing)


def test_a_down_replica_moves_only_its_own_keys():
    keys = [f"video-{n}" for n in range(60)]
    before = {k: choose(k, [0, 1, 2], {}, 2) for k in keys}
    after = {k: choose(k, [0, 2], {}, 2) for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != 1)
    assert all(after[k] in {0, 2} for k in keys)


def test_a_full_replica_hands_the_request_to_the_least_loaded_and_all_full_is_none():
    key = "video-7"
    home = choose(key, [0, 1, 2], {}, 2)
    others = [i for i in (0, 1, 2) if i != home]
    load = {home: 2, others[0]: 1, others[1]: 0}
    assert choose(key, [0, 1, 2], load, 2) == others[1]
    assert choose(key, [0, 1, 2], {home: 1, others[0]: 1, others[1]: 0}, 2) == home  # not full: stays home
    assert choose(key, [0, 1, 2], {0: 2, 1: 2, 2: 2}, 2) is None
    assert choose(key, [], {}, 2) is None


def test_the_affinity_key_is_the_video_url_whatever_the_turns_and_question():
    one = {"messages": first(Path("/v/a.mp4"), "q1")}
    follow_up = {"messages": first(Path("/v/a.mp4"), "q1") + [
        {"role": "assistant", "content": "one"}, {"role": "user", "content": "and then?"}]}
    assert affinity_key(one) == affinity_key(follow_up)
    assert affinity_key(one) != affinity_key({"messages": first(Path("/v/b.mp4"))})
    frames = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}}, {"type": "text", "text": "q"}]}]}
    other = {"messages": [{**frames["messages"][0], "content": frames["messages"][0]["content"][1:]}]}
    assert affinity_key(frames) != affinity_key(other)  # every frame's URL is in the key
    assert affinity_key(None) == affinity_key({"messages": "not a list"})  # the replica answers its 400


def test_merged_metrics_parse_with_a_replica_label():
    from prometheus_client.parser import text_string_to_metric_families

    text = ('# HELP vidq_requests_total Requests\n# TYPE vidq_requests_total counter\n'
            'vidq_requests_total{status="200"} 3.0\n# HELP vidq_in_flight Running\n# TYPE vidq_in_flight gauge\n'
            'vidq_in_flight 1.0\n')
    merged = merge_metrics({"r0": text, "r1": text.replace("3.0", "5.0")})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(merged) for s in family.samples}
    assert samples[("vidq_requests_total", (("replica", "r0"), ("status", "200")))] == 3.0
    assert samples[("vidq_requests_total", (("replica", "r1"), ("status", "200")))] == 5.0
    assert samples[("vidq_in_flight", (("replica", "r1"),))] == 1.0


def test_the_resource_check_names_what_is_missing():
    with pytest.raises(RayResourceError, match=r"need 8 GPUs; the cluster has 1: lower --gpus-per-replica"):
        check_resources(4, 2, {"CPU": 16, "GPU": 1}, "the cluster")
    with pytest.raises(RayResourceError, match=r"need 3 CPUs; here has 2: lower --replicas to 2"):
        check_resources(3, 0, {"CPU": 2}, "here")
    check_resources(2, 0.5, {"CPU": 2, "GPU": 1}, "here")  # fits: no error


def test_replicas_without_the_ray_engine_is_a_config_error():
    with pytest.raises(ConfigError, match="need --engine ray"):
        ServeConfig(replicas=2)
    with pytest.raises(ConfigError, match="--replicas must be >= 1"):
        ServeConfig(engine="ray", replicas=0)


@pytest.mark.parametrize("args, line", [
    (["--replicas", "2"], "--replicas and --gpus-per-replica need --engine ray"),
    (["--engine", "ray", "--gpus-per-replica", "64"], "--gpus-per-replica 64 need 64 GPUs; this machine has"),
    (["--engine", "ray", "--replicas", "4096"], "need 4096 CPUs; this machine has"),
])
def test_the_cli_refuses_in_one_line_before_ray_starts(args, line, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--model", str(DEMO), *args])
    assert result.exit_code == 1, result.output
    assert line in result.output and "Traceback" not in result.output
    assert len([x for x in result.output.splitlines() if x.strip()]) <= 2  # the line (and maybe the debug hint)


# --- one local Ray ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-ray-media")
    for n in range(4):
        shutil.copy(CLIPS / f"0000{n}.mp4", root / f"{n}.mp4")
    return root


def _config(media: Path, **kw) -> ServeConfig:
    return ServeConfig(**{**dict(model=str(DEMO), served_model_name="tiny", device="cpu", defaults=DEFAULTS,
                                 allowed_local_media_path=media, max_queue=4), **kw})


@pytest.fixture(scope="module")
def ray_server(media):
    """Ray started once for the module; the ingress served by uvicorn in a thread; Ray shut down at the end, and
    every process it started gone."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'vidq[ray]')")
    import psutil
    import uvicorn

    from flashvid_cli.serve.ray_engine import RayServe

    replicas = 2 if local_resources()["CPU"] >= 2 else 1
    running = RayServe(_config(media, engine="ray", replicas=replicas), None).start()
    # Ray's processes (gcs_server, raylet, its workers and the replicas), not vidq's own decode workers.
    children = [p for p in psutil.Process().children(recursive=True) if "ray" in " ".join(p.cmdline())]
    assert any("raylet" in " ".join(p.cmdline()) for p in children)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(running.app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    made = {"url": f"http://127.0.0.1:{port}", "replicas": replicas, "running": running, "media_files": []}
    yield made
    server.should_exit = True
    thread.join(30)
    running.stop()
    import ray

    assert not ray.is_initialized()
    for file in made["media_files"]:  # each replica ran its __del__ in Serve's graceful stop: its folder is gone
        assert not file.exists() and not file.parent.exists(), file
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"Ray left processes behind: {[p.pid for p in alive]}"


@pytest.fixture(scope="module")
def qa():
    from flashvid_cli.api import VideoQA

    return VideoQA(str(DEMO), device="cpu")


@pytest.fixture(scope="module")
def local(media, qa):
    """The local engine on the same model and defaults: the reference the replicas must agree with."""
    server = Server(_config(media), qa)
    yield server
    server.stop()


def test_closing_a_replicas_stream_is_the_apps_disconnect_and_cancels_the_generation(media, qa):
    """What the ingress does when its client leaves (it closes the replica's generator), on the replica's bridge to
    the app without Ray: the generation stops at its next token and the request counts as 499."""
    import asyncio
    import json

    from flashvid_cli.serve.app import create_app
    from flashvid_cli.serve.engine import Engine
    from flashvid_cli.serve.ray_engine import Replica

    held = threading.Event()

    class Held(Engine):
        def answer(self, req, video, on_text=None, cancel=None, deadline=None):
            def hold(piece):
                on_text(piece)
                held.set()
                cancel.wait(60)

            return super().answer(req, video, hold, cancel, deadline)

    config = _config(media)
    engine = Held(config)
    engine.qa = qa
    replica = object.__new__(Replica)  # its __init__ loads a model; the bridge needs only the app
    replica.app = create_app(config, engine)
    body = json.dumps({"model": "tiny", "stream": True, "messages": first(media / "0.mp4")}).encode()

    async def leave_after_the_first_piece() -> tuple[dict, list[bytes]]:
        gen = replica.call("POST", "/v1/chat/completions", "", [("content-type", "application/json")], body)
        head, chunks = await gen.__anext__(), []
        async for chunk in gen:
            chunks.append(chunk)
            if b'"content": "' in chunk and b'"content": ""' not in chunk:
                break
        await gen.aclose()
        for _ in range(3000):  # the loop runs on, as a replica's does: the generation leaves at its next token
            if not replica.app.state.serve["active"]:
                break
            await asyncio.sleep(0.01)
        return head, chunks

    head, chunks = asyncio.run(leave_after_the_first_piece())
    assert head["status"] == 200 and held.is_set() and chunks
    assert replica.app.state.serve["active"] == 0 and replica.app.state.serve.get("cancelled") == 1


def test_a_replicas_health_check_and_its_stop(media, qa):
    """Serve's hooks on a replica, without Ray: check_health passes while the model is loaded and the app open;
    __del__ (Serve's graceful stop) closes the app, removing its media folder, and the health check then fails."""
    from flashvid_cli.serve.app import create_app
    from flashvid_cli.serve.engine import Engine
    from flashvid_cli.serve.ray_engine import Replica

    replica = object.__new__(Replica)  # its __init__ loads a model: this one is loaded already
    engine = Engine(_config(media))
    replica.app = create_app(_config(media), engine)
    with pytest.raises(RuntimeError, match="not loaded"):
        replica.check_health()
    engine.qa = qa
    replica.check_health()
    folder = replica.app.state.media.folder
    assert folder.is_dir()
    replica.__del__()
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="closed"):
        replica.check_health()


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


def test_sigterm_stops_the_replicas_and_removes_their_media_folders(media):
    """``vidq serve --engine ray`` in a process of its own, with a temporary folder of its own (TMPDIR, which Ray's
    workers inherit): a data: video lands in the replica's media folder; SIGTERM drains, exits 0, and the folder is
    gone. Runs before the module's Ray (the fixture) starts."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'vidq[ray]')")
    import base64
    import hashlib
    import signal
    import subprocess
    import sys
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="vq"))  # short: Ray's session sockets go under it too
    port = free_port()
    command = [sys.executable, "-m", "flashvid_cli", "serve", "--engine", "ray", "--replicas", "1", "--model",
               str(DEMO), "--device", "cpu", "--port", str(port), "--no-cache", "--method", "divprune", "--keep",
               "0.5", "--max-new-tokens", "4"]
    proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, "TMPDIR": str(temp)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() < deadline, "vidq serve --engine ray never became ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        data = (media / "3.mp4").read_bytes()
        url = "data:video/mp4;base64," + base64.b64encode(data).decode()
        done = client(f"http://127.0.0.1:{port}").chat.completions.create(model=str(DEMO), messages=[
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": COUNT}]}])
        assert done.model_extra["vidq"]["replica"] == replica_name(0)
        kept = list(temp.glob(f"vidq-serve-*/{hashlib.sha256(data).hexdigest()}.video"))
        assert len(kept) == 1 and kept[0].read_bytes() == data
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, proc.communicate()[1][-2000:]
        assert not kept[0].parent.exists() and not list(temp.glob("vidq-serve-*"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_replica_answers_the_local_engines_tokens_stream_and_not(ray_server, local, media):
    ray_client = client(ray_server["url"])
    want = local.client().chat.completions.create(model="tiny", messages=first(media / "0.mp4"))
    got = ray_client.chat.completions.create(model="tiny", messages=first(media / "0.mp4"))
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.model_extra["vidq"]["token_ids"] == want.model_extra["vidq"]["token_ids"]
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
    assert got.usage.completion_tokens == want.usage.completion_tokens
    assert got.model_extra["vidq"]["replica"] in {replica_name(i) for i in range(ray_server["replicas"])}
    assert "replica" not in want.model_extra["vidq"]
    chunks = list(ray_client.chat.completions.create(model="tiny", messages=first(media / "0.mp4"), stream=True,
                                                     stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == want.usage.completion_tokens
    reports = [c.model_extra["vidq"] for c in chunks if c.choices and (c.model_extra or {}).get("vidq")]
    assert reports and reports[0]["replica"] == got.model_extra["vidq"]["replica"]  # same video, same replica


def test_requests_about_one_video_land_on_one_replica(ray_server, media):
    ray_client = client(ray_server["url"])
    seen: dict[str, set[str]] = {}
    for n in (0, 1, 2, 3, 0, 1, 2, 3):
        raw = ray_client.chat.completions.with_raw_response.create(model="tiny", messages=first(media / f"{n}.mp4"))
        replica = raw.parse().model_extra["vidq"]["replica"]
        assert raw.headers["x-vidq-replica"] == replica
        seen.setdefault(f"{n}.mp4", set()).add(replica)
    assert all(len(replicas) == 1 for replicas in seen.values()), seen
    keys = {name: affinity_key({"messages": first(media / name)}) for name in seen}
    live = list(range(ray_server["replicas"]))
    assert {name: {replica_name(choose(k, live, {}, 5))} for name, k in keys.items()} == seen


def test_health_models_metrics_and_errors_through_the_ingress(ray_server, media):
    from prometheus_client.parser import text_string_to_metric_families

    url, names = ray_server["url"], {replica_name(i) for i in range(ray_server["replicas"])}
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and set(health["replicas"]) == names
    from ray import serve

    from flashvid_cli.serve.ray_engine import deployment_states

    states = deployment_states(serve)  # what the ingress polls: every replica by its name, HEALTHY
    assert {name: states[name] for name in names} == {name: "HEALTHY" for name in names}
    assert [m.id for m in client(url).models.list()] == ["tiny"]
    with pytest.raises(openai.NotFoundError) as missing:
        client(url).chat.completions.create(model="other", messages=first(media / "0.mp4"))
    assert missing.value.body["code"] == "model_not_found"  # the replica's OpenAI-shaped error, passed through
    with pytest.raises(openai.BadRequestError):  # outside --allowed-local-media-path: the replica's own 400
        client(url).chat.completions.create(model="tiny", messages=first(Path("/etc/passwd")))
    client(url).chat.completions.create(model="tiny", messages=first(media / "1.mp4"))
    families = list(text_string_to_metric_families(httpx.get(f"{url}/metrics").text))
    labelled = {s.labels.get("replica") for f in families for s in f.samples if s.name == "vidq_requests_in_flight"}
    assert labelled == names


def test_a_replicas_media_folder_goes_at_stop(ray_server, media):
    """A data: video lands in its replica's temporary media folder (``vidq-serve-*`` under the temp dir, by its
    SHA-256); the fixture's teardown checks that ``RayServe.stop`` removed it."""
    import base64
    import hashlib
    import tempfile

    data = (media / "2.mp4").read_bytes()
    url = "data:video/mp4;base64," + base64.b64encode(data).decode()
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                             {"type": "text", "text": COUNT}]}]
    client(ray_server["url"]).chat.completions.create(model="tiny", messages=messages)
    name = f"{hashlib.sha256(data).hexdigest()}.video"
    found = list(Path(tempfile.gettempdir()).glob(f"vidq-serve-*/{name}"))
    assert len(found) == 1, found  # one replica wrote it, once
    ray_server["media_files"].extend(found)


def test_more_gpus_than_the_cluster_has_is_one_line_before_anything_deploys(ray_server, media):
    import ray

    from flashvid_cli.serve.ray_engine import RayServe

    gpus = ray.cluster_resources().get("GPU", 0) + 1
    with pytest.raises(RayResourceError, match=r"need \d+ GPUs; the Ray cluster has"):
        RayServe(_config(media, engine="ray", replicas=1, gpus_per_replica=gpus), None).start()
    assert httpx.get(f"{ray_server['url']}/health").json()["status"] == "ok"  # the running deployment is untouched


def test_a_replica_that_does_not_load_is_named_with_its_error():
    """What a failed start says (Serve retries the constructor, then fails the application without the cause):
    the first unhealthy replica's last traceback line, read from Serve's status."""
    from types import SimpleNamespace

    from flashvid_cli.serve.ray_engine import APP_NAME, _deploy_failure

    trace = "Traceback (most recent call last):\n  File ...\nflashvid_cli.pipelines.errors.ModelError: no such model\n"
    deployments = {"vidq-directory": SimpleNamespace(status="HEALTHY", message=""),
                   "vidq-replica-1": SimpleNamespace(status="HEALTHY", message=""),
                   "vidq-replica-0": SimpleNamespace(status="DEPLOY_FAILED", message=trace)}
    serve = SimpleNamespace(status=lambda: SimpleNamespace(
        applications={APP_NAME: SimpleNamespace(deployments=deployments)}))
    assert _deploy_failure(serve) == "vidq-replica-0: ModelError: no such model"
    gone = SimpleNamespace(status=lambda: (_ for _ in ()).throw(ConnectionError("controller gone")))
    assert _deploy_failure(gone) is None


class _FakeHandle:
    """A Serve handle's shape (``options(stream=True).call.remote(...)``): answers 200 naming itself, or fails
    before its first byte as a dead replica's call does."""

    def __init__(self, index: int, dead: bool = False):
        self.index, self.dead, self.calls, self.cancels = index, dead, 0, 0

    def options(self, stream: bool):
        assert stream
        return self

    @property
    def call(self):
        return self

    def remote(self, method, path, query, headers, body):
        self.calls += 1
        handle = self

        class Gen:
            def __init__(self):
                self.items = [{"status": 200, "headers": [("content-type", "text/plain")]},
                              f"replica {handle.index}".encode()]

            def __aiter__(self):
                return self

            async def __anext__(self):
                if handle.dead:
                    raise ConnectionError("the actor died")
                if not self.items:
                    raise StopAsyncIteration
                return self.items.pop(0)

            def cancel(self):
                handle.cancels += 1

        return Gen()


def test_the_ingress_skips_a_replica_that_fails_before_its_first_byte(media):
    from fastapi.testclient import TestClient

    from flashvid_cli.serve.ray_engine import create_ingress

    body = {"model": "tiny", "messages": first(media / "0.mp4")}
    home = choose(affinity_key(body), [0, 1], {}, 5)
    handles = [_FakeHandle(0, dead=home == 0), _FakeHandle(1, dead=home == 1)]
    with TestClient(create_ingress(_config(media), handles)) as ingress:
        for _ in range(3):
            response = ingress.post("/v1/chat/completions", json=body)
            assert response.status_code == 200 and response.text == f"replica {1 - home}"
            assert response.headers["x-vidq-replica"] == replica_name(1 - home)
        assert handles[home].calls == 1  # tried once, then left out of the routing for DOWN_S seconds
        assert handles[1 - home].cancels == 3  # each answer released its replica's slot once, when it ended
        handles[1 - home].dead = True
        response = ingress.post("/v1/chat/completions", json=body)
        assert response.status_code == 503 and response.json()["error"]["code"] == "no_replica"


def test_the_ingress_sends_nothing_to_a_replica_serve_calls_unhealthy(media):
    """Serve's status (polled by the ingress) leaves a replica out with no failed call of its own, and takes it
    back once Serve calls it HEALTHY again; a failed poll keeps the last answer."""
    from fastapi.testclient import TestClient

    from flashvid_cli.serve import ray_engine
    from flashvid_cli.serve.ray_engine import create_ingress

    body = {"model": "tiny", "messages": first(media / "0.mp4")}
    home = choose(affinity_key(body), [0, 1], {}, 5)
    states = {replica_name(home): "UNHEALTHY", replica_name(1 - home): "HEALTHY"}
    polled = threading.Event()

    def status():
        polled.set()
        if states.get("fail"):
            raise ConnectionError("the controller is gone")
        return dict(states)

    def answered_by() -> str:
        polled.clear()
        assert polled.wait(10)  # a poll that began after the change
        polled.clear()
        assert polled.wait(10)  # ... and has finished: the next one began
        response = ingress.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
        return response.headers["x-vidq-replica"]

    handles = [_FakeHandle(0), _FakeHandle(1)]
    ray_engine.HEALTH_POLL_S, saved = 0.01, ray_engine.HEALTH_POLL_S
    try:
        with TestClient(create_ingress(_config(media), handles, status)) as ingress:
            assert answered_by() == replica_name(1 - home)
            assert handles[home].calls == 0  # never tried: Serve said so, no call had to fail
            states[replica_name(home)] = "HEALTHY"
            assert answered_by() == replica_name(home)  # back, and its keys with it
            states[replica_name(home)] = "UPDATING"  # Serve replacing it
            states["fail"] = True  # ... but the poll fails before it sees that: the last answer (HEALTHY) stands
            assert answered_by() == replica_name(home)
            states["fail"] = False
            assert answered_by() == replica_name(1 - home)
    finally:
        ray_engine.HEALTH_POLL_S = saved


def test_a_full_replica_sends_the_video_to_the_other_and_all_full_is_429(media):
    """Through the real ingress (uvicorn, fake handles whose answers hang until released): --max-queue 0 lets each
    replica hold one request, so the second request about one video goes to the other replica, the third is 429."""
    import asyncio

    import uvicorn

    from flashvid_cli.serve.ray_engine import create_ingress

    done = threading.Event()

    class Hanging(_FakeHandle):
        def remote(self, *args):
            gen = super().remote(*args)
            items = gen.items

            async def next_item():
                if len(items) == 1:  # the head is sent; the body waits
                    while not done.is_set():
                        await asyncio.sleep(0.01)
                if not items:
                    raise StopAsyncIteration
                return items.pop(0)

            gen.__class__.__anext__ = lambda self: next_item()
            return gen

    server = uvicorn.Server(uvicorn.Config(create_ingress(_config(media, max_queue=0), [Hanging(0), Hanging(1)]),
                                           host="127.0.0.1", port=free_port(), log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.config.port}/v1/chat/completions"
    body = {"model": "tiny", "messages": first(media / "0.mp4")}
    home = replica_name(choose(affinity_key(body), [0, 1], {}, 1))
    try:
        with httpx.stream("POST", url, json=body, timeout=30) as one, \
                httpx.stream("POST", url, json=body, timeout=30) as two:
            assert one.headers["x-vidq-replica"] == home
            assert two.headers["x-vidq-replica"] not in {home, None} and two.status_code == 200
            third = httpx.post(url, json=body, timeout=30)
            assert third.status_code == 429 and third.headers["retry-after"] == "1"
            assert third.json()["error"]["code"] == "queue_full"
            done.set()
            assert one.read().decode() == f"replica {home[-1]}"
        assert httpx.post(url, json=body, timeout=30).headers["x-vidq-replica"] == home  # slots freed
    finally:
        done.set()
        server.should_exit = True
        thread.join(30)
