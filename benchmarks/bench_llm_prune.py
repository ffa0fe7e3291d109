"""Prefill time with and without the in-LLM pruning stage, side by side, repeats interleaved.

    python benchmarks/bench_llm_prune.py --model random:llava-onevision-0.5b --frames 16 --repeat 3

The prompt is the real one (chat template, question, 16 x 196 visual tokens + the newline); the visual tokens are
random stand-ins at the projector's scale, because the prefill's cost does not depend on their values and the
vision tower is not what is measured. Each condition is one prefill (``model(..., use_cache=True,
logits_to_keep=1)``, the forward ``generate()`` runs first) under :meth:`Pipeline.llm_pruning`. Conditions run
round-robin inside each repeat, so a slow moment on a shared machine hits all of them; the claim is each
condition's median time over the baseline's. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashvid_cli.kernels import Grid, build  # noqa: E402
from flashvid_cli.kernels.traits import LLMPrune  # noqa: E402
from flashvid_cli.pipelines import load_pipeline  # noqa: E402
from flashvid_cli.pipelines.base import EncodedVideo  # noqa: E402

QUESTION = "What happens in the video, and in which order?"


CONDITIONS = ("none", "share1", "fastv0.5", "fastv0.25", "flashvid")


def conditions(depth: int, chosen: list[str]) -> dict[str, LLMPrune | None]:
    """name -> stage: the baseline (always), the stage at share 1.0 (its own cost: scoring, nothing cut), FastV's
    defaults (K=2, keep 0.5) and keep 0.25, FlashVID's stage scaled to the depth (share 0.3)."""
    every = {
        "none": ("no stage", None),
        "share1": ("stage at share 1.0, K=2", LLMPrune(1.0, "round", layer=2)),
        "fastv0.5": ("fastv K=2 keep 0.5", build("fastv", 0.5).llm_prune()),
        "fastv0.25": ("fastv K=2 keep 0.25", build("fastv", 0.25).llm_prune()),
        "flashvid": (f"flashvid K={LLMPrune(0.3).layer_for(depth)} share 0.3",
                     build("flashvid", 0.25, options={"reference": True}).llm_prune()),
    }
    return dict(every[key] for key in ["none", *[c for c in chosen if c != "none"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:llava-onevision-0.5b")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help=f"comma-separated, of {', '.join(CONDITIONS)} (the baseline always runs)")
    args = parser.parse_args()
    chosen = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if unknown := set(chosen) - set(CONDITIONS):
        raise SystemExit(f"unknown conditions {sorted(unknown)}; choose from {', '.join(CONDITIONS)}")

    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    if pipe.model_type != "llava_onevision":
        raise SystemExit("this benchmark builds a LLaVA-OneVision prompt; use a llava_onevision model")
    width = pipe.model.config.text_config.hidden_size
    g = torch.Generator().manual_seed(0)
    feats = (0.6 * torch.randn(args.frames, 196, width, generator=g)).to(pipe.device, pipe.dtype)  # [T, N, D]
    encoded = EncodedVideo(feats, Grid(args.frames, 14, 14))
    inputs = pipe.inputs(encoded, build("none", 1.0)(feats, encoded.grid), QUESTION)
    depth = len(pipe.language_model.layers)
    stages = conditions(depth, chosen)
    one = EncodedVideo(feats[:1], Grid(1, 14, 14))
    short = pipe.inputs(one, build("none", 1.0)(feats[:1], one.grid), QUESTION)  # one frame: the warm-up

    def prefill(stage: LLMPrune | None, inputs: dict = inputs) -> tuple[float, float, list[int] | None]:
        with torch.inference_mode(), pipe.llm_pruning(inputs, stage) as run:
            started, cpu = time.perf_counter(), time.process_time()
            pipe.model(**inputs, use_cache=True, logits_to_keep=1)
            if pipe.device.type == "cuda":
                torch.cuda.synchronize(pipe.device)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return elapsed, cpu, (run.visual_by_layer if run is not None else None)

    for stage in stages.values():  # warm-up on a one-frame prompt: first-call costs of every path
        prefill(stage, short)
    times: dict[str, list[float]] = {name: [] for name in stages}
    cpu_times: dict[str, list[float]] = {name: [] for name in stages}
    by_layer: dict[str, list[int] | None] = {}
    for _ in range(args.repeat):
        for name, stage in stages.items():
            elapsed, cpu, by_layer[name] = prefill(stage)
            times[name].append(elapsed)
            cpu_times[name].append(cpu)

    base = statistics.median(times["no stage"])
    cpu_base = statistics.median(cpu_times["no stage"])
    rows = []
    print(f"{args.model}, {args.frames} frames, prompt {inputs['input_ids'].shape[1]} tokens, {depth} layers, "
          f"{args.device} {args.dtype}, torch threads {torch.get_num_threads()}, {args.repeat} interleaved repeats")
    print(f"{'condition':28} {'wall s':>8} {'min-max':>15} {'vs none':>7} {'cpu s':>8} {'vs none':>7} "
          f"{'visual/layer':>12}")
    for name, values in times.items():
        med, cpu = statistics.median(values), statistics.median(cpu_times[name])
        counts = by_layer[name]
        mean_visual = statistics.fmean(counts) if counts else encoded.grid.T * encoded.grid.N + 1
        rows.append({"condition": name, "median_s": med, "min_s": min(values), "max_s": max(values),
                     "ratio_to_none": med / base, "cpu_median_s": cpu, "cpu_ratio_to_none": cpu / cpu_base,
                     "mean_visual_per_layer": mean_visual, "times_s": values, "cpu_times_s": cpu_times[name]})
        print(f"{name:28} {med:8.2f} {min(values):7.2f}-{max(values):7.2f} {med / base:7.3f} {cpu:8.2f} "
              f"{cpu / cpu_base:7.3f} {mean_visual:12.1f}")
    print(json.dumps({
        "benchmark": "llm_prune_prefill", "model": args.model, "frames": args.frames, "device": args.device,
        "dtype": args.dtype, "prompt_tokens": int(inputs["input_ids"].shape[1]), "layers": depth,
        "threads": torch.get_num_threads(), "repeat": args.repeat, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "rows": rows,
    }))


if __name__ == "__main__":
    main()
