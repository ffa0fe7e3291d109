"""``vidq bench`` on the tiny models: every row, the JSON schema, the PNG, agreement and the FLOPs estimate."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flashvid_cli.bench import (
    STAGES,
    BenchConfig,
    LanguageModelSize,
    agreement,
    prefill_flops,
)
from flashvid_cli.cli import app

runner = CliRunner()
FAST = ["--frames", "4", "--max-new-tokens", "2"]


@pytest.fixture(scope="module")
def bench_run(tiny_models, sample_video, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    other = out / "other.mp4"
    other.write_bytes(sample_video.read_bytes())
    result = runner.invoke(app, [
        "bench", str(sample_video), str(other), str(sample_video), "--model", str(tiny_models["llava_onevision"]),
        "--methods", "flashvid,divprune,visionzip,pool,none", "--keep", "0.1,0.5", "--repeat", "2", "--warmup", "0",
        "--json", str(out / "bench.json"), "--plot", str(out / "bench.png"), *FAST,
    ])
    return result, out


def test_bench_prints_a_table_with_every_row(bench_run):
    result, _ = bench_run
    assert result.exit_code == 0, result.stderr
    for label in ["flashvid 0.1", "flashvid 0.5", "divprune 0.1", "visionzip 0.5", "pool 0.1", "none", "TTFT"]:
        assert label in result.stdout, label
    assert "RANDOM WEIGHTS" not in result.stderr


def test_bench_json_has_every_row_and_the_environment(bench_run):
    _, out = bench_run
    doc = json.loads((out / "bench.json").read_text())
    env = doc["environment"]
    for key in ["device", "dtype", "model", "model_type", "versions", "frames", "repeat", "warmup", "question"]:
        assert key in env, key
    assert env["versions"]["transformers"].startswith("5.23") and env["repeat"] == 2 and env["frames"]["frames"] == 4
    rows = doc["rows"]
    # 2 videos (one named twice) x (4 methods x 2 keeps + none once).
    assert len(rows) == 2 * 9 and len({r["video"] for r in rows}) == 2
    assert {(r["method"], r["keep"]) for r in rows} == {
        *((m, k) for m in ["flashvid", "divprune", "visionzip", "pool"] for k in [0.1, 0.5]), ("none", 1.0)}
    for row in rows:
        assert set(row["timings"]) == set(STAGES)
        for stat in row["timings"].values():
            assert stat["min"] <= stat["median"] <= stat["max"]
        assert row["frames"] == 4 and row["peak_memory_bytes"] > 0 and row["prefill_tflops"] > 0
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
    assert config.runs() == [("pool", 0.1), ("pool", 0.25), ("none", 1.0)]
