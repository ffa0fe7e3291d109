"""Peak memory of the whole process tree of `vidq ask --frames 256` on a long 1080p video, against plain decord.

    python benchmarks/bench_memory.py                                  # 10-minute 1080p H.264, 256 frames
    python benchmarks/bench_memory.py --minutes 2 --frames 128 --repeats 2
    python benchmarks/bench_memory.py --pythonpath /path/to/older/checkout   # adds that checkout's vidq as a row

Generates (once, cached in --cache, like bench_decode.py) a 1080p H.264 file of --minutes (x264 `ultrafast`),
then runs each side in a fresh process, interleaved over --repeats, and follows its process tree (the command
and every child, e.g. vidq's decode worker) every 10 ms:

- vidq ask: `python -m flashvid_cli ask VIDEO "What happens in the video?" --frames N --model M --no-cache`
  (the demo model by default: it loads in seconds, so decoding dominates);
- decord at the model's input size: `VideoReader(path, width=w, height=h).get_batch(vidq's uniform indices)`, w x h
  being what the model's preprocessing resizes to (the demo model: 64 x 64);
- decord at full size, for scale;
- the model loaded and nothing else (`VideoQA(model)`): the part of vidq's tree that no video changes (python,
  torch, transformers with what it imports, e.g. torch._dynamo and triton, the weights).

Columns: `tree peak` (the largest sum of the tree's resident set sizes seen by the 10 ms sampling: a short spike
can be missed) and `sum of peaks` (each process's own high-water mark, VmHWM, summed: an upper bound, since
the processes need not peak together), in MiB, the median over repeats; and the wall time. The target of
issue 14: vidq's tree at most 2x decord's at the model's input size. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_decode import generate  # noqa: E402

from flashvid_cli.pipelines import frame_resizer  # noqa: E402
from flashvid_cli.pipelines.video.sampling import uniform_indices  # noqa: E402

QUESTION = "What happens in the video?"
# What answering costs before any video: python, torch, transformers, the model's code and weights.
LOAD_ONLY = "import sys; from flashvid_cli.api import VideoQA; VideoQA(sys.argv[1], device='cpu')"
DECORD = """
import json, sys, decord
path, idx, w, h = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
vr = decord.VideoReader(path, width=w, height=h) if w else decord.VideoReader(path)
frames = vr.get_batch(idx).asnumpy()
print(frames.shape, file=sys.stderr)
"""


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=256, help="uniform frames asked (default 256)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the generated 1080p file (default 10)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved runs of each side (default 1)")
    p.add_argument("--model", default=str(REPO / "samples" / "vidq-demo-llava-ov"), help="the model vidq asks")
    p.add_argument("--cache", type=Path, default=Path("/tmp/vidq_bench_decode"), help="where generated files live")
    p.add_argument("--video", type=Path, default=None, help="use this video instead of generating one")
    p.add_argument("--pythonpath", action="append", default=[], help="also run the vidq of this checkout")
    return p.parse_args()


def _hwm(proc: psutil.Process) -> int:
    """The process's own peak resident set size (VmHWM), bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def follow(cmd: list[str], env: dict[str, str], cwd: str) -> dict:
    """Run `cmd` in `cwd`; sample its process tree every 10 ms: peak of the summed RSS, sum of per-process peaks."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak, hwm = 0, {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0
        for p in tree:
            try:
                total += p.memory_info().rss
                hwm[p.pid] = max(hwm.get(p.pid, 0), _hwm(p))
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, total)
        time.sleep(0.01)
    out, err = proc.communicate()
    code = subprocess.run([sys.executable, "-c", "import flashvid_cli.api as a; print(a.__file__)"], env=env, cwd=cwd,
                          capture_output=True, text=True).stdout.strip() if "flashvid_cli" in cmd else None
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    return {"tree_peak": peak, "sum_of_peaks": sum(hwm.values()), "wall_s": wall, "processes": len(hwm),
            "stdout": out, "code": code}


def main() -> None:
    o = parse()
    video = o.video
    if video is None:
        o.cache.mkdir(parents=True, exist_ok=True)
        seconds = o.minutes * 60
        video = o.cache / f"gen_h264_1080p_long_1920x1080_{seconds:g}s.mp4"
        took = generate(video, "libx264", (1080, 1920), seconds, 30, {"preset": "ultrafast"})
        print(f"# {video.name}: generated in {took:.0f} s (0: cached)", file=sys.stderr, flush=True)
    import av

    with av.open(str(video)) as c:
        s = c.streams.video[0]
        source = (s.codec_context.height, s.codec_context.width)
        indices = json.dumps(uniform_indices(s.frames, o.frames))  # the generated file's count is true
    resizer = frame_resizer(o.model, device="cpu")
    h, w = resizer.size(o.frames, *source)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    ask = [sys.executable, "-m", "flashvid_cli", "ask", str(video), QUESTION, "--frames", str(o.frames),
           "--model", o.model, "--no-cache", "--device", "cpu", "--max-new-tokens", "8", "--json"]
    # `python -m` puts the working directory first on the import path: each checkout runs from its own root
    sides = {"vidq ask": (ask, {**env, "PYTHONPATH": str(REPO)}, str(REPO))}
    for path in o.pythonpath:
        sides[f"vidq ask ({path})"] = (ask, {**env, "PYTHONPATH": path}, path)
    load_only = [sys.executable, "-c", LOAD_ONLY, o.model]
    sides["vidq: the model loaded, no video"] = (load_only, {**env, "PYTHONPATH": str(REPO)}, str(REPO))
    sides[f"decord {w}x{h}"] = ([sys.executable, "-c", DECORD, str(video), indices, str(w), str(h)], env, "/")
    sides["decord full size"] = ([sys.executable, "-c", DECORD, str(video), indices, "0", "0"], env, "/")
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for r in range(o.repeats):
        for name, (cmd, e, cwd) in sides.items():
            runs[name].append(follow(cmd, e, cwd))
            print(f"# repeat {r + 1}: {name} done", file=sys.stderr, flush=True)
    mib = lambda b: b / 2**20  # noqa: E731
    base = statistics.median(x["tree_peak"] for x in runs[f"decord {w}x{h}"])
    rows = []
    for name, xs in runs.items():
        row = {
            "side": name,
            "tree_peak_mib": round(mib(statistics.median(x["tree_peak"] for x in xs)), 1),
            "sum_of_peaks_mib": round(mib(statistics.median(x["sum_of_peaks"] for x in xs)), 1),
            "over_decord_model_size": round(statistics.median(x["tree_peak"] for x in xs) / base, 2),
            "wall_s": round(statistics.median(x["wall_s"] for x in xs), 2),
        }
        if name.startswith("vidq ask"):
            report = json.loads(xs[-1]["stdout"].splitlines()[0])["report"]
            t = report["timings"]
            row.update(decode_wait_s=round(t["decode"], 2), decode_ahead_s=t.get("decode_ahead"),
                       report_wall_s=t.get("wall"), frames_kept=len(report["video"]["frame_indices"]),
                       code=xs[-1]["code"], process_peak_mib=round(mib(report["peak_memory_bytes"]), 1),
                       worker_peak_mib=round(mib(report["decode_worker_peak_rss_bytes"] or 0), 1))
        rows.append(row)
    print(f"Peak memory, {o.frames} uniform frames of {video.name} ({source[1]}x{source[0]}), model {o.model} "
          f"(input {w}x{h}); median of {o.repeats}; MiB; {os.cpu_count()} CPUs")
    cols = ["side", "tree_peak_mib", "sum_of_peaks_mib", "over_decord_model_size", "wall_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    print(json.dumps({"bench": "memory", "video": video.name, "frames": o.frames, "model": o.model,
                      "input_size": [h, w], "repeats": o.repeats, "cpus": os.cpu_count(),
                      "python": platform.python_version(), "rows": rows}))


if __name__ == "__main__":
    main()
