"""The EVS / VidCom2 golden checks on a second, golden-like set: other seeds, shapes, rates and slices.

``test_golden.py`` reads every shape, rate and slice from each file's ``meta`` and ``params``, so a held-back set
runs unchanged through ``VIDQ_GOLDEN_DIR``. This builds such a set in the README's layout and runs the same check
functions on it. Its expected selections are not vidq's own output: they come from a plain Python sort over the
scores with the README's rules (EVS: descending dissimilarity, ties to the lower global index; VidCom2: per frame
the smallest scores; ``must_keep`` = strictly below the cut value, ``may_keep`` = at or below it). The scores
themselves are the kernels' (the shared golden files pin them to the reference). A clip with a duplicated frame
and a flat background makes exact ties at the cut.
"""

from __future__ import annotations

import pytest
import torch

from flashvid_cli.kernels import evs, vidcom2

golden = pytest.importorskip("test_golden", reason="needs the shared golden set (VIDQ_GOLDEN_DIR)")


def tied_clip(T: int, H: int, W: int, D: int, seed: int, dup: tuple[int, int] | None) -> torch.Tensor:
    """Flat background (one vector) with a few noisy object cells, optionally one frame copied bit for bit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(D, generator=g).expand(T, H * W, D).clone()
    cells = torch.randint(0, H * W, (T, max(2, H * W // 5)), generator=g)
    x[torch.arange(T)[:, None], cells] = torch.randn(T, cells.shape[1], D, generator=g)
    if dup is not None:
        x[dup[0]] = x[dup[1]]
    return (0.6 * x / x.pow(2).mean().sqrt()).half()


def cut_sets(score: list[float], k: int) -> tuple[set[int], set[int], set[int]]:
    """(lowest-index choice, must keep, may keep) of the k smallest scores."""
    order = sorted(range(len(score)), key=lambda i: (score[i], i))
    if k == 0:
        return set(), set(), set()
    cut = score[order[k - 1]]
    return set(order[:k]), {i for i in order if score[i] < cut}, {i for i in order if score[i] <= cut}


def mask_of(sets: list[set[int]], N: int) -> torch.Tensor:
    return torch.tensor([[n in s for n in range(N)] for s in sets])


def evs_result(x: torch.Tensor, q: float, start: int, stop: int) -> dict:
    T, N = stop - start, x.shape[1]
    d = evs.dissimilarity(x[start:stop].float())
    flat = d.flatten().tolist()
    count = max(N, int(T * N * (1 - q)))
    order = sorted(range(T * N), key=lambda g: (-flat[g], g))[:count]
    kept = sorted(order)
    mask = torch.zeros(T * N, dtype=torch.bool)
    mask[kept] = True
    return {
        "params": {"q": q, "frames": (start, stop), "F": T, "N": N, "retained_count": count},
        "dissimilarity": d, "selection_order": torch.tensor(order), "keep_mask": mask.view(T, N),
        "tokens_per_frame": mask.view(T, N).sum(1), "keep_indices": torch.tensor(kept) % N,
        "keep_indices_global": torch.tensor(kept),
    }


def vidcom2_result(x: torch.Tensor, r: float, start: int, stop: int) -> dict:
    clip = x[start:stop].float()
    T, N, D = clip.shape
    s = vidcom2.vidcom2_scores(clip)
    probs, scales, budgets = vidcom2.frame_budgets(s["frame_uniqueness"], r, N)
    picks = [cut_sets(s["token_score"][t].tolist(), int(budgets[t])) for t in range(T)]
    low, must, may = (mask_of([p[i] for p in picks], N) for i in range(3))
    kept = low.flatten().nonzero()[:, 0]
    return {
        "params": {"retention_ratio": r, "model": "qwen2_5_vl", "frames": (start, stop), "F": T, "N": N,
                   "num_channels": D // 2, "temperature": 0.01, "alphas": [0.125, 0.25, 0.5, 1.0, 2.0]},
        **{k: s[k] for k in ("video_score", "frame_score", "token_score", "frame_uniqueness", "channel_variance")},
        "channel_indices": s["channels"], "frame_probs": probs, "frame_scales": scales, "frame_budgets": budgets,
        "keep_mask": low, "tokens_per_frame": low.sum(1), "keep_indices": kept % N, "keep_indices_global": kept,
        "tie_at_cut": torch.tensor([len(p[2]) > int(b) for p, b in zip(picks, budgets)]),
        "must_keep": must, "may_keep": may, "keep_mask_lowest_index": low,
    }


def vllm_result(x: torch.Tensor, q: float, start: int, stop: int) -> dict:
    clip = x[start:stop].float()
    T, N, _ = clip.shape
    base = vidcom2_result(x, 1 - q, start, stop)
    target = max(T, min(int(T * N * (1 - q)), T * N))
    score = base["token_score"].flatten().tolist()
    chosen = set(base["keep_indices_global"].tolist())
    delta = len(chosen) - target
    tie = False
    if delta > 0:  # drop the largest scores, ties: higher flat index first
        ranked = sorted(chosen, key=lambda i: (-score[i], -i))
        tie = delta < len(ranked) and score[ranked[delta - 1]] == score[ranked[delta]]
        chosen -= set(ranked[:delta])
    elif delta < 0:  # add the smallest unchosen, ties: lower flat index first
        ranked = sorted(set(range(T * N)) - chosen, key=lambda i: (score[i], i))
        tie = -delta < len(ranked) and score[ranked[-delta - 1]] == score[ranked[-delta]]
        chosen |= set(ranked[:-delta])
    mask = torch.zeros(T * N, dtype=torch.bool)
    mask[sorted(chosen)] = True
    kept = mask.nonzero()[:, 0]
    result = {
        "params": {"q": q, "frames": (start, stop), "F": T, "N": N, "target_retained": target, "base_scale": 1 - q},
        "token_score": base["token_score"], "frame_scales": base["frame_scales"],
        "frame_budgets_before_reconcile": base["frame_budgets"], "reconcile_delta": len(kept) + delta - target,
        "keep_mask": mask.view(T, N), "tokens_per_frame": mask.view(T, N).sum(1), "keep_indices": kept % N,
        "keep_indices_global": kept, "tie_at_cut": base["tie_at_cut"], "tie_at_reconcile": tie,
        "keep_mask_lowest_index": mask.view(T, N),
    }
    if tie or bool(base["tie_at_cut"].any()):  # the lowest-index outcome is one valid outcome: bounds around it
        result["must_keep"] = mask.view(T, N) & base["must_keep"]
        result["may_keep"] = mask.view(T, N) | base["may_keep"]
    return result


@pytest.mark.parametrize(("T", "H", "W", "D", "seed", "dup"), [(7, 6, 9, 24, 5, None), (5, 8, 8, 40, 77, (3, 2))],
                         ids=["7x6x9", "5x8x8-dupframe"])
def test_checks_follow_each_files_params(T, H, W, D, seed, dup):
    x = tied_clip(T, H, W, D, seed, dup)
    case = {"meta": {"seed": seed, "F": T, "H": H, "W": W, "N": H * W, "D": D},
            "inputs": {"features": x, "cls_attention": torch.full((T, H * W), 1.0 / (H * W))}}
    ties = 0
    for q in (0.0, 0.35, 0.85, 0.97):
        golden.check_evs(case, evs_result(x, q, 0, T))
    golden.check_evs(case, evs_result(x, 0.6, 1, T - 1))  # a slice of the clip
    for r in (0.2, 0.45):
        res = vidcom2_result(x, r, 0, T)
        ties += int(res["tie_at_cut"].sum())
        golden.check_vidcom2(case, res)
    golden.check_vidcom2(case, vidcom2_result(x, 0.3, 2, 3))  # one frame
    for q in (0.0, 0.7, 0.9):
        golden.check_vidcom2vllm(case, vllm_result(x, q, 0, T))
    assert ties > 0, "the flat background should tie at some frame's cut"
