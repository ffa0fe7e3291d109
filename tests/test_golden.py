"""Every golden case against the kernels, under the comparison rules of ``shared/golden/README.md``.

Checks are derived from each file's own ``meta`` and ``params``, so another golden set (other seeds, shapes,
parameter values) runs unchanged: point ``VIDQ_GOLDEN_DIR`` at it. Indices must match exactly; features within
``TOL``. Keys of methods vidq does not implement are skipped with a reason, never passed.
"""

from __future__ import annotations

import itertools
import math
import os
from functools import cache
from pathlib import Path

import pytest
import torch

from flashvid_cli.kernels import Grid, build, evs, ops, vidcom2
from flashvid_cli.kernels.cdpruner import cdpruner_budget, conditional_dpp, relevance
from flashvid_cli.kernels.fastv import select_visual
from flashvid_cli.kernels.nuwa import region_count, spatial_cohesion
from flashvid_cli.kernels.traits import llm_budget
from flashvid_cli.kernels.flashvid import flashvid_budget
from flashvid_cli.kernels.visionzip import visionzip_budget

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("VIDQ_GOLDEN_DIR", REPO.parent / "shared" / "golden"))
TOL = {"atol": 1e-5, "rtol": 1e-5}  # README: merged features and tokens within 1e-5
NOT_IMPLEMENTED: dict[str, str] = {}  # key prefix -> why it is skipped
FLASHVID_OPTIONS = (
    "do_segment",
    "segment_threshold",
    "min_segment_num",
    "complementary_segment",
    "token_selection_method",
    "alpha",
    "temporal_threshold",
    "expansion",
)

FILES = sorted(GOLDEN.glob("case_*.pt")) if GOLDEN.is_dir() else []
if not FILES:
    pytest.skip(f"no golden files in {GOLDEN} (set VIDQ_GOLDEN_DIR)", allow_module_level=True)


@cache
def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


CASES = [(path, key) for path in FILES for key in load(path)["results"]]


@pytest.mark.parametrize(("path", "key"), CASES, ids=[f"{p.stem}:{k}" for p, k in CASES])
def test_golden(path: Path, key: str) -> None:
    case = load(path)
    for prefix, reason in NOT_IMPLEMENTED.items():
        if key.startswith(prefix):
            pytest.skip(reason)
    if path.stem.endswith("attnpool"):
        return check_attnpool(case, key)
    checks = {
        "adts_v": check_adts,
        "divprune_": check_divprune,
        "tstm_": check_tstm,
        "dpc_knn_": check_dpc,
        "segment_": check_segment,
        "flashvid_": check_flashvid,
        "visionzip_": check_visionzip,
        "evs_": check_evs,
        "vidcom2vllm_": check_vidcom2vllm,
        "vidcom2_": check_vidcom2,
        "fastv_": check_fastv,
        "cdpruner_": check_cdpruner,
        "nuwa_stage1_": check_nuwa,
    }
    for prefix, check in checks.items():
        if key.startswith(prefix):
            return check(case, case["results"][key])
    pytest.fail(f"no check for golden key {key!r}: add one")


def clip(case: dict) -> tuple[torch.Tensor, torch.Tensor, Grid]:
    """Features as float32 (the reference consumed exactly these values), attention, grid from ``meta``."""
    meta = case["meta"]
    inputs = case["inputs"]
    return inputs["features"].float(), inputs["cls_attention"].float(), Grid(meta["F"], meta["H"], meta["W"])


def as_global(indices: torch.Tensor, N: int) -> torch.Tensor:
    """Per-frame indices ``[F, k]`` -> sorted global ``[F*k]``; global ``[k]`` unchanged."""
    if indices.ndim == 2:
        indices = indices + torch.arange(indices.shape[0])[:, None] * N
    return indices.flatten()


def check_adts(case: dict, res: dict) -> None:
    x, attn, grid = clip(case)
    p = res["params"]
    B, A, S = flashvid_budget(grid.N, p["retention_ratio"], p["expansion"], p["alpha"])
    assert (B, A, S) == (p["token_budget"], p["num_selected"], p["num_sttm"])
    # The golden runs ADTS once on the whole clip, i.e. one segment: v2's event mean is over every token.
    event = x.mean(dim=(0, 1)).expand(grid.T, -1) if p["version"] == 2 else None
    order = ops.adts_select(x, attn, A, event, exclude=p["version"] == 1)
    assert torch.equal(order, res["selection_order"])
    assert torch.equal(torch.sort(order, dim=-1).values, res["keep_indices"])
    if all(row.unique().numel() == A for row in res["selection_order"]):
        assert torch.equal(ops.adts_select(x, attn, A, event, exclude=True), res["selection_order"])


def check_divprune(case: dict, res: dict) -> None:
    x, _, grid = clip(case)
    p = res["params"]
    per_frame = p["mode"] == "per_frame"
    scope = x if per_frame else x.reshape(1, grid.T * grid.N, -1)
    order = ops.maxmin_greedy(ops.cosine_distance(scope), p["num_selected"], exclude=False)
    assert torch.equal(order.reshape(res["selection_order"].shape), res["selection_order"])
    out = build("divprune", p["retention_ratio"], options={"per_frame": per_frame, "reference": True})(x, grid)
    assert out.stats["selected"] == p["num_selected"]
    assert torch.equal(out.index, as_global(res["keep_indices"], grid.N))
    assert torch.equal(out.tokens, x.reshape(-1, x.shape[-1])[out.index])
    if not per_frame and res["selection_order"].unique().numel() == p["num_selected"]:
        default = build("divprune", p["retention_ratio"])(x, grid)
        assert torch.equal(default.index, out.index)


def check_tstm(case: dict, res: dict) -> None:
    x, attn, grid = clip(case)
    p = res["params"]
    A, S, cand = p["num_attn_div_tokens"], p["num_sttm_tokens"], res["candidate_mask"]
    assert p["lower_bound"] == (A + S) * grid.T
    event = x.mean(dim=(0, 1)).expand(grid.T, -1) if p["adts_version"] == 2 else None
    picks = ops.adts_select(x, attn, A, event, exclude=p["adts_version"] == 1)
    assert torch.equal(torch.sort(picks, dim=-1).values, res["adts_keep_indices"])
    assert torch.equal(torch.ones_like(cand).scatter_(1, picks, False), cand)

    link, parent, max_sim = ops.tstm_links(x, cand, p["temporal_threshold"], p["lower_bound"])
    assert torch.equal(link, res["link_mask"])
    assert torch.equal(parent[link], res["parent_index"][link])
    torch.testing.assert_close(max_sim, res["max_sim"], **TOL)
    root = ops.tree_roots(link, parent)
    retained = cand & ~link
    assert torch.equal(retained.sum(1), res["retained_counts"])
    for true_mean, key in ((False, "merged_features"), (True, "truemean_merged_features")):
        if res.get(key) is None:
            continue
        values, roots, sources, sizes = ops.tree_merge(x, root, retained, link, parent, true_mean)
        assert torch.equal(roots % grid.N, res["retained_indices"])
        torch.testing.assert_close(values, res[key], **TOL)
        assert int(sizes.sum()) == sources.numel() == int(cand.sum())  # every candidate in exactly one tree


def check_dpc(case: dict, res: dict) -> None:
    p = res["params"]
    tokens = res["tokens"] if res["tokens"] is not None else case["inputs"]["features"][0].float()
    centres, assign, _ = ops.dpc_knn(tokens, p["num_clusters"], p["k"])
    assert torch.equal(assign[centres], torch.arange(p["num_clusters"]))
    if not res.get("rng_invariant", True):
        pytest.skip("the reference's outcome here depends on its random density noise; vidq breaks ties by index")
    assert torch.equal(centres, res["center_indices"])
    assert torch.equal(assign, res["cluster_indices"])
    torch.testing.assert_close(ops.group_mean(tokens, assign, p["num_clusters"]), res["cluster_means"], **TOL)


def check_segment(case: dict, res: dict) -> None:
    x, _, _ = clip(case)
    p = res["params"]
    frame_feats = x.mean(1)
    torch.testing.assert_close(frame_feats, res["frame_features"], **TOL)
    sim = torch.nn.functional.cosine_similarity(frame_feats[:-1], frame_feats[1:], dim=-1)
    torch.testing.assert_close(sim, res["transition_similarity"], **TOL)
    lengths = ops.dyseg(frame_feats, p["segment_threshold"], p["min_segment_num"], p["complementary_segment"])
    # The reference can emit empty segments when min_segment_num > F; vidq drops them (same output).
    assert lengths == [n for n in res["segment_lengths"].tolist() if n]


def check_flashvid(case: dict, res: dict) -> None:
    x, attn, grid = clip(case)
    p = res["params"]
    method = build("flashvid", p["retention_ratio"], options={**{k: p[k] for k in FLASHVID_OPTIONS}, "reference": True})
    out = method(x, grid, attn)
    budget = out.stats["budget"]
    assert (budget["A"], budget["S"]) == (p["num_attn_div_tokens"], p["num_sttm_tokens"])
    assert out.stats["segments"] == [n for n in res["segment_lengths"].tolist() if n]
    assert out.stats["per_frame"] == res["tokens_per_frame"].tolist()
    assert out.stats["duplicates"] == res["duplicate_global_indices"]
    gold_index = res["global_indices"]
    noisy = set((gold_index[res["rng_dependent"]] // grid.N).tolist())
    for t in range(grid.T):
        if t in noisy:  # README: a frame touched by the reference's random tie-break is compared by count only
            continue
        mine, gold = out.index // grid.N == t, gold_index // grid.N == t
        assert torch.equal(out.index[mine], gold_index[gold]), f"frame {t}"
        tokens = match_duplicates(out.index[mine], out.tokens[mine], res["tokens"][gold])
        torch.testing.assert_close(tokens, res["tokens"][gold], **TOL, msg=lambda m: f"frame {t}: {m}")


def match_duplicates(index: torch.Tensor, tokens: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Reorder ``tokens`` within runs of equal ``index`` to best match ``gold`` (duplicates have no set order)."""
    tokens = tokens.clone()
    _, counts = torch.unique_consecutive(index, return_counts=True)
    start = 0
    for count in counts.tolist():
        if count > 1:
            rows = list(range(start, start + count))
            perms = itertools.permutations(rows)
            best = min(perms, key=lambda perm: float((tokens[list(perm)] - gold[rows]).abs().max()))
            tokens[rows] = tokens[list(best)]
        start += count
    return tokens


def check_visionzip(case: dict, res: dict) -> None:
    x, attn, grid = clip(case)
    p = res["params"]
    dom, ctx = p["dominant"], p["contextual"]
    keep = (dom + ctx) / grid.N  # round(keep * N) gives back dom + ctx; the split comes from the option
    assert visionzip_budget(keep, grid.N, ctx) == (dom, ctx)
    metric = res["metric"].float()
    assert torch.equal(ops.top_indices(attn, dom), res["dominant_topk_order"])
    out = build("visionzip", keep, options={"contextual": ctx, "reference": True})(x, grid, attn, metric)
    index = out.index.reshape(grid.T, dom + ctx) % grid.N
    assert torch.equal(index[:, :dom], res["dominant_indices"])
    torch.testing.assert_close(out.tokens.reshape(res["tokens"].shape), res["tokens"], **TOL)
    # Default mode: the same tokens, sorted by position.
    default = build("visionzip", keep, options={"contextual": ctx})(x, grid, attn, metric)
    order = torch.argsort(out.index, stable=True)
    assert torch.equal(default.index, out.index[order])
    assert torch.equal(default.tokens, out.tokens[order])
    if ctx == (dom + ctx) // 7:  # a 6:1 case is also reachable with the default split
        assert visionzip_budget(keep, grid.N) == (dom, ctx)


def sliced(case: dict, res: dict) -> tuple[torch.Tensor, Grid]:
    """The features the method ran on (``params.frames = (start, stop)``) and their grid."""
    x, _, grid = clip(case)
    start, stop = res["params"]["frames"]
    return x[start:stop], Grid(stop - start, grid.H, grid.W)


def check_kept(out, res: dict, grid: Grid) -> None:
    """A kept-tokens result against ``keep_mask``, ``tokens_per_frame``, ``keep_indices(_global)``."""
    assert torch.equal(out.index, res["keep_indices_global"])
    assert torch.equal(out.index % grid.N, res["keep_indices"])
    assert torch.equal(torch.bincount(out.index // grid.N, minlength=grid.T), res["tokens_per_frame"])
    assert torch.equal(torch.zeros(grid.T * grid.N, dtype=torch.bool).index_fill_(0, out.index, True),
                       res["keep_mask"].flatten())


def check_evs(case: dict, res: dict) -> None:
    x, grid = sliced(case, res)
    p = res["params"]
    keep = 1.0 - p["q"]  # vidq's keep; evs_budget recovers vLLM's 1 - q from it bit for bit
    assert evs.evs_budget(keep, grid.T, grid.N) == p["retained_count"]
    torch.testing.assert_close(evs.dissimilarity(x), res["dissimilarity"], atol=1e-6, rtol=0)
    assert torch.equal(evs.evs_order(x)[: p["retained_count"]], res["selection_order"])
    method = build("evs", keep)
    out = method(x, grid)
    check_kept(out, res, grid)
    assert method.tokens_for(grid) == out.tokens.shape[0]
    assert torch.equal(out.tokens, x.reshape(-1, x.shape[-1])[out.index])
    if "mrope_thw_hf" in res:
        check_mrope(case, res, out.index, grid)


def check_mrope(case: dict, res: dict, index: torch.Tensor, grid: Grid) -> None:
    """Kept tokens' positions, relative to the video start, in the unpruned sequence as transformers' own
    ``get_rope_index`` lays it out (what the Qwen2.5-VL pipeline gathers), and where the text resumes."""
    from types import SimpleNamespace

    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    p = res["params"]
    merge = p.get("spatial_merge_size_in_call", 2)
    vision = SimpleNamespace(spatial_merge_size=merge, tokens_per_second=p["tokens_per_second"])
    stub = SimpleNamespace(config=SimpleNamespace(vision_config=vision))
    stub.get_vision_position_ids = lambda *a, **k: Qwen2_5_VLModel.get_vision_position_ids(stub, *a, **k)
    before, after = 3, 2  # text tokens around the video
    types = torch.tensor([[0] * before + [2] * (grid.T * grid.N) + [0] * after])
    positions, _ = Qwen2_5_VLModel.get_rope_index(
        stub, torch.zeros_like(types), mm_token_type_ids=types,
        video_grid_thw=torch.tensor([[grid.T, grid.H * merge, grid.W * merge]]),
        second_per_grid_ts=torch.tensor([p["second_per_grid"]]),
    )
    thw = positions[:, 0, before + index].T - before  # [K, 3] relative to the video start
    assert torch.equal(thw, res["mrope_thw_hf"])
    assert int(positions[0, 0, before + grid.T * grid.N]) - before == res["text_resume_offset_hf"]
    if "mrope_thw" in res and p.get("second_per_grid_after_long_cast") == p["second_per_grid"]:
        assert torch.equal(thw, res["mrope_thw"])  # vLLM agrees whenever seconds per group is an integer


def check_vidcom2_scores(x: torch.Tensor, res: dict) -> dict:
    scores = vidcom2.vidcom2_scores(x)
    names = ["video_score", "frame_score", "token_score", "frame_uniqueness", "channel_variance"]
    for name in (n for n in names if n in res):
        torch.testing.assert_close(scores[name], res[name], **TOL, msg=lambda m, name=name: f"{name}: {m}")
    if "channel_indices" in res:
        assert torch.equal(scores["channels"], res["channel_indices"])
    return scores


def check_ties(out, res: dict, grid: Grid, tied: bool) -> None:
    """README: unflagged results exactly; flagged ones inside ``must_keep``..``may_keep``, and equal to
    ``keep_mask_lowest_index`` (vidq's rule: equal scores, lower index)."""
    mask = torch.zeros(grid.T * grid.N, dtype=torch.bool).index_fill_(0, out.index, True).view(grid.T, grid.N)
    if not tied:
        return check_kept(out, res, grid)
    assert bool((mask | ~res["must_keep"]).all()) and bool((res["may_keep"] | ~mask).all())
    assert torch.equal(mask, res["keep_mask_lowest_index"])


def check_vidcom2(case: dict, res: dict) -> None:
    x, grid = sliced(case, res)
    p = res["params"]
    assert p["temperature"] == vidcom2.TEMPERATURE and tuple(p["alphas"]) == vidcom2.ALPHAS
    scores = check_vidcom2_scores(x, res)
    probs, scales, budgets = vidcom2.frame_budgets(scores["frame_uniqueness"], p["retention_ratio"], grid.N)
    torch.testing.assert_close(probs, res["frame_probs"], **TOL)
    torch.testing.assert_close(scales, res["frame_scales"], **TOL)
    assert torch.equal(budgets, res["frame_budgets"])
    method = build("vidcom2", p["retention_ratio"])
    # keep = 1 is the identity in vidq (every method's contract); the reference still runs there, so compare
    # the algorithm itself through compress().
    out = method(x, grid) if p["retention_ratio"] < 1 else method.compress(x, grid, None, None)
    check_ties(out, res, grid, bool(res["tie_at_cut"].any()))
    assert out.stats["frame_budgets"] == res["frame_budgets"].tolist()
    if "mrope_thw_hf" in res:
        check_mrope(case, res, out.index, grid)
    if "llava_vid_gather_indices" in res:  # LLaVA-Video layout: per frame, kept tokens then the H row newlines
        row = grid.W + 1
        local = out.index % grid.N
        per_frame = [
            torch.cat([(local[out.index // grid.N == t] // grid.W) * row + local[out.index // grid.N == t] % grid.W,
                       torch.arange(grid.H) * row + grid.W]) + t * grid.H * row
            for t in range(grid.T)
        ]
        assert torch.equal(torch.cat(per_frame), res["llava_vid_gather_indices"])


def check_vidcom2vllm(case: dict, res: dict) -> None:
    x, grid = sliced(case, res)
    p = res["params"]
    keep = 1.0 - p["q"]
    assert vidcom2.vllm_target(keep, grid.T, grid.N) == p["target_retained"]
    assert 1.0 - (1.0 - keep) == p["base_scale"]
    scores = check_vidcom2_scores(x, res)
    _, scales, budgets = vidcom2.frame_budgets(scores["frame_uniqueness"], p["base_scale"], grid.N)
    torch.testing.assert_close(scales, res["frame_scales"], **TOL)
    assert torch.equal(budgets, res["frame_budgets_before_reconcile"])
    method = build("vidcom2", keep, options={"exact_count": True})
    out = method(x, grid)
    assert out.tokens.shape[0] == p["target_retained"] == method.tokens_for(grid)
    if keep < 1:
        assert out.stats["reconcile_delta"] == res["reconcile_delta"]
    check_ties(out, res, grid, bool(res["tie_at_cut"].any()) or bool(res["tie_at_reconcile"]))
def check_fastv(case: dict, res: dict) -> None:
    p = res["params"]
    start, length, ratio = p["visual_start"], p["visual_len"], p["llm_retention_ratio"]
    attention = res["last_query_attention"].float()  # [heads, L]
    k = llm_budget(length, ratio, "ceil")
    assert k == p["k_flashvid"] == res["keep_visual_indices"].numel()
    keep_visual, keep = select_visual(attention, start, length, k)
    assert torch.equal(keep_visual, res["keep_visual_indices"])
    assert torch.equal(keep, res["keep_indices_global"])
    # FastV's own count, round(len * (1 - R)) with R = 1 - ratio as the reference writes it (the float 1 - R, not
    # ratio, decides a .5 case): the same rule with fewer tokens, so a subset of the reference's.
    k_round = llm_budget(length, 1 - round(1 - ratio, 12), "round")
    assert k_round == p["k_fastv_round"]
    fewer, _ = select_visual(attention, start, length, k_round)
    assert set(fewer.tolist()) <= set(keep_visual.tolist())


def check_cdpruner(case: dict, res: dict) -> None:
    x, _, grid = clip(case)
    p = res["params"]
    k, theta = p["num_selected"], p["theta"]
    assert cdpruner_budget(k / grid.N, grid.N) == k
    rel = relevance(res["image_embeds"].float(), res["text_embeds"].float())
    torch.testing.assert_close(rel, res["relevance"], **TOL)
    if theta is not None:
        rel = relevance(res["image_embeds"].float(), res["text_embeds"].float(), theta)
    order = conditional_dpp(x, rel, k)
    assert torch.equal(order, res["selection_order"])
    assert torch.equal(torch.sort(order, dim=-1).values, res["keep_indices"])
    # The method: the DPP on its own relevance (question embeddings against the visual tokens themselves).
    if res["text_embeds"].shape[-1] != x.shape[-1]:
        return
    method = build("cdpruner", k / grid.N, options={"theta": theta})
    out = method(x, grid, question=res["text_embeds"].float())
    mine = conditional_dpp(x, relevance(x, res["text_embeds"].float(), theta), k)
    assert torch.equal(out.index, as_global(torch.sort(mine, dim=-1).values, grid.N))
    assert out.stats["per_frame"] == [k] * grid.T


def check_attnpool(case: dict, key: str) -> None:
    res = case["results"][key]
    if key.startswith("bilinear"):
        mode = "bilinear"
    elif key.startswith("avgpool"):
        mode = "average"
    else:
        pytest.skip(f"{key}: documents the head-then-query reduction order only; the full tensor is not stored")
    maps = case["inputs"]["attn_received_729"]
    side = math.isqrt(maps.shape[-1])
    assert side * side == maps.shape[-1]
    torch.testing.assert_close(ops.pool_attention(maps, side, side, mode), res, **TOL)


def check_nuwa(case: dict, res: dict) -> None:
    """Nüwa stage 1 (LLaVA-1.5 path, reset on): the kernel on the file's inputs, then the method at the same K."""
    p = res["params"]
    H, W = p["grid"]
    inputs = case["inputs"]
    x, y, s = inputs["features"].float(), inputs["sim_features"].float(), inputs["cls_attention"].float()
    T, N, _ = x.shape
    K, n, d, q = p["num_tokens_to_keep"], p["top_n_per_region"], p["distance_threshold"], p["penalty_threshold_percentile"]
    assert region_count(K, n, H, W)[1] == res["tokens_out"]
    keep, tokens, pillar, weights = spatial_cohesion(x, y, s, H, W, K, d, n, q)
    assert torch.equal(keep, res["keep_indices"])
    assert torch.equal(pillar, res["pillar_mask"])
    torch.testing.assert_close(tokens, res["tokens"].float(), **TOL)
    frame = torch.arange(T)[:, None]
    assert torch.equal(tokens[pillar], x[frame, keep][pillar])  # pillars pass through exactly
    method = build("nuwa", K / N, options={"region_tokens": n, "distance": d / math.hypot(H, W), "quantile": q,
                                          "llm_stage": False})
    out = method(inputs["features"], Grid(T, H, W), s, similarity=inputs["sim_features"])
    assert torch.equal(out.index, (res["keep_indices"] + frame * N).flatten())
    torch.testing.assert_close(out.tokens.float(), res["tokens"].reshape(-1, x.shape[-1]), atol=2e-3, rtol=2e-3)
    # The stated merge reproduces the float32 tokens (carry in float32).
    torch.testing.assert_close(out.carry(x), res["tokens"].reshape(-1, x.shape[-1]).float(), **TOL)
