"""``--tokens auto`` beyond ask (issue 27): annotate fits each video's own budget to the context (videos of
different lengths get different counts), refuses what it cannot take in one line before loading, and chat says why
it has no auto (its conversation grows every turn)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flashvid_cli.cli import app

DEMO = Path(__file__).resolve().parents[1] / "samples" / "vidq-demo-llava-ov"  # 16 tokens a frame, 2,048 context
NEW = 1700  # leaves ~347 positions: the budget, not the frames, decides the count


@pytest.fixture()
def no_model_load(monkeypatch):
    import flashvid_cli.api as api

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded for a request refused before loading")

    monkeypatch.setattr(api.VideoQA, "__init__", refuse)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_annotate_tokens_auto_fits_each_video_to_the_context(sample_video, tmp_path):
    from test_video_exact import encode

    folder = tmp_path / "videos"
    folder.mkdir()
    long, short = folder / "a_long.mp4", folder / "b_short.mp4"
    shutil.copy(sample_video, long)  # 48 frames at 8 fps: 40 sampled
    encode(short, [np.full((64, 64, 3), 20 * i, np.uint8) for i in range(10)])  # 10 frames
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, [
        "annotate", str(folder), "-q", "how many shapes?", "-q", "what colour is the circle?",
        "--out", str(out), "--model", str(DEMO), "--device", "cpu", "--no-cache", "--method", "divprune",
        "--tokens", "auto", "--fps", "8", "--max-frames", "40", "--max-new-tokens", str(NEW), "--quiet"])
    assert result.exit_code == 0, result.output
    records = _lines(out)
    assert len(records) == 4 and all(r["error"] is None for r in records), records
    counts = {}
    for record in records:
        tokens, frames = record["report"]["tokens"], len(record["report"]["video"]["frame_indices"])
        assert record["options"]["tokens"] == "auto"  # the line records the request; the count is in its report
        assert tokens["visual_after"] == tokens["asked"]  # divprune hits any count
        # the budget fills the context beside the longest question (its words add a few tokens: 8 at most here):
        # every token of every frame, or else one more token a frame would not fit
        assert tokens["prompt"] + NEW <= 2048, tokens
        full = tokens["asked"] == 16 * frames + 1  # LLaVA-OV's newline token counts in --tokens
        assert full or 2048 < tokens["prompt"] + NEW + frames + 8, (tokens, frames)
        counts.setdefault(record["video"], set()).add(tokens["asked"])
    assert all(len(c) == 1 for c in counts.values())  # both questions of a video get one budget
    assert counts[str(long)] != counts[str(short)]  # 40 frames vs 4: not one count for every video
    assert counts[str(short)] == {16 * 4 + 1}  # the short one takes every token it has; the long one is bounded


@pytest.mark.parametrize(("extra", "match"), [
    (["--method", "none"], "does not apply to method 'none'"),
    (["--method", "fastv"], "does not apply to method 'fastv'"),
    (["--tokens", "lots"], "integer >= 1 or auto"),
])
def test_annotate_tokens_auto_refusals_are_one_line_before_loading(sample_video, no_model_load, tmp_path, extra,
                                                                     match):
    args = ["annotate", str(sample_video), "-q", "q?", "--out", str(tmp_path / "o.jsonl"), "--model", str(DEMO),
            "--tokens", "auto", *extra]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 1, out.output
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in out.output, out.output
    assert not (tmp_path / "o.jsonl").exists() or not _lines(tmp_path / "o.jsonl")


def test_annotate_tokens_auto_a_video_too_long_even_at_one_token_a_frame_is_its_error_line(sample_video, tmp_path):
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, [
        "annotate", str(sample_video), "-q", "q?", "--out", str(out), "--model", str(DEMO), "--device", "cpu",
        "--no-cache", "--method", "divprune", "--tokens", "auto", "--frames", "40", "--max-new-tokens", "2000",
        "--quiet"])
    assert result.exit_code == 3, result.output  # completed, with an error line
    [record] = _lines(out)
    assert record["answer"] is None and "not even 1 visual token a frame" in record["error"], record["error"]


def test_chat_refuses_tokens_auto_in_one_line(sample_video, no_model_load):
    out = CliRunner().invoke(app, ["chat", str(sample_video), "--model", str(DEMO), "--tokens", "auto"], input="q?\n")
    assert out.exit_code == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "a chat's conversation grows every turn: give --tokens N" in lines[0], out.output


def test_a_ceiling_search_never_passes_the_count():
    """--tokens auto's budget is a ceiling: the nearest count can be above it (flashvid's data-dependent count
    passed the budget by 4 tokens and the prompt was then refused as past the context)."""
    from flashvid_cli.kernels.tokens import search_keep

    steps = [0, 10, 20, 31, 44, 60, 80]  # a count that jumps, as a data-dependent one does

    def count(keep: float) -> int:
        return steps[min(int(keep * 7), 6)] if keep < 1 else 100

    nearest = search_keep(count, 30, 100, 40, 0.3, resolution=1e-6)
    ceiling = search_keep(count, 30, 100, 40, 0.3, resolution=1e-6, at_most=True)
    assert count(nearest) == 31 and count(ceiling) == 20  # nearest passes 30 by one; the ceiling never does
    assert search_keep(count, 44, 100, 40, 0.3, resolution=1e-6, at_most=True) and count(
        search_keep(count, 44, 100, 40, 0.3, resolution=1e-6, at_most=True)) == 44  # an exact hit stays exact


@pytest.mark.parametrize("words", [455, 460, 465])
def test_ask_tokens_auto_with_flashvid_always_fits(sample_video, words):
    question = "word " * words
    out = CliRunner().invoke(app, ["ask", str(sample_video), question, "--model", str(DEMO), "--device", "cpu",
                                   "--no-cache", "--method", "flashvid", "--tokens", "auto", "--max-new-tokens", "4",
                                   "--json"])
    assert out.exit_code == 0, out.output
    tokens = json.loads(out.stdout.splitlines()[0])["report"]["tokens"]
    assert tokens["visual_after"] <= tokens["asked"] and tokens["prompt"] + 4 <= 2048, tokens


def test_a_question_that_alone_fills_the_context_says_to_shorten_it():
    """It said 'lower --fps or --max-frames', which no frame setting could answer."""
    from flashvid_cli.pipelines.errors import PromptTooLongError
    from flashvid_cli.plan import context_budget

    with pytest.raises(PromptTooLongError, match=r"the prompt's text \(7,729 tokens\) and 64 to generate already fill.*shorten the question"):
        context_budget(40, 16, 2048, 64, 7729, 1)
    with pytest.raises(PromptTooLongError, match="lower --fps or --max-frames"):  # the frames are what is too many
        context_budget(4000, 16, 2048, 64, 20, 1)
