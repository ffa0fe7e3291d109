"""What the reports say (issue 28): several questions' time to first token counts from the decode's start, the
shared "prompt tokens" line is every question's, an encoded-cache hit's decode row is the cache read, chat's wall
time leaves out the typing, and the help texts read right."""

from __future__ import annotations

import dataclasses

import pytest
from rich.console import Console
from typer.testing import CliRunner

from flashvid_cli.api import AskConfig
from flashvid_cli.chat import Chat
from flashvid_cli.cli import app
from flashvid_cli.report import print_reports, report_tables

FAST = AskConfig(method="divprune", keep=0.5, frames=4, max_new_tokens=4)
QUESTIONS = ["What happens first?", "What colour is the circle at the end? Answer in a few words."]


def _text(renderable) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.fixture(scope="module")
def results(qas, sample_video):
    return qas["llava_onevision"].ask_many(sample_video, QUESTIONS, FAST)


def test_a_later_questions_time_to_first_token_includes_the_earlier_answers(results):
    first, second = (r.report.timings for r in results)
    shared = first.decode + first.preprocess + first.encode + first.compress
    assert first.time_to_first_token == pytest.approx(shared + first.question_to_first_token)
    assert second.time_to_first_token == pytest.approx(
        shared + first.question_to_first_token + first.generate + second.question_to_first_token)
    assert second.total == pytest.approx(second.time_to_first_token + second.generate)


def test_the_questions_table_shows_own_and_from_start_ttft_and_every_prompt(results):
    console = Console(width=200, record=True, color_system=None)
    print_reports([r.report for r in results], QUESTIONS, console)
    text = console.export_text()
    ttft = f"{results[1].report.timings.time_to_first_token * 1000:,.1f}"
    own = f"{results[1].report.timings.question_to_first_token * 1000:,.1f}"
    row = next(line for line in text.splitlines() if line.lstrip().startswith("2 "))
    assert ttft in row and own in row
    prompts = sorted(r.report.tokens.prompt for r in results)
    assert prompts[0] != prompts[1]  # the second question is longer: one count would be wrong for one of them
    generated = sum(r.report.tokens.generated for r in results)
    assert f"{prompts[0]:,} to {prompts[1]:,} in per question, {generated:,} generated in all" in text


def test_an_encoded_cache_hit_shows_a_cache_read_not_a_decode(results):
    report = results[0].report
    hit = dataclasses.replace(report, cache={**report.cache, "encoded": "hit"})
    assert "cache read" in _text(report_tables(hit)) and "decode " not in _text(report_tables(hit)).split("\n\n")[0]
    assert "cache read" not in _text(report_tables(dataclasses.replace(report, cache={**report.cache,
                                                                                      "encoded": "miss"})))


def test_chat_wall_time_leaves_out_the_wait_for_the_question(qas, sample_video):
    talk = Chat(qas["llava_onevision"], sample_video, FAST)
    talk.prepared.started_at = 1000.0
    talk.waited(90.0)
    assert talk.prepared.started_at == 1090.0  # the report's wall is now - started_at
    talk.prepared.started_at = None
    talk.waited(5.0)  # no wall time to correct: nothing happens
    assert talk.prepared.started_at is None


def test_help_texts():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert top.exit_code == 0 and "<bool>" not in top.stdout
    for command in ("ask", "chat"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        line = " ".join(next(x for x in result.stdout.splitlines() if "--keep " in x).replace("│", " ").split())
        assert line.endswith("0 < keep <= 1 [default: 0.25]."), line


def test_the_encoded_video_is_written_after_the_answers_and_even_when_one_fails(tiny_models, sample_video, tmp_path):
    """issue 28: prepare() wrote the cache entry before the first answer, inside everyone's time to first token."""
    from flashvid_cli.api import VideoQA
    from flashvid_cli.cache import EncodedCache

    cache = EncodedCache(tmp_path / "cache")
    qa = VideoQA(str(tiny_models["llava_onevision"]), device="cpu", cache=cache)
    events = []
    put, generate = cache.put, qa.pipeline.generate
    cache.put = lambda *a, **k: events.append("put") or put(*a, **k)
    qa.pipeline.generate = lambda *a, **k: events.append("generate") or generate(*a, **k)
    results = qa.ask_many(sample_video, QUESTIONS, FAST)
    assert events == ["generate", "generate", "put"]
    assert [r.report.cache["encoded"] for r in results] == ["miss", "miss"]
    assert qa.ask(sample_video, QUESTIONS[0], FAST).report.cache["encoded"] == "hit"

    cache.clear()
    events.clear()

    def fail(*a, **k):
        raise RuntimeError("the answer failed")

    qa.pipeline.generate = fail
    with pytest.raises(RuntimeError):
        qa.ask_many(sample_video, QUESTIONS, FAST)
    assert events == ["put"]  # the encode is done work: kept for the next run


def test_per_layer_counts_read_as_counts_per_layer_not_a_product():
    from flashvid_cli.report import _by_layer

    assert _by_layer([13, 13, 13, 13]) == "13 in each of the 4 layers"  # it read "13 x 4 (4 layers)"
    assert _by_layer([97, 97, 30, 30, 30]) == "97 in layers 1-2, then 30 in layers 3-5"
    assert _by_layer([5, 4]) == "5 in layer 1, then 4 in layer 2"


def test_the_questions_table_fits_80_columns_and_cuts_only_the_question(results):
    """Piped output is 80 columns: the table cut the numbers to '26…' and dropped the last column."""
    long = [q + " and then some more words to make it long" for q in QUESTIONS]
    console = Console(width=80, record=True, color_system=None)
    print_reports([r.report for r in results], long, console)
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    header = next(line for line in lines if "prefill" in line and "TTFT" in line)
    assert header.split()[-1] == "prefix"  # the last column is whole
    for i, r in enumerate(results, 1):
        row = next(line for line in lines if line.lstrip().startswith(f"{i} "))
        t = r.report.timings
        for value in (t.prefill, t.generate, t.question_to_first_token, t.time_to_first_token):
            assert f"{value * 1000:,.1f}" in row
        assert f"{r.report.tokens.prompt:,}" in row and "…" in row  # the question, and only it, was cut


def test_a_decoding_sparsity_that_drops_nothing_says_so(qas, sample_video):
    """--opt sinks=1000 keeps every cached visual token in every layer: the run is dense, and the report says it."""
    config = AskConfig(method="sparsevila", keep=0.5, frames=4, max_new_tokens=2)
    dense = qas["llava_onevision"].ask(sample_video, QUESTIONS[0], dataclasses.replace(
        config, options={"sinks": "1000"}))
    assert set(dense.report.tokens.decoded_by_layer) == {dense.report.tokens.visual_after}
    assert any("dropped nothing" in note for note in dense.report.notes)
    sparse = qas["llava_onevision"].ask(sample_video, QUESTIONS[0], config)
    assert max(sparse.report.tokens.decoded_by_layer) < sparse.report.tokens.visual_after
    assert not any("dropped nothing" in note for note in sparse.report.notes)
