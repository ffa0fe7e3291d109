"""Long videos in bounded memory (issue 27): peak memory of the whole process tree of ``vidq ask --fps 1``, streaming
(``--stream``) against the whole-clip path, on the demo model, with per-stage frames/s from the report.

Generates its own videos (a moving square, ``--size`` px, ``--src-fps`` frames a second, PyAV mpeg4) under
``--dir`` (default /tmp), one per ``--minutes`` value. Each run is a fresh ``vidq ask`` subprocess; its tree (the
CLI and the decode worker) is sampled with psutil every 20 ms and the largest sum of RSS is the peak. Prints a
table, then one JSON line.

    python benchmarks/bench_long_video.py --minutes 10 30 --method pool --keep 0.0625
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "samples" / "vidq-demo-llava-ov"


def make_video(path: Path, minutes: float, size: int, fps: int) -> Path:
    """A ``minutes``-long clip of a square moving over a gradient, ``size`` x ``size`` at ``fps`` (mpeg4)."""
    import av

    if path.is_file():
        return path
    frames = int(minutes * 60 * fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        base = np.tile(np.linspace(0, 255, size, dtype=np.uint8)[None, :, None], (size, 1, 3))
        for i in range(frames):
            img = base.copy()
            x = (i * 3) % (size - size // 4)
            img[size // 4: size // 2, x: x + size // 4] = (255, (i * 7) % 256, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def run(video: Path, stream: bool, args: argparse.Namespace) -> dict:
    """One ``vidq ask`` subprocess: its tree's peak RSS (bytes), wall seconds, the report's stage times."""
    import psutil

    frames = int(args.minutes_of[video] * 60 * args.fps)
    argv = [sys.executable, "-m", "flashvid_cli", "ask", str(video), "What moves?", "--model", args.model,
            "--device", "cpu", "--method", args.method, "--keep", str(args.keep), "--fps", str(args.fps),
            "--max-frames", str(frames), "--max-new-tokens", "4", "--no-cache", "--json"]
    if stream:
        argv.append("--stream")
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    out, errs = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": errs.strip().splitlines()[-1] if errs.strip() else f"exit {proc.returncode}"}
    report = json.loads(out.splitlines()[-1])["report"]
    t = report["timings"]
    n = len(report["video"]["frame_indices"])
    decode = t.get("decode_ahead") or t["decode"]  # decoded while the model loaded: the decode's own time
    return {"frames": n, "peak_tree_rss_mib": round(peak / 2**20), "wall_s": round(wall, 1),
            "fps_decode": round(n / max(decode, 1e-9), 1), "fps_preprocess": round(n / max(t["preprocess"], 1e-9), 1),
            "fps_encode": round(n / max(t["encode"], 1e-9), 1), "fps_compress": round(n / max(t["compress"], 1e-9), 1),
            "tokens": report["tokens"]}


def estimate(video: Path, args: argparse.Namespace) -> dict:
    """``vidq ask --plan``'s memory estimate (MiB) of the run, whole clip and streamed: what grows with the video,
    not the weights or the interpreter (flashvid_cli/plan.py states the formula)."""
    from flashvid_cli.config import AskConfig
    from flashvid_cli.plan import plan_request

    frames = int(args.minutes_of[video] * 60 * args.fps)
    config = AskConfig(method=args.method, keep=args.keep, fps=args.fps, max_frames=frames, max_new_tokens=4)
    plan = plan_request(video, config, args.model, device="cpu")
    return {"whole": round(plan.whole_bytes / 2**20, 1), "stream": round(plan.stream_bytes / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10.0])
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--src-fps", type=int, default=4)
    parser.add_argument("--model", default=str(DEMO))
    parser.add_argument("--method", default="pool")
    parser.add_argument("--keep", type=float, default=0.0625)
    parser.add_argument("--dir", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    args.minutes_of = {}
    rows = []
    for minutes in args.minutes:
        video = make_video(args.dir / f"vidq_long_{minutes:g}min_{args.size}px.mp4", minutes, args.size, args.src_fps)
        args.minutes_of[video] = minutes
        est = estimate(video, args)
        for stream in (False, True):
            rows.append({"minutes": minutes, "path": "stream" if stream else "whole clip",
                         "plan_mib": est["stream" if stream else "whole"], **run(video, stream, args)})
    cols = ["minutes", "path", "frames", "plan_mib", "peak_tree_rss_mib", "wall_s", "fps_decode", "fps_preprocess",
            "fps_encode", "fps_compress"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols[:2]) + " | " + (
            row["error"] if "error" in row else " | ".join(str(row[c]) for c in cols[2:])))
    print(json.dumps({"bench": "long_video", "method": args.method, "keep": args.keep, "fps": args.fps,
                      "size": args.size, "rows": rows}))


if __name__ == "__main__":
    main()
