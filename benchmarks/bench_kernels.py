"""Triton kernels vs their torch references, and whole FlashVID compression, torch path vs Triton path.

    python benchmarks/bench_kernels.py            # CUDA: the full grid; CPU: a reduced grid, torch path only
    python benchmarks/bench_kernels.py --full     # every F x N x D even on CPU (slow)

Ops (the same call through ``ops``, switched by ``VIDQ_KERNELS``): ADTS v2 selection of every frame (similarity,
calibration, max-min greedy), TSTM links + roots + tree merge of one segment of F frames, and FlashVID
(llava_onevision recipe) at each shape. Then FlashVID at LLaVA-OneVision-7B shapes (32 x 196 x 3584, keep 0.1,
bf16 in) against the targets: at most 3 ms and at least 10x faster than the torch path. Prints a table, then one
JSON document on the last line. On CPU the Triton column is empty (the interpreter's speed means nothing).

    python benchmarks/bench_kernels.py --nuwa     # only Nüwa stage 1 against VisionZip, per frame

Nüwa against VisionZip: both methods on the same clip (LLaVA-OneVision shapes: 32 frames of 14 x 14 pooled tokens,
D 896 and 3584; the similarity features and VisionZip's key metric are the same [T, N, 1152] tensor, SigLIP's width),
at keep 0.1 and 0.25, repeats interleaved (A B, B A, ...) so that load on a shared machine falls on both alike;
milliseconds per frame (a call's time / T). Nüwa's stage 2 runs inside the LLM and is not part of this time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import measure, ms, sync, warn_if_cpu  # noqa: E402

from flashvid_cli.kernels import Grid, build, dispatch, ops  # noqa: E402
from flashvid_cli.kernels.base import cpu_threads  # noqa: E402
from flashvid_cli.kernels.flashvid import flashvid_budget  # noqa: E402

FULL = {"F": (8, 32, 64), "N": (169, 196, 256), "D": (896, 3584)}
CPU_REDUCED = {"F": (8,), "N": (169, 196), "D": (896,)}
TARGET = {"F": 32, "N": 196, "D": 3584, "keep": 0.1, "max_ms": 3.0, "min_speedup": 10.0}


@dataclass(frozen=True)
class Options:
    full: bool
    repeat: int
    warmup: int
    device: str
    nuwa: bool = False  # only the Nüwa-vs-VisionZip section


def clip(F: int, N: int, D: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Grid]:
    """Four scenes with noise (segments and trees form, like real video), attention; ``N`` must be a square-ish grid."""
    g = torch.Generator().manual_seed(seed)
    scenes = torch.randn(4, N, D, generator=g)
    feats = scenes[torch.arange(F) * 4 // F] + 0.3 * torch.randn(F, N, D, generator=g) + 0.5
    attn = torch.softmax(torch.randn(F, N, generator=g), dim=-1)
    H = int(N**0.5)
    while N % H:
        H -= 1
    return feats.to(device), attn.to(device), Grid(F, H, N // H)


def op_calls(feats: torch.Tensor, attn: torch.Tensor, grid: Grid) -> dict[str, callable]:
    """The timed calls at one shape (the same code on both paths)."""
    F, N, _ = feats.shape
    B, A, S = flashvid_budget(N, 0.1, 1.0, 0.7)
    event = feats.mean(dim=(0, 1)).expand(F, -1)
    picks = ops.adts_select(feats, attn, A, event)
    cand = torch.ones(F, N, dtype=torch.bool, device=feats.device).scatter_(1, picks, False)
    method = build("flashvid", 0.1, model_type="llava_onevision")

    def tstm():
        link, parent, _ = ops.tstm_links(feats, cand, 0.8, lower=B * F)
        root = ops.tree_roots(link, parent)
        return ops.tree_merge(feats, root, cand & ~link, link, parent)

    def one_thread_on_cpu(fn):
        # What Method.__call__ does for every compression on CPU (see kernels/base.py: cpu_threads).
        threads = 1 if feats.device.type == "cpu" else None
        return lambda: _with_threads(threads, fn)

    return {
        "adts_v2": one_thread_on_cpu(lambda: ops.adts_select(feats, attn, A, event)),
        "tstm": one_thread_on_cpu(tstm),
        "flashvid": lambda: method(feats, grid, attn),
    }


def _with_threads(threads: int | None, fn):
    with cpu_threads(threads):
        return fn()


def time_paths(calls: dict[str, callable], opts: Options, triton_ok: bool) -> dict[str, dict[str, dict | None]]:
    out = {}
    for name, fn in calls.items():
        os.environ["VIDQ_KERNELS"] = "torch"
        torch_stat = measure(fn, opts.device, opts.repeat, opts.warmup)
        triton_stat = None
        if triton_ok:
            os.environ["VIDQ_KERNELS"] = "triton"
            triton_stat = measure(fn, opts.device, opts.repeat, opts.warmup)
        out[name] = {"torch": torch_stat, "triton": triton_stat}
    os.environ.pop("VIDQ_KERNELS", None)
    return out


def speedup(entry: dict) -> float | None:
    return entry["torch"]["median"] / entry["triton"]["median"] if entry["triton"] else None


def main(opts: Options) -> dict:
    cuda = torch.device(opts.device).type == "cuda"
    warn_if_cpu(opts.device)
    if opts.nuwa:
        return {"benchmark": "bench_kernels", "meaningful": cuda, "environment": environment(opts.device),
                "nuwa_vs_visionzip": nuwa_vs_visionzip(opts)}
    triton_ok = cuda and dispatch.triton_importable()
    grid = FULL if (cuda or opts.full) else CPU_REDUCED
    rows = []
    print(f"{'F':>3} {'N':>4} {'D':>5}  {'op':9s} {'torch ms median [min-max]':>28} {'triton ms':>28} {'x':>6}")
    for F, N, D in itertools.product(grid["F"], grid["N"], grid["D"]):
        feats, attn, g = clip(F, N, D, opts.device)
        for op, entry in time_paths(op_calls(feats, attn, g), opts, triton_ok).items():
            x = speedup(entry)
            print(f"{F:>3} {N:>4} {D:>5}  {op:9s} {ms(entry['torch']):>28} {ms(entry['triton']):>28} "
                  f"{f'{x:.1f}' if x else '-':>6}")
            rows.append({"F": F, "N": N, "D": D, "op": op, **entry, "speedup": x})

    # The target shape: LLaVA-OneVision-7B, bf16 features as the model emits them.
    feats, attn, g = clip(TARGET["F"], TARGET["N"], TARGET["D"], opts.device)
    feats = feats.to(torch.bfloat16) if cuda else feats
    method = build("flashvid", TARGET["keep"], model_type="llava_onevision")
    target = time_paths({"flashvid": lambda: method(feats, g, attn)}, opts, triton_ok)["flashvid"]
    x = speedup(target)
    met = bool(target["triton"] and target["triton"]["median"] * 1e3 <= TARGET["max_ms"] and x >= TARGET["min_speedup"])
    print(f"\nFlashVID at {TARGET['F']}x{TARGET['N']}x{TARGET['D']} keep {TARGET['keep']} ({feats.dtype}): "
          f"torch {ms(target['torch'])} ms, triton {ms(target['triton'])} ms, speedup {f'{x:.1f}x' if x else '-'}; "
          f"target <= {TARGET['max_ms']} ms and >= {TARGET['min_speedup']}x: "
          f"{'MET' if met else 'not met' if cuda else 'UNMEASURED (no GPU)'}")
    return {
        "benchmark": "bench_kernels",
        "meaningful": cuda,
        "environment": environment(opts.device),
        "rows": rows,
        "target": {**TARGET, "dtype": str(feats.dtype), **target, "speedup": x, "met": met if cuda else None},
        "nuwa_vs_visionzip": nuwa_vs_visionzip(opts),
    }


NUWA_SHAPES = ((32, 14, 14, 896), (32, 14, 14, 3584))  # T, H, W, D: LLaVA-OneVision 0.5B and 7B after pooling
NUWA_KEEPS = (0.1, 0.25)
SIGLIP_WIDTH = 1152


def nuwa_vs_visionzip(opts: Options) -> list[dict]:
    """Per-frame compression time of Nüwa (stage 1) and VisionZip on the same inputs, repeats interleaved."""
    rows = []
    print(f"\n{'T':>3} {'HxW':>5} {'D':>5} {'keep':>5}  {'nuwa ms/frame median [min-max]':>32} {'tokens':>6}  "
          f"{'visionzip ms/frame':>24} {'tokens':>6} {'ratio':>6}")
    for (T, H, W, D), keep in itertools.product(NUWA_SHAPES, NUWA_KEEPS):
        feats, attn, grid = clip(T, H * W, D, opts.device)
        side = torch.randn(T, H * W, SIGLIP_WIDTH, generator=torch.Generator().manual_seed(1)).to(opts.device)
        methods = {"nuwa": build("nuwa", keep, model_type="llava_onevision", options={"llm_stage": "false"}),
                   "visionzip": build("visionzip", keep, model_type="llava_onevision")}
        calls = {"nuwa": lambda: methods["nuwa"](feats, grid, attn, similarity=side),
                 "visionzip": lambda: methods["visionzip"](feats, grid, attn, side)}
        tokens = {name: call().tokens.shape[0] for name, call in calls.items()}
        times = interleaved(calls, opts)
        stats = {name: per_frame(t, T) for name, t in times.items()}
        ratio = stats["nuwa"]["median"] / stats["visionzip"]["median"]
        print(f"{T:>3} {f'{H}x{W}':>5} {D:>5} {keep:>5}  {ms(stats['nuwa']):>32} {tokens['nuwa']:>6}  "
              f"{ms(stats['visionzip']):>24} {tokens['visionzip']:>6} {ratio:>5.2f}x")
        rows.append({"T": T, "H": H, "W": W, "D": D, "keep": keep, "tokens": tokens, "per_frame_s": stats,
                     "nuwa_over_visionzip": ratio})
    return rows


def interleaved(calls: dict[str, callable], opts: Options) -> dict[str, list[float]]:
    """Seconds per call of each of two calls, alternating which runs first in each repeat."""
    names = list(calls)
    for _ in range(opts.warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(opts.repeat):
        for name in names if i % 2 == 0 else names[::-1]:
            sync(opts.device)
            started = time.perf_counter()
            calls[name]()
            sync(opts.device)
            times[name].append(time.perf_counter() - started)
    return times


def per_frame(times: list[float], T: int) -> dict[str, float]:
    return {"median": statistics.median(times) / T, "min": min(times) / T, "max": max(times) / T, "n": len(times)}


def environment(device: str) -> dict:
    import transformers

    env = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if dispatch.triton_importable():
        import triton

        env["triton"] = triton.__version__
    return env


def parse() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the whole F x N x D grid even on CPU")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per entry (default 50 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 5 CUDA, 1 CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nuwa", action="store_true", help="only Nüwa stage 1 against VisionZip, per frame")
    args = parser.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    return Options(args.full, args.repeat or (50 if cuda else 3), args.warmup or (5 if cuda else 1), args.device,
                   args.nuwa)


if __name__ == "__main__":
    print(json.dumps(main(parse())))
