"""Several questions per call and the video's prefill reused: the same tokens as separate calls, logits within a
stated tolerance of a fresh full prefill, and the cases where reuse is off said so in the report.

Tolerance: a reused prefix's keys and values were computed inside another prompt, and the question's tokens then go
through the model as a [1, n] block instead of inside the [1, L] prompt, so the matmuls run on other shapes and
sum in another order. In float32 that moves logits by rounding (~1e-6 relative); RTOL = ATOL = 1e-4 leaves room for
that and nothing else: the control below shows a wrong context moves them by far more.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from flashvid_cli.api import AskConfig, ConfigError, VideoQA
from flashvid_cli.kernels import Method
from flashvid_cli.pipelines.generation import GenerationOptions
from flashvid_cli.pipelines.registry import families
from flashvid_cli.pipelines.prefix import PromptCache, template_order_reason, video_end

RTOL = ATOL = 1e-4
QUESTIONS = ["What colour is the circle at the end?", "What happens first?", "How many squares are there?"]
FAST = AskConfig(method="flashvid", keep=0.5, frames=4, max_new_tokens=6)
FAMILIES = tuple(families())  # every model family (pipelines/registry.py)


@pytest.mark.parametrize("family", FAMILIES)
def test_three_questions_in_one_call_equal_three_calls(qas, family, sample_video):
    qa = qas[family]
    separate = [qa.ask(sample_video, q, FAST) for q in QUESTIONS]
    together = qa.ask_many(sample_video, QUESTIONS, FAST)
    assert [r.token_ids for r in together] == [r.token_ids for r in separate]
    assert [r.report.tokens for r in together] == [r.report.tokens for r in separate]
    assert [r.report.cache["prefix"] for r in together] == ["miss", "hit", "hit"]
    assert [r.report.cache["prefix"] for r in separate] == ["miss"] * 3
    # A follow-up's own time is its prefill only: the shared stages were paid once, by the first question.
    for r in together:
        assert r.report.timings.question_to_first_token == pytest.approx(r.report.timings.prefill)


@pytest.mark.parametrize("family", FAMILIES)
def test_reused_prefix_logits_match_a_fresh_prefill(qas, family, sample_video):
    qa = qas[family]
    pipe = qa.pipeline
    prepared = qa.prepare(sample_video, FAST)
    compressed = qa.compress(prepared, FAST)
    options = GenerationOptions(max_new_tokens=6, return_logits=True)
    store = PromptCache(pipe)
    with torch.inference_mode():
        first, second = (pipe.inputs(prepared.encoded, compressed.compressed, q) for q in QUESTIONS[:2])
        end = video_end(pipe, first["input_ids"])
        _, reused = store.generate(first, options, end)
        assert reused == 0
        cached, reused = store.generate(second, options, end)
        fresh = pipe.generate(second, options)
        other = pipe.generate(first, options)
    assert end <= reused < second["input_ids"].shape[1]  # the video came from the cache, the question did not
    assert cached.token_ids == fresh.token_ids
    assert len(cached.logits) == len(fresh.logits) == 6
    for a, b in zip(cached.logits, fresh.logits):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    # Control: the tolerance is far tighter than what another context does to the logits.
    assert (other.logits[0] - fresh.logits[0]).abs().max() > 100 * ATOL


def test_template_order_is_read_from_the_template(qas):
    assert template_order_reason(qas["llava_onevision"].pipeline) is None
    assert template_order_reason(qas["qwen2_5_vl"].pipeline) is None
    pipe = qas["llava_onevision"].pipeline
    question_first = pipe.chat_template.replace(
        "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}",
        "",
    ).replace("{{'<|im_end|>\\n'}}", "{{ '<video><|im_end|>\\n' }}")
    assert question_first != pipe.chat_template
    original = pipe.chat_template
    try:
        pipe.chat_template = question_first
        assert "question before the video" in template_order_reason(pipe)
    finally:
        pipe.chat_template = original


def test_question_first_template_reports_prefix_off(qas, sample_video, monkeypatch):
    qa = qas["llava_onevision"]
    monkeypatch.setattr("flashvid_cli.pipelines.prefix.template_order_reason",
                        lambda pipe: "the chat template puts the question before the video")
    results = qa.ask_many(sample_video, QUESTIONS[:2], FAST)
    assert [r.report.cache["prefix"] for r in results] == ["off", "off"]
    assert any("question before the video" in note for note in results[1].report.notes)
    monkeypatch.undo()
    assert [r.token_ids for r in results] == [r.token_ids for r in qa.ask_many(sample_video, QUESTIONS[:2], FAST)]


@dataclass(frozen=True)
class ReadsTheQuestion(Method):
    """Keeps everything and reads the question, so its tokens may differ per question (as CDPruner's do)."""

    name: ClassVar[str] = "reads-the-question-prefix"
    needs: ClassVar[frozenset[str]] = frozenset({"question"})

    def __call__(self, feats, grid, importance=None, metric=None, question=None):
        return super().__call__(feats, grid, importance, metric, question=question)


def test_a_question_reading_method_compresses_per_question_and_prefills_in_full(qas, sample_video, monkeypatch):
    qa = qas["llava_onevision"]
    monkeypatch.setattr(qa, "build_method", lambda config: ReadsTheQuestion(keep=1.0))
    seen = []
    original = qa.compress
    monkeypatch.setattr(qa, "compress", lambda p, m, q=None, tokens=None, at_most=False: seen.append(q)
                        or original(p, m, q, tokens, at_most))
    results = qa.ask_many(sample_video, QUESTIONS[:2], FAST)
    assert seen == QUESTIONS[:2]
    assert [r.report.cache["prefix"] for r in results] == ["off", "off"]
    assert "reads the question" in " ".join(results[0].report.notes)


def test_an_in_llm_stage_prefills_every_question_in_full(qas, sample_video):
    """FastV prunes by the last token's attention, which depends on the question: no reused prefix, said why."""
    qa = qas["qwen2_5_vl"]  # its template puts the video first, so only the method can turn the reuse off
    config = dataclasses.replace(FAST, method="fastv", keep=0.5, options={"pruning_layer": "1"})
    results = qa.ask_many(sample_video, QUESTIONS[:2], config)
    assert [r.report.cache["prefix"] for r in results] == ["off", "off"]
    assert "prunes inside the LLM" in " ".join(results[1].report.notes)
    assert results[1].report.tokens.visual_by_layer[-1] < results[1].report.tokens.visual_after


def test_no_questions_or_an_empty_one_fail_before_decoding(qas, tmp_path):
    qa = qas["llava_onevision"]
    missing = tmp_path / "missing.mp4"  # never decoded: the check comes first
    with pytest.raises(ConfigError, match="no question"):
        qa.ask_many(missing, [], FAST)
    with pytest.raises(ConfigError, match="empty"):
        qa.ask_many(missing, ["fine", "  "], FAST)


def test_annotate_lines_say_what_was_reused(tiny_models, sample_video, tmp_path):
    import json

    from flashvid_cli.annotate import AnnotateConfig, annotate

    out = tmp_path / "out.jsonl"
    config = AnnotateConfig(model=str(tiny_models["qwen2_5_vl"]), device="cpu", ask=FAST, prefetch=0)
    annotate([str(sample_video)], QUESTIONS, out, config)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["question"] for line in lines] == QUESTIONS
    assert [line["report"]["cache"] for line in lines] == [
        {"encoded": "off", "prefix": "miss"}, {"encoded": "off", "prefix": "hit"}, {"encoded": "off", "prefix": "hit"}]
    alone = VideoQA(str(tiny_models["qwen2_5_vl"]), device="cpu").ask(sample_video, QUESTIONS[2], FAST)
    assert lines[2]["answer"] == alone.answer
