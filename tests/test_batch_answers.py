"""A video's later questions answered in one batched generate() over its cached prefill (annotate does this).

Each row is its own prompt behind the shared prefix, its padding masked out, so the tokens and positions it sees are
the ones it sees alone; only the matmul shapes differ (a [B, n] block, not [1, n]), which moves float32 logits by
rounding. The tolerance is test_prefix.py's (RTOL = ATOL = 1e-4), and the demo model's greedy answers must be the
same strings as one question at a time.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from flashvid_cli.annotate import AnnotateConfig, annotate
from flashvid_cli.api import AskConfig, VideoQA
from flashvid_cli.pipelines.generation import GenerationOptions
from flashvid_cli.pipelines.prefix import PromptCache, video_end

RTOL = ATOL = 1e-4
DEMO = REPO / "samples" / "vidq-demo-llava-ov"
CLIPS = sorted((REPO / "samples" / "demo" / "clips").glob("*.mp4"))
QUESTIONS = ["How many shapes appear in the video?", "Which shape appears last?", "Which way does the square move?",
             "What colour is the circle?", "Where is the triangle at the end?"]
CONFIG = AskConfig(method="flashvid", keep=0.25, max_new_tokens=8)


@pytest.fixture(scope="module")
def demo() -> VideoQA:
    return VideoQA(str(DEMO), device="cpu")


def _prepared(qa: VideoQA, video, config: AskConfig):
    method = qa.build_method(config)
    prepared = qa.prepare(video, config, need=method.needs, write_cache=False)
    compressed = qa.compress(prepared, method)
    return prepared, compressed, qa.video_prefix(compressed)


def test_batched_answers_equal_one_at_a_time_on_the_demo_model(demo):
    for clip in CLIPS[:4]:
        prepared, compressed, prefix = _prepared(demo, clip, CONFIG)
        alone = [demo.answer(prepared, q, CONFIG, compressed, prefix) for q in QUESTIONS]
        batch = demo.answer_batch(prepared, QUESTIONS[1:], CONFIG, prefix)
        assert [r.token_ids for r in batch] == [r.token_ids for r in alone[1:]], clip.name
        assert [r.answer for r in batch] == [r.answer for r in alone[1:]]
        assert [r.report.tokens for r in batch] == [r.report.tokens for r in alone[1:]]
        assert all(r.report.cache["prefix"] == "hit" and "batched generate()" in r.report.notes[0] for r in batch)
        # The cache holds the video's prefill alone again: the next question reuses it and answers as before.
        again = demo.answer(prepared, QUESTIONS[2], CONFIG, compressed, prefix)
        assert again.report.cache["prefix"] == "hit" and again.token_ids == alone[2].token_ids


def test_batched_logits_match_one_at_a_time_on_a_random_model(qas, sample_video):
    qa = qas["llava_onevision"]
    pipe = qa.pipeline
    config = AskConfig(method="flashvid", keep=0.5, frames=4)
    prepared = qa.prepare(sample_video, config)
    compressed = qa.compress(prepared, config)
    options = GenerationOptions(max_new_tokens=5, return_logits=True)
    questions = ["What colour is the circle at the end?", "What happens first?", "How many?"]  # lengths differ
    store = PromptCache(pipe)
    with torch.inference_mode():
        prompts = [pipe.inputs(prepared.encoded, compressed.compressed, q) for q in questions]
        end = video_end(pipe, prompts[0]["input_ids"])
        store.generate(prompts[0], options, end)  # the video's prefill, now in the cache
        alone = [store.generate(p, options, end)[0] for p in prompts]
        batch = store.generate_batch(prompts, options, end)
        wrong = pipe.generate(pipe.inputs(prepared.encoded, compressed.compressed, "Something else entirely?"),
                              options)
    assert store.ids == prompts[0]["input_ids"][0, :end].tolist() and store.cache.get_seq_length() == end
    for a, b in zip(alone, batch):
        assert b.prompt_tokens == a.prompt_tokens
        steps = min(len(a.logits), len(b.logits))
        assert steps and b.token_ids[:steps] == a.token_ids[:steps]
        for x, y in zip(a.logits[:steps], b.logits[:steps]):
            torch.testing.assert_close(y, x, rtol=RTOL, atol=ATOL)
    # The control: another question's logits are far outside the tolerance, so the check can fail.
    assert (wrong.logits[0] - alone[0].logits[0]).abs().max() > 100 * ATOL


def test_what_cannot_be_batched_says_why(qas, sample_video):
    qa = qas["llava_onevision"]
    pipe = qa.pipeline
    prepared = qa.prepare(sample_video, AskConfig(frames=4))
    compressed = qa.compress(prepared, AskConfig(method="none", frames=4))
    store = PromptCache(pipe)
    prompt = pipe.inputs(prepared.encoded, compressed.compressed, "What is it?")
    end = video_end(pipe, prompt["input_ids"])
    assert "not in the cache" in store.batch_reason([prompt], GenerationOptions(), end)
    assert "sampling" in store.batch_reason([prompt], GenerationOptions(temperature=0.7), end)
    with_positions = dict(prompt, position_ids=torch.zeros((4, 1, prompt["input_ids"].shape[1]), dtype=torch.long))
    assert "one question at a time" in store.batch_reason([with_positions], GenerationOptions(), end)
    with pytest.raises(ValueError, match="not in the cache"):
        store.generate_batch([prompt], GenerationOptions(), end)


def _too_long_with_the_video(qa: VideoQA) -> str:
    """The longest question whose prompt fits the context without the video (so annotate's up-front check passes)
    and, with the video's tokens, does not."""
    from flashvid_cli.pipelines.errors import PromptTooLongError

    for n in range(700, 0, -1):
        try:
            qa.pipeline.check_question_length("Why " * n + "?", CONFIG.max_new_tokens)
        except PromptTooLongError:
            continue
        return "Why " * n + "?"
    raise AssertionError("no question fits")


def test_annotate_batches_a_videos_later_questions_and_a_bad_one_costs_only_its_line(tmp_path, demo):
    config = AnnotateConfig(model=str(DEMO), device="cpu", ask=CONFIG)
    videos = [str(c) for c in CLIPS[:2]]
    out = tmp_path / "a.jsonl"
    summary = annotate(videos, QUESTIONS[:3], out, config)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.done == 6 and summary.failed == 0
    for video in videos:
        rows = [r for r in lines if r["video"] == video]
        assert [r["report"]["cache"]["prefix"] for r in rows] == ["miss", "hit", "hit"]
        assert not any("batched" in n for n in rows[0]["report"]["notes"])
        assert all(any("batched generate()" in n for n in r["report"]["notes"]) for r in rows[1:])
    # A later question too long for the context fails the batch; one at a time, only its own line is an error.
    long = _too_long_with_the_video(demo)
    bad = tmp_path / "b.jsonl"
    summary = annotate(videos[:1], [QUESTIONS[0], long, QUESTIONS[1]], bad, config)
    rows = [json.loads(line) for line in bad.read_text().splitlines()]
    assert [r["error"] is None for r in rows] == [True, False, True]
    # The refused question left the video's prefill in the cache: the next one reuses it.
    assert [r["report"]["cache"]["prefix"] for r in rows if r["report"]] == ["miss", "hit"]
    assert rows[2]["answer"] == next(r["answer"] for r in lines if r["video"] == videos[0]
                                     and r["question"] == QUESTIONS[1])


def test_cli_names_the_question_that_failed_and_leaves_no_empty_out(tmp_path, demo):
    """A question too long only with the video is that question's failure, not the video's: the stderr line names
    it (it read as if the whole video failed). A question too long for every video is refused before any video
    decodes, and the --out file the run had just created is not left behind empty. Two questions: the second is
    answered alone (no batch of one)."""
    from typer.testing import CliRunner

    from flashvid_cli.cli import app

    long = _too_long_with_the_video(demo)
    base = ["annotate", str(CLIPS[0]), "--model", str(DEMO), "--device", "cpu", "--method", "flashvid", "--keep",
            "0.25", "--max-new-tokens", "8", "--no-cache", "--quiet"]
    out = tmp_path / "a.jsonl"
    result = CliRunner().invoke(app, [*base, "--out", str(out), "-q", QUESTIONS[0], "-q", long])
    assert result.exit_code == 3, result.stderr
    [failed] = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert failed.startswith(f"failed: {CLIPS[0]}, question 'Why Why ") and "past the 2,048-token context" in failed
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["error"] is None and second["error"] is not None and second["question"] == long
    again = tmp_path / "b.jsonl"
    result = CliRunner().invoke(app, [*base, "--out", str(again), "-q", QUESTIONS[0], "-q", QUESTIONS[1]])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in again.read_text().splitlines()]
    assert [r["report"]["cache"]["prefix"] for r in rows] == ["miss", "hit"]
    assert not any("batched" in note for r in rows for note in r["report"]["notes"])
    never = tmp_path / "c.jsonl"
    result = CliRunner().invoke(app, [*base, "--out", str(never), "-q", QUESTIONS[0], "-q", "Why " * 3000])
    assert result.exit_code == 1 and "shorten the question" in result.stderr, result.stderr
    assert not never.exists() and not list(tmp_path.glob("c.jsonl*"))  # nor its lock file
