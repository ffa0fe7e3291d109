"""``vidq ask`` through Typer's runner: the text report, the --json schema, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashvid_cli.cli import app
from flashvid_cli.pipelines.registry import families

FAMILIES = tuple(families())

runner = CliRunner()
QUESTION = "What happens last?"


def vidq(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def one_error_line(result) -> str:
    """The command failed with exactly one non-empty line on stderr and no traceback."""
    assert result.exit_code != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory, sample_video) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    data = sample_video.read_bytes()
    files = {
        "text": root / "notes.mp4",
        "truncated": root / "truncated.mp4",
        "empty": root / "empty.mp4",
        "audio_only": root / "audio.mp4",
    }
    files["text"].write_text("this is not a video\n")
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["empty"].write_bytes(b"")
    _write_audio_only(files["audio_only"])
    return files


def _write_audio_only(path: Path) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("family", FAMILIES)
def test_ask_prints_answer_and_text_report(tiny_models, sample_video, family):
    result = vidq("ask", str(sample_video), QUESTION, "--model", str(tiny_models[family]),
                  "--method", "pool", "--keep", "0.5", "--frames", "4", "--max-new-tokens", "3")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) <= 1  # stdout holds only the answer
    for expected in ["vidq report", "decode", "preprocess", "vision encode", "compress", "prefill",
                     "generation", "time to first token", "visual tokens", "4 of ", "peak memory", "pool keep=0.5"]:
        assert expected in result.stderr, expected


@pytest.mark.parametrize("family", FAMILIES)
def test_ask_json_schema(tiny_models, sample_video, family):
    result = vidq("ask", str(sample_video), QUESTION, "--model", str(tiny_models[family]), "--method", "none",
                  "--fps", "2", "--max-frames", "6", "--max-new-tokens", "2", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert isinstance(out["answer"], str)
    report = out["report"]
    assert report["model_type"] == family and report["method"] == "none" and report["keep"] == 1.0
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    timings = report["timings"]
    stages = ["decode", "preprocess", "encode", "compress", "prefill", "generate"]
    assert set(timings) == set(stages) | {"total", "time_to_first_token", "question_to_first_token", "wall",
                                          "decode_ahead", "decode_build"}
    assert timings.pop("decode_build") is None  # decoding sparsity only (SparseVILA)
    assert timings["wall"] >= timings["total"]  # from the command's start: the video decoded while the model loaded
    assert timings["decode_ahead"] is None if report["cache"]["encoded"] == "hit" else timings["decode_ahead"] > 0
    timings.pop("decode_ahead")
    assert all(isinstance(timings[s], float) and timings[s] >= 0 for s in timings)
    assert timings["total"] >= sum(timings[s] for s in stages) * 0.99
    video = report["video"]
    assert len(video["frame_indices"]) == len(video["timestamps_s"]) == 6
    assert video["sampling"].startswith("fps=2")
    assert all(b > a for a, b in zip(video["timestamps_s"], video["timestamps_s"][1:]))
    tokens = report["tokens"]
    assert tokens["visual_after"] == tokens["visual_before"] and tokens["ratio"] == 1.0
    assert tokens["prompt"] > tokens["visual_after"] and 1 <= tokens["generated"] <= 2
    assert report["peak_memory_bytes"] > 0 and report["peak_memory_kind"] == "process RSS"
    assert report["cache"]["prefix"] == "miss" and report["cache"]["encoded"] in {"hit", "miss"}  # session cache


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_ask_reads_the_encoded_cache_the_second_time(tiny_models, sample_video, family, tmp_path):
    args = ["ask", str(sample_video), QUESTION, "--model", str(tiny_models[family]), "--method", "flashvid",
            "--keep", "0.5", "--frames", "3", "--max-new-tokens", "3", "--json"]
    env = {"VIDQ_CACHE_DIR": str(tmp_path / "cache")}
    first, second = (json.loads(vidq(*args, env=env).stdout) for _ in range(2))
    assert (first["report"]["cache"]["encoded"], second["report"]["cache"]["encoded"]) == ("miss", "hit")
    assert second["token_ids"] == first["token_ids"] and second["report"]["tokens"] == first["report"]["tokens"]
    assert second["report"]["video"]["frame_indices"] == first["report"]["video"]["frame_indices"]
    assert second["report"]["timings"]["encode"] == 0.0
    off = json.loads(vidq(*args, "--no-cache", env=env).stdout)
    assert off["report"]["cache"]["encoded"] == "off" and any("--no-cache" in n for n in off["report"]["notes"])
    assert off["token_ids"] == first["token_ids"]
    assert "--cache-size" in one_error_line(vidq(*args, "--cache-size", "lots", env=env))


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_ask_several_questions_one_json_line_each(tiny_models, sample_video, family, tmp_path):
    more = tmp_path / "questions.txt"
    more.write_text("What happens first?\n\nHow many squares?\n")
    common = ["--model", str(tiny_models[family]), "--frames", "4", "--max-new-tokens", "3"]
    result = vidq("ask", str(sample_video), QUESTION, "--questions", str(more), *common, "--json")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["report"]["cache"]["prefix"] for line in lines] == ["miss", "hit", "hit"]
    assert [(line["index"], line["question"]) for line in lines] == [
        (0, QUESTION), (1, "What happens first?"), (2, "How many squares?")]  # the blank line is no question
    alone = json.loads(vidq("ask", str(sample_video), "How many squares?", *common, "--json").stdout)
    assert lines[2]["token_ids"] == alone["token_ids"] and lines[2]["answer"] == alone["answer"]
    text = vidq("ask", str(sample_video), QUESTION, "What happens first?", *common)
    assert text.exit_code == 0, text.stderr
    assert "shared stages" in text.stderr and "per question" in text.stderr
    assert "video prefill: miss, hit" in text.stderr
    assert "give a question" in one_error_line(vidq("ask", str(sample_video), *common))


def test_ask_pool_reduces_visual_tokens(tiny_models, sample_video):
    result = vidq("ask", str(sample_video), QUESTION, "--model", str(tiny_models["llava_onevision"]),
                  "--method", "pool", "--keep", "0.25", "--frames", "4", "--max-new-tokens", "1", "--json")
    tokens = json.loads(result.stdout)["report"]["tokens"]
    # 4 frames of 4x4 pooled to 2x2, plus the one newline token.
    assert (tokens["visual_before"], tokens["visual_after"]) == (4 * 16 + 1, 4 * 4 + 1)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--keep", "0"], "--keep must be in (0, 1]"),
        (["--keep", "1.5"], "--keep must be in (0, 1]"),
        (["--frames", "0"], "--frames must be at least 1"),
        (["--frames", "4", "--fps", "1"], "not both"),
        (["--method", "nosuch"], "unknown method 'nosuch'"),
        (["--method", "pool", "--opt", "nosuch=1"], "has no option 'nosuch'"),
        (["--opt", "novalue"], "key=value"),
    ],
)
def test_bad_options_get_one_line(tiny_models, sample_video, args, expected):
    result = vidq("ask", str(sample_video), QUESTION, "--model", str(tiny_models["llava_onevision"]), *args)
    assert expected in one_error_line(result)


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "truncated", "empty", "audio_only"])
def test_bad_videos_get_one_line(tiny_models, broken_files, tmp_path, kind):
    path = {"missing": tmp_path / "nope.mp4", "directory": tmp_path}.get(kind) or broken_files[kind]
    result = vidq("ask", str(path), QUESTION, "--model", str(tiny_models["llava_onevision"]))
    line = one_error_line(result)
    assert str(Path(path).name) in line or str(path) in line


def test_bad_models_get_one_line(sample_video, tmp_path):
    unsupported = tmp_path / "bert"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases = {
        str(tmp_path / "missing-model"): "does not exist",
        str(tmp_path): "no config.json",
        str(unsupported): f"vidq supports {', '.join(FAMILIES)}",
        "nobody/not-a-cached-model": "--model at a local directory",
    }
    for model, expected in cases.items():
        result = vidq("ask", str(sample_video), QUESTION, "--model", model, env={"HF_HUB_OFFLINE": "1"})
        line = one_error_line(result)
        assert expected in line, line
    line = one_error_line(vidq("ask", str(sample_video), QUESTION, "--model", "nobody/not-a-cached-model",
                               env={"HF_HUB_OFFLINE": "1"}))
    assert "nobody/not-a-cached-model" in line


def test_debug_variable_shows_the_traceback(tiny_models, tmp_path):
    result = vidq("ask", str(tmp_path / "nope.mp4"), QUESTION, "--model", str(tiny_models["llava_onevision"]),
                  env={"VIDQ_DEBUG": "1"})
    assert result.exit_code != 0 and result.exception is not None


def test_methods_lists_the_registry():
    result = vidq("methods")
    assert result.exit_code == 0
    for name in ["none", "pool"]:
        assert name in result.stdout


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "flashvid_cli", "ask", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--keep" in out.stdout


def test_text_after_video_rule_is_per_question(tiny_models, sample_video):
    from flashvid_cli.api import AskConfig, VideoQA

    qa = VideoQA(str(tiny_models["qwen2_5_vl"]), device="cpu")
    base = dict(method="none", frames=4, max_new_tokens=1)
    first = qa.ask(sample_video, QUESTION, AskConfig(text_after_video="qwen", **base))
    second = qa.ask(sample_video, QUESTION, AskConfig(**base))
    assert (first.report.text_after_video, second.report.text_after_video) == ("qwen", "hf")
    line = one_error_line(vidq("ask", str(sample_video), QUESTION, "--model", str(tiny_models["llava_onevision"]),
                               "--text-after-video", "qwen"))
    assert "--text-after-video does not apply to llava_onevision models" in line


def test_methods_lists_every_option_in_80_columns():
    """`vidq methods` exists to show options and their defaults: at 80 columns every one is there, none cut."""
    import dataclasses

    from flashvid_cli.kernels import methods as registered

    result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "…" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    for cls in registered().values():
        for f in dataclasses.fields(cls):
            if f.name != "keep":
                assert f.name in result.stdout, f.name  # wrapped maybe, never cut
        assert all(word in result.stdout for word in cls.granularity.split()), cls.granularity


def test_methods_shows_the_defaults_a_run_uses():
    """Not the dataclass's unresolved None: what the built method holds, per family where a recipe differs."""
    from flashvid_cli.kernels import build
    from flashvid_cli.kernels.registry import option_defaults
    from flashvid_cli.pipelines.registry import families

    defaults = option_defaults("flashvid", families())
    built = build("flashvid", 0.25, model_type="llava_onevision")
    assert (built.expansion, built.llm_stage) == (1.0, False)  # what `vidq ask`'s report shows
    assert defaults["expansion"].startswith("1.0 ") and defaults["llm_stage"].startswith("False ")
    assert defaults["alpha"] == "0.7" and defaults["knn"] == "7"
    assert defaults["token_selection_method"] == (
        "attn_div_v2 (llava_onevision), attn_div (qwen2_5_vl, qwen3_vl, qwen3_vl_moe)")
    assert defaults["pruning_layer"].startswith("per model")  # resolved from the model's depth at run time
    assert option_defaults("visionzip")["contextual"].startswith("per keep")
    result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "expansion=None" not in result.stdout and "llm_stage=None" not in result.stdout
    assert "pruning_layer=None" not in result.stdout and "contextual=None" not in result.stdout
    for shown in ["expansion=1.0", "llm_stage=False", "pruning_layer=2", "min_segment_num=8"]:
        assert shown in result.stdout, shown


def test_help_says_which_json_is_a_flag_and_which_takes_a_file():
    """ask/chat/cache info --json is a flag (no type shown, not typer's misleading "<bool>"); bench/eval --json FILE."""
    runner = CliRunner()
    for command in [["ask"], ["chat"], ["cache", "info"], ["bench"], ["eval"]]:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "<bool>" not in result.stdout, command
        line = next(line for line in result.stdout.splitlines() if "--json " in line)
        said = " ".join(line.replace("│", " ").split())
        if command[0] in {"bench", "eval"}:
            assert said.startswith("--json FILE Takes a file: write"), said
        else:
            assert said.startswith("--json A flag, no file: print"), said
