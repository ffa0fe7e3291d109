"""The stage API of ``VideoQA``: prepare -> compress -> answer composed by hand is ``ask``, one preparation serves
many methods, question-reading methods get the question, and per-call choices do not outlive their call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from flashvid_cli.api import AskConfig, ConfigError
from flashvid_cli.kernels import Method, build
from flashvid_cli.pipelines.registry import families

FAMILIES = tuple(families())

QUESTION = "What colour is the circle at the end?"
FAST = AskConfig(method="flashvid", keep=0.5, frames=4, max_new_tokens=5)


@pytest.mark.parametrize("family", FAMILIES)
def test_stages_by_hand_equal_ask(qas, family, sample_video):
    qa = qas[family]
    asked = qa.ask(sample_video, QUESTION, FAST)
    prepared = qa.prepare(sample_video, FAST)
    assert prepared.need == frozenset({"importance"}) and prepared.cache == "off"
    compressed = qa.compress(prepared, FAST)
    result = qa.answer(prepared, QUESTION, FAST, compressed)
    assert result.token_ids == asked.token_ids and result.answer == asked.answer
    assert result.report.tokens == asked.report.tokens
    assert result.report.video == asked.report.video
    assert (result.report.method, result.report.keep, result.report.method_options) == (
        asked.report.method, asked.report.keep, asked.report.method_options)
    t = result.report.timings
    assert t.time_to_first_token == pytest.approx(t.decode + t.preprocess + t.encode + t.compress + t.prefill)
    assert t.total == pytest.approx(t.time_to_first_token + t.generate)
    # answer() compresses by itself when given nothing compressed, with the same result.
    assert qa.answer(prepared, QUESTION, FAST).token_ids == asked.token_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_one_preparation_serves_many_methods_and_keeps(qas, family, sample_video, monkeypatch):
    qa = qas[family]
    runs = [("pool", 0.25), ("flashvid", 0.5), ("visionzip", 0.25), ("none", 1.0)]
    configs = [AskConfig(method=m, keep=k, frames=4, max_new_tokens=5) for m, k in runs]
    asked = [qa.ask(sample_video, QUESTION, c) for c in configs]

    encodes = []
    original = qa.pipeline.encode
    monkeypatch.setattr(qa.pipeline, "encode", lambda *a, **k: encodes.append(k["need"]) or original(*a, **k))
    prepared = qa.prepare(sample_video, configs[0], need=frozenset({"importance", "metric"}))
    answers = [qa.answer(prepared, QUESTION, c, qa.compress(prepared, c)) for c in configs]
    assert encodes == [frozenset({"importance", "metric"})]
    assert [a.token_ids for a in answers] == [a.token_ids for a in asked]
    assert [a.report.tokens for a in answers] == [a.report.tokens for a in asked]
    assert [(a.report.method, a.report.keep) for a in answers] == runs  # the runs really differ
    pool, flashvid, _, none = (a.report.tokens.visual_after for a in answers)
    assert pool < flashvid < none


def test_a_method_needing_an_input_not_prepared_is_a_config_error(qas, sample_video):
    qa = qas["llava_onevision"]
    prepared = qa.prepare(sample_video, AskConfig(method="pool", frames=4))
    assert prepared.encoded.metric is None and prepared.need == frozenset()
    with pytest.raises(ConfigError, match="visionzip.*metric"):
        qa.compress(prepared, AskConfig(method="visionzip", keep=0.5))


seen_questions: list[str | None] = []


@dataclass(frozen=True)
class ReadsTheQuestion(Method):
    """A method that reads the question (as CDPruner does): keeps everything, records what it was given."""

    name: ClassVar[str] = "reads-the-question"
    needs: ClassVar[frozenset[str]] = frozenset({"question"})

    def __call__(self, feats, grid, importance=None, metric=None, question=None):
        seen_questions.append(question)
        return super().__call__(feats, grid, importance, metric, question=question)


def test_question_reading_methods_need_the_question(qas, sample_video):
    qa = qas["qwen2_5_vl"]
    prepared = qa.prepare(sample_video, AskConfig(frames=4), need=frozenset())
    method = ReadsTheQuestion(1.0)
    seen_questions.clear()
    with pytest.raises(ConfigError, match="reads the question"):
        qa.compress(prepared, method)
    assert seen_questions == []  # refused before the method ran
    compressed = qa.compress(prepared, method, QUESTION)
    # The method gets the LLM's own input embeddings of the question's tokens [M, D]; the result remembers the text.
    assert len(seen_questions) == 1 and compressed.question == QUESTION
    assert torch.equal(seen_questions[0], qa.pipeline.question_embeddings(QUESTION))
    config = AskConfig(frames=4, max_new_tokens=2)
    result = qa.answer(prepared, QUESTION, config, compressed)
    assert result.report.method == "reads-the-question"
    assert result.report.tokens.visual_after == prepared.visual_tokens  # keep 1: every token
    with pytest.raises(ConfigError, match="another question"):
        qa.answer(prepared, "What happens first?", config, compressed)
    # A method that ignores the question is compressed once and serves any question.
    pooled = qa.compress(prepared, build("none", 1.0), QUESTION)
    assert pooled.question is None
    qa.answer(prepared, "What happens first?", config, pooled)


def test_text_after_video_is_per_call(qas, sample_video):
    qa = qas["qwen2_5_vl"]
    config = AskConfig(method="none", keep=1.0, frames=4, max_new_tokens=3)
    qwen = AskConfig(method="none", keep=1.0, frames=4, max_new_tokens=3, text_after_video="qwen")
    prepared = qa.prepare(sample_video, config)
    compressed = qa.compress(prepared, config)

    def positions(rule):
        return qa.prompt_inputs(prepared, compressed, QUESTION, rule)["position_ids"]

    before = positions(None)
    first = qa.answer(prepared, QUESTION, config, compressed)
    middle = qa.answer(prepared, QUESTION, qwen, compressed)
    last = qa.answer(prepared, QUESTION, config, compressed)
    assert (first.report.text_after_video, middle.report.text_after_video, last.report.text_after_video) == (
        "hf", "qwen", "hf")
    assert last.token_ids == first.token_ids
    assert not torch.equal(positions("qwen"), before)  # the rule really moves the text
    assert torch.equal(positions(None), before)  # and leaves nothing behind
    assert "text_after_video" not in vars(qa.pipeline)
    with pytest.raises(ConfigError, match="must be one of hf, qwen"):
        qa.answer(prepared, QUESTION, AskConfig(frames=4, text_after_video="nope"), compressed)
    with pytest.raises(ConfigError, match="does not apply to llava_onevision models"):
        qas["llava_onevision"].ask(sample_video, QUESTION, AskConfig(frames=4, text_after_video="qwen"))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_encoded_video_is_self_contained(qas, family, sample_video):
    """What a cache stores: tensors and plain values only, no frames and no model weights."""
    prepared = qas[family].prepare(sample_video, AskConfig(frames=4), need=frozenset({"importance", "metric"}))
    encoded = prepared.encoded
    T, N = encoded.grid.T, encoded.grid.N
    assert encoded.feats.shape[:2] == (T, N)
    assert encoded.importance.shape == (T, N) and encoded.metric.shape[:2] == (T, N)
    for value in encoded.meta.values():
        assert isinstance(value, (int, float, str)) or (isinstance(value, torch.Tensor) and not value.requires_grad)
    assert prepared.visual_tokens == T * N + qas[family].info.extra_video_tokens


def test_empty_question_fails_before_decoding(qas, tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        qas["llava_onevision"].ask(tmp_path / "missing.mp4", "  ", FAST)
