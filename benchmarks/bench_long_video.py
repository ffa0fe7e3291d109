"""Long videos in bounded memory (issue 27): peak memory of the whole process tree of ``vidq ask --fps 1``, streaming
(``--stream``) against the whole-clip path, on the demo model, with per-stage frames/s from the report.

Generates its own videos (a moving square, ``--size`` px, ``--src-fps`` frames a second, PyAV mpeg4) under
``--dir`` (default /tmp), one per ``--minutes`` value. Each run is a fresh ``vidq ask`` subprocess; its tree (the
CLI and the decode worker) is sampled with psutil every 20 ms and the largest sum of RSS is the peak. Prints a
table, then one JSON line.

    python benchmarks/bench_long_video.py --minutes 10 30 --method pool --keep 0.0625
    python benchmarks/bench_long_video.py --minutes 1 4 --model random:llava-onevision-0.5b --paths stream

``--code DIR`` runs ``vidq ask`` from another source tree (e.g. ``git archive`` of an older commit, with
``flashvid_cli/pipelines`` and ``flashvid_cli/kernels`` linked to its ``pipelines`` and ``kernels``), to compare
before and after a change on the same videos and machine.
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
    frames = int(args.minutes_of[video] * 60 * args.fps)
    argv = [sys.executable, "-m", "flashvid_cli", "ask", str(video), "What moves?", "--model", args.model,
            "--device", "cpu", "--method", args.method, "--keep", str(args.keep), "--fps", str(args.fps),
            "--max-frames", str(frames), "--max-new-tokens", "4", "--no-cache", "--json"]
    if stream:
        argv.append("--stream")
    env = None
    if args.code is not None:  # another checkout's code: first on the path, and the working directory
        import os

        env = {**os.environ, "PYTHONPATH": str(args.code)}
    peak, wall, out, errs, code = peak_of(argv, env, args.code)
    if code != 0:
        return {"error": errs.strip().splitlines()[-1] if errs.strip() else f"exit {code}"}
    report = json.loads(out.splitlines()[-1])["report"]
    t = report["timings"]
    n = len(report["video"]["frame_indices"])
    decode = t.get("decode_ahead") or t["decode"]  # decoded while the model loaded: the decode's own time
    return {"frames": n, "peak_tree_rss_mib": round(peak / 2**20), "wall_s": round(wall, 1),
            "fps_decode": round(n / max(decode, 1e-9), 1), "fps_preprocess": round(n / max(t["preprocess"], 1e-9), 1),
            "fps_encode": round(n / max(t["encode"], 1e-9), 1), "fps_compress": round(n / max(t["compress"], 1e-9), 1),
            "tokens": report["tokens"]}


# --frames-only: the decode alone, as the stream path gets its frames (whole, as before the streamed decode, or a
# chunk at a time), resized to the model's input size; prints the frame count and the most frames held at once.
FRAMES_ONLY = """
import sys
from flashvid_cli.pipelines import frame_resizer
from flashvid_cli.pipelines.video import decode
from flashvid_cli.pipelines.video.stream import decode_stream
video, model, fps, frames, stream = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
resize = frame_resizer(model, "cpu")
if stream:
    with decode_stream(video, chunk=16, fps=fps, max_frames=frames, resize=resize) as s:
        n = sum(len(chunk.frames) for chunk in s)
    print(n, s.decoded.stats["frames_held_max"], tuple(s.decoded.stats["resized_to"] or ()))
else:
    d = decode(video, fps=fps, max_frames=frames, resize=resize)
    print(len(d.frames), len(d.frames), d.frames.shape[1:3])
"""


def peak_of(argv: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[int, float, str, str, int]:
    """Run ``argv``; (its process tree's peak RSS in bytes, sampled every 20 ms, wall s, stdout, stderr, exit)."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    out, errs = proc.communicate()
    return peak, time.perf_counter() - started, out, errs, proc.returncode


def run_frames(video: Path, stream: bool, args: argparse.Namespace) -> dict:
    """The decode alone (``--frames-only``): the tree's peak RSS and the most frames held at once."""
    frames = int(args.minutes_of[video] * 60 * args.fps)
    argv = [sys.executable, "-c", FRAMES_ONLY, str(video), args.model, str(args.fps), str(frames), str(int(stream))]
    peak, wall, out, errs, code = peak_of(argv)
    if code != 0:
        return {"error": errs.strip().splitlines()[-1] if errs.strip() else f"exit {code}"}
    n, held, _ = out.split(maxsplit=2)
    return {"frames": int(n), "held_max": int(held), "peak_tree_rss_mib": round(peak / 2**20), "wall_s": round(wall, 1)}


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
    parser.add_argument("--paths", nargs="+", choices=["whole", "stream"], default=["whole", "stream"])
    parser.add_argument("--code", type=Path, default=None, help="run vidq ask from this source tree")
    parser.add_argument("--frames-only", action="store_true",
                        help="measure the decode alone, frames resized to --model's input size: whole or streamed")
    args = parser.parse_args()
    args.minutes_of = {}
    rows = []
    for minutes in args.minutes:
        video = make_video(args.dir / f"vidq_long_{minutes:g}min_{args.size}px.mp4", minutes, args.size, args.src_fps)
        args.minutes_of[video] = minutes
        est = estimate(video, args) if not args.frames_only else {}
        for stream in [path == "stream" for path in args.paths]:
            measured = run_frames(video, stream, args) if args.frames_only else run(video, stream, args)
            rows.append({"minutes": minutes, "path": "stream" if stream else "whole clip",
                         "plan_mib": est.get("stream" if stream else "whole"), **measured})
    cols = ["minutes", "path", "frames", "plan_mib", "peak_tree_rss_mib", "wall_s", "fps_decode", "fps_preprocess",
            "fps_encode", "fps_compress"]
    if args.frames_only:
        cols = ["minutes", "path", "frames", "held_max", "peak_tree_rss_mib", "wall_s"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols[:2]) + " | " + (
            row["error"] if "error" in row else " | ".join(str(row[c]) for c in cols[2:])))
    print(json.dumps({"bench": "long_video", "model": args.model, "method": args.method, "keep": args.keep,
                      "fps": args.fps, "size": args.size, "code": str(args.code or REPO), "rows": rows}))


if __name__ == "__main__":
    main()
