"""SparseVILA (kernels/sparsevila.py, pipelines/sparse_decode.py, shared/ALGORITHMS.md §13).

* prefill: per frame the top ``round(keep * N)`` by importance, ties to the lower index, tokens unchanged;
* decoding: with ``decode_keep=1`` the answer equals prefill pruning alone bit for bit (logits too); on the compact
  cache it equals decoding on the full cache with each layer's dropped visual keys masked out (greedy tokens
  identical, logits within ``ATOL``: the softmax runs over other lengths, so blockings differ); each layer's kept set
  is the top-k of the score computed separately from the eager attention's weights; chat turn 2 equals a fresh
  prefill of the conversation under the same method;
* options are validated with one-line errors naming the option;
* ``vidq ask --method sparsevila`` on every family keeps ``tokens_for`` visual tokens (plus LLaVA-OV's newline) and
  reports the visual KV entries each layer decodes over.
"""

from __future__ import annotations

import json

import pytest
import torch

from flashvid_cli.api import AskConfig
from flashvid_cli.chat import Chat
from flashvid_cli.kernels import Grid, build
from flashvid_cli.kernels.errors import MethodError
from flashvid_cli.kernels.traits import DecodeSparsity
from flashvid_cli.pipelines.generation import GenerationOptions
from flashvid_cli.pipelines.registry import families
from flashvid_cli.pipelines.sparse_decode import select

FAMILIES = tuple(families())
ATOL = RTOL = 1e-4  # compact vs masked full cache: the same softmax over keys of other lengths (float32)
QUESTION = "Where is the red square?"
NEW = 6


def loop_reference(importance: torch.Tensor, K: int) -> list[list[int]]:
    """Per frame, the K indices of highest importance (equal scores: lower index first), ascending."""
    out = []
    for row in importance.tolist():
        order = sorted(range(len(row)), key=lambda n: (-row[n], n))
        out.append(sorted(order[:K]))
    return out


@pytest.mark.parametrize("keep", [0.07, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(1, 3, 5), (4, 6, 6), (3, 7, 9)], ids=str)
def test_prefill_keeps_the_top_share_per_frame_ties_low(keep, shape):
    T, H, W = shape
    grid = Grid(T, H, W)
    gen = torch.Generator().manual_seed(T * 100 + H)
    # Quantised scores so ties are common; the loop breaks them toward the lower index.
    importance = torch.randint(0, 4, (T, H * W), generator=gen).float()
    feats = torch.randn(T, H * W, 8, generator=gen)
    method = build("sparsevila", keep=keep)
    out = method(feats, grid, importance=importance)
    K = max(1, round(keep * H * W))
    expected = [n + t * H * W for t, row in enumerate(loop_reference(importance, K)) for n in row]
    assert out.index.tolist() == expected
    assert torch.equal(out.tokens, feats.reshape(-1, 8)[out.index])
    assert method.tokens_for(grid) == T * K == out.tokens.shape[0]


@pytest.mark.parametrize("options, match", [
    ({"decode_keep": 0.0}, "sparsevila.decode_keep"), ({"decode_keep": 1.5}, "sparsevila.decode_keep"),
    ({"sinks": -1}, "sparsevila.sinks"), ({"sinks": 1.5}, "sparsevila.sinks"), ({"sinks": True}, "sparsevila.sinks"),
])
def test_bad_options(options, match):
    with pytest.raises(MethodError, match=match):
        build("sparsevila", keep=0.5, options=options)


def test_needs_importance():
    with pytest.raises(MethodError, match="needs importance"):
        build("sparsevila", keep=0.5)(torch.randn(2, 4, 3), Grid(2, 2, 2))


@pytest.mark.parametrize("family", FAMILIES)
def test_vidq_ask_sparsevila_end_to_end(tiny_models, sample_video, family):
    from typer.testing import CliRunner

    from flashvid_cli.cli import app

    args = ["ask", str(sample_video), "Where is the red square?", "--model", str(tiny_models[family]), "--frames",
            "4", "--max-new-tokens", "3", "--keep", "0.3", "--method", "sparsevila", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    tokens = report["tokens"]
    extra = 1 if family == "llava_onevision" else 0
    assert tokens["visual_after"] < tokens["visual_before"]
    assert (tokens["visual_after"] - extra) % report["method_stats"]["budget"] == 0
    assert report["method_options"]["decode_keep"] == 0.06 and report["method_options"]["sinks"] == 4
    visual = tokens["visual_after"] - extra
    expected = min(visual, 4) + max(1, round(0.06 * visual)) + extra  # sinks, the top share, LLaVA's newline
    assert tokens["decoded_by_layer"] == [expected] * len(tokens["decoded_by_layer"])
    assert len(tokens["decoded_by_layer"]) >= 1 and report["timings"]["decode_build"] > 0


def test_budget_and_selection_rules():
    assert DecodeSparsity(0.1, 4).budget(100) == (4, 10)
    assert DecodeSparsity(1.0, 4).budget(100) == (4, 96)  # every visual token
    assert DecodeSparsity(0.5, 8).budget(5) == (5, 0)  # fewer visual tokens than sinks: all are sinks
    assert DecodeSparsity(0.01, 0).budget(20) == (0, 1)  # at least one besides the sinks
    # Two layers over 8 positions, visual at 2..6. Sinks: the best by the sum over layers (5: 0.5 + 0.5).
    scores = torch.tensor([[9, 9, 0.1, 0.2, 0.2, 0.5, 0.0, 9], [9, 9, 0.3, 0.0, 0.1, 0.5, 0.2, 9]])
    sinks, keep = select(scores, torch.arange(2, 7), 8, DecodeSparsity(0.4, 1))
    assert sinks.tolist() == [5]
    assert keep[0].tolist() == [0, 1, 3, 4, 5, 7]  # 3 and 4 tie at 0.2: both fit (budget 2)
    assert keep[1].tolist() == [0, 1, 2, 5, 6, 7]  # its own top 2 besides the sink
    sinks, keep = select(scores, torch.arange(2, 7), 8, DecodeSparsity(0.2, 1))
    assert keep[0].tolist() == [0, 1, 3, 5, 7]  # a tie between 3 and 4 goes to the lower position


def _inputs(qa, sample_video, keep=0.5):
    config = AskConfig(method="sparsevila", keep=keep, frames=4, max_new_tokens=NEW)
    prepared = qa.prepare(sample_video, config)
    compressed = qa.compress(prepared, qa.build_method(config))
    with torch.inference_mode():
        return qa.pipeline.inputs(prepared.encoded, compressed.compressed, QUESTION)


def _generate(pipe, inputs, sparse=None):
    with torch.inference_mode():
        torch.manual_seed(0)
        return pipe.generate(inputs, GenerationOptions(NEW, return_logits=True, sparse=sparse), question=QUESTION)


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_keep_1_equals_prefill_pruning_alone_bit_for_bit(qas, sample_video, family):
    pipe = qas[family].pipeline
    inputs = _inputs(qas[family], sample_video)
    alone, sparse = _generate(pipe, inputs), _generate(pipe, inputs, DecodeSparsity(1.0, 4))
    assert sparse.token_ids == alone.token_ids and len(sparse.token_ids) == NEW
    assert all(torch.equal(a, b) for a, b in zip(sparse.logits, alone.logits, strict=True))
    visual = int(pipe.visual_positions(inputs["input_ids"]).numel())
    assert sparse.decode_visual_by_layer == [visual + pipe.extra_video_tokens] * len(pipe.language_model.layers)


def _masked_reference(pipe, inputs, keep: list[torch.Tensor], visual: torch.Tensor):
    """Stock generate() on the full cache, each layer's attention in a decode step masked (additive -inf) at the
    visual prompt positions that layer's compact cache leaves out."""
    layers = pipe.language_model.layers
    L = int(inputs["input_ids"].shape[1])
    handles = []
    for i, layer in enumerate(layers):
        dropped = visual[~torch.isin(visual, keep[i])]

        def hook(attn, args, kwargs, dropped=dropped, i=i):
            hidden = kwargs["hidden_states"]
            cache = kwargs.get("past_key_values")
            past = cache.get_seq_length(i)
            if hidden.shape[1] != 1 or past < L:  # the prefill sees every key
                return args, kwargs
            mask = torch.zeros(1, 1, 1, past + 1, dtype=hidden.dtype)
            mask[..., dropped] = float("-inf")
            return args, {**kwargs, "attention_mask": mask}

        handles.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        return _generate(pipe, inputs)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_compact_cache_equals_full_cache_with_dropped_keys_masked(qas, sample_video, family):
    pipe = qas[family].pipeline
    inputs = _inputs(qas[family], sample_video)
    sparse = _generate(pipe, inputs, DecodeSparsity(0.3, 2))
    run = sparse.sparse_run
    visual = pipe.visual_positions(inputs["input_ids"])
    assert all(int(torch.isin(visual, k).sum()) < visual.numel() for k in run.keep)  # something was dropped
    masked = _masked_reference(pipe, inputs, run.keep, visual)
    dense = _generate(pipe, inputs)
    assert sparse.token_ids == masked.token_ids
    for a, b in zip(sparse.logits, masked.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    # The masking matters: decoding on every key gives other logits after the first token.
    assert torch.equal(sparse.logits[0], dense.logits[0])
    assert max(float((a - b).abs().max()) for a, b in zip(sparse.logits[1:], dense.logits[1:])) > 100 * ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_each_layers_kept_set_is_the_top_k_of_the_eager_attention_score(qas, sample_video, family):
    pipe = qas[family].pipeline
    inputs = _inputs(qas[family], sample_video)
    sparsity = DecodeSparsity(0.25, 2)
    run = _generate(pipe, inputs, sparsity).sparse_run
    from flashvid_cli.pipelines.sparse_decode import question_rows

    start, stop = question_rows(pipe, inputs["input_ids"], QUESTION)
    assert pipe.tokenizer.decode(inputs["input_ids"][0, start:stop]).strip() == QUESTION
    pipe.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = pipe.model(**inputs, use_cache=False, output_attentions=True)
    finally:
        pipe.model.set_attn_implementation("sdpa")
    scores = torch.stack([a[0, :, start:stop].float().mean(dim=(0, 1)) for a in out.attentions])  # [layers, L]
    visual = pipe.visual_positions(inputs["input_ids"])
    n_sinks, n_top = sparsity.budget(int(visual.numel()))
    sinks = visual[torch.sort(scores[:, visual].sum(0), descending=True, stable=True).indices[:n_sinks]]
    assert sorted(run.sinks.tolist()) == sorted(sinks.tolist())
    for layer, kept in zip(scores, run.keep, strict=True):
        others = visual[~torch.isin(visual, sinks)]
        top = others[torch.sort(layer[others], descending=True, stable=True).indices[:n_top]]
        assert sorted(kept[torch.isin(kept, visual)].tolist()) == sorted([*sinks.tolist(), *top.tolist()])
        assert torch.isin(torch.arange(len(layer))[~torch.isin(torch.arange(len(layer)), visual)], kept).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_turn_2_equals_a_fresh_prefill_of_the_conversation(qas, sample_video, family):
    qa = qas[family]
    pipe = qa.pipeline
    config = AskConfig(method="sparsevila", keep=0.5, frames=4, max_new_tokens=NEW, options={"decode_keep": "0.3"})
    talk = Chat(qa, sample_video, config, logits=True)
    talk.ask(QUESTION)
    follow = "And what happens after that?"
    inputs = talk.inputs(follow)
    assert len(talk.store.ids) == talk.last.report.tokens.prompt  # the full cache holds the prompt, not the answer
    with torch.inference_mode():
        torch.manual_seed(config.seed)
        fresh = pipe.generate(inputs, GenerationOptions(NEW, return_logits=True, sparse=DecodeSparsity(0.3, 4)),
                              question=follow)
    result = talk.ask(follow)
    assert result.report.cache["prefix"] == "hit"
    assert result.token_ids == fresh.token_ids
    for a, b in zip(talk.last_generation.logits, fresh.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    assert talk.last_generation.sparse_run.keep[0].tolist() == fresh.sparse_run.keep[0].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_scoring_logits_are_those_generate_decodes_with(qas, sample_video, family):
    """eval's scoring path (VideoQA.last_logits with the method's decode sparsity): the answer's tokens fed at once
    after the prompt give the logits generate() produced one token at a time over the same compact cache."""
    qa = qas[family]
    inputs = _inputs(qa, sample_video)
    sparsity = DecodeSparsity(0.3, 2)
    gen = _generate(qa.pipeline, inputs, sparsity)
    ids = gen.token_ids[:-1]
    with torch.inference_mode():
        scored = qa.last_logits(inputs, count=len(ids) + 1, append=ids, sparse=sparsity)
        plain = qa.last_logits(inputs, count=len(ids) + 1, append=ids)
    torch.testing.assert_close(scored, torch.cat(gen.logits).float(), rtol=RTOL, atol=ATOL)
    assert float((plain[1:] - scored[1:]).abs().max()) > 100 * ATOL  # the full cache scores otherwise


def test_chat_follow_up_on_a_template_that_asks_before_the_video(sample_video, question_first_demo):
    """On a template that puts the question before the video, a follow-up's question is found by its own tokens,
    not by the first turn's layout (it was once looked for inside the cached prefix)."""
    from flashvid_cli.api import VideoQA

    qa = VideoQA(str(question_first_demo), device="cpu")
    talk = Chat(qa, sample_video, AskConfig(method="sparsevila", keep=0.5, frames=4, max_new_tokens=3), logits=True)
    talk.ask(QUESTION)
    follow = "And its colour?"
    inputs = talk.inputs(follow)
    with torch.inference_mode():
        fresh = qa.pipeline.generate(inputs, GenerationOptions(3, return_logits=True, sparse=DecodeSparsity(0.06, 4)),
                                     question=follow)
    result = talk.ask(follow)
    assert result.token_ids == fresh.token_ids
    for a, b in zip(talk.last_generation.logits, fresh.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
