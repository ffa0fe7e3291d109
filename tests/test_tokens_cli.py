"""``--tokens`` on chat and annotate, as on ask (issue 28): the LLM sees the count the library's ask gets for the
same request, and ``--keep`` with ``--tokens`` is one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flashvid_cli.api import AskConfig, VideoQA
from flashvid_cli.cli import app

runner = CliRunner()
ARGS = ["--frames", "4", "--max-new-tokens", "3", "--method", "divprune", "--tokens", "40"]


@pytest.fixture(scope="module")
def expected(tiny_models, sample_video):
    qa = VideoQA(str(tiny_models["llava_onevision"]), device="cpu")
    return qa.ask(sample_video, "What happens first?",
                  AskConfig(method="divprune", keep=0.25, tokens=40, frames=4, max_new_tokens=3))


def test_chat_takes_tokens(tiny_models, sample_video, expected):
    result = runner.invoke(app, ["chat", str(sample_video), "--model", str(tiny_models["llava_onevision"]), *ARGS,
                                 "--json"], input="What happens first?\n")
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.splitlines()[0])
    assert line["report"]["tokens"]["asked"] == 40
    assert line["report"]["tokens"]["visual_after"] == expected.report.tokens.visual_after
    assert line["token_ids"] == expected.token_ids


def test_annotate_takes_tokens(tiny_models, sample_video, expected, tmp_path):
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["annotate", str(sample_video), "-q", "What happens first?", "--out", str(out),
                                 "--quiet", "--model", str(tiny_models["llava_onevision"]), *ARGS])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text().splitlines()[0])
    assert record["options"]["tokens"] == 40 and record["answer"] == expected.answer


@pytest.mark.parametrize("command", ["chat", "annotate"])
def test_keep_and_tokens_together_is_one_line(tiny_models, sample_video, tmp_path, command):
    extra = ["-q", "Q", "--out", str(tmp_path / "o.jsonl")] if command == "annotate" else []
    result = runner.invoke(app, [command, str(sample_video), *extra, "--keep", "0.5", "--tokens", "40"])
    assert result.exit_code != 0
    assert "give --keep or --tokens, not both" in result.output and "Traceback" not in result.output
