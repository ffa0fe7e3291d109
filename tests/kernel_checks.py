"""Each Triton kernel against its torch reference, as named checks: ``VIDQ_KERNELS=torch`` vs ``triton`` on the same input.

Not collected by pytest itself: ``test_kernels_triton.py`` calls these in-process on CUDA, or, without a GPU, runs
this file once in a subprocess with ``TRITON_INTERPRET=1`` (which must be set before triton is first imported,
so it cannot be switched on inside the shared pytest process) and reports each check's outcome.
Contract (``TOL``): selection indices, parents, roots and source groups equal the reference exactly; merged
features within float32 tolerance, because the segmented sums may add in another order than ``index_add_``.

    TRITON_INTERPRET=1 python tests/kernel_checks.py [--out results.json] [name-substring ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from flashvid_cli.kernels import Grid, build, ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.bfloat16: {"atol": 1e-2, "rtol": 1e-2}}


class Skip(Exception):
    """A check that does not apply here (its message says why)."""


@contextmanager
def env(name: str, value: str):
    """Set one environment variable for the block (the dispatcher and launchers read it at every call)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def both(fn: Callable):
    """``fn()`` on the torch path, then on the Triton path."""
    with env("VIDQ_KERNELS", "torch"):
        ref = fn()
    with env("VIDQ_KERNELS", "triton"):
        return ref, fn()


def make_clip(T: int, H: int, W: int, D: int, seed: int = 0):
    """Redundant frames with a scene cut (trees and segments form) and attention, on the check device."""
    g = torch.Generator().manual_seed(seed)
    N = H * W
    scenes = torch.randn(2, N, D, generator=g)
    feats = scenes[(torch.arange(T) >= (T + 1) // 2).long()] + 0.3 * torch.randn(T, N, D, generator=g) + 0.5
    attn = torch.softmax(torch.randn(T, N, generator=g), dim=-1)
    return feats.to(DEVICE), attn.to(DEVICE), Grid(T, H, W)


def tied_clip(T: int, N: int, D: int):
    """Every token repeated, uniform attention: exact ties everywhere, so tie-breaking is what gets tested."""
    half = torch.randn(T, (N + 1) // 2, D, generator=torch.Generator().manual_seed(1))
    return torch.cat([half, half], dim=1)[:, :N].to(DEVICE), torch.full((T, N), 1.0 / N, device=DEVICE)


def equal_all(ref, out) -> None:
    for i, (a, b) in enumerate(zip(ref, out)):
        assert torch.equal(a, b), f"output {i} differs"


def same_compressed(ref, out, dtype=torch.float32) -> None:
    assert torch.equal(ref.index, out.index), "indices differ"
    assert torch.equal(ref.sources, out.sources) and torch.equal(ref.offsets, out.offsets), "source groups differ"
    torch.testing.assert_close(out.tokens.float(), ref.tokens.float(), **TOL[dtype])


def gpu_tiles(check: Callable[[], None]) -> None:
    """Run ``check`` with the GPU tile sizes even under the interpreter (their multi-tile loops get exercised)."""
    with env("VIDQ_TRITON_TILES", "gpu"):
        check()


# --- the checks --------------------------------------------------------------------------------------------------

def check_maxmin(T: int, N: int, D: int, k: int, version: str, exclude: bool) -> None:
    feats, attn, _ = make_clip(T, 1, N, D, seed=N)
    if version == "divprune":
        equal_all(*both(lambda: [ops.maxmin_select(ops.cosine_similarity(feats), k, exclude=exclude)]))
        return
    event = feats.mean(dim=(0, 1)).expand(T, -1) if version == "v2" else None
    equal_all(*both(lambda: [ops.adts_select(feats, attn, k, event, exclude)]))


def check_maxmin_ties(exclude: bool) -> None:
    feats, attn = tied_clip(3, 21, 9)
    equal_all(*both(lambda: [ops.adts_select(feats, attn, 10, None, exclude)]))


def check_tstm(T: int, N: int, D: int) -> None:
    feats, _, _ = make_clip(T, 1, N, D)
    cand = (torch.rand(T, N, generator=torch.Generator().manual_seed(2)) > 0.2).to(DEVICE)
    ref, out = both(lambda: ops.tstm_links(feats, cand, 0.8, lower=0))
    equal_all(ref, out)
    link, parent, _ = ref
    equal_all(*both(lambda: [ops.tree_roots(link, parent)]))


def check_tstm_ties() -> None:
    feats, _ = tied_clip(4, 21, 9)
    cand = torch.ones(4, 21, dtype=torch.bool, device=DEVICE)
    equal_all(*both(lambda: ops.tstm_links(feats, cand, 0.5, lower=0)))


def check_tree_merge(true_mean: bool) -> None:
    feats, _, _ = make_clip(5, 7, 9, 33)
    cand = (torch.rand(5, 63, generator=torch.Generator().manual_seed(3)) > 0.3).to(DEVICE)
    link, parent, _ = ops.tstm_links(feats, cand, 0.5, lower=0)
    root = ops.tree_roots(link, parent)
    ref, out = both(lambda: ops.tree_merge(feats, root, cand & ~link, link, parent, true_mean))
    torch.testing.assert_close(out[0], ref[0], **TOL[torch.float32])
    equal_all(ref[1:], out[1:])


def check_group_mean() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 33, generator=g).to(DEVICE)
    labels = (torch.randint(0, 9, (50,), generator=g) * 2).to(DEVICE)  # odd groups stay empty
    ref, out = both(lambda: ops.group_mean(x, labels, 19))
    torch.testing.assert_close(out, ref, **TOL[torch.float32])


def check_method(name: str, options: dict, shape: tuple[int, int, int, int]) -> None:
    feats, attn, grid = make_clip(*shape)
    same_compressed(*both(lambda: build(name, 0.2, options=options)(feats, grid, attn)))


def check_golden(path: Path, key: str) -> None:
    import test_golden

    with env("VIDQ_KERNELS", "triton"):
        try:
            test_golden.test_golden(path, key)
        except BaseException as exc:  # pytest.skip raises an OutcomeException (a BaseException)
            if type(exc).__name__ == "Skipped":
                raise Skip(str(exc)) from None
            raise


def _golden_cases() -> list[tuple[Path, str]]:
    """Golden keys whose path runs a kernel; none when ``test_golden`` skips itself (no golden files)."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import test_golden
    except BaseException:  # noqa: BLE001 - its module-level pytest.skip
        return []
    prefixes = ("adts_v", "divprune_", "tstm_", "flashvid_", "dpc_knn_")
    return [(p, k) for p, k in test_golden.CASES if k.startswith(prefixes)]


def _cases() -> dict[str, Callable[[], None]]:
    cases: dict[str, Callable[[], None]] = {}
    for shape in [(5, 63, 33, 7), (3, 1, 4, 1), (2, 5, 8, 5), (1, 300, 17, 40), (4, 196, 64, 14)]:
        for version in ("v1", "v2", "divprune"):
            for exclude in (True, False):
                cases[f"maxmin-{version}-{'x'.join(map(str, shape))}-exclude{exclude}"] = (
                    lambda s=shape, v=version, e=exclude: check_maxmin(*s, v, e)
                )
    for exclude in (True, False):
        cases[f"maxmin-ties-exclude{exclude}"] = lambda e=exclude: check_maxmin_ties(e)
    for shape in [(5, 63, 33), (2, 1, 3), (4, 300, 17), (8, 196, 64)]:
        cases[f"tstm-{'x'.join(map(str, shape))}"] = lambda s=shape: check_tstm(*s)
    cases["tstm-ties"] = check_tstm_ties
    for true_mean in (True, False):
        cases[f"tree-merge-truemean{true_mean}"] = lambda t=true_mean: check_tree_merge(t)
    cases["group-mean-empty-groups"] = check_group_mean
    methods = [
        ("flashvid", {"min_segment_num": 2}),
        ("flashvid", {"do_segment": False, "token_selection_method": "attn_div"}),
        ("flashvid", {"reference": True, "min_segment_num": 2}),
        ("flashvid", {}),
        ("divprune", {}),
        ("divprune", {"per_frame": True}),
    ]
    for shape in [(5, 7, 9, 33), (8, 14, 14, 64)]:
        for name, options in methods:
            label = ",".join(f"{k}={v}" for k, v in options.items()) or "default"
            cases[f"{name}[{label}]-{'x'.join(map(str, shape))}"] = (
                lambda n=name, o=options, s=shape: check_method(n, o, s)
            )
    for name, check in list(cases.items()):
        if name.startswith(("maxmin-v2-5x63", "tstm-5x63", "tree-merge", "group-mean", "flashvid[default]-5x7")):
            cases[f"gpu-tiles-{name}"] = lambda c=check: gpu_tiles(c)
    for path, key in _golden_cases():
        cases[f"golden-{path.stem}:{key}"] = lambda p=path, k=key: check_golden(p, k)
    return cases


CASES = _cases()


def run(names: list[str]) -> dict[str, dict[str, str]]:
    """Run the named checks -> ``{name: {"outcome": passed|failed|skipped, "detail": ..., "seconds": ...}}``."""
    results = {}
    for name in names:
        started = time.perf_counter()
        try:
            CASES[name]()
            outcome, detail = "passed", ""
        except Skip as exc:
            outcome, detail = "skipped", str(exc)
        except Exception:  # noqa: BLE001 - reported per check, the others still run
            outcome, detail = "failed", traceback.format_exc()
        results[name] = {"outcome": outcome, "detail": detail, "seconds": round(time.perf_counter() - started, 3)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filters", nargs="*", help="run only checks whose name contains one of these")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    names = [n for n in CASES if not args.filters or any(f in n for f in args.filters)]
    results = run(names)
    for name, res in results.items():
        print(f"{res['outcome']:8s} {res['seconds']:7.2f}s  {name}")
        if res["outcome"] == "failed":
            print(res["detail"])
    if args.out:
        args.out.write_text(json.dumps(results))
    sys.exit(any(r["outcome"] == "failed" for r in results.values()))


if __name__ == "__main__":
    main()
