"""End to end through the library (``VideoQA.ask`` via ``run_bench``): every stage's median and spread, visual tokens,
peak memory, for every method x keep on full-size models with random weights.

    python benchmarks/bench_e2e.py                                    # CUDA: LLaVA-OV-7B and Qwen2.5-VL-7B, 32 frames
    python benchmarks/bench_e2e.py --models random:llava-onevision-7b --methods flashvid,none --keeps 0.1
    python benchmarks/bench_e2e.py --models /tmp/tiny/llava_onevision  # any local checkpoint

Without CUDA and without ``--models`` it builds the tiny test checkpoints (``samples/build_tiny_models.py``) and
runs 8 frames: that checks the script, not the speed. Targets checked on CUDA (LLaVA-OV-7B, keep 0.1):
vision encoding of 32 frames within 2x of its bf16 FLOP floor (~22 ms on an H100) and time to first token at
least 3x lower than at keep 1.0. Prints a table per model, then one JSON document on the last line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import warn_if_cpu  # noqa: E402

from flashvid_cli.api import AskConfig, VideoQA  # noqa: E402
from flashvid_cli.bench import STAGES, BenchConfig, baseline_method, run_bench  # noqa: E402
from flashvid_cli.kernels import methods as registered  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GPU_MODELS = ("random:llava-onevision-7b", "random:qwen2.5-vl-7b")
KEEPS = (1.0, 0.25, 0.1)
ENCODE_FLOOR_S = {"random:llava-onevision-7b": 0.022}  # H100 bf16 FLOP floor of 32 SigLIP frames (DESIGN.md)


@dataclass(frozen=True)
class Options:
    models: tuple[str, ...]
    methods: tuple[str, ...]
    keeps: tuple[float, ...]
    tokens: tuple[int, ...]
    frames: int
    video: Path
    repeat: int
    warmup: int
    max_new_tokens: int
    device: str


def tiny_models() -> tuple[str, ...]:
    """Build the tiny checkpoints of both families into a temp dir (CPU smoke run)."""
    spec = importlib.util.spec_from_file_location("build_tiny_models", REPO / "samples" / "build_tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = Path(tempfile.mkdtemp(prefix="vidq-tiny-"))
    return tuple(str(build(root / name)) for name, build in module.BUILDERS.items())


def ms(stat) -> str:
    return f"{stat.median * 1e3:9.1f} [{stat.min * 1e3:.1f}-{stat.max * 1e3:.1f}]"


def print_table(model: str, result) -> None:
    stages = [s for s in STAGES if s not in ("total",)]
    print(f"\n{model}  ({result.environment['device_name']}, {result.environment['dtype']})")
    print(f"{'method':10s} {'keep':>5} {'visual':>7} {'peak MiB':>9}  " + "  ".join(f"{s:>22}" for s in stages))
    for row in result.rows:
        if row.error is not None:  # run_bench keeps a failed row (e.g. out of memory) and goes on
            print(f"{row.method:10s} {row.keep:>5} failed: {row.error}")
            continue
        cells = "  ".join(f"{ms(row.timings[s]):>22}" for s in stages)
        print(f"{row.method:10s} {row.keep:>5.3g} {row.visual_tokens:>7} {row.peak_memory_bytes / 2**20:>9.0f}  {cells}")


def targets(model: str, result, cuda: bool) -> dict:
    """The issue's targets for this model, where they apply."""
    rows = {(r.method, r.keep): r for r in result.measured}
    base = rows.get((baseline_method([r.method for r in result.measured]), 1.0))
    out = {}
    for (method, keep), row in rows.items():
        if keep == 0.1 and base is not None and row is not base:
            gain = base.timings["time_to_first_token"].median / row.timings["time_to_first_token"].median
            out[f"ttft_gain_{method}"] = {"x": gain, "target": 3.0, "met": gain >= 3.0 if cuda else None}
    floor = ENCODE_FLOOR_S.get(model)
    if floor and base is not None:
        ratio = base.timings["encode"].median / floor
        out["encode_vs_floor"] = {"x": ratio, "target": 2.0, "met": ratio <= 2.0 if cuda else None,
                                  "note": "floor is the H100 figure; scale for other devices"}
    return out


def main(opts: Options) -> dict:
    cuda = torch.device(opts.device).type == "cuda"
    warn_if_cpu(opts.device)
    ask = AskConfig(frames=opts.frames, max_frames=opts.frames, max_new_tokens=opts.max_new_tokens)
    config = BenchConfig(methods=opts.methods, keeps=opts.keeps, tokens=opts.tokens, repeat=opts.repeat,
                         warmup=opts.warmup, ask=ask)
    report = {"benchmark": "bench_e2e", "meaningful": cuda, "kernels": os.environ.get("VIDQ_KERNELS", "auto"),
              "models": []}
    for model in opts.models:
        qa = VideoQA(model, device=opts.device)
        result = run_bench(qa, [str(opts.video)], config)
        print_table(model, result)
        found = targets(model, result, cuda)
        for name, t in found.items():
            verdict = "MET" if t["met"] else "not met" if cuda else "UNMEASURED (no GPU)"
            print(f"  target {name}: {t['x']:.2f}x (target {t['target']}x): {verdict}")
        report["models"].append({"model": model, "targets": found, **result.to_dict()})
        del qa
        if cuda:
            torch.cuda.empty_cache()
    return report


def parse() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated random:NAME, repo ids or local dirs")
    parser.add_argument("--methods", default=",".join(registered()), help="default: every registered method")
    parser.add_argument("--keeps", default=",".join(map(str, KEEPS)))
    parser.add_argument("--tokens", default="", help="comma-separated visual-token counts (instead of --keeps)")
    parser.add_argument("--frames", type=int, default=None, help="default 32 on CUDA, 8 on CPU")
    parser.add_argument("--video", type=Path, default=REPO / "samples" / "sample.mp4")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per row (default 5 CUDA, 1 CPU)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    models = tuple(args.models.split(",")) if args.models else GPU_MODELS if cuda else tiny_models()
    return Options(
        models=models,
        methods=tuple(args.methods.split(",")),
        keeps=tuple(float(k) for k in args.keeps.split(",")),
        tokens=tuple(int(k) for k in args.tokens.split(",") if k.strip()),
        frames=args.frames or (32 if cuda else 8),
        video=args.video,
        repeat=args.repeat or (5 if cuda else 1),
        warmup=args.warmup,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
    )


if __name__ == "__main__":
    print(json.dumps(main(parse())))
