"""``vidq chat``: a later turn equals a fresh prefill of the whole conversation (logits within the tolerance stated
in tests/test_prefix.py, identical greedy tokens) while prefilling only its own tokens; driven through piped stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from flashvid_cli.api import AskConfig, VideoQA
from flashvid_cli.chat import Chat
from flashvid_cli.cli import app
from flashvid_cli.pipelines.generation import GenerationOptions
from flashvid_cli.pipelines.registry import families
from flashvid_cli.pipelines.prefix import video_end

FAMILIES = tuple(families())  # every model family (pipelines/registry.py)
RTOL = ATOL = 1e-4  # as tests/test_prefix.py, which says why

FAST = AskConfig(method="flashvid", keep=0.5, frames=4, max_new_tokens=6)
TURNS = ["What colour is the circle at the end?", "And what happens before that?", "How many squares?"]


@pytest.fixture(scope="module")
def qas(tiny_models) -> dict[str, VideoQA]:
    return {family: VideoQA(str(path), device="cpu") for family, path in tiny_models.items()}


def _contains(haystack: list[int], needle: list[int], start: int = 0) -> int:
    """Where ``needle`` first occurs in ``haystack`` at or after ``start``, or -1."""
    return next((i for i in range(start, len(haystack) - len(needle) + 1) if haystack[i:i + len(needle)] == needle),
                -1)


@pytest.mark.parametrize("family", FAMILIES)
def test_later_turns_equal_a_fresh_prefill_of_the_whole_conversation(qas, family, sample_video):
    qa = qas[family]
    pipe = qa.pipeline
    talk = Chat(qa, sample_video, FAST, logits=True)
    first = talk.ask(TURNS[0])
    assert first.report.cache["prefix"] == "miss"
    for turn, question in enumerate(TURNS[1:], 2):
        inputs = talk.inputs(question)  # the whole conversation, as a fresh prefill would see it
        ids = inputs["input_ids"][0].tolist()
        # True multi-turn: every earlier question and answer, in order, in the prompt.
        places = [_contains(ids, pipe.tokenizer(q, add_special_tokens=False)["input_ids"]) for q in TURNS[:turn]]
        assert all(p >= 0 for p in places) and places == sorted(places)
        answer = [t for t in talk.turns[-1][1] if t != pipe.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        assert _contains(ids, answer, places[-2]) > places[-2]  # the last answer follows the last question
        cached = len(talk.store.ids)
        shared = talk.store.shared(inputs, video_end(pipe, inputs["input_ids"]))
        with torch.inference_mode():
            fresh = pipe.generate(inputs, GenerationOptions(FAST.max_new_tokens, return_logits=True))
        result = talk.ask(question)
        assert result.report.cache["prefix"] == "hit"
        assert result.report.tokens.prompt == len(ids)
        assert result.token_ids == fresh.token_ids
        for a, b in zip(talk.last_generation.logits, fresh.logits, strict=True):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
        assert video_end(pipe, inputs["input_ids"]) < shared <= cached
        if family == "qwen2_5_vl":  # its template renders an earlier turn as it was asked: nothing re-prefilled
            assert shared == cached
        if family == "llava_onevision":  # the tiny template writes "assistant \n" in history, asks "assistant\n"
            assert shared < cached


def test_reset_starts_a_new_conversation_on_the_cached_video(qas, sample_video):
    qa = qas["qwen2_5_vl"]
    talk = Chat(qa, sample_video, FAST)
    alone = qa.ask(sample_video, TURNS[1], FAST)
    talk.ask(TURNS[0])
    talk.reset()
    again = talk.ask(TURNS[1])
    assert again.token_ids == alone.token_ids
    assert again.report.tokens.prompt == alone.report.tokens.prompt  # the first conversation is gone
    assert again.report.cache["prefix"] == "hit"  # but its video prefill was kept


def test_streamed_text_is_the_answer(qas, sample_video):
    pieces: list[str] = []
    talk = Chat(qas["llava_onevision"], sample_video, FAST)
    result = talk.ask(TURNS[0], on_text=pieces.append)
    assert "".join(pieces).strip() == result.answer


def _env() -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def test_chat_through_piped_stdin(tiny_models, sample_video):
    model = str(tiny_models["llava_onevision"])
    args = [sys.executable, "-m", "flashvid_cli", "chat", str(sample_video), "--model", model, "--frames", "4",
            "--max-new-tokens", "4", "--method", "pool", "--keep", "0.5"]
    stdin = f"{TURNS[0]}\n\n/report\n{TURNS[1]}\n/exit\n{TURNS[2]}\n"
    out = subprocess.run(args + ["--json"], input=stdin, capture_output=True, text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 2  # a blank line is skipped, /report goes to stderr, /exit ends before the third
    assert [line["report"]["cache"]["prefix"] for line in lines] == ["miss", "hit"]
    assert [(line["turn"], line["question"]) for line in lines] == [(1, TURNS[0]), (2, TURNS[1])]
    assert "vidq report" in out.stderr
    asked = VideoQA(model, device="cpu").ask(sample_video, TURNS[0], AskConfig(
        method="pool", keep=0.5, frames=4, max_new_tokens=4))
    assert lines[0]["token_ids"] == asked.token_ids
    text = subprocess.run(args, input=f"{TURNS[0]}\n{TURNS[1]}\n", capture_output=True, text=True, env=_env(),
                          timeout=600)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [" ".join(asked.answer.split()), " ".join(lines[1]["answer"].split())]


def test_chat_on_a_bad_video_is_one_line_before_any_prompt(tiny_models, tmp_path):
    bad = tmp_path / "not-a-video.mp4"
    bad.write_bytes(b"this is not a video")
    result = CliRunner().invoke(app, ["chat", str(bad), "--model", str(tiny_models["llava_onevision"])],
                                input="What is it?\n")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not-a-video.mp4" in lines[0] and "Traceback" not in result.stderr
