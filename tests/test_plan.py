"""Planning before work (flashvid_cli/plan.py, issue 27 item 2): frames, tokens, prompt and memory from the frame map,
and the path chosen for a memory budget (``vidq ask --plan``, ``--max-memory``), all before anything decodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashvid_cli.cli import app
from flashvid_cli.config import AskConfig, ConfigError
from flashvid_cli.pipelines.errors import PromptTooLongError
from flashvid_cli.plan import choose_path, make_plan, parse_budget, plan_request

DEMO = Path(__file__).resolve().parents[1] / "samples" / "vidq-demo-llava-ov"  # patch 8, 64 px, hidden 128
ASK = ["--model", str(DEMO), "--device", "cpu", "--no-cache", "--max-new-tokens", "2"]


@pytest.fixture()
def no_decode(monkeypatch):
    """Fail the test if anything loads the model or decodes the video."""
    import flashvid_cli.api as api

    def refuse(*args, **kwargs):
        raise AssertionError("the plan must come before loading and decoding")

    monkeypatch.setattr(api, "load_and_decode", refuse)


def test_plan_counts_what_the_run_sends(sample_video):
    config = AskConfig(method="pool", keep=0.25, frames=40, max_new_tokens=2)
    plan = plan_request(sample_video, config, str(DEMO), device="cpu")
    out = CliRunner().invoke(app, ["ask", str(sample_video), "what?", *ASK, "--method", "pool", "--keep", "0.25",
                                   "--frames", "40", "--json"])
    assert out.exit_code == 0, out.output
    tokens = json.loads(out.stdout.splitlines()[0])["report"]["tokens"]
    assert plan.frames == 40 and (plan.height, plan.width) == (64, 64)
    assert plan.tokens_before + plan.extra_tokens == tokens["visual_before"]  # 40 x 16: the tower's patch 8, not 14
    assert plan.tokens_after <= tokens["visual_after"] - plan.extra_tokens  # a lower bound
    assert plan.context == 2048 and plan.hidden == 128 and plan.dtype_bytes == 4


def test_memory_formula(sample_video):
    plan = plan_request(sample_video, AskConfig(method="pool", keep=0.25, frames=40), str(DEMO), device="cpu",
                        chunk_frames=8)
    T, H, W, N, D, b = 40, 64, 64, 16, 128, 4
    P, Dv, Lv = 64, 128, 3  # the demo's tower: 8x8 patches of 8 px, 128 wide, 3 layers
    kept = plan.tokens_after * D * b
    vision = lambda t: t * P * (Dv * (Lv + 1) + D) * b  # noqa: E731
    assert plan.frames_bytes == T * H * W * 3
    assert plan.whole_bytes == T * H * W * 3 + T * 3 * H * W * 4 + T * N * D * b + vision(T) + kept
    held = (2 + 2) * 8  # the decode's queue of 2 chunks, the chunk being filled and the one encoded: 32 of 40
    assert plan.stream_frames_bytes == held * H * W * 3
    assert plan.stream_bytes == held * H * W * 3 + 8 * 3 * H * W * 4 + 8 * N * D * b + vision(8) + kept
    assert "of it the decoded frames 480.0 KiB whole clip, 384.0 KiB streamed" in plan.lines()[-1]
    short = plan_request(sample_video, AskConfig(method="pool", keep=0.25, frames=6), str(DEMO), device="cpu",
                         chunk_frames=8)
    assert short.stream_bytes == short.whole_bytes  # one chunk holds the whole clip


def test_choose_path_by_budget(sample_video):
    plan = plan_request(sample_video, AskConfig(method="pool", keep=0.25, frames=40), str(DEMO), device="cpu")
    assert choose_path(plan, None, False) == (False, None)
    assert choose_path(plan, plan.whole_bytes, False) == (False, None)
    streamed, note = choose_path(plan, plan.whole_bytes - 1, False)
    assert streamed and "streaming" in note and "--max-memory" in note and "\n" not in note
    with pytest.raises(ConfigError, match="lower --fps or --max-frames"):
        choose_path(plan, plan.stream_bytes - 1, False)
    whole_only = plan_request(sample_video, AskConfig(method="divprune", frames=40), str(DEMO), device="cpu")
    assert whole_only.stream_refusal is not None
    with pytest.raises(ConfigError, match="cannot stream.*a method that streams .*pool"):
        choose_path(whole_only, whole_only.whole_bytes - 1, False)


def test_prompt_past_the_context_is_refused_on_either_path(sample_video):
    from flashvid_cli.pipelines.preflight import input_rules

    rules = input_rules(str(DEMO))
    rules.context = 100
    plan = make_plan(sample_video, AskConfig(method="none", frames=40, max_new_tokens=2), rules)
    with pytest.raises(PromptTooLongError, match="either path"):
        choose_path(plan, None, True)


@pytest.mark.parametrize("text", ["0", "lots", "-1GB"])
def test_bad_budget(text):
    with pytest.raises(ConfigError, match="--max-memory"):
        parse_budget(text)


def test_cli_plan_prints_and_exits_before_decoding(sample_video, no_decode):
    out = CliRunner().invoke(app, ["ask", str(sample_video), "q?", *ASK, "--method", "pool", "--frames", "40",
                                   "--plan"])
    assert out.exit_code == 0, out.output
    assert "640 before compression" in out.stdout and "whole clip" in out.stdout and "streamed" in out.stdout
    js = CliRunner().invoke(app, ["ask", str(sample_video), "q?", *ASK, "--method", "pool", "--frames", "40",
                                  "--plan", "--json"])
    assert json.loads(js.stdout.splitlines()[0])["tokens_before"] == 640


def test_cli_refuses_over_budget_in_one_line_before_decoding(sample_video, no_decode):
    out = CliRunner().invoke(app, ["ask", str(sample_video), "q?", *ASK, "--method", "divprune", "--frames", "40",
                                   "--max-memory", "1MiB"])
    assert out.exit_code == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "cannot stream" in lines[0] and "--max-frames" in lines[0] and "Traceback" not in out.output


def test_cli_streams_when_the_whole_clip_is_past_the_budget(sample_video):
    plan = plan_request(sample_video, AskConfig(method="pool", keep=0.25, frames=40), str(DEMO), device="cpu")
    budget = str((plan.whole_bytes + plan.stream_bytes) // 2)
    out = CliRunner().invoke(app, ["ask", str(sample_video), "q?", *ASK, "--method", "pool", "--frames", "40",
                                   "--max-memory", budget, "--json"])
    assert out.exit_code == 0, out.output
    first = out.stderr.splitlines()[0]
    assert first.startswith("streaming: the whole clip") and first.endswith("MiB")  # one line, not wrapped
    assert "past --max-memory" in first and "streamed it is" in first
    report = json.loads(out.stdout.splitlines()[0])["report"]
    assert any("streamed in" in note for note in report["video"]["notes"])
    fits = CliRunner().invoke(app, ["ask", str(sample_video), "q?", *ASK, "--method", "pool", "--frames", "40",
                                    "--max-memory", str(plan.whole_bytes), "--json"])
    assert not any("streamed in" in n for n in json.loads(fits.stdout.splitlines()[0])["report"]["video"]["notes"])


def test_with_no_budget_a_whole_clip_past_the_memory_available_streams_or_is_refused(sample_video, monkeypatch):
    import flashvid_cli.plan as plan_module

    plan = plan_request(sample_video, AskConfig(method="pool", keep=0.25, frames=40), str(DEMO), device="cpu")
    monkeypatch.setattr(plan_module, "available_memory", lambda: (plan.whole_bytes + plan.stream_bytes) // 2)
    args = ["ask", str(sample_video), "q?", *ASK, "--frames", "40", "--json"]
    out = CliRunner().invoke(app, [*args, "--method", "pool"])
    assert out.exit_code == 0, out.output
    first = out.stderr.splitlines()[0]
    assert first.startswith("streaming: the whole clip") and "of memory available" in first  # one line
    report = json.loads(out.stdout.splitlines()[0])["report"]
    assert any("streamed in" in note for note in report["video"]["notes"])

    import flashvid_cli.api as api

    def refuse(*args, **kwargs):
        raise AssertionError("a refusal must come before loading and decoding")

    monkeypatch.setattr(api, "load_and_decode", refuse)
    refused = CliRunner().invoke(app, [*args, "--method", "divprune"])  # cannot stream
    assert refused.exit_code == 1
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert "of memory available" in lines[0] and "cannot stream" in lines[0] and "Traceback" not in refused.output
    monkeypatch.undo()
    monkeypatch.setattr(plan_module, "available_memory", lambda: plan.whole_bytes)  # it fits: the whole clip
    fits = CliRunner().invoke(app, [*args, "--method", "pool"])
    assert fits.exit_code == 0, fits.output
    assert not any("streamed in" in n for n in json.loads(fits.stdout.splitlines()[0])["report"]["video"]["notes"])


# -- --tokens auto: the visual budget that fits the context ----------------------------------------------------------

@pytest.mark.parametrize(("units", "per_unit", "context", "new", "text", "extra"),
                         [(40, 16, 2048, 1700, 14, 1), (7, 196, 32768, 64, 30, 1), (3, 4, 100, 10, 5, 0)])
def test_context_budget_fills_the_context_a_frame_at_a_time(units, per_unit, context, new, text, extra):
    from flashvid_cli.plan import context_budget

    tokens = context_budget(units, per_unit, context, new, text, extra)
    k = (tokens - extra) // units
    assert (tokens - extra) % units == 0 and 1 <= k <= per_unit
    assert text + tokens + new <= context
    assert k == per_unit or text + tokens + units + new > context  # one more token a frame would not fit


def test_context_budget_refuses_when_one_token_a_frame_does_not_fit():
    from flashvid_cli.plan import context_budget

    with pytest.raises(PromptTooLongError, match="not even 1 visual token a frame"):
        context_budget(40, 16, 2048, 2000, 10, 1)


def test_cli_tokens_auto_makes_the_prompt_fit_exactly(sample_video):
    new = 1700
    out = CliRunner().invoke(app, ["ask", str(sample_video), "what?", *ASK[:-2], "--max-new-tokens", str(new),
                                   "--method", "divprune", "--tokens", "auto", "--frames", "40", "--json"])
    assert out.exit_code == 0, out.output
    tokens = json.loads(out.stdout.splitlines()[0])["report"]["tokens"]
    assert tokens["visual_after"] == tokens["asked"]  # divprune hits any count
    assert tokens["prompt"] + new <= 2048 < tokens["prompt"] + new + 40  # 40 frames: one more token each


@pytest.mark.parametrize(("extra", "match"), [
    (["--method", "divprune", "--max-new-tokens", "2040"], "not even 1 visual token a frame"),
    (["--method", "none"], "does not apply to method 'none'"),
    (["--method", "fastv"], "does not apply to method 'fastv'"),
    (["--method", "pool", "--stream"], "give --keep to stream"),
])
def test_cli_tokens_auto_refusals_are_one_line_before_decoding(sample_video, no_decode, extra, match):
    out = CliRunner().invoke(app, ["ask", str(sample_video), "q?", "--model", str(DEMO), "--device", "cpu",
                                   "--frames", "40", "--tokens", "auto", *extra])
    assert out.exit_code == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in out.output, out.output


def test_cli_tokens_must_be_a_count_or_auto(sample_video, no_decode):
    out = CliRunner().invoke(app, ["ask", str(sample_video), "q?", "--model", str(DEMO), "--tokens", "lots"])
    assert out.exit_code == 1 and "integer >= 1 or auto" in out.stderr


def test_cli_plan_with_tokens_auto_shows_the_budget(sample_video, no_decode):
    out = CliRunner().invoke(app, ["ask", str(sample_video), "q?", "--model", str(DEMO), "--device", "cpu",
                                   "--method", "divprune", "--tokens", "auto", "--frames", "40",
                                   "--max-new-tokens", "1700", "--plan", "--json"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.stdout.splitlines()[0])
    # 2,048 - 1,700 - 1 (LLaVA-OV's newline) = 347 before the text: 8 tokens a frame of 40
    assert plan["tokens_after"] == 320 and plan["after_is"] == "about"
    assert plan["prompt_tokens"] == 320 + 1 + 1700


def test_the_streamed_estimate_counts_the_frames_flashvid_holds_for_its_window(sample_video):
    """FlashVID streamed holds chunks until a window of stream_window frames is full (W + c - 1 frames of features
    at most); the plan counted one chunk for it, as for a per-frame method."""
    def plan(window: int):
        config = AskConfig(method="flashvid", keep=0.25, frames=40, options={"stream_window": str(window)})
        return plan_request(sample_video, config, str(DEMO), device="cpu")

    wide, narrow = plan(32), plan(8)
    per_frame = wide.tokens_before // wide.frames * wide.hidden * wide.dtype_bytes  # N x D x b
    # chunks of 16: min(32 + 15, 40) = 40 frames held against min(8 + 15, 40) = 23
    assert wide.stream_bytes - narrow.stream_bytes == (40 - 23) * per_frame
    pool = plan_request(sample_video, AskConfig(method="pool", keep=0.25, frames=40), str(DEMO), device="cpu")
    assert pool.stream_bytes - (pool.tokens_after * pool.hidden * pool.dtype_bytes) < (
        narrow.stream_bytes - narrow.tokens_after * narrow.hidden * narrow.dtype_bytes)
