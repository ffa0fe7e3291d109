"""Pay for a video once (issue 13): three ratios, each measured side by side in one run with interleaved repeats.

1. follow-up: a follow-up question's time to first token against the first question's, in one ``ask_many`` on
   ``random:llava-onevision-0.5b`` (8 frames, flashvid keep 0.25): the first pays decode, preprocess, vision
   tower, compression and the whole prefill; the follow-up only its own tokens' prefill on the kept video prefix.
   Target: <= 10%.
2. annotate: ``annotate`` of 10 videos x 5 questions against the same 10 videos x 1 question with the demo model
   (samples/vidq-demo-llava-ov, clips in samples/demo/), wall time of the library call, model load included.
   Target: <= 1.5x. (The demo model's template puts the video first, so a video's questions share its decode,
   encode, compression and prefill: each report's ``cache.prefix`` is "miss" for the first question, "hit" after.)
3. second ask: a second ``ask`` of the same video and options against the first, time from the start of ``ask``
   to the first token (model load excluded), with the encoded-video cache (a fresh cache directory per repeat for
   the first). Target: <= 20%.

    python benchmarks/bench_followup.py [--repeat 3] [--only followup,annotate,second]

Prints a table, then one JSON line. CPU numbers on a machine shared with other sessions: read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flashvid_cli.api import AskConfig, VideoQA  # noqa: E402
from timing import cpu_context, print_tail, stat  # noqa: E402

QUESTIONS = ["How many shapes appear in the video?", "Which shape appears last?", "Which way does the square move?",
             "What colour is the circle?", "Where is the triangle at the end?"]


def followup(qa: VideoQA, repeat: int, video: str) -> dict:
    config = AskConfig(method="flashvid", keep=0.25, frames=8, max_new_tokens=4)
    qa.ask_many(video, QUESTIONS[:2], config)  # warm-up
    first, follow, prefix = [], [], []
    for _ in range(repeat):
        a, b = qa.ask_many(video, QUESTIONS[:2], config)
        first.append(a.report.timings.time_to_first_token)
        follow.append(b.report.timings.question_to_first_token)
        prefix.append(b.report.cache["prefix"])
    return {"first_ttft_s": stat(first), "followup_ttft_s": stat(follow), "followup_prefix": prefix,
            "ratio": statistics.median(follow) / statistics.median(first),
            "ratios": [f / s for f, s in zip(follow, first)], "target": 0.10,
            "setup": "random:llava-onevision-0.5b, cpu float32, 8 frames, flashvid keep 0.25, 4 new tokens"}


def annotate_ratio(repeat: int) -> dict:
    from flashvid_cli.annotate import AnnotateConfig, annotate

    videos = sorted(str(p) for p in (REPO / "samples" / "demo" / "clips").glob("*.mp4"))[:10]
    config = AnnotateConfig(model=str(REPO / "samples" / "vidq-demo-llava-ov"), device="cpu",
                            ask=AskConfig(method="flashvid", keep=0.25, max_new_tokens=8))
    times: dict[int, list[float]] = {1: [], 5: []}
    with tempfile.TemporaryDirectory() as tmp:
        annotate(videos[:1], QUESTIONS[:1], Path(tmp) / "warm.jsonl", config)  # warm-up
        for r in range(repeat):
            for n in (1, 5):  # interleaved
                started = time.perf_counter()
                summary = annotate(videos, QUESTIONS[:n], Path(tmp) / f"{n}-{r}.jsonl", config)
                times[n].append(time.perf_counter() - started)
                assert summary.done == len(videos) * n and summary.failed == 0, summary
    return {"x1_s": stat(times[1]), "x5_s": stat(times[5]),
            "ratio": statistics.median(times[5]) / statistics.median(times[1]),
            "ratios": [b / a for a, b in zip(times[1], times[5])], "target": 1.5,
            "setup": f"demo model, cpu, {len(videos)} videos, default frames, flashvid keep 0.25, 8 new tokens, "
                     "no encoded-video cache, model load included"}


def second_ask(qa: VideoQA, repeat: int, video: str) -> dict:
    from flashvid_cli.cache import EncodedCache

    config = AskConfig(method="flashvid", keep=0.25, frames=8, max_new_tokens=4)
    qa.ask(video, QUESTIONS[0], config)  # warm-up, no cache
    first, second, states = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeat):
            qa.cache = EncodedCache(root=Path(tmp) / str(r))  # empty: a miss, then a hit
            a = qa.ask(video, QUESTIONS[0], config)
            b = qa.ask(video, QUESTIONS[0], config)
            first.append(a.report.timings.time_to_first_token)
            second.append(b.report.timings.time_to_first_token)
            states.append((a.report.cache["encoded"], b.report.cache["encoded"]))
    return {"first_ttft_s": stat(first), "second_ttft_s": stat(second), "encoded": states,
            "ratio": statistics.median(second) / statistics.median(first),
            "ratios": [s / f for f, s in zip(first, second)], "target": 0.20,
            "setup": "random:llava-onevision-0.5b, cpu float32, 8 frames, flashvid keep 0.25; ask start to first "
                     "token, model load excluded"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="followup,annotate,second")
    parser.add_argument("--video", default=str(REPO / "samples" / "sample.mp4"))
    args = parser.parse_args()
    parts = args.only.split(",")
    out: dict = cpu_context()
    if "followup" in parts or "second" in parts:
        qa = VideoQA("random:llava-onevision-0.5b", device="cpu")
        if "followup" in parts:
            out["followup"] = followup(qa, args.repeat, args.video)
        if "second" in parts:
            out["second_ask"] = second_ask(qa, args.repeat, args.video)
        qa.cache = None
    if "annotate" in parts:
        out["annotate"] = annotate_ratio(args.repeat)
    print(f"{'measure':<34} {'baseline (median s)':>20} {'reused (median s)':>18} {'ratio':>7} {'target':>7}")
    rows = [("followup", "follow-up TTFT / first TTFT", "first_ttft_s", "followup_ttft_s"),
            ("second_ask", "2nd ask TTFT / 1st (cache)", "first_ttft_s", "second_ttft_s"),
            ("annotate", "annotate 10x5 / 10x1 wall", "x1_s", "x5_s")]
    for key, label, base, new in rows:
        if key in out:
            r = out[key]
            print(f"{label:<34} {r[base]['median']:>20.3f} {r[new]['median']:>18.3f} {r['ratio']:>7.3f} "
                  f"{r['target']:>7.2f}")
    print_tail(out, args.repeat)


if __name__ == "__main__":
    main()
