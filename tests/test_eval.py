"""``vidq eval``: reading questions, scoring that agrees with generate(), the run on tiny models, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flashvid_cli.api import AskConfig, ConfigError, VideoQA
from flashvid_cli.cli import app
from flashvid_cli.evaluate import (
    DatasetError,
    EvalConfig,
    Question,
    Scorer,
    likelihood_scores,
    read_dataset,
    run_eval,
    score_question,
)
from flashvid_cli.kernels import build

runner = CliRunner()
FAST = AskConfig(frames=4)


def write_jsonl(path: Path, *records: dict | str) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def row(**fields) -> dict:
    return {"video": "clip.mp4", "question": "What colour?", "options": ["red", "green", "blue"], "answer": "B",
            **fields}


# -- read_dataset --------------------------------------------------------------------------------------------------
def test_read_dataset_answers_prefixes_and_paths(tmp_path):
    path = write_jsonl(
        tmp_path / "q.jsonl",
        row(answer="C", type="colour", id="a1"),
        row(answer=0, task_type="count", question_id=7),
        "",
        row(answer="green", video="/abs/clip.mp4"),
        row(options=["A. red", "B. green", "C. blue"], answer="C. blue"),
        row(options=["(A) red", "(B) green"], answer="B"),
        row(options=["A) red", "B) green"], answer="red"),
        row(options=["B. red", "A. green"], answer="A. green"),  # letters not in place: kept as text
    )
    qs = read_dataset(path)
    assert [q.answer for q in qs] == [2, 0, 1, 2, 1, 0, 1]
    assert qs[0] == Question(str(tmp_path / "clip.mp4"), "What colour?", ("red", "green", "blue"), 2, "colour", "a1",
                             f"{path}:1")
    assert (qs[1].type, qs[1].id) == ("count", "7")
    assert qs[2].video == "/abs/clip.mp4" and qs[2].id == "4" and qs[2].type is None  # the line number
    assert qs[3].options == ("red", "green", "blue")
    assert qs[4].options == qs[5].options == ("red", "green")
    assert qs[6].options == ("B. red", "A. green")


@pytest.mark.parametrize("line, expected", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"video": "a.mp4", "question": "q?", "options": ["a", "b"]}), "missing 'answer'"),
    (json.dumps(row(options=["only"])), "at least 2 strings"),
    (json.dumps(row(options=["a", 3])), "at least 2 strings"),
    (json.dumps(row(options=["a", "a"], answer=0)), "two options read the same"),
    (json.dumps(row(question=" ")), "'question' must be a non-empty string"),
    (json.dumps(row(answer="purple")), "neither a letter (A-C) nor an option's text"),
    (json.dumps(row(answer="D")), "past the last option, C"),
    (json.dumps(row(answer=3)), "index 3 is out of range for 3 options"),
    (json.dumps(row(answer=None)), "'answer' must be"),
    (json.dumps(row(options=["B", "A"], answer="A")), "ambiguous"),
])
def test_read_dataset_bad_line_names_file_and_line(tmp_path, line, expected):
    path = write_jsonl(tmp_path / "q.jsonl", row(), "", line)
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and expected in message and "\n" not in message
    assert isinstance(info.value, ConfigError)


def test_read_dataset_empty_or_missing_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(DatasetError, match="holds no questions"):
        read_dataset(tmp_path / "empty.jsonl")
    with pytest.raises(DatasetError, match="cannot read .*nope.jsonl"):
        read_dataset(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("fields, expected", [
    ({"methods": ("pool", "nosuch")}, "unknown method 'nosuch'"),
    ({"keeps": (0.5, 1.5)}, r"--keep values must be in \(0, 1\]"),
    ({"keeps": ()}, "--keep is empty"),
    ({"scoring": "vibes"}, "--scoring must be one of likelihood, letter"),
    ({"limit": 0}, "--limit must be at least 1"),
    ({"methods": ("pool", "none"), "ask": AskConfig(options={"llm_stage": "false"})},
     "none of the methods pool, none has an option 'llm_stage'"),
    ({"methods": ("pool", "nuwa"), "ask": AskConfig(options={"visionzip.dominant": "4"})},
     "method 'visionzip' is not in --methods"),
])
def test_eval_config_rejects(fields, expected):
    with pytest.raises(ConfigError, match=expected):
        EvalConfig(**fields)


def test_an_opt_goes_to_the_methods_that_have_it():
    """`--methods pool,nuwa --opt llm_stage=false` failed: pool was built with nuwa's option."""
    config = EvalConfig(methods=("pool", "nuwa"), ask=AskConfig(options={"llm_stage": "false", "nuwa.quantile": "0"}))
    assert config.options_for("pool") == {}
    assert config.options_for("nuwa") == {"llm_stage": "false", "quantile": "0"}


def test_none_runs_once_whatever_the_keeps():
    assert EvalConfig(methods=("pool", "none"), keeps=(0.5, 0.1, 0.5)).runs() == [
        ("pool", 0.5, None), ("pool", 0.1, None), ("none", 1.0, None)]


# -- scoring agrees with generate() ----------------------------------------------------------------------------------
def encode_sample(qa: VideoQA, video: Path, method: str = "pool", keep: float = 0.5):
    """(prepared, compressed): ``video`` encoded with importance and metric, then compressed by ``method``."""
    prepared = qa.prepare(video, FAST, need=frozenset({"importance", "metric"}))
    return prepared, qa.compress(prepared, build(method, keep, model_type=qa.model_type))


@pytest.fixture(scope="module")
def loaded(tiny_model, sample_video):
    """(VideoQA, prompt inputs) for each family, the video compressed by pool at 0.5 (Qwen's positions then skip)."""
    qa = VideoQA(str(tiny_model), device="cpu")
    prepared, compressed = encode_sample(qa, sample_video)
    return qa, qa.prompt_inputs(prepared, compressed, "What colour is the circle at the end?")


def test_appended_tokens_see_what_generate_sees(loaded):
    """One forward over prompt + generated tokens gives generate()'s logits at every step: the extension of ids,
    mask and (Qwen) M-RoPE positions is the one generate() makes."""
    qa, inputs = loaded
    pipe = qa.pipeline
    with torch.inference_mode():
        out = pipe.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True, pad_token_id=pipe.tokenizer.pad_token_id)
    new = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    expected = torch.cat(out.logits).float()  # [3, vocab]: step s predicts new[s]
    logits = qa.last_logits(inputs, count=3, append=new[:2])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(qa.last_logits(inputs), expected[:1], rtol=0, atol=1e-5)


def test_one_forward_shortcut_equals_a_forward_per_option(loaded):
    qa, inputs = loaded
    single = [qa.token_ids(t) for t in ["A", "B", "C", "D"]]
    assert all(len(ids) == 1 for ids in single)
    one = likelihood_scores(Scorer(qa), inputs, single)
    each = likelihood_scores(Scorer(qa), inputs, single, one_pass=False)
    torch.testing.assert_close(torch.tensor(one), torch.tensor(each), rtol=0, atol=1e-5)
    # A two-token option scores its first token like the shortcut does, plus its second given the first.
    first, second = single[0][0], single[1][0]
    pair = likelihood_scores(Scorer(qa), inputs, [[first, second]])[0]
    step = qa.last_logits(inputs, append=[first])[-1].log_softmax(-1)[second].item()
    assert pair == pytest.approx(one[0] + step, abs=1e-5)


def test_letter_scoring_reads_the_letters_logits(loaded, sample_video):
    qa, _ = loaded
    prepared, compressed = encode_sample(qa, sample_video, "none", 1.0)
    question = Question("v.mp4", "What colour?", ("red", "green", "blue"), 1)
    scores = score_question(qa, prepared, compressed, question, "letter")
    pipe = qa.pipeline
    with torch.inference_mode():
        inputs = pipe.inputs(prepared.encoded, compressed.compressed,
                             "What colour?\nA. red\nB. green\nC. blue\n"
                             "Answer with the option's letter from the given choices directly.")
    logits = pipe.last_logits(inputs)[-1]
    letters = [pipe.tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in "ABC"]
    assert scores == logits[letters].tolist()


# -- run_eval ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory, sample_video) -> Path:
    root = tmp_path_factory.mktemp("eval")
    (root / "clips").mkdir()
    (root / "clips" / "clip.mp4").write_bytes(sample_video.read_bytes())
    return write_jsonl(
        root / "mcq.jsonl",
        {"video": "clips/clip.mp4", "question": "What colour is the circle at the end?",
         "options": ["A. red", "B. green", "C. blue", "D. yellow"], "answer": "C", "type": "colour", "id": "q1"},
        {"video": "clips/missing.mp4", "question": "What happens?", "options": ["nothing", "a circle moves"],
         "answer": 1, "type": "action", "id": "q2"},
        {"video": "clips/clip.mp4", "question": "How many circles?", "options": ["one", "two", "three"],
         "answer": "one", "type": "count", "id": "q3"},
    )


@pytest.fixture(scope="module")
def llava(tiny_models) -> VideoQA:
    return VideoQA(str(tiny_models["llava_onevision"]), device="cpu")


def test_run_eval_rows_totals_and_a_missing_video(llava, dataset, monkeypatch):
    encodes = []
    original = llava.pipeline.encode
    monkeypatch.setattr(llava.pipeline, "encode", lambda *a, **k: encodes.append(k["need"]) or original(*a, **k))
    seen = []
    config = EvalConfig(methods=("flashvid", "pool", "none"), keeps=(1.0, 0.25), ask=FAST)
    result = run_eval(llava, read_dataset(dataset), config, progress=lambda *a: seen.append(a))

    assert encodes == [frozenset({"importance"})]  # one good video, encoded once for every row and question
    assert seen[-1] == (3, 3, 1)
    assert [(r.method, r.keep) for r in result.rows] == [
        ("flashvid", 1.0), ("flashvid", 0.25), ("pool", 1.0), ("pool", 0.25), ("none", 1.0)]
    for r in result.rows:
        assert (r.total, r.failed) == (2, 1) and 0 <= r.correct <= 2 and r.accuracy == r.correct / 2
        assert set(r.by_type) == {"colour", "count"} and all(s.total == 1 for s in r.by_type.values())
        assert r.visual_tokens <= r.visual_tokens_before
    tokens = {(r.method, r.keep): r.visual_tokens for r in result.rows}
    assert tokens[("pool", 0.25)] < tokens[("pool", 1.0)] == tokens[("none", 1.0)]
    assert tokens[("none", 1.0)] == 4 * 16 + 1  # 4 frames of 4 x 4 tokens and the newline

    assert len(result.predictions) == 3 * 5
    missing = [p for p in result.predictions if p.id == "q2"]
    assert len(missing) == 5 and all(p.predicted is None and not p.correct and "missing.mp4" in p.error
                                     for p in missing)
    scored = [p for p in result.predictions if p.error is None]
    assert scored and all(p.cache["encoded"] == "off" for p in scored)
    # q1 and q3 are about the same good video: per row, the second question reuses the video's prefill
    prefix = {}
    for p in scored:
        prefix.setdefault((p.method, p.keep), []).append(p.cache["prefix"])
    assert all(states == ["miss", "hit"] for states in prefix.values()), prefix
    assert any("the video's prefill once for all its questions" in note for note in result.environment["notes"])
    scored = [p for p in result.predictions if p.error is None]
    assert all(len(p.scores) == (4 if p.id == "q1" else 3) and p.correct == (p.predicted == p.answer)
               for p in scored)
    env = result.environment
    assert env["chance"] == pytest.approx((1 / 4 + 1 / 3) / 2) and env["questions"] == 3
    assert env["dataset"] == [str(dataset)] and env["scoring"] == "likelihood" and env["model_type"] == "llava_onevision"
    json.dumps(result.to_dict())


def test_run_eval_letter_scoring_and_limit(llava, dataset):
    config = EvalConfig(methods=("none",), scoring="letter", limit=1, ask=FAST)
    result = run_eval(llava, read_dataset(dataset), config)
    assert [(r.method, r.total, r.failed) for r in result.rows] == [("none", 1, 0)]
    (prediction,) = result.predictions
    assert prediction.id == "q1" and len(prediction.scores) == 4


# -- the command ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eval_run(tiny_models, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-out")
    plot = ["--plot", str(out / "eval.png")] if _has_matplotlib() else []
    result = runner.invoke(app, [
        "eval", str(dataset), "--model", str(tiny_models["qwen2_5_vl"]), "--methods", "divprune,none",
        "--keep", "0.5", "--frames", "4", "--json", str(out / "eval.json"), *plot,
    ])
    return result, out


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_eval_prints_a_table_and_says_what_failed(eval_run):
    result, _ = eval_run
    assert result.exit_code == 3, result.stderr  # the table and files are written; q2's missing video is not scored
    for text in ["divprune", "none", "accuracy", "chance: 29.2%", "/2"]:
        assert text in result.stdout, text
    assert "1 of 3 questions failed" in result.stderr and "q2" in result.stderr


def test_eval_table_fits_80_columns_without_cutting_a_cell():
    """The widest rows --tokens makes (a long method name, 5-digit counts, 4-digit totals) in 80 columns."""
    from rich.console import Console

    from flashvid_cli.commands.evaluate import print_eval
    from flashvid_cli.evaluate import EvalResult, EvalRow

    env = {"questions": 2700, "scoring": "likelihood", "tokens": [12544, 1568], "chance": 0.25,
           "model": "llava-hf/llava-onevision-qwen2-7b-ov-hf", "device": "cuda:0", "dtype": "bfloat16"}
    rows = [EvalRow("none", 1.0, 0.6543, 1767, 2700, 0, 12544.0, 12544.0)]
    rows += [EvalRow(m, 0.0123456, 0.5, 1350, 2700, 1234, 12543.7, 12544.0, tokens=t, token_search_s=1234.56)
             for m in ["visionzip", "flashvid_x"] for t in [12544, 1568]]
    for by_tokens in [True, False]:
        console = Console(width=80, record=True, color_system=None)
        print_eval(EvalResult({**env, "tokens": env["tokens"] if by_tokens else None}, rows, []), console)
        text = console.export_text()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
        lines = text.splitlines()
        assert any(line.startswith("flashvid_x") and "12,544" in line and "1350/2700" in line for line in lines), text
        if by_tokens:
            assert any("1,568" in line and "0.0123" in line and "1234.6 s" in line for line in lines), text


def test_eval_prints_accuracy_by_question_type_within_80_columns():
    """Each row's accuracy on each type, the types' counts, split over tables so no line passes 80 columns."""
    from rich.console import Console

    from flashvid_cli.commands.evaluate import print_eval
    from flashvid_cli.evaluate import EvalResult, EvalRow, TypeScore

    env = {"questions": 5, "scoring": "likelihood", "tokens": None, "chance": 0.25, "model": "m", "device": "cpu",
           "dtype": "float32"}
    rows = [EvalRow(m, k, 0.6, 3, 5, 0, 10.0, 40.0, by_type={
        "how_many": TypeScore(2 / 3, 2, 3), "where_at_end": TypeScore(0.5 if m == "pool" else 1.0, 1, 2)})
        for m in ["flashvid", "divprune", "visionzip", "pool"] for k in [0.25, 0.1]]
    console = Console(width=80, record=True, color_system=None)
    print_eval(EvalResult(env, rows, []), console)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in "".join(lines)
    typed = [line for line in lines if line.startswith(("how_many (3)", "where_at_end (2)"))]
    assert len(typed) >= 4  # 8 columns do not fit one table: two tables, each with both types
    cells = " ".join(line for line in typed if line.startswith("where_at_end")).split()
    assert cells.count("100.0%") == 6 and cells.count("50.0%") == 2  # pool's two rows, every other row's
    assert sum(line.count("66.7%") for line in typed) == 8
    long_name = "a_question_type_whose_name_runs_on_and_on_for_sixty_four_characters_"
    odd = [EvalRow("pool", 0.5, 0.5, 2, 4, 0, 1.0, 1.0, by_type={
        long_name: TypeScore(1.0, 1, 1), "": TypeScore(0.0, 0, 1)})]  # and 2 questions with no type: 1 right
    console = Console(width=80, record=True, color_system=None)
    print_eval(EvalResult(env, odd, []), console)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("(no type) (2)") and "50.0%" in line for line in lines)  # the counts add up: 4
    assert any(line.startswith("(empty) (1)") for line in lines)
    assert any(line.startswith(long_name[:20]) and "… (1)" in line for line in lines)
    assert sum(line.startswith("question type (n)") for line in lines) == 1  # one table: the long name does not split it
    one_type = [EvalRow("none", 1.0, 1.0, 2, 2, 0, 1.0, 1.0, by_type={"how_many": TypeScore(1.0, 2, 2)})]
    console = Console(width=80, record=True, color_system=None)
    print_eval(EvalResult(env, one_type, []), console)
    assert "by question type" not in console.export_text()  # one type: the main table says it all


def test_eval_json(eval_run):
    _, out = eval_run
    doc = json.loads((out / "eval.json").read_text())
    assert [(r["method"], r["keep"], r["total"], r["failed"]) for r in doc["rows"]] == [
        ("divprune", 0.5, 2, 1), ("none", 1.0, 2, 1)]
    assert doc["environment"]["frames"]["frames"] == 4 and doc["environment"]["text_after_video"] == "hf"
    assert len(doc["predictions"]) == 6


def test_eval_png(eval_run):
    if not _has_matplotlib():
        pytest.skip("matplotlib is not installed (pip install 'vidq[plot]')")
    _, out = eval_run
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("budget, opt", [(["--keep", "0.25"], "llm_stage=false"),
                                         (["--tokens", "33"], "nuwa.llm_stage=false")], ids=["keep", "tokens"])
def test_eval_pool_and_nuwa_with_nuwas_opt(tiny_models, dataset, budget, opt):
    """The input of the bug: an --opt only nuwa has, with pool in the same eval; pool's rows are pool's own, and no
    question fails but the one whose video is missing (with ``nuwa.key`` every question failed: the check before
    decoding built each method with every --opt)."""
    args = ["eval", str(dataset), "--model", str(tiny_models["llava_onevision"]), *budget, "--frames", "4"]
    both = runner.invoke(app, [*args, "--methods", "pool,nuwa", "--opt", opt])
    assert both.exit_code == 3, both.output  # the missing video's question
    assert "1 of 3 questions failed" in both.stderr and "has no option" not in both.stderr
    alone = runner.invoke(app, [*args, "--methods", "pool"])
    pool_row = next(line for line in alone.stdout.splitlines() if line.startswith("pool"))
    assert pool_row in both.stdout.splitlines()
    assert any(line.startswith("nuwa") for line in both.stdout.splitlines())
    wrong = runner.invoke(app, [*args, "--methods", "pool", "--opt", "llm_stage=false"])
    assert wrong.exit_code == 1 and "none of the methods pool has an option 'llm_stage'" in wrong.stderr


@pytest.mark.parametrize("args, expected", [
    (["nope.jsonl"], "cannot read nope.jsonl"),
    (["BAD", "--scoring", "vibes"], "--scoring must be one of"),
    (["BAD", "--keep", "0"], "--keep values must be in (0, 1]"),
    (["BAD"], ":2: not valid JSON"),
])
def test_eval_bad_input_gets_one_line(tmp_path, args, expected):
    bad = write_jsonl(tmp_path / "bad.jsonl", row(), "{oops")
    result = runner.invoke(app, ["eval", *[str(bad) if a == "BAD" else a for a in args], "--model", "unused"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_wilson_interval_known_values():
    from flashvid_cli.evaluate import wilson_interval

    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_eval_plot_keeps_equal_lines_apart(tmp_path):
    pytest.importorskip("matplotlib")
    from flashvid_cli.evaluate import EvalResult, EvalRow, method_offsets, plot_eval

    offsets = method_offsets(["flashvid", "divprune", "pool"])
    assert len(set(offsets.values())) == 3 and min(offsets.values()) < 1 < max(offsets.values())
    rows = [EvalRow(m, k, 0.5, 5, 10, 0, 10.0, 40.0) for m in ["flashvid", "divprune"] for k in [0.5, 0.25]]
    rows.append(EvalRow("none", 1.0, 0.9, 9, 10, 0, 40.0, 40.0))
    env = {"model": "m", "chance": 0.25, "questions": 10, "scoring": "likelihood"}
    path = plot_eval(EvalResult(env, rows, []), tmp_path / "e.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_exits_0_when_every_question_is_scored_and_refuses_a_plot_it_cannot_write(tiny_models, dataset,
                                                                                    tmp_path, monkeypatch):
    lines = [line for line in dataset.read_text().splitlines() if "missing.mp4" not in line]
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(lines) + "\n")
    (tmp_path / "clips").symlink_to(dataset.parent / "clips")
    ok = runner.invoke(app, ["eval", str(good), "--model", str(tiny_models["llava_onevision"]), "--methods", "pool",
                             "--keep", "0.5", "--frames", "4"])
    assert ok.exit_code == 0, ok.stderr
    if not _has_matplotlib():
        return
    import flashvid_cli.api as api

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded for a plot that cannot be written")

    monkeypatch.setattr(api.VideoQA, "__init__", refuse)
    for name, said in (("p.txt", "cannot write '.txt'"), ("plot", "cannot write no extension")):
        for command in (["eval", str(good)], ["bench", str(dataset.parent / "clips" / "clip.mp4")]):
            out = runner.invoke(app, [*command, "--model", str(tiny_models["llava_onevision"]), "--plot",
                                      str(tmp_path / name)])
            lines = [line for line in out.stderr.splitlines() if line.strip()]
            assert out.exit_code == 1 and len(lines) == 1 and said in lines[0] and ".png" in lines[0], out.output
