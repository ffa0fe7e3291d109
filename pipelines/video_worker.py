"""The decode job: verify the frame map, choose the frames, decode them with decord or PyAV, describe the result.

`run` does the work in any process. `main` is the entry point of the worker process that `video.decode`
starts: it imports numpy, PyAV and (if used) decord, never torch, and sends the result back over a pipe.
"""

from __future__ import annotations

import bisect
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import video_decord, video_pyav
from .errors import VideoError
from .video_sampling import fps_indices, uniform_indices


@dataclass(frozen=True)
class Request:
    """What to decode; validated by `video.decode` before it gets here."""

    path: str
    frames: int | None
    fps: float | None
    max_frames: int
    decoder: str  # "auto" | "decord" | "pyav"
    max_side: int | None
    hang_in: str = ""  # test hook: "start" or a decoder phase ("decord", "pyav") in which to stall...
    hang_s: float = 0.0  # ...for this long, to exercise the timeout and the decord fallback


def run(req: Request, on_phase=lambda phase: None) -> tuple[dict, np.ndarray]:
    """Decode `req` and return (DecodedVideo fields except frames, frames uint8 [T, H, W, 3])."""
    started = time.perf_counter()
    counter = video_pyav.DecodeCounter()
    fmap = video_pyav.scan(req.path, counter)
    notes = list(fmap.notes)
    seconds = fmap.seconds  # [N] since the first frame
    fps, duration = _rate_and_duration(fmap, seconds)
    notes += _cross_check(fmap, fps)
    indices, sampling = _select(req, seconds, duration, notes)
    source_hw = fmap.display_hw
    out_hw = fit_within(source_hw, req.max_side)
    if out_hw != source_hw:
        notes.append(f"downscaled at decode from {source_hw[1]}x{source_hw[0]} to {out_hw[1]}x{out_hw[0]}")
    frames, indices, decoder = _decode(req, fmap, indices, out_hw, counter, notes, on_phase)
    meta = dict(
        indices=indices,
        timestamps=[round(float(seconds[i]), 6) for i in indices],
        fps=fps,
        total_frames=len(fmap.pts),
        duration=duration,
        decoder=decoder,
        sampling=sampling,
        notes=notes,
        source_size=tuple(source_hw),
        stats={"pyav_frames_decoded": counter.frames, "decode_s": round(time.perf_counter() - started, 4)},
    )
    return meta, frames


def _rate_and_duration(fmap: video_pyav.FrameMap, seconds: np.ndarray) -> tuple[float, float]:
    """True average fps from the frame timestamps, and the duration including the last frame's display time."""
    if len(seconds) > 1 and seconds[-1] > 0:
        fps = (len(seconds) - 1) / float(seconds[-1])
        return fps, float(seconds[-1]) + float(np.median(np.diff(seconds)))
    fps = fmap.avg_rate if fmap.avg_rate and 0 < fmap.avg_rate < 1000 else 0.0  # one frame: only the claim
    return fps, (1.0 / fps if fps else 0.0)


def _cross_check(fmap: video_pyav.FrameMap, fps: float) -> list[str]:
    """Notes where the container's claims (frame count, fps) disagree with what decodes."""
    notes = []
    if fmap.claimed != len(fmap.pts):
        notes.append(f"container claims {fmap.claimed} frames, {len(fmap.pts)} decodable")
    if fmap.avg_rate and fps and len(fmap.pts) > 1 and abs(fmap.avg_rate / fps - 1) > 0.1:
        notes.append(f"container reports {fmap.avg_rate:.4g} fps; frame timestamps give {fps:.4g} fps (used)")
    return notes


def _select(req: Request, seconds: np.ndarray, duration: float, notes: list[str]) -> tuple[list[int], str]:
    """The frame indices to decode and a human-readable description of the rule."""
    total = len(seconds)
    if req.fps is not None:
        idx = fps_indices(seconds, req.fps, req.max_frames, duration)
        return idx, f"fps={req.fps:g} (max {req.max_frames}): {len(idx)} frames"
    n = req.frames if req.frames is not None else req.max_frames
    idx = uniform_indices(total, n)
    if n > total:
        notes.append(f"asked for {n} frames, the video has {total}: returning all of them")
    return idx, f"{n} frames uniform" + (f" (all {total})" if n > total else "")


def fit_within(hw: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(height, width) scaled down, keeping aspect, so the longer side is at most max_side (never scaled up)."""
    h, w = hw
    if max_side is None or max(h, w) <= max_side:
        return (h, w)
    scale = max_side / max(h, w)
    return (max(1, round(h * scale)), max(1, round(w * scale)))


def _decode(req, fmap, indices, out_hw, counter, notes, on_phase) -> tuple[np.ndarray, list[int], str]:
    """Decode with decord where it agrees with the frame map, else (or when forced) with PyAV."""
    if req.decoder in ("auto", "decord"):
        on_phase("decord")
        try:
            frames = video_decord.sample(req.path, fmap, indices, out_hw, notes)
            _cross_decode_last(req, fmap, indices, out_hw, counter, frames)
            return frames, indices, "decord"
        except video_decord.DecordUnfit as e:
            if req.decoder == "decord":
                raise VideoError(f"{req.path}: decord cannot be trusted on this file: {e}") from None
            notes.append(f"{e}; decoded with PyAV instead")
    on_phase("pyav")
    got = video_pyav.sample(req.path, fmap, indices, out_hw, counter)
    if not got:
        raise VideoError(f"{req.path}: none of the sampled frames decode (corrupt video data)")
    real = [min(bisect.bisect_left(fmap.pts, pts), len(fmap.pts) - 1) for pts, _ in got]
    if len(real) < len(indices):
        notes.append(f"{len(indices) - len(real)} sampled frames did not decode; returning {len(real)}")
    return np.stack([rgb for _, rgb in got]), real, "pyav"


def _maybe_hang(req: Request, phase: str) -> None:
    """Stall in `phase` if the request asks to (tests only)."""
    if req.hang_in == phase:
        time.sleep(req.hang_s)


def _cross_decode_last(req, fmap, indices, out_hw, counter, frames) -> None:
    """Decode the last sampled frame with PyAV too (one GOP) and require decord's to match it."""
    got = video_pyav.sample(req.path, fmap, indices[-1:], out_hw, counter)
    if got and got[0][0] == fmap.pts[indices[-1]]:  # compare only if PyAV decoded that exact frame
        video_decord.check_against(frames[-1], got[0][1], indices[-1])


def _peak_rss_bytes() -> int | None:
    """This process's own peak resident set size so far, in bytes: Linux's VmHWM, which starts afresh at exec
    (``ru_maxrss`` would not do: it keeps the forking parent's peak across the exec). None where unknown."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def main() -> None:
    """Worker process entry: argv = [write fd, request JSON]; sends ("phase"|"ok"|"error", ...) then frame bytes."""
    from multiprocessing.connection import Connection

    conn = Connection(int(sys.argv[1]), readable=False)
    req = Request(**json.loads(sys.argv[2]))
    try:
        _maybe_hang(req, "start")

        def on_phase(phase: str) -> None:
            conn.send(("phase", phase))
            _maybe_hang(req, phase)

        meta, frames = run(req, on_phase)
        meta["stats"]["torch_loaded"] = "torch" in sys.modules  # the worker must stay light
        meta["stats"]["peak_rss_bytes"] = _peak_rss_bytes()  # the caller's report adds it to its own peak
        frames = np.ascontiguousarray(frames)
        conn.send(("ok", meta, frames.shape))
        conn.send_bytes(memoryview(frames).cast("B"))  # raw buffer: no pickling of hundreds of MB
    except VideoError as e:
        conn.send(("error", str(e)))
    except Exception as e:  # anything else still reaches the user as one line
        conn.send(("error", f"{req.path}: decoding failed: {type(e).__name__}: {video_pyav.clean_cause(e)}"))
    finally:
        conn.close()


if __name__ == "__main__":
    main()
