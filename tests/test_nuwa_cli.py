"""Nüwa through the CLI's listing and the equal-token runs of bench and eval (issue 26, item 3).

Nüwa's stage 2 prunes inside the LLM, so ``--tokens`` refuses it by default; ``llm_stage=false`` (stage 1 only) is
the form that can be held to a visual-token count, and the check must read the --opt values to know that.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashvid_cli.bench import BenchConfig
from flashvid_cli.cli import app
from flashvid_cli.config import AskConfig, ConfigError
from flashvid_cli.evaluate import EvalConfig

runner = CliRunner()


def method_rows(stdout: str) -> dict[str, str]:
    """`vidq methods`' table as {method: its cells' text, every wrapped line joined}."""
    rows: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        if "━" in line or "┃" in line:  # the header and its rule
            continue
        first = line.split("│")[0].strip()
        if first:
            current = first
        if current is not None:
            rows.setdefault(current, []).append(" ".join(cell.strip() for cell in line.split("│")[1:]))
    return {name: " ".join(parts) for name, parts in rows.items()}


def test_methods_lists_nuwa_with_what_it_reads_and_its_options():
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    nuwa = method_rows(result.stdout)["nuwa"]
    for word in ("importance", "similarity", "the question (in-LLM stage)", "llm_stage=True", "region_tokens=1",
                 "quantile=0.55", "positions=pesp", "llm_keep=", "with llm_stage=false"):
        assert word in nuwa, (word, nuwa)
    assert "similarity" not in method_rows(result.stdout)["visionzip"]  # the cell is per method, not shared


def test_equal_tokens_refuse_nuwa_with_its_in_llm_stage_and_take_it_without():
    with pytest.raises(ConfigError, match="--tokens does not apply to 'nuwa'"):
        EvalConfig(methods=("nuwa",), tokens=(33,))
    with pytest.raises(ConfigError, match="--tokens does not apply to 'nuwa'"):
        BenchConfig(methods=("nuwa", "divprune"), tokens=(33,))
    off = {"llm_stage": "false"}
    assert EvalConfig(methods=("nuwa",), tokens=(33,), ask=AskConfig(options=off)).runs()[0].tokens == 33
    assert len(BenchConfig(methods=("nuwa", "divprune"), tokens=(33,), options={"nuwa.llm_stage": "false"}).runs()) == 2
    with pytest.raises(ConfigError, match="--tokens does not apply to 'nuwa'"):  # turned off for another method only
        BenchConfig(methods=("nuwa", "flashvid"), tokens=(33,), options={"flashvid.llm_stage": "false"})
    assert "nuwa" not in EvalConfig(tokens=(33,)).methods  # the default set: only methods that can hold a count


def test_eval_holds_nuwa_stage1_to_a_token_count(tmp_path: Path, tiny_models, sample_video):
    (tmp_path / "clip.mp4").write_bytes(sample_video.read_bytes())
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"video": "clip.mp4", "question": "What colour is the circle at the end?",
                                "options": ["red", "green", "blue"], "answer": "B", "type": "where_at_end"}) + "\n")
    out = tmp_path / "acc.json"
    result = runner.invoke(app, ["eval", str(data), "--model", str(tiny_models["llava_onevision"]), "--frames", "4",
                                 "--methods", "nuwa", "--opt", "llm_stage=false", "--opt", "region_tokens=1",
                                 "--tokens", "9",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.stderr
    (only,) = json.loads(out.read_text())["rows"]
    # 4 frames: stage 1 keeps the same count in each, so 8 + the newline is what 9 asks for exactly
    assert (only["method"], only["tokens"], only["visual_tokens"], only["failed"]) == ("nuwa", 9, 9.0, 0)
    assert only["by_type"]["where_at_end"]["total"] == 1


@pytest.mark.parametrize("args, expected", [
    (["--tokens", "33"], "--tokens does not apply to 'nuwa'"),
    (["--opt", "quantile=2"], "nuwa.quantile must be in [0.0, 1.0]"),  # checked against nuwa, not ask's default
])
def test_eval_bad_nuwa_runs_get_one_line(tmp_path: Path, args, expected):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"video": "clip.mp4", "question": "?", "options": ["a", "b"], "answer": "a"}) + "\n")
    result = runner.invoke(app, ["eval", str(data), "--model", "unused", "--methods", "nuwa", *args])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_ask_says_nuwa_prunes_by_the_question_not_by_attention(qas, sample_video):
    """The note on why the video's prefill is not reused names Nüwa's stage-2 rule (its default ranks by similarity
    to the question; reference=true by the last query's attention, as FastV)."""
    qa = qas["llava_onevision"]
    base = dict(method="nuwa", keep=0.5, frames=4, max_new_tokens=1)
    notes = [" ".join(qa.ask(sample_video, "What happens last?", AskConfig(options=options, **base)).report.notes)
             for options in ({}, {"reference": "true"})]
    assert "prunes inside the LLM by similarity to the question" in notes[0], notes[0]
    assert "prunes inside the LLM by the last token's attention" in notes[1], notes[1]
