"""``vidq bench`` on the tiny models: every row, the JSON schema, the PNG, agreement and the FLOPs estimate."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flashvid_cli.api import ConfigError
from flashvid_cli.bench import (
    STAGES,
    Agreement,
    BenchConfig,
    BenchResult,
    BenchRow,
    Divergence,
    LanguageModelSize,
    Stat,
    agreement,
    plot_bench,
    prefill_flops,
    stage_segments,
)
from flashvid_cli.cli import app

runner = CliRunner()
FAST = ["--frames", "4", "--max-new-tokens", "2"]


@pytest.fixture(scope="module")
def bench_run(tiny_models, sample_video, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    other = out / "other.mp4"
    other.write_bytes(sample_video.read_bytes())
    broken = out / "broken.mp4"
    broken.write_bytes(sample_video.read_bytes()[:3000])
    result = runner.invoke(app, [
        "bench", str(sample_video), str(broken), str(other), str(sample_video),
        "--model", str(tiny_models["llava_onevision"]), "--methods", "flashvid,divprune,visionzip,pool,none",
        "--keep", "0.1,0.5", "--repeat", "2", "--warmup", "0", "--opt", "alpha=0.5",
        "--json", str(out / "bench.json"), "--plot", str(out / "bench.png"), *FAST,
    ])
    return result, out


def test_bench_prints_a_table_with_every_row(bench_run):
    result, _ = bench_run
    assert result.exit_code == 0, result.stderr
    for label in ["flashvid 0.1", "flashvid 0.5", "divprune 0.1", "visionzip 0.5", "pool 0.1", "none", "TTFT"]:
        assert label in result.stdout, label
    assert "RANDOM WEIGHTS" not in result.stderr
    # The broken video is reported in its rows and named with its reason; the others were measured.
    assert result.stdout.count("failed ") + result.stdout.count("failed\n") >= 9
    said = " ".join(result.stdout.split())
    assert "failed: " in said and "broken.mp4" in said and "corrupt or truncated" in said
    # Piped (not a terminal), every line fits 80 columns, the footer's too (it was laid out 120 wide).
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    assert "follow_up_ttft" in said and "are in --json" in said


def test_bench_json_has_every_row_and_the_environment(bench_run):
    _, out = bench_run
    doc = json.loads((out / "bench.json").read_text())
    env = doc["environment"]
    for key in ["device", "dtype", "model", "model_type", "versions", "frames", "repeat", "warmup", "question"]:
        assert key in env, key
    assert env["versions"]["transformers"].startswith("5.23") and env["repeat"] == 2 and env["frames"]["frames"] == 4
    assert env["options"] == {"alpha": "0.5"}
    failed = [r for r in doc["rows"] if r["error"] is not None]
    assert len(failed) == 9 and {r["video"] for r in failed} == {str(out / "broken.mp4")}
    assert all("corrupt or truncated" in r["error"] and r["timings"] is None and r["visual_tokens"] is None
               for r in failed)
    rows = [r for r in doc["rows"] if r["error"] is None]
    # 2 good videos (one named twice) x (4 methods x 2 keeps + none once).
    assert len(rows) == 2 * 9 and len({r["video"] for r in rows}) == 2
    assert {(r["method"], r["keep"]) for r in rows} == {
        *((m, k) for m in ["flashvid", "divprune", "visionzip", "pool"] for k in [0.1, 0.5]), ("none", 1.0)}
    # Each row's follow-up question reused the video's prefill and only prefilled its own tokens.
    assert all(r["follow_up_prefix"] == "hit" and 0 < r["follow_up_ttft"]["median"] for r in rows)
    assert all(r["follow_up_ttft"] is None for r in failed)
    for row in rows:
        assert set(row["timings"]) == set(STAGES)
        for stat in row["timings"].values():
            assert stat["min"] <= stat["median"] <= stat["max"]
        assert row["frames"] == 4 and row["peak_memory_bytes"] > 0 and row["prefill_tflops"] > 0
        # The decode worker's own peak, not this process's inherited through fork + exec (torch alone is larger).
        assert 0 < row["decode_worker_peak_rss_bytes"] < row["peak_memory_bytes"]
        assert 1 <= row["generated_tokens"] == len(row["token_ids"]) <= 2
        assert isinstance(row["answer"], str)
        agree = row["agreement"]
        assert agree["reference"] == "none"
        assert agree["identical_tokens"] == (agree["first_divergence"] is None)
        if row["method"] == "none":
            assert agree["identical_tokens"] and row["visual_tokens"] == row["visual_tokens_before"]
        else:
            assert row["visual_tokens"] < row["visual_tokens_before"]
    by_keep = {(r["method"], r["keep"]): r["visual_tokens"] for r in rows}
    assert by_keep[("pool", 0.1)] < by_keep[("pool", 0.5)]


def test_bench_png_is_written(bench_run):
    _, out = bench_run
    data = (out / "bench.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_bench_random_model_says_answers_are_meaningless(tiny_models, sample_video):
    config = tiny_models["qwen2_5_vl"] / "config.json"
    result = runner.invoke(app, ["bench", str(sample_video), "--model", f"random:{config}", "--methods", "pool,none",
                                 "--keep", "0.5", "--repeat", "1", "--warmup", "0", *FAST])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("RANDOM WEIGHTS") >= 1 and "pool 0.5" in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["--methods", "flashvid,nosuch"], "unknown method 'nosuch'"),
    (["--keep", "0.1,2"], "--keep values must be in (0, 1]"),
    (["--keep", "a"], "--keep: cannot read 'a'"),
    (["--repeat", "0"], "--repeat must be at least 1"),
])
def test_bench_bad_options_get_one_line(tiny_models, sample_video, args, expected):
    result = runner.invoke(app, ["bench", str(sample_video), "--model", str(tiny_models["llava_onevision"]), *args])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_agreement_finds_the_first_divergent_token():
    text = {1: "a", 2: "b", 3: "c", 9: "z"}.__getitem__
    same = agreement([1, 2, 3], [1, 2, 3], "abc", "abc", text)
    assert same.identical_tokens and same.identical_text and same.first_divergence is None
    parted = agreement([1, 9, 3], [1, 2, 3], "azc", "abc", text)
    assert not parted.identical_tokens and parted.first_divergence.index == 1
    assert (parted.first_divergence.token, parted.first_divergence.reference_token) == ("z", "b")
    shorter = agreement([1, 2], [1, 2, 3], "ab", "abc", text)
    assert shorter.first_divergence.index == 2 and shorter.first_divergence.token_id is None
    assert shorter.first_divergence.reference_token == "c"


def test_prefill_flops_formula():
    size = LanguageModelSize(params=1_000_000, layers=2, hidden=64)
    assert prefill_flops(size, 10) == 2 * 1_000_000 * 10 + 4 * 2 * 64 * 100 / 2


def test_language_model_size_excludes_the_embedding(tiny_models):
    from flashvid_cli import VideoQA

    qa = VideoQA(str(tiny_models["qwen2_5_vl"]), device="cpu")
    size = LanguageModelSize.of(qa)
    llm = qa.pipeline.model.model.language_model
    embed = qa.pipeline.model.get_input_embeddings().weight.numel()
    assert size.params == sum(p.numel() for p in llm.parameters()) - embed
    assert (size.layers, size.hidden) == (2, 64)


def test_none_runs_once_per_video_whatever_the_keeps():
    config = BenchConfig(methods=("pool", "none"), keeps=(0.1, 0.25, 0.1))
    assert config.runs() == [("pool", 0.1, None), ("pool", 0.25, None), ("none", 1.0, None)]


def test_bench_exits_non_zero_only_when_nothing_could_be_measured(tiny_models, sample_video, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(sample_video.read_bytes()[:3000])
    result = runner.invoke(app, ["bench", str(broken), "--model", str(tiny_models["llava_onevision"]),
                                 "--methods", "pool,none", "--keep", "0.5", "--repeat", "1", "--warmup", "0",
                                 "--json", str(tmp_path / "b.json"), *FAST])
    assert result.exit_code == 1 and "nothing could be measured" in result.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(r["method"], r["error"] is not None) for r in rows] == [("pool", True), ("none", True)]


def test_bench_opt_goes_to_the_methods_that_have_it():
    config = BenchConfig(methods=("flashvid", "pool", "none"), keeps=(0.25,),
                         options={"alpha": "0.5", "flashvid.expansion": "1.5"})
    assert config.options_for("flashvid") == {"alpha": "0.5", "expansion": "1.5"}
    assert config.options_for("pool") == {} and config.options_for("none") == {}
    with pytest.raises(ConfigError, match="none of the methods pool, none has an option 'alpha'"):
        BenchConfig(methods=("pool", "none"), options={"alpha": "0.5"})
    with pytest.raises(ConfigError, match="method 'divprune' is not in --methods"):
        BenchConfig(methods=("pool", "none"), options={"divprune.alpha": "0.5"})


def test_bench_bad_opt_is_one_line_before_loading(sample_video):
    result = runner.invoke(app, ["bench", str(sample_video), "--model", "/nonexistent/model", "--methods",
                                 "pool,none", "--opt", "alpha=1"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "has an option 'alpha'" in lines[0], result.stderr


def _big_row(method: str, keep: float, ttft_s: float, error: str | None = None) -> BenchRow:
    """A row as large as real runs make them: a 7B model's tokens, seconds-long stages, tens of GiB."""
    if error is not None:
        return BenchRow("/data/videos/a rather long folder name/clip_000123.mp4", method, keep, error=error)
    stats = {stage: Stat(ttft_s / 7, ttft_s / 8, ttft_s / 6) for stage in STAGES}
    stats["time_to_first_token"] = Stat(ttft_s, ttft_s * 0.9, ttft_s * 1.3)
    return BenchRow(
        "/data/videos/a rather long folder name/clip_000123.mp4", method, keep, frames=64,
        visual_tokens_before=125_440, visual_tokens=int(125_440 * keep), prompt_tokens=126_000, generated_tokens=16,
        timings=stats, peak_memory_bytes=81_234 * 2**20, peak_memory_kind="cuda allocated",
        prefill_tflops=1234.5, answer="A very long answer " * 10, token_ids=[1] * 16,
        agreement=Agreement("none", False, False, Divergence(12345, 1, "a", 2, "b")),
    )


def test_bench_table_fits_80_columns_without_cutting_a_cell():
    from rich.console import Console

    from flashvid_cli.commands.bench import print_bench

    rows = [_big_row(m, k, 123.456) for m in ["flashvid", "divprune", "visionzip"] for k in [0.125, 0.25]]
    rows += [_big_row("pool", 0.125, 0.0123), _big_row("none", 1.0, 123.456)]
    rows += [_big_row("pool", 0.25, 0, error="/data/videos/x.mp4: decoding timed out after 120s")]
    env = {"model": "llava-hf/llava-onevision-qwen2-7b-ov-hf", "device": "cuda:0", "dtype": "bfloat16",
           "repeat": 3, "warmup": 1}
    console = Console(width=80, record=True, color_system=None)
    print_bench(BenchResult(env, rows), console)
    text = console.export_text()
    from flashvid_cli.bench import row_label

    assert "…" not in text and all(any(line.startswith(row_label(r) + " ") for line in text.splitlines())
                                   for r in rows)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    for label, figure in [("flashvid 0.125", "123,456"), ("none", "125,440"), ("pool 0.125", "12.3")]:
        assert any(line.startswith(label) and figure in line for line in text.splitlines()), (label, text)
    assert "decoding timed out after 120s" in text


def test_bench_bar_equals_its_median_label():
    row = _big_row("pool", 0.25, 1.0)
    row.timings["decode"] = Stat(0.5, 0.4, 0.6)  # stage medians that add up to 1.3 s against a median TTFT of 1.0 s
    row.timings["prefill"] = Stat(0.8, 0.7, 0.9)
    segments = stage_segments(row)
    assert sum(seconds for _, seconds in segments) == pytest.approx(1.0)
    assert dict(segments)["decode"] / dict(segments)["prefill"] == pytest.approx(0.5 / 0.8)


def test_bench_plot_draws_failed_rows_and_one_repeat(tmp_path):
    pytest.importorskip("matplotlib")
    env = {"model": "m", "device": "cpu", "device_name": "cpu", "dtype": "float32", "repeat": 1, "warmup": 0}
    rows = [_big_row("pool", 0.25, 1.0), _big_row("none", 1.0, 0, error="clip.mp4: decoding timed out after 1s")]
    path = plot_bench(BenchResult(env, rows), tmp_path / "b.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
