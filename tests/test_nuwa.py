"""Nüwa (kernels/nuwa.py, shared/ALGORITHMS.md §12) beyond the golden keys (tests/test_golden.py).

* stage 1 against a loop-by-loop reading of §12.1, odd grids included (padded to even with cells never chosen);
* the stated merge (``Compressed.weights``) reproduces the tokens; pillars pass through; without the reset the
  collectors are convex combinations;
* the recipes and the in-LLM stage it hands on (layer 16/32 x depth, 1/7 kept; Qwen reference: last 3 rows, max
  over heads, checked against an eager attention on every family's tiny model);
* the similarity features every family's encode computes on request;
* ``vidq ask --method nuwa`` on every family, and with stage 2 off at keep 1 the same answer as ``--method none``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from flashvid_cli.kernels import Grid, build, ops
from flashvid_cli.kernels.nuwa import region_count, spatial_cohesion
from flashvid_cli.kernels.traits import LLMPrune
from flashvid_cli.pipelines import load_pipeline
from flashvid_cli.pipelines.attention import similarity_band
from flashvid_cli.pipelines.registry import families

FAMILIES = tuple(families())
QUESTION = "Where is the red square?"


def brute_force(x, y, s, H, W, K, d, n, q, reset=True):
    """One frame of §12.1 with Python loops over an odd or even grid: odd grids get a row/column of cells that are
    never candidates and never absorbed. Returns (keep [K'], tokens [K', D], pillar [K'])."""
    H2, W2 = H + H % 2, W + W % 2
    n, K = region_count(K, n, H2, W2)
    K = min(K, H * W)
    cand = []
    for cy in range(H2 // 2):
        for cx in range(W2 // 2):
            cells = [(2 * cy + l // 2, 2 * cx + l % 2) for l in range(4)]
            real = [(r * W + c) for r, c in cells if r < H and c < W]
            ranked = sorted(real, key=lambda i: (-float(s[i]), [r * W2 + c for r, c in cells].index(
                (i // W) * W2 + i % W)))
            cand += ranked[:n]
    cand = sorted(cand, key=lambda i: (-float(s[i]), (i // W) * W2 + i % W))[:K]
    keep = sorted(cand)
    yn = y / y.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    t = torch.quantile(s[keep], q)
    out, pillar = [], []
    for k in keep:
        is_pillar = bool(s[k] >= t)
        w = torch.zeros(H * W)
        for j in range(H * W):
            if is_pillar and j != k:
                continue
            dist = math.hypot(k // W - j // W, k % W - j % W)
            w[j] = torch.relu(yn[k] @ yn[j]) * (1 - min(1.0, dist / d))
        w = w / (w.sum() + 1e-8)
        if reset:
            w[k] = 1.0
        out.append(w @ x)
        pillar.append(is_pillar)
    return torch.tensor(keep), torch.stack(out), torch.tensor(pillar)


def clip(T, H, W, D=6, Ds=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, H * W, D, generator=g), torch.randn(T, H * W, Ds, generator=g),
            torch.rand(T, H * W, generator=g), Grid(T, H, W))


@pytest.mark.parametrize("reset", [True, False])
@pytest.mark.parametrize(("H", "W", "keep"), [(4, 6, 0.25), (5, 7, 0.3), (3, 3, 0.5), (7, 4, 0.8), (1, 1, 0.5)])
def test_stage1_matches_the_spec_read_loop_by_loop(H, W, keep, reset):
    x, y, s, grid = clip(2, H, W)
    method = build("nuwa", keep, options={"reset": reset, "llm_stage": False})
    out = method(x, grid, s, similarity=y)
    d = method.distance * math.hypot(H, W)
    for f in range(grid.T):
        k, tokens, pillar = brute_force(x[f], y[f], s[f], H, W, method.budget(grid.N), d, method.region_tokens,
                                        method.quantile, reset)
        mine = out.index[out.index // grid.N == f] - f * grid.N
        assert torch.equal(mine, k)
        torch.testing.assert_close(out.tokens[out.index // grid.N == f], tokens, atol=1e-5, rtol=1e-5)
    assert out.stats["pillars"] + out.stats["collectors"] == out.tokens.shape[0] == method.tokens_for(grid)


def test_odd_grid_padding_never_chosen_nor_absorbed():
    x, y, s, grid = clip(3, 5, 7)
    s = s.clone()
    s[:, -1] = 10.0  # the bottom-right cell shares its 2x2 region with three padded cells
    out = build("nuwa", 0.4, options={"llm_stage": False})(x, grid, s, similarity=y)
    assert bool((out.index < grid.T * grid.N).all()) and bool((out.sources < grid.T * grid.N).all())
    assert set((torch.arange(grid.T) * grid.N + grid.N - 1).tolist()) <= set(out.index.tolist())
    torch.testing.assert_close(out.carry(x), out.tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.sources[out.offsets[:-1]], out.index)


def test_merge_weights_pillars_and_convex_collectors():
    x, y, s, grid = clip(2, 6, 6)
    H = W = 6
    keep, tokens, pillar, weights = spatial_cohesion(x, y, s, H, W, 9, 0.493 * math.hypot(H, W), 1, 0.55)
    frame = torch.arange(2)[:, None]
    assert torch.equal(tokens[pillar], x[frame, keep][pillar])
    assert pillar.sum(-1).tolist() == [4, 4]  # scores >= the 0.55 quantile of 9: the top 4
    _, _, _, convex = spatial_cohesion(x, y, s, H, W, 9, 0.493 * math.hypot(H, W), 1, 0.55, reset=False)
    torch.testing.assert_close(convex.sum(-1), torch.ones(2, 9))
    own = weights.gather(2, keep[..., None])[..., 0]
    assert bool((own == 1).all()) and bool((weights.sum(-1)[~pillar] > 1).all())  # the reset quirk
    assert region_count(60, 1, 14, 14) == (2, 60) and region_count(160, 1, 14, 14) == (4, 196)


def test_recipes_modes_and_the_stage_handed_on():
    default = build("nuwa", 0.25)
    assert (default.quantile, default.distance, default.reset, default.region_tokens) == (0.55, 0.493, True, 1)
    stage = default.llm_prune()
    assert stage.layer_for(32) == 16 and stage.layer_for(2) == 1 and stage.budget(112) == 16
    assert (stage.queries, stage.heads, stage.score) == (1, "mean", "question") and default.query_aware
    qwen = build("nuwa", 0.25, model_type="qwen2_5_vl", options={"reference": "true"})
    assert (qwen.quantile, qwen.distance, qwen.reset, qwen.region_tokens) == (0.10, 0.8, False, 3)
    assert (qwen.llm_prune().queries, qwen.llm_prune().heads) == (3, "max")
    llava = build("nuwa", 0.25, model_type="llava_onevision", options={"reference": "true"})
    assert (llava.quantile, llava.reset, llava.llm_prune().queries) == (0.55, True, 1)
    assert llava.llm_prune().score == qwen.llm_prune().score == "attention"
    off = build("nuwa", 0.25, options={"llm_stage": "false"})
    assert off.llm_prune() is None and not off.query_aware
    assert list(similarity_band(24)) == list(range(15, 24)) and list(similarity_band(2)) == [0, 1]


@pytest.fixture(scope="module")
def pipes(tiny_models):
    return {family: load_pipeline(str(path), device="cpu", dtype="float32") for family, path in tiny_models.items()}


def _encode(pipe, need):
    frames = np.random.default_rng(2).integers(0, 256, (4, 90, 150, 3), dtype=np.uint8)
    return pipe.encode(pipe.preprocess(frames, [0.5 * i for i in range(4)]), need=frozenset(need))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_encodes_similarity_on_request(pipes, family):
    pipe = pipes[family]
    plain = _encode(pipe, {"importance"})
    encoded = _encode(pipe, {"importance", "similarity"})
    assert plain.similarity is None and torch.equal(plain.feats, encoded.feats)
    sim = encoded.similarity
    assert sim.dtype == torch.float32 and sim.shape[:2] == (encoded.grid.T, encoded.grid.N)
    assert bool(torch.isfinite(sim).all()) and not torch.allclose(sim, encoded.feats.float()[..., : sim.shape[-1]])
    if family == "llava_onevision":  # the band's mean of the tower's hidden states, pooled like the features
        inner = pipe.model.model
        frames = np.random.default_rng(2).integers(0, 256, (4, 90, 150, 3), dtype=np.uint8)
        pixels = pipe.preprocess(frames, [0.5 * i for i in range(4)])
        with torch.no_grad():
            hidden = inner.vision_tower(pixels.values, output_hidden_states=True).hidden_states
        depth = pipe._feature_layer() + 1
        mean = torch.stack([hidden[i + 1].float() for i in similarity_band(depth)]).mean(0)
        torch.testing.assert_close(sim, inner.apply_pooling(mean), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_last_three_rows_max_over_heads_is_the_top_k_of_eager_attention(pipes, tiny_models, family):
    pipe = pipes[family]
    encoded = _encode(pipe, set())
    inputs = pipe.inputs(encoded, build("none", 1.0)(encoded.feats, encoded.grid), QUESTION)
    stage = LLMPrune(0.3, rounding="round", layer=1, queries=3, heads="max")
    eager = type(pipe.model).from_pretrained(tiny_models[family], dtype=torch.float32,
                                             attn_implementation="eager").eval()
    with torch.no_grad():
        attn = eager(**inputs, use_cache=False, output_attentions=True).attentions[0][0]  # [H, L, L]
        score = attn[:, -3:, :].float().mean(1).max(0).values
    visual = pipe.visual_positions(inputs["input_ids"])
    top = torch.sort(visual[ops.top_indices(score[visual], stage.budget(visual.numel()))]).values
    with torch.inference_mode(), pipe.llm_pruning(inputs, stage) as run:
        pipe.model(**inputs, use_cache=False, logits_to_keep=1)
    torch.testing.assert_close(run.scores, score, atol=1e-6, rtol=1e-5)
    kept = run.keep[torch.isin(run.keep, visual)]
    assert torch.equal(kept, top)


def _ask(tiny_models, video, family, *extra):
    from typer.testing import CliRunner

    from flashvid_cli.cli import app

    args = ["ask", str(video), QUESTION, "--model", str(tiny_models[family]), "--frames", "4",
            "--max-new-tokens", "3", *extra, "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("family", FAMILIES)
def test_vidq_ask_nuwa_end_to_end(tiny_models, sample_video, family):
    out = _ask(tiny_models, sample_video, family, "--keep", "0.3", "--method", "nuwa")
    report = out["report"]
    tokens = report["tokens"]
    extra = 1 if family == "llava_onevision" else 0
    assert tokens["visual_after"] < tokens["visual_before"]
    by_layer = tokens["visual_by_layer"]
    assert len(by_layer) == 2 and by_layer[0] == tokens["visual_after"]
    assert by_layer[1] - extra == max(1, round((tokens["visual_after"] - extra) / 7))
    assert report["method_options"]["pruning_layer"] == 1
    assert report["method_stats"]["pillars"] + report["method_stats"]["collectors"] == tokens["visual_after"] - extra
    ref = _ask(tiny_models, sample_video, family, "--keep", "0.3", "--method", "nuwa", "--opt", "reference=true")
    assert ref["report"]["tokens"]["visual_after"] == tokens["visual_after"]


@pytest.mark.parametrize("family", FAMILIES)
def test_stage_two_off_keep_one_equals_none(tiny_models, sample_video, family):
    nuwa = _ask(tiny_models, sample_video, family, "--keep", "1", "--method", "nuwa", "--opt", "llm_stage=false")
    none = _ask(tiny_models, sample_video, family, "--keep", "1", "--method", "none")
    assert nuwa["answer"] == none["answer"]
    assert nuwa["report"]["tokens"] == none["report"]["tokens"]


def test_rpme_stretches_rows_and_columns_over_the_frame():
    from flashvid_cli.kernels.nuwa import rpme

    grid = Grid(2, 6, 8)
    keep = torch.tensor([[9, 11, 26, 28], [17, 18, 19, 20]])  # rows 1, 1, 3, 3; cols 1, 3, 2, 4 / one row: 2
    placed = rpme(keep, grid)
    # rows {1, 3} -> {0, 5}; cols {1, 2, 3, 4} -> round(rank * 7 / 3) = {0, 2, 5, 7}
    assert placed[0].tolist() == [0 * 8 + 0, 0 * 8 + 5, 5 * 8 + 2, 5 * 8 + 7]
    cols = torch.round(torch.arange(4).double() * 7 / 3).long()
    assert placed[1].tolist() == (2 * 8 + cols).tolist()
    x, y, s, clip_grid = clip(2, 6, 8)
    out = build("nuwa", 0.25, options={"positions": "rpme", "llm_stage": False})(x, clip_grid, s, similarity=y)
    same = build("nuwa", 0.25, options={"llm_stage": False})(x, clip_grid, s, similarity=y)
    assert torch.equal(out.tokens, same.tokens) and torch.equal(out.index, same.index)
    assert same.placed is None and torch.equal(same.placement, same.index)
    assert bool((torch.diff(out.placement) > 0).all()) and not torch.equal(out.placement, out.index)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "llava_onevision"])
def test_rpme_moves_the_qwen_positions_only(pipes, family):
    pipe = pipes[family]
    encoded = _encode(pipe, {"importance", "similarity"})
    args = (encoded.feats, encoded.grid, encoded.importance)
    pesp = build("nuwa", 0.5, options={"llm_stage": False})(*args, similarity=encoded.similarity)
    moved = build("nuwa", 0.5, options={"llm_stage": False, "positions": "rpme"})(*args,
                                                                                 similarity=encoded.similarity)
    a, b = pipe.inputs(encoded, pesp, QUESTION), pipe.inputs(encoded, moved, QUESTION)
    assert torch.equal(a["input_ids"], b["input_ids"])
    full_ids = pipe.full_positions(encoded, QUESTION)[0]
    assert a["position_ids"].shape == b["position_ids"].shape
    if not torch.equal(pesp.index, moved.placement):
        assert not torch.equal(a["position_ids"], b["position_ids"])
    assert full_ids.shape[1] >= a["input_ids"].shape[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_stage_two_keeps_the_visual_tokens_closest_to_the_question(pipes, family):
    """The default stage 2: top round(Lv/7) visual tokens by cos(input embedding, mean question embedding), from
    the stage-1 tokens and the question's own embeddings computed apart; the question's span in the prompt."""
    pipe = pipes[family]
    encoded = _encode(pipe, {"importance", "similarity"})
    method = build("nuwa", 0.5, model_type=family)
    compressed = method(encoded.feats, encoded.grid, encoded.importance, similarity=encoded.similarity)
    inputs = pipe.inputs(encoded, compressed, QUESTION)
    start, stop = pipe.question_span(inputs["input_ids"])
    asked = pipe.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    assert inputs["input_ids"][0, start:stop].tolist() == asked
    q = pipe.question_embeddings(QUESTION).float().mean(0)
    cos = torch.nn.functional.cosine_similarity(compressed.tokens.float(), q[None], dim=-1)
    stage = method.llm_prune()
    expected = torch.sort(ops.top_indices(cos, stage.budget(cos.numel()))).values
    with torch.inference_mode(), pipe.llm_pruning(inputs, stage) as run:
        pipe.model(**inputs, use_cache=False, logits_to_keep=1)
    visual = pipe.visual_positions(inputs["input_ids"])
    kept = torch.isin(visual, run.keep).nonzero()[:, 0]
    assert torch.equal(kept, expected)
    torch.testing.assert_close(run.scores[visual], cos, atol=1e-5, rtol=1e-5)
