"""``vidq serve`` through the real ``openai`` client: a server on 127.0.0.1 per configuration, one tiny LLaVA-OV
model loaded once and shared by them (each has its own engine: caches, queue, key)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from flashvid_cli.config import AskConfig  # noqa: E402
from flashvid_cli.serve import ServeConfig, create_app  # noqa: E402
from flashvid_cli.serve.engine import Engine  # noqa: E402
from serve_server import Server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "samples" / "demo" / "clips"
DEMO = REPO / "samples" / "vidq-demo-llava-ov"
DEFAULTS = AskConfig(method="divprune", keep=0.5, max_new_tokens=6)
COUNT, LAST = "How many shapes appear in the video?", "Which shape appears last?"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-media")
    allowed = root / "allowed"
    allowed.mkdir()
    shutil.copy(CLIPS / "00000.mp4", allowed / "a.mp4")
    shutil.copy(CLIPS / "00001.mp4", allowed / "b.mp4")
    (allowed / "broken.mp4").write_bytes(b"not a video at all" * 100)
    outside = root / "outside.mp4"
    shutil.copy(CLIPS / "00002.mp4", outside)
    (allowed / "link.mp4").symlink_to(outside)
    return {"allowed": allowed, "a": allowed / "a.mp4", "b": allowed / "b.mp4", "broken": allowed / "broken.mp4",
            "outside": outside, "link": allowed / "link.mp4"}


@pytest.fixture(scope="module")
def qa():
    """The trained demo model (1.5M parameters): its answers mean something, so equal answers are a real check."""
    from flashvid_cli.api import VideoQA

    return VideoQA(str(DEMO), device="cpu")


def _config(media, **kw) -> ServeConfig:
    base = dict(model="tiny", defaults=DEFAULTS, allowed_local_media_path=media["allowed"], max_data_bytes=4000,
                max_queue=0)
    return ServeConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def servers(qa, media):
    made = {"main": Server(_config(media), qa), "nocache": Server(_config(media, kv_cache_size=0,
                                                                              video_cache_size=0), qa),
            "key": Server(_config(media, api_key="s3cret"), qa)}
    yield made
    for server in made.values():
        server.stop()


def video(path: Path | str) -> dict:
    url = path if isinstance(path, str) else f"file://{path}"
    return {"type": "video_url", "video_url": {"url": url}}


def first(path, question: str) -> list[dict]:
    return [{"role": "user", "content": [video(path), {"type": "text", "text": question}]}]


def chat(server: Server, messages: list[dict], **kw):
    return server.client().chat.completions.create(model="tiny", messages=messages, **kw)


def vidq(completion) -> dict:
    return completion.model_extra["vidq"]


def test_models_health_and_metrics(servers):
    main = servers["main"]
    assert [m.id for m in main.client().models.list()] == ["tiny"]
    assert httpx.get(f"{main.url}/health").json() == {"status": "ok", "model": "tiny"}
    chat(main, first(main.engine.config.allowed_local_media_path / "a.mp4", COUNT))
    text = httpx.get(f"{main.url}/metrics").text
    for name in ("vidq_time_to_first_token_seconds_count", "vidq_time_per_output_token_seconds_bucket",
                 "vidq_queue_time_seconds_count", 'vidq_stage_seconds_count{stage="encode"}',
                 'vidq_cache_total{layer="prefix"', 'vidq_requests_total{status="200"}'):
        assert name in text, name


def test_health_is_503_until_the_model_loads(media):
    gate = threading.Event()

    class Slow(Engine):
        def load(self):
            gate.wait(30)
            self.qa = object()

    config = _config(media)
    app = create_app(config, Slow(config))
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        assert client.get("/health").status_code == 503
        response = client.post("/v1/chat/completions", json={"model": "tiny", "messages": first(media["a"], "q")})
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_not_ready"
        gate.set()
        for _ in range(100):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.02)
        assert client.get("/health").json()["status"] == "ok"


def test_non_stream_and_stream_agree_with_usage_and_report(servers, media):
    main = servers["main"]
    plain = chat(main, first(media["a"], COUNT))
    answer = plain.choices[0].message.content
    assert plain.usage.prompt_tokens > 0 and 0 < plain.usage.completion_tokens <= 6
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
    report = vidq(plain)["report"]
    assert report["method"] == "divprune" and report["tokens"]["visual_after"] < report["tokens"]["visual_before"]
    assert report["tokens"]["prompt"] == plain.usage.prompt_tokens
    assert set(report["cache"]) >= {"encoded", "prefix", "video_memory", "reused_tokens"}
    assert vidq(plain)["answer"] == answer
    chunks = list(chat(main, first(media["a"], COUNT), stream=True,
                       stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert any(c.choices and c.choices[0].finish_reason in {"stop", "length"} for c in chunks)


def _follow_up(server: Server, path: Path, questions: list[str], **kw) -> list:
    messages, out = [], []
    for i, q in enumerate(questions):
        messages += first(path, q) if i == 0 else [{"role": "user", "content": q}]
        done = chat(server, messages, **kw)
        out.append(done)
        messages.append({"role": "assistant", "content": done.choices[0].message.content})
    return out


def test_follow_up_hits_the_prompt_cache_and_answers_as_a_fresh_prefill(servers, media):
    questions = [COUNT, LAST, COUNT]
    warm = _follow_up(servers["main"], media["b"], questions)
    cold = _follow_up(servers["nocache"], media["b"], questions)
    follow = vidq(warm[1])["report"]["cache"]
    assert follow["prefix"] == "hit" and follow["video_memory"] == "hit"
    assert warm[1].usage.prompt_tokens_details.cached_tokens == follow["reused_tokens"]
    # The first turn came from the cache, up to where the template renders it differently inside a conversation.
    assert follow["reused_tokens"] >= warm[0].usage.prompt_tokens - 2
    assert vidq(warm[2])["report"]["cache"]["reused_tokens"] >= warm[1].usage.prompt_tokens - 2
    assert vidq(cold[1])["report"]["cache"]["prefix"] == "off"
    assert [c.choices[0].message.content for c in warm] == [c.choices[0].message.content for c in cold]
    assert [vidq(c)["token_ids"] for c in warm] == [vidq(c)["token_ids"] for c in cold]


def test_sparsevila_follow_ups_decode_sparsely_and_answer_as_without_the_prompt_cache(servers, media):
    """SparseVILA's decoding runs on a compact copy, so the server's prompt cache keeps the prompt alone and the next
    request prefills the answer: the same tokens as a server without a prompt cache."""
    body = {"extra_body": {"vidq": {"method": "sparsevila", "keep": 0.5, "opt": {"decode_keep": "0.1"}}}}
    questions = [COUNT, LAST]
    warm = _follow_up(servers["main"], media["a"], questions, **body)
    cold = _follow_up(servers["nocache"], media["a"], questions, **body)
    report = vidq(warm[1])["report"]
    assert report["cache"]["prefix"] == "hit" and report["method"] == "sparsevila"
    visual = report["tokens"]["visual_after"] - 1  # LLaVA-OV's newline
    assert report["tokens"]["decoded_by_layer"][0] == min(4, visual) + round(0.1 * visual) + 1
    assert [vidq(c)["token_ids"] for c in warm] == [vidq(c)["token_ids"] for c in cold]


def test_two_conversations_interleaved_stay_independent(servers, media):
    main, cold = servers["main"], servers["nocache"]
    conversations = {k: [{"role": "user", "content": [video(media[k]), {"type": "text", "text": LAST}]}]
                     for k in ("a", "b")}
    answers = {"a": [], "b": []}
    for turn in range(2):
        for k in ("a", "b"):
            done = chat(main, conversations[k])
            answers[k].append(done)
            conversations[k] += [{"role": "assistant", "content": done.choices[0].message.content},
                                 {"role": "user", "content": COUNT}]
    for k in ("a", "b"):
        assert vidq(answers[k][1])["report"]["cache"]["prefix"] == "hit"
        fresh = chat(cold, conversations[k][:-1][:3])  # the second turn again, prefilled in full
        assert vidq(fresh)["token_ids"] == vidq(answers[k][1])["token_ids"]


def _refused(server: Server, messages, status: int, code: str, **kw):
    with pytest.raises(openai.APIStatusError) as caught:
        chat(server, messages, **kw)
    assert caught.value.status_code == status, caught.value.body
    assert caught.value.body["code"] == code, caught.value.body
    assert "Traceback" not in caught.value.message
    return caught.value


@pytest.mark.parametrize("which", ["outside", "traversal", "link"])
def test_paths_out_of_the_allowed_folder_are_refused(servers, media, which):
    path = {"outside": f"file://{media['outside']}", "link": f"file://{media['link']}",
            "traversal": f"file://{media['allowed']}/../outside.mp4"}[which]
    _refused(servers["main"], first(path, "what?"), 400, "path_not_allowed")


def test_data_urls_within_and_over_the_cap(servers, media):
    small = "data:video/mp4;base64," + base64.b64encode(media["a"].read_bytes()).decode()
    done = chat(servers["main"], first(small, COUNT))
    assert done.choices[0].message.content is not None
    big = "data:video/mp4;base64," + "A" * 8000  # not even valid video: refused on its size, before decoding
    _refused(servers["main"], first(big, "what?"), 413, "payload_too_large")


def test_the_media_folder_is_removed_when_the_server_stops(qa, media):
    server = Server(_config(media, max_data_bytes=1 << 20), qa)
    try:
        data = media["a"].read_bytes()
        chat(server, first("data:video/mp4;base64," + base64.b64encode(data).decode(), COUNT))
        folder = server.app.state.media.folder
        assert (folder / f"{hashlib.sha256(data).hexdigest()}.video").read_bytes() == data
    finally:
        server.stop()  # uvicorn's shutdown runs the app's lifespan end
    assert not folder.exists()


def test_other_refusals(servers, media):
    main = servers["main"]
    _refused(main, first("https://example.com/v.mp4", "what?"), 400, "url_download_disabled")
    _refused(main, first(media["broken"], "what?"), 422, "video_decode_error")
    _refused(main, first(media["a"], "what?"), 400, "n_not_supported", n=2)
    said = _refused(main, first(media["a"], "what?"), 400, "invalid_option", extra_body={"vidq": {"keep": 2}})
    assert "vidq.keep must be in (0, 1]" in said.body["message"]  # the request's field, not the CLI's --keep
    said = _refused(main, first(media["a"], "what?"), 400, "invalid_option", max_tokens=0)
    assert "max_tokens must be at least 1" in said.body["message"]
    said = _refused(main, first(media["a"], "what?"), 400, "invalid_option", temperature=-1)
    assert "temperature must be >= 0" in said.body["message"] and "--" not in said.body["message"]
    _refused(main, first(media["a"], "what?"), 400, "invalid_option", extra_body={"vidq": {"method": "nope"}})
    _refused(main, [{"role": "user", "content": "no video"}], 400, "video_required")
    with pytest.raises(openai.NotFoundError) as caught:
        main.client().chat.completions.create(model="other", messages=first(media["a"], "what?"))
    assert caught.value.body["code"] == "model_not_found"


def test_vidq_and_media_options_reach_the_report(servers, media):
    done = chat(servers["main"], first(media["a"], COUNT), max_tokens=3, seed=1,
                extra_body={"vidq": {"method": "visionzip", "keep": 0.25},
                            "media_io_kwargs": {"video": {"num_frames": 2}}})
    report = vidq(done)["report"]
    assert report["method"] == "visionzip" and report["keep"] == 0.25
    assert len(report["video"]["frame_indices"]) == 2 and done.usage.completion_tokens <= 3


def test_api_key(servers, media):
    server = servers["key"]
    assert httpx.get(f"{server.url}/health").status_code == 200  # /health needs no key
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").models.list()
    done = server.client("s3cret").chat.completions.create(model="tiny", messages=first(media["a"], "what?"))
    assert done.choices[0].message.content is not None


def test_queue_limit_gives_429(servers, media):
    main = servers["main"]
    results = {}
    with main.engine.lock:  # the model is busy: the next request waits, the one after it is refused
        waiting = threading.Thread(target=lambda: results.setdefault("first", chat(main, first(media["a"], "q?"))))
        waiting.start()
        for _ in range(500):
            if main.app.state.serve["active"] == 1:
                break
            time.sleep(0.01)
        response = httpx.post(f"{main.url}/v1/chat/completions",
                              json={"model": "tiny", "messages": first(media["a"], "q?")})
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "queue_full"
    waiting.join(60)
    assert results["first"].choices[0].message.content is not None


def _wait_idle(server: Server) -> None:
    deadline = time.time() + 60
    while server.app.state.serve["active"]:
        assert time.time() < deadline, "the request never freed its slot"
        time.sleep(0.02)


def test_a_client_disconnect_mid_stream_cancels_at_the_next_token_and_frees_the_slot(qa, media):
    pieces = []

    class Held(Engine):
        """Holds the generation after its first streamed piece until the server has seen the client leave."""

        def answer(self, req, video, on_text=None, cancel=None, deadline=None):
            def hold(piece):
                on_text(piece)
                pieces.append(piece)
                cancel.wait(60)

            return super().answer(req, video, hold if on_text else None, cancel, deadline)

    config = _config(media)  # --max-queue 0: while the slot is held, another request is 429
    server = Server(config, qa, Held(config))
    try:
        body = {"model": "tiny", "stream": True, "max_tokens": 6, "messages": first(media["a"], COUNT)}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # the first piece of the answer: leave, closing the connection mid-stream
        _wait_idle(server)
        assert server.app.state.serve.get("cancelled") == 1 and len(pieces) == 1
        counted = httpx.get(f"{server.url}/metrics").text
        assert 'vidq_requests_total{status="499"} 1.0' in counted and 'status="200"' not in counted
        assert chat(server, first(media["a"], COUNT)).choices[0].message.content  # the slot is free again
    finally:
        server.stop()


def test_sigterm_drains_the_request_in_flight_and_exits_0(media):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "flashvid_cli", "serve", "--model", str(DEMO), "--device", "cpu", "--port",
               str(port), "--allowed-local-media-path", str(media["allowed"]), "--no-cache", "--method", "divprune",
               "--keep", "0.5", "--max-new-tokens", "6"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "vidq serve never became ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        body = json.dumps({"model": str(DEMO), "messages": first(media["a"], COUNT)}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=120) as conn:
            conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                         f"\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
            # 100 Continue comes when the app starts reading the body: the request is in flight for certain.
            assert conn.recv(4096).startswith(b"HTTP/1.1 100"), "no 100 Continue"
            proc.send_signal(signal.SIGTERM)
            conn.sendall(body)
            raw = b""
            while chunk := conn.recv(65536):
                raw += chunk
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), raw[:300]
        assert json.loads(payload)["choices"][0]["message"]["content"]
        assert proc.wait(60) == 0, proc.communicate()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def web(media, tmp_path_factory):
    """A plain http.server on 127.0.0.1 with the clip, a file over the cap and redirects."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    root = tmp_path_factory.mktemp("web")
    shutil.copy(media["a"], root / "a.mp4")
    (root / "big.mp4").write_bytes(b"x" * 8000)  # over _config's 4000-byte cap

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            target = {"/to-clip": "/a.mp4", "/to-file": f"file://{media['a']}", "/loop": "/loop"}.get(self.path)
            if target is None:
                return super().do_GET()
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def downloaders(qa, media):
    made = {"public": Server(_config(media, allow_url_download=True), qa),
            "private": Server(_config(media, allow_url_download=True, allow_private_urls=True), qa)}
    yield made
    for server in made.values():
        server.stop()


def test_a_url_to_a_loopback_address_is_refused_without_allow_private_urls(downloaders, web):
    for url in (f"{web}/a.mp4", web.replace("127.0.0.1", "localhost") + "/a.mp4"):
        error = _refused(downloaders["public"], first(url, "what?"), 400, "private_address")
        assert "--allow-private-urls" in error.message


def test_a_downloaded_video_is_answered_as_the_same_file_is(downloaders, servers, web, media):
    got = chat(downloaders["private"], first(f"{web}/a.mp4", COUNT))
    local = chat(servers["nocache"], first(media["a"], COUNT))
    assert vidq(got)["token_ids"] == vidq(local)["token_ids"]
    again = chat(downloaders["private"], first(f"{web}/to-clip", COUNT))  # a redirect, to the same bytes
    assert vidq(again)["report"]["cache"]["video_memory"] == "hit"


def test_download_refusals(downloaders, web):
    private = downloaders["private"]
    _refused(private, first(f"{web}/big.mp4", "what?"), 413, "payload_too_large")
    _refused(private, first(f"{web}/missing.mp4", "what?"), 400, "download_failed")
    _refused(private, first(f"{web}/to-file", "what?"), 400, "unsupported_url")  # each hop is checked again
    _refused(private, first(f"{web}/loop", "what?"), 400, "too_many_redirects")


def _png_frames(path: Path, indices: list[int]) -> list[str]:
    """Frames ``indices`` of the video at ``path`` as PNG data URLs (lossless: the pixels the decoder gave)."""
    import io

    import av

    Image = pytest.importorskip("PIL.Image")
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    urls = []
    for i in indices:
        buffer = io.BytesIO()
        Image.fromarray(frames[i]).save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return urls


def images(urls: list[str]) -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": u}} for u in urls]


def test_a_run_of_image_url_parts_is_one_video_at_1_fps(servers, media):
    main = servers["nocache"]
    clip = chat(main, first(media["a"], LAST), extra_body={"media_io_kwargs": {"video": {"num_frames": 3}}})
    indices = vidq(clip)["report"]["video"]["frame_indices"]
    urls = _png_frames(media["a"], indices)
    content = [{"type": "text", "text": "Look:"}, *images(urls), {"type": "text", "text": LAST}]
    done = chat(main, [{"role": "user", "content": content}])
    video_report = vidq(done)["report"]["video"]
    assert video_report["frame_indices"] == [0, 1, 2] and video_report["fps"] == 1.0
    # The same pixels in the same order: the answer the clip's own frames gave, token for token.
    again = chat(main, [{"role": "user", "content": [*images(urls), {"type": "text", "text": LAST}]}])
    assert vidq(again)["token_ids"] == vidq(clip)["token_ids"]


def test_image_url_refusals(servers, media):
    main = servers["main"]
    a, b, c = _png_frames(media["a"], [0, 1, 2])
    split = [*images([a]), {"type": "text", "text": "and"}, *images([b]), {"type": "text", "text": LAST}]
    _refused(main, [{"role": "user", "content": split}], 400, "video_position")
    both = [video(media["a"]), *images([a]), {"type": "text", "text": LAST}]
    _refused(main, [{"role": "user", "content": both}], 400, "video_required")
    later = [*first(media["a"], LAST), {"role": "assistant", "content": "x"},
             {"role": "user", "content": [*images([a]), {"type": "text", "text": LAST}]}]
    _refused(main, later, 400, "video_position")
    import io

    Image = pytest.importorskip("PIL.Image")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6)).save(buffer, format="PNG")
    odd = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    _refused(main, [{"role": "user", "content": [*images([a, odd]), {"type": "text", "text": LAST}]}], 400,
             "frame_size_mismatch")
    junk = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    _refused(main, [{"role": "user", "content": [*images([junk]), {"type": "text", "text": LAST}]}], 400,
             "invalid_image")
    _refused(main, [{"role": "user", "content": [*images([a, "data:image/png;base64," + "A" * 8000]),
                                                 {"type": "text", "text": LAST}]}], 413, "payload_too_large")
