"""``vidq serve``'s limits and edges: system messages (placed where the family's template puts them), the per-request
deadline (504 ``request_timeout``, queue time included, generation stopped at the next token), and a client that
leaves a non-streamed request (499 in ``vidq_requests_total``, never 200). On 127.0.0.1 with the demo model."""

from __future__ import annotations

import json
import socket
import time

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from flashvid_cli.config import ConfigError  # noqa: E402
from flashvid_cli.serve import ServeConfig  # noqa: E402
from flashvid_cli.serve.engine import Engine  # noqa: E402
from flashvid_cli.pipelines.prompt import prompt_ids, system_prompt  # noqa: E402
from serve_server import Server  # noqa: E402
from test_serve import COUNT, DEFAULTS, LAST, _config, chat, first, media, qa, vidq  # noqa: E402,F401

SYSTEM = "You answer questions about short videos of shapes."
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def server(qa, media):
    made = Server(_config(media, max_queue=1), qa)
    yield made
    made.stop()


def _with_system(messages: list[dict], system: str = SYSTEM) -> list[dict]:
    return [{"role": "system", "content": system}] + messages


def _status_count(server: Server, status: int) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(f'vidq_requests_total{{status="{status}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_prompt_ids_put_the_system_message_where_the_template_does(qa):
    pipe = qa.pipeline
    tok, template, video = pipe.tokenizer, pipe.chat_template, pipe.video_token
    messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": COUNT}]}]
    text = tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    with system_prompt(SYSTEM):
        ids = prompt_ids(tok, template, video, COUNT, 1)
    assert SYSTEM in text and ids == tok(text, add_special_tokens=False)["input_ids"]
    assert ids != prompt_ids(tok, template, video, COUNT, 1)  # outside the block: no system message
    with system_prompt("<|im_end|>"):  # a system prompt is text: it cannot end its own turn
        sneaky = prompt_ids(tok, template, video, COUNT, 1)
    assert sneaky.count(tok.convert_tokens_to_ids("<|im_end|>")) == ids.count(tok.convert_tokens_to_ids("<|im_end|>"))


def test_a_system_message_answers_as_the_library_does_with_it(server, qa, media):
    done = chat(server, _with_system(first(media["a"], COUNT)))
    with system_prompt(SYSTEM):
        expected = qa.ask(media["a"], COUNT, DEFAULTS)
    assert done.choices[0].message.content == expected.answer
    assert done.usage.prompt_tokens == expected.report.tokens.prompt
    plain = chat(server, first(media["a"], COUNT))
    assert done.usage.prompt_tokens > plain.usage.prompt_tokens  # the system message is in the prompt


def test_a_follow_up_with_a_system_message_reuses_its_prefix(server, qa, media):
    opened = chat(server, _with_system(first(media["a"], COUNT)))
    turns = first(media["a"], COUNT) + [{"role": "assistant", "content": opened.choices[0].message.content},
                                        {"role": "user", "content": LAST}]
    follow = chat(server, _with_system(turns))
    assert follow.usage.prompt_tokens_details.cached_tokens > opened.usage.prompt_tokens // 2
    fresh = Server(_config(media, kv_cache_size=0, video_cache_size=0), qa)
    try:
        again = chat(fresh, _with_system(turns))
    finally:
        fresh.stop()
    assert follow.choices[0].message.content == again.choices[0].message.content
    assert follow.usage.prompt_tokens == again.usage.prompt_tokens


@pytest.mark.parametrize("messages, code", [
    ([{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}], "invalid_messages"),
    ([{"role": "system", "content": "only a system message"}], "invalid_messages"),
    ([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "video_position"),
])
def test_system_message_refusals(server, messages, code):
    response = httpx.post(f"{server.url}{CHAT}", json={"model": "tiny", "messages": messages})
    assert response.status_code == 400 and response.json()["error"]["code"] == code, response.text


def _post(server: Server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{CHAT}", json={"model": "tiny", **body}, timeout=120)


def test_a_request_past_its_deadline_is_504(server, media):
    before = _status_count(server, 504)
    response = _post(server, {"messages": first(media["a"], COUNT), "vidq": {"timeout": 1e-6}})
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "request_timeout"
    assert _status_count(server, 504) == before + 1
    assert chat(server, first(media["a"], COUNT)).choices[0].message.content  # healthy afterwards


def test_queue_time_counts_toward_the_deadline(server, media):
    with server.engine.lock:  # the model is busy past the request's deadline
        response = _post(server, {"messages": first(media["a"], COUNT), "vidq": {"timeout": 0.2}})
    assert response.status_code == 504 and "queue" in response.json()["error"]["message"], response.text


@pytest.mark.parametrize("timeout", [0, -1, "soon", True])
def test_bad_timeouts_are_400(server, media, timeout):
    response = _post(server, {"messages": first(media["a"], COUNT), "vidq": {"timeout": timeout}})
    assert response.status_code == 400, response.text


def test_server_request_timeout_must_be_positive(media):
    with pytest.raises(ConfigError, match="--request-timeout"):
        _config(media, request_timeout=0)


class Expiring(Engine):
    """Passes the request's deadline right after its first streamed piece (as a slow generation would)."""

    def __init__(self, config: ServeConfig):
        super().__init__(config)
        self.pieces: list[str] = []

    def answer(self, req, video, on_text=None, cancel=None, deadline=None):
        def expire(piece):
            on_text(piece)
            self.pieces.append(piece)
            deadline.at = time.perf_counter() - 1.0

        return super().answer(req, video, expire if on_text else None, cancel, deadline)


def test_the_server_deadline_stops_a_stream_at_the_next_token(qa, media):
    config = _config(media, request_timeout=600.0)
    made = Server(config, qa, Expiring(config))
    try:
        body = {"model": "tiny", "stream": True, "max_tokens": 6, "messages": first(media["a"], COUNT)}
        with httpx.stream("POST", f"{made.url}{CHAT}", json=body, timeout=120) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        errors = [json.loads(e)["error"] for e in events if e != "[DONE]" and "error" in json.loads(e)]
        assert len(made.engine.pieces) == 1 and [e["code"] for e in errors] == ["request_timeout"]
        assert _status_count(made, 504) == 1 and _status_count(made, 200) == 0
        assert made.engine.prompts == []  # the stopped generation's cache, of unknown contents, is dropped
    finally:
        made.stop()


class HeldUntilGone(Engine):
    """Waits, before answering, until the server has seen its client leave."""

    hold = True

    def answer(self, req, video, on_text=None, cancel=None, deadline=None):
        if self.hold:
            cancel.wait(60)
        return super().answer(req, video, on_text, cancel, deadline)


def test_a_client_leaving_a_non_streamed_request_cancels_it_as_499(qa, media):
    config = _config(media)
    made = Server(config, qa, HeldUntilGone(config))
    try:
        body = json.dumps({"model": "tiny", "messages": first(media["a"], COUNT)}).encode()
        with socket.create_connection(("127.0.0.1", made.port), timeout=60) as conn:
            conn.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            deadline = time.time() + 60
            while made.app.state.serve["active"] == 0:
                assert time.time() < deadline, "the request never started"
                time.sleep(0.01)
        deadline = time.time() + 60
        while made.app.state.serve["active"]:
            assert time.time() < deadline, "the request never freed its slot"
            time.sleep(0.02)
        assert made.app.state.serve.get("cancelled") == 1
        assert _status_count(made, 499) == 1 and _status_count(made, 200) == 0
        assert httpx.get(f"{made.url}/health").json()["status"] == "ok"
        made.engine.hold = False  # the next request answers at once
        assert chat(made, first(media["a"], COUNT)).choices[0].message.content
        assert _status_count(made, 200) == 1
    finally:
        made.stop()


@pytest.mark.parametrize("args, env, line", [
    (["--api-key", ""], {}, "--api-key is empty"),
    (["--api-key", "  "], {}, "--api-key is empty"),
    ([], {"VIDQ_API_KEY": ""}, "VIDQ_API_KEY is empty"),
])
def test_an_empty_api_key_is_refused_not_served_without_authentication(args, env, line, monkeypatch):
    """`--api-key "$KEY"` with KEY unset served every route with no key at all."""
    from typer.testing import CliRunner

    import flashvid_cli.api as api
    from flashvid_cli.cli import app

    monkeypatch.setattr(api.VideoQA, "__init__", lambda *a, **k: pytest.fail("the model loaded"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["serve", "--model", "some/model", *args])
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and line in lines[0], result.output
