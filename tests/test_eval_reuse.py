"""eval prefills each prompt once for all its options and, where the template puts the video first, the video once
for all its questions (issue 28: "eval does not reuse the video's prefill"). The scores equal full forward passes'
within float rounding (a reused prefix is computed on other shapes: tests/test_prefix.py), and the predictions
are the same."""

from __future__ import annotations

import json

import pytest
import torch

from flashvid_cli.api import AskConfig
from flashvid_cli.evaluate import EvalConfig, Question, Scorer, run_eval, score_question
from flashvid_cli.kernels import build
from flashvid_cli.pipelines.prefix import PromptCache

FAST = AskConfig(frames=4)
QUESTIONS = [  # options of several tokens each, so each option is its own forward after the prompt
    Question("v.mp4", "Where is the circle at the end?", ("top left corner", "bottom right corner", "the middle"), 0),
    Question("v.mp4", "Which shape appears last of all?", ("a red circle", "a blue square", "a green cross"), 1),
]


def _scores(qa, prepared, compressed, reuse):
    out = []
    for q in QUESTIONS:
        scorer = Scorer(qa, compressed.method.llm_prune(), compressed.method.decode_sparsity(), reuse)
        out.append((score_question(qa, prepared, compressed, q, "likelihood", scorer=scorer), scorer.prefix))
    return out


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_reused_prefill_scores_equal_full_forwards(qas, sample_video, family):
    qa = qas[family]
    prepared = qa.prepare(sample_video, FAST, need=frozenset({"importance", "metric"}))
    compressed = qa.compress(prepared, build("pool", 0.5, model_type=qa.model_type))
    assert any(len(qa.token_ids(o)) > 1 for q in QUESTIONS for o in q.options)
    full = _scores(qa, prepared, compressed, None)
    cache = PromptCache(qa.pipeline)
    fed = []
    forward = qa.pipeline.model.forward
    qa.pipeline.model.forward = lambda *a, **k: fed.append(int(k["input_ids"].shape[1])) or forward(*a, **k)
    try:
        reused = _scores(qa, prepared, compressed, cache)
    finally:
        qa.pipeline.model.forward = forward
    for (a, state_a), (b, state_b) in zip(full, reused):
        torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-4)
        assert max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
        assert state_a == "off"
    assert [state for _, state in reused] == ["miss", "hit"]  # the stock templates put the video first
    from flashvid_cli.pipelines.prefix import video_end

    prompts = [qa.prompt_inputs(prepared, compressed, q.question)["input_ids"] for q in QUESTIONS]
    lengths = [[len(qa.token_ids(o)) for o in q.options] for q in QUESTIONS]
    end = video_end(qa.pipeline, prompts[1])
    # question 1: the whole prompt with its first option, then each other option with the prompt's last token
    assert fed[:3] == [prompts[0].shape[1] + lengths[0][0], lengths[0][1] + 1, lengths[0][2] + 1]
    # question 2: at most the text after the video (the video's prefill is the cache's; the questions' first
    # tokens may match too), with its option; then the same per option
    assert lengths[1][0] + 1 < fed[3] <= prompts[1].shape[1] - end + lengths[1][0]
    assert fed[4:] == [lengths[1][1] + 1, lengths[1][2] + 1]


def test_a_method_with_an_in_llm_stage_is_scored_by_full_forwards(qas, sample_video):
    qa = qas["llava_onevision"]
    prepared = qa.prepare(sample_video, FAST, need=frozenset({"importance", "metric"}))
    compressed = qa.compress(prepared, build("fastv", 0.5, model_type=qa.model_type,
                                             options={"pruning_layer": "1"}))  # the tiny model has 2 layers
    scorer = Scorer(qa, compressed.method.llm_prune(), None, PromptCache(qa.pipeline))
    scores = score_question(qa, prepared, compressed, QUESTIONS[0], "likelihood", scorer=scorer)
    assert scorer.prefix == "off" and scorer.reuse is None
    assert scores == score_question(qa, prepared, compressed, QUESTIONS[0], "likelihood")


def test_run_eval_says_what_each_prediction_reused(tiny_models, sample_video, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"video": str(sample_video), "question": q.question,
                                        "options": list(q.options), "answer": q.answer}) + "\n"
                            for q in QUESTIONS))
    from flashvid_cli.api import VideoQA
    from flashvid_cli.evaluate import read_dataset

    qa = VideoQA(str(tiny_models["llava_onevision"]), device="cpu")
    ask = AskConfig(frames=4, options={"pruning_layer": "1"})  # fastv's, on a 2-layer model
    result = run_eval(qa, read_dataset(data), EvalConfig(methods=("pool", "cdpruner", "fastv"), keeps=(0.5,),
                                                           ask=ask))
    states = {}
    for p in result.predictions:
        states.setdefault(p.method, []).append(p.cache["prefix"])
    assert states == {"pool": ["miss", "hit"],  # the video prefilled once for both questions
                      "cdpruner": ["off", "off"],  # its tokens are the question's: a cache per question's options
                      "fastv": ["off", "off"]}  # its in-LLM stage: full forwards


def test_a_template_that_asks_first_says_off_as_ask_does(sample_video, tmp_path, question_first_demo):
    """On a template that puts the question before the video no question can reuse the video's prefill, so eval
    says "off" (it said "miss" for every question), as ask's report does; its options still share a cache."""
    from flashvid_cli.api import VideoQA
    from flashvid_cli.evaluate import read_dataset

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"video": str(sample_video), "question": q.question,
                                        "options": list(q.options), "answer": q.answer}) + "\n"
                            for q in QUESTIONS))
    qa = VideoQA(str(question_first_demo), device="cpu")
    result = run_eval(qa, read_dataset(data), EvalConfig(methods=("pool",), keeps=(0.5,), ask=FAST))
    assert [p.cache["prefix"] for p in result.predictions] == ["off", "off"]
