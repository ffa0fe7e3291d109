"""How far FlashVID streamed (``--stream``: DySeg per window of ``stream_window`` frames, docs/STREAMING.md) is
from FlashVID on the whole clip: kept-token counts, the IoU of the kept positions, and multiple-choice answers.

For each question of a JSONL set (``python -m flashvid_cli.synthetic``) the clip is decoded once and encoded once
for the whole-clip path; for each (keep, window) the streamed path is ``stream_video`` on the same decoded frames
(chunks of ``--chunk`` frames). Both are scored as ``vidq eval`` scores (``likelihood``: the option with the highest
summed log-probability). ``--sample`` adds the sample clip (no answer key: counts, IoU and the greedy answer).
Prints a table, then one JSON line.

    python benchmarks/bench_stream_flashvid.py /tmp/test2026/questions.jsonl --keep 0.25 0.1 --window 4 8 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "samples" / "vidq-demo-llava-ov"


def iou(a, b) -> float:
    """Intersection over union of two sets of global token indices (the kept tokens' positions)."""
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / max(1, len(sa | sb))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="questions.jsonl (video, question, options, answer)")
    parser.add_argument("--model", default=str(DEMO))
    parser.add_argument("--keep", type=float, nargs="+", default=[0.25, 0.1])
    parser.add_argument("--window", type=int, nargs="+", default=[4, 8, 16], help="stream_window values")
    parser.add_argument("--chunk", type=int, default=16, help="frames per streamed chunk")
    parser.add_argument("--frames", type=int, default=None, help="frames sampled per clip (default: all, max 32)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--sample", action="store_true", help="also the sample clip, 48 frames")
    args = parser.parse_args()

    from flashvid_cli.api import VideoQA
    from flashvid_cli.config import AskConfig
    from flashvid_cli.evaluate.dataset import read_dataset
    from flashvid_cli.evaluate.scoring import score_question
    from flashvid_cli.streaming import stream_video

    qa = VideoQA(args.model, device="cpu", dtype="float32")
    questions = read_dataset(args.data)[: args.limit]
    rows: dict[tuple[float, int], dict] = {
        (k, w): {"keep": k, "window": w, "n": 0, "tokens_whole": 0, "tokens_stream": 0, "iou": 0.0, "exact": 0,
                 "agree": 0, "correct_whole": 0, "correct_stream": 0} for k in args.keep for w in args.window}
    started = time.perf_counter()
    for q in questions:
        base = AskConfig(method="flashvid", frames=args.frames)
        decoded = qa.decode(q.video, base, resize=qa.frame_resizer())
        prepared = qa.prepare(q.video, base, decoded, frozenset({"importance"}))
        for (keep, window), row in rows.items():
            config = AskConfig(method="flashvid", keep=keep, frames=args.frames,
                               options={"stream_window": window})
            whole = qa.compress(prepared, config)
            s_prep, streamed = stream_video(qa, q.video, config, chunk_frames=args.chunk, decoded=decoded)
            pw = max(enumerate(score_question(qa, prepared, whole, q, "likelihood")), key=lambda p: p[1])[0]
            ps = max(enumerate(score_question(qa, s_prep, streamed, q, "likelihood")), key=lambda p: p[1])[0]
            a, b = whole.compressed, streamed.compressed
            row["n"] += 1
            row["tokens_whole"] += int(a.index.numel())
            row["tokens_stream"] += int(b.index.numel())
            row["iou"] += iou(a.index, b.index)
            row["exact"] += int(a.index.shape == b.index.shape and bool((a.index == b.index).all())
                                and bool((a.tokens == b.tokens).all()))
            row["agree"] += int(pw == ps)
            row["correct_whole"] += int(pw == q.answer)
            row["correct_stream"] += int(ps == q.answer)
    table = []
    print(f"{'keep':>5} {'window':>6} {'n':>4} {'tokens whole':>12} {'streamed':>9} {'IoU':>6} {'exact':>6} "
          f"{'agree':>6} {'acc whole':>9} {'acc stream':>10}")
    for row in rows.values():
        n = max(1, row["n"])
        out = {"keep": row["keep"], "window": row["window"], "questions": row["n"],
               "tokens_whole_mean": row["tokens_whole"] / n, "tokens_stream_mean": row["tokens_stream"] / n,
               "iou_mean": row["iou"] / n, "exact_clips": row["exact"], "answer_agreement": row["agree"] / n,
               "accuracy_whole": row["correct_whole"] / n, "accuracy_stream": row["correct_stream"] / n}
        table.append(out)
        print(f"{out['keep']:>5} {out['window']:>6} {row['n']:>4} {out['tokens_whole_mean']:>12.1f} "
              f"{out['tokens_stream_mean']:>9.1f} {out['iou_mean']:>6.3f} {row['exact']:>6} "
              f"{out['answer_agreement']:>6.1%} {out['accuracy_whole']:>9.1%} {out['accuracy_stream']:>10.1%}")
    sample = _sample_rows(qa, args) if args.sample else []
    print(json.dumps({"model": args.model, "data": args.data, "chunk": args.chunk, "rows": table, "sample": sample,
                      "elapsed_s": round(time.perf_counter() - started, 1)}))


def _sample_rows(qa, args: argparse.Namespace) -> list[dict]:
    """The sample clip at 48 frames: counts, IoU and whether the greedy answers match, per (keep, window)."""
    from flashvid_cli.config import AskConfig
    from flashvid_cli.streaming import stream_video

    video = str(REPO / "samples" / "sample.mp4")
    out = []
    for keep in args.keep:
        for window in args.window:
            config = AskConfig(method="flashvid", keep=keep, frames=48, max_new_tokens=8,
                               options={"stream_window": window})
            whole = qa.ask(video, "What moves?", config)
            prepared, streamed = stream_video(qa, video, config, chunk_frames=args.chunk)
            answer = qa.answer(prepared, "What moves?", config, streamed)
            whole_c = qa.compress(qa.prepare(video, config), config).compressed
            row = {"keep": keep, "window": window, "tokens_whole": int(whole_c.index.numel()),
                   "tokens_stream": int(streamed.compressed.index.numel()),
                   "iou": round(iou(whole_c.index, streamed.compressed.index), 4),
                   "greedy_equal": answer.answer == whole.answer}
            print(f"sample.mp4 48 frames keep {keep} window {window}: {row}", file=sys.stderr)
            out.append(row)
    return out


if __name__ == "__main__":
    main()
