"""SparseVILA's decoding sparsity: ms per generated token on the compact KV cache against dense decoding.

    python benchmarks/bench_sparsevila.py --model random:llava-onevision-0.5b --contexts 4096 16384 --tokens 16

What is timed is the decoding step itself, the one thing the compact cache changes: the real model's forward on one
token (``model(input_ids, past_key_values=cache)``, as ``generate()`` runs it after the first token) over a cache
of ``--contexts`` entries per layer, of which all but ``--text`` are visual. The cache holds random keys and values
of the model's own shapes and dtype, because a step's cost does not depend on their values and a 16k-token prefill
on a shared CPU would take longer than the measurement (the prefill is what prefill pruning measures, not this).
The sparse condition decodes over the sinks, the top ``--decode-keep`` share of the visual entries and the text,
gathered per layer by the same code vidq runs (``select``, ``compact_cache``); the kept positions follow a random
score, which costs the same as the question's. The build cost per question (scoring every cached visual key with
``--question`` question tokens in every layer, selecting, gathering) is timed on its own. Conditions alternate
inside each repeat, so a slow moment on a shared machine hits both. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import cpu_context, print_tail, stat, sync  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:llava-onevision-0.5b")
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 16384], help="cache entries per layer")
    parser.add_argument("--text", type=int, default=64, help="non-visual entries among them (system, question)")
    parser.add_argument("--decode-keep", type=float, default=0.1)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--question", type=int, default=12, help="question tokens that score, for the build cost")
    parser.add_argument("--tokens", type=int, default=16, help="tokens decoded per timed run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    args = parser.parse_args()

    import torch

    from flashvid_cli.kernels.traits import DecodeSparsity
    from flashvid_cli.pipelines import load_pipeline
    from flashvid_cli.pipelines.sparse_decode import compact_cache, decode_scores, select

    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    device, dtype = pipe.device, pipe.dtype
    config = pipe.model.config
    text_config = config.get_text_config()
    layers = pipe.language_model.layers
    heads, kv_heads = text_config.num_attention_heads, text_config.num_key_value_heads
    d = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    sparsity = DecodeSparsity(args.decode_keep, args.sinks)
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows, results = [], {}
    for L in args.contexts:
        visual = torch.arange(args.text // 2, L - args.text // 2)  # system text, the visual span, question text
        base = [(torch.randn(1, kv_heads, L, d, generator=gen).to(device, dtype),
                 torch.randn(1, kv_heads, L, d, generator=gen).to(device, dtype)) for _ in layers]

        def dense() -> object:
            from transformers import DynamicCache

            cache = DynamicCache(config=config)
            for i, (k, v) in enumerate(base):
                cache.update(k, v, i)
            return cache

        scores = torch.rand(len(layers), L, generator=gen).to(device)
        _, keep = select(scores, visual.to(device), L, sparsity)

        def build() -> float:
            """Seconds to score with random question queries, select and gather, as once per question."""
            full = dense()
            q = torch.randn(heads, args.question, d, generator=gen).to(device)
            positions = torch.arange(L - args.question, L)
            sync(device)
            started = time.perf_counter()
            per_layer = torch.stack([decode_scores(q, full.layers[i].keys[0], positions, layers[i].self_attn.scaling)
                                     for i in range(len(layers))])
            _, chosen = select(per_layer, visual.to(device), L, sparsity)
            compact_cache(full, chosen, config)
            sync(device)
            return time.perf_counter() - started

        def decode(cache: object) -> float:
            """Seconds per token over ``args.tokens`` greedy steps from ``cache``."""
            token = torch.tensor([[pipe.tokenizer.pad_token_id or 0]], device=device)
            sync(device)
            started = time.perf_counter()
            with torch.inference_mode():
                for _ in range(args.tokens):
                    out = pipe.model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    token = out.logits[:, -1:].argmax(-1)
            sync(device)
            return (time.perf_counter() - started) / args.tokens

        with torch.inference_mode():
            decode(dense()), decode(compact_cache(dense(), keep, config))  # warm-up
            times = {"dense": [], "sparse": [], "build": []}
            for _ in range(args.repeat):
                times["dense"].append(decode(dense()))
                times["sparse"].append(decode(compact_cache(dense(), keep, config)))
                times["build"].append(build())
        s = {k: stat(v) for k, v in times.items()}
        kept = int(keep[0].numel())
        speedup = s["dense"]["median"] / s["sparse"]["median"]
        results[str(L)] = {"entries_dense": L, "entries_sparse": kept, "visual": int(visual.numel()),
                           "ms_per_token_dense": 1e3 * s["dense"]["median"],
                           "ms_per_token_sparse": 1e3 * s["sparse"]["median"], "speedup": speedup,
                           "build_ms": 1e3 * s["build"]["median"]}
        rows.append((L, kept, s, speedup))

    print(f"{args.model} on {device} ({str(dtype).removeprefix('torch.')}), decode_keep {args.decode_keep}, "
          f"sinks {args.sinks}, {args.tokens} tokens per run")
    print(f"{'context':>8} {'entries kept':>12} {'dense ms/tok':>13} {'sparse ms/tok':>14} {'speed-up':>9} "
          f"{'build ms/question':>18}")
    for L, kept, s, speedup in rows:
        print(f"{L:>8,} {kept:>12,} {1e3 * s['dense']['median']:>13.1f} {1e3 * s['sparse']['median']:>14.1f} "
              f"{speedup:>8.2f}x {1e3 * s['build']['median']:>18.1f}")
    out = {"bench": "sparsevila_decode", "model": args.model, "device": str(device), "dtype": str(dtype),
           "decode_keep": args.decode_keep, "sinks": args.sinks, "tokens": args.tokens, "repeat": args.repeat,
           "contexts": results, **cpu_context()}
    print_tail(out, args.repeat)


if __name__ == "__main__":
    main()
