"""vidq's exact decode against plain decord `get_batch` and a sequential PyAV decode, with a frame check.

    python benchmarks/bench_decode.py                        # the issue's three files + ../shared/videos
    python benchmarks/bench_decode.py --scale 0.5 --minutes 2 --repeats 3 --frames 32

Generates (once, cached in --cache) the three files of issue 14: 1080p HEVC 10 s (libx265), 1080p H.264
30 s (x264's default GOP of 250), 480p H.264 10 min; `--scale` shrinks their picture and `--minutes` the long
one, since encoding is slow on a shared 2-core machine (presets are fast ones: see GENERATED). Then, on
those and on every file of --videos (default ../shared/videos), it times with interleaved repeats (median):

- vidq: `flashvid_cli.pipelines.video.decode(path, frames=N, max_side=None)`, the default exact path, in
  its long-lived worker (the frames handed back over the pipe are included);
- vidq-kf: the same with `seek="keyframe"` (`--seek keyframe`: each frame snapped to the nearest keyframe,
  only keyframes decoded; approximate), with the mean and max offset of its frames from the asked times and
  the number of distinct frames it returned;
- decord: `VideoReader(path).get_batch(uniform indices over len(vr)).asnumpy()`, in this process;
- pyav-seq: every frame decoded in order by PyAV (frame + slice threads), nothing converted.

and checks each decoder's frames against a plain sequential PyAV decode (PyAV's default threading):
`exact` (bit-equal at the indices it reports), `same` (each the right picture, mean |diff| <= 3/255: another
colour conversion), `WRONG n` (n frames are other pictures, e.g. padding copies), or the error. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from flashvid_cli.pipelines.video import decode  # noqa: E402
from flashvid_cli.pipelines.video.sampling import uniform_indices  # noqa: E402

# name: (codec, (height, width) at scale 1, seconds (None: --minutes), fps, encoder options)
GENERATED = {
    "gen_hevc_1080p_10s.mp4": ("libx265", (1080, 1920), 10, 30,
                               {"preset": "ultrafast", "x265-params": "log-level=none"}),
    "gen_h264_1080p_30s.mp4": ("libx264", (1080, 1920), 30, 30, {"preset": "veryfast"}),  # default GOP: 250
    "gen_h264_480p_long.mp4": ("libx264", (480, 854), None, 30, {"preset": "ultrafast"}),
}


@dataclass(frozen=True)
class Options:
    frames: int
    repeats: int
    scale: float
    minutes: float
    cache: Path
    videos: Path | None
    generate_only: bool = False


def parse() -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=32, help="uniform frames per decode (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed repeats per decoder (default 3)")
    p.add_argument("--scale", type=float, default=1.0, help="picture size of the generated files (1.0: 1080p/480p)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the long generated file (default 10)")
    p.add_argument("--cache", type=Path, default=Path("/tmp/vidq_bench_decode"), help="where generated files live")
    p.add_argument("--videos", default=str(REPO.parent / "shared" / "videos"), help="real files ('' to skip)")
    p.add_argument("--generate-only", action="store_true", help="only generate (and cache) the three files")
    a = p.parse_args()
    videos = Path(a.videos) if a.videos and Path(a.videos).is_dir() else None  # (Path("") would be ".")
    return Options(a.frames, a.repeats, a.scale, a.minutes, a.cache, videos, a.generate_only)


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image [2h, 2w, 3] to pan across (real motion, no noise to inflate the files)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    big = np.kron(small, np.ones((32, 32, 1), np.uint8))[: 2 * h, : 2 * w]
    yy, xx = np.mgrid[0 : 2 * h, 0 : 2 * w]
    big[..., 1] = (big[..., 1].astype(np.int32) + (xx // 3 + yy // 5)) % 256
    return np.ascontiguousarray(big)


def generate(path: Path, codec: str, hw: tuple[int, int], seconds: float, fps: int, options: dict) -> float:
    """Encode a panning, cutting clip with PyAV; returns the seconds it took (0 if cached)."""
    if path.exists():
        return 0.0
    started = time.perf_counter()
    h, w = hw
    tex = texture(h, w)
    tmp = path.with_suffix(".part" + path.suffix)
    with av.open(str(tmp), "w") as out:
        s = out.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = options
        for i in range(int(seconds * fps)):
            scene = i // (fps * 4)  # a cut every 4 s: a new pan direction and brightness
            x = (i * (3 + scene % 5)) % w
            y = (i * (1 + scene % 3)) % h
            img = tex[y : y + h, x : x + w]
            if scene % 2:
                img = 255 - img
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    tmp.rename(path)
    return time.perf_counter() - started


def sequential(path: Path, wanted: set[int], threaded: bool = True) -> tuple[int, dict[int, np.ndarray], float]:
    """Every frame decoded in order, with frame + slice threads (timed) or PyAV's defaults (the plain decode
    that is the reference: frame threading conceals damage differently); returns (count, {index: rgb}, s)."""
    started = time.perf_counter()
    out, n = {}, 0
    try:
        c = av.open(str(path))
    except av.error.FFmpegError:
        return 0, out, time.perf_counter() - started
    with c:
        if not c.streams.video:
            return 0, out, time.perf_counter() - started
        s = max(c.streams.video, key=lambda v: (v.width * v.height, -v.index))  # vidq's rule, without dispositions
        if threaded:
            s.thread_type = "AUTO"
        for packet in c.demux(s):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                continue
            for f in frames:
                if n in wanted:
                    rgb = f.to_ndarray(format="rgb24")
                    k = int(round((f.rotation or 0) / 90))
                    out[n] = np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb
                n += 1
    return n, out, time.perf_counter() - started


def run_vidq(path: Path, n: int):
    v = decode(path, frames=n, max_side=None, timeout_s=300)
    return v.indices, v.frames


def run_vidq_keyframe(path: Path, n: int):
    v = decode(path, frames=n, max_side=None, timeout_s=300, seek="keyframe")
    return v.indices, v.frames, v.stats


def run_decord(path: Path, n: int):
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    idx = uniform_indices(len(vr), n)
    return idx, vr.get_batch(idx).asnumpy()


def verdict(indices, frames, total: int, count: int, ref: dict[int, np.ndarray]) -> str:
    """exact / same / WRONG n, comparing each frame with the sequential decode's frame at its index."""
    if count != total:
        return f"WRONG count {count} vs {total}"
    wrong, exact = 0, True
    for i, f in zip(indices, frames):
        r = ref.get(i)
        if r is None or r.shape != f.shape:
            wrong += 1
            continue
        if not np.array_equal(r, f):
            exact = False
            if np.abs(r.astype(np.int16) - f).mean() > 3:
                wrong += 1
    return f"WRONG {wrong}" if wrong else ("exact" if exact else "same")


def bench_file(path: Path, o: Options) -> dict:
    """Time the three decoders on one file, interleaved, and check their frames."""
    runners = {"vidq": run_vidq, "vidq-kf": run_vidq_keyframe, "decord": run_decord}
    times: dict[str, list[float]] = {k: [] for k in (*runners, "pyav-seq")}
    results: dict[str, object] = {}
    for fn in runners.values():  # warm-up, untimed: file cache, vidq's worker start, decord's import
        try:
            fn(path, o.frames)
        except Exception:  # noqa: BLE001, S110  (failures are recorded by the timed runs)
            pass
    for _ in range(o.repeats):
        for name, fn in runners.items():
            started = time.perf_counter()
            try:
                got = fn(path, o.frames)
            except Exception as e:  # noqa: BLE001  (a decoder's failure is a result here)
                results[name] = f"error: {' '.join(str(e).split())[:60]}"
                continue
            times[name].append(time.perf_counter() - started)
            results[name] = got
        wanted = set().union(*(set(r[0]) for r in results.values() if isinstance(r, tuple)))
        count, _, seconds = sequential(path, set())
        times["pyav-seq"].append(seconds)
    count, ref, _ = sequential(path, wanted, threaded=False)  # the reference, untimed
    row = {"file": path.name, "frames_total": count}
    if count == 0:  # FFmpeg decodes nothing: only a clear error is right, no timing is meaningful
        times = {k: [] for k in times}
    for name in times:
        row[f"{name}_s"] = statistics.median(times[name]) if times[name] else None
    for name in runners:
        r = results[name]
        if isinstance(r, str):
            row[f"{name}_frames"] = r if count else f"{r} (FFmpeg: no frames either)"
        else:
            total = _decord_len(path) if name == "decord" else count
            row[f"{name}_frames"] = verdict(r[0], r[1], count, total, ref)
            if name == "vidq-kf":
                row["kf_returned"] = len(r[0])
                row["kf_offset_mean_s"] = r[2]["seek_offset_mean_s"]  # seconds from the asked frames' times
                row["kf_offset_max_s"] = r[2]["seek_offset_max_s"]
    if row["vidq_s"] and row["decord_s"]:
        row["vidq_over_decord"] = row["vidq_s"] / row["decord_s"]
    if row["vidq-kf_s"] and row["decord_s"]:
        row["kf_over_decord"] = row["vidq-kf_s"] / row["decord_s"]
    if row["vidq-kf_s"] and row["vidq_s"]:
        row["kf_over_vidq"] = row["vidq-kf_s"] / row["vidq_s"]
    results.clear()
    return row


def _decord_len(path: Path) -> int:
    import decord

    return len(decord.VideoReader(str(path), ctx=decord.cpu(0)))


def fmt(x) -> str:
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def main() -> None:
    o = parse()
    o.cache.mkdir(parents=True, exist_ok=True)
    files, generated_s = [], {}
    for name, (codec, hw, seconds, fps, opts) in GENERATED.items():
        hw = (int(hw[0] * o.scale) // 2 * 2, int(hw[1] * o.scale) // 2 * 2)
        seconds = seconds if seconds is not None else o.minutes * 60
        path = o.cache / f"{Path(name).stem}_{hw[1]}x{hw[0]}_{seconds:g}s{Path(name).suffix}"
        generated_s[path.name] = round(generate(path, codec, hw, seconds, fps, opts), 1)
        files.append(path)
        print(f"# {path.name}: generated in {generated_s[path.name]} s (0: cached)", file=sys.stderr, flush=True)
    if o.generate_only:
        return
    if o.videos is not None:
        files += sorted(p for p in o.videos.rglob("*") if p.is_file() and p.suffix != ".md")
    rows = []
    for path in files:
        rows.append(bench_file(path, o))
        print(f"# done {path.name}", file=sys.stderr, flush=True)
    cols = ["file", "frames_total", "vidq_s", "vidq-kf_s", "decord_s", "pyav-seq_s", "vidq_over_decord",
            "kf_over_decord", "kf_over_vidq", "kf_returned", "kf_offset_mean_s", "kf_offset_max_s",
            "vidq_frames", "vidq-kf_frames", "decord_frames"]
    print(f"vidq decode vs decord get_batch vs sequential PyAV: {o.frames} uniform frames, median of {o.repeats} "
          f"interleaved repeats, seconds; {os.cpu_count()} CPUs (shared)")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    ratios = [r["vidq_over_decord"] for r in rows if r.get("vidq_over_decord")]
    summary = {
        "bench": "decode", "frames": o.frames, "repeats": o.repeats, "scale": o.scale, "minutes": o.minutes,
        "cpus": os.cpu_count(), "python": platform.python_version(), "av": av.__version__,
        "generated_s": generated_s, "rows": rows,
        "max_vidq_over_decord": max(ratios) if ratios else None,
        "all_vidq_exact": all(r["vidq_frames"] == "exact" for r in rows if r["frames_total"]),
        "all_vidq_kf_exact": all(r["vidq-kf_frames"] == "exact" for r in rows if r["frames_total"]),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
