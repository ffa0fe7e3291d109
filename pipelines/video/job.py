"""The decode job: map the frames, choose the frames and the decoder, decode, describe the result.

`run` does the work in any process: in the caller's (`decode(..., timeout_s=None)`) or in the decode worker
(`worker.serve`). It imports numpy, PyAV and (only if asked for) decord, never torch.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..errors import VideoError
from .decord import _decode_decord, unfit_reason
from .exact import _decode_pyav, _TailFrames
from .frame_map import DecodeCounter, FrameMap, scan_packets
from .keyframe import _decode_keyframes, snap_to_keyframes
from .request import Request, check_memory, fit_within
from .rgb import _rotation, to_rgb
from .sampling import fps_indices, uniform_indices
from .sinks import ArraySink
from .tail import verify_tail


def run(req: Request, on_phase=lambda phase: None) -> tuple[dict, np.ndarray]:
    """Decode `req` in this process: (DecodedVideo fields except frames, frames uint8 [T, H, W, 3])."""
    sink = ArraySink()
    meta = run_into(req, sink, on_phase)
    return meta, sink.result(meta.pop("kept"))


def run_into(req: Request, sink, on_phase=lambda phase: None) -> dict:
    """Decode `req` into `sink` (`start(n, (H, W))`, then `put(slot, rgb [H, W, 3])` per frame as decoded);
    returns the DecodedVideo fields except frames, plus "kept": the slots that hold the result, in order.

    Opens `req.file` (absolute) when given; messages name the file as the caller gave it (`req.path`).
    """
    if not req.file or req.file == req.path:
        return _run(req, sink, on_phase)
    try:
        return _run(dataclasses.replace(req, path=req.file), sink, on_phase)
    except VideoError as e:
        raise type(e)(str(e).replace(req.file, req.path)) from None


def _run(req: Request, sink, on_phase) -> dict:
    started = time.perf_counter()
    counter = DecodeCounter()
    fmap = scan_packets(req.path)  # demux only: cheap
    try:
        return _decode_map(req, fmap, counter, started, sink, on_phase)
    finally:
        fmap.close()


def sample_plan(req: Request) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """(frames `req` samples, their (height, width) as decoded, the source's (height, width)), from the packets
    alone: nothing is decoded.

    The count is the one the memory check uses; frames of the map's tail that do not decode can make the decode
    return fewer (never more), and `seek="keyframe"` fewer where samples meet on one keyframe.
    """
    fmap = scan_packets(req.path)  # demux only: cheap
    try:
        seconds = fmap.seconds
        indices, _ = _select(req, seconds, _rate_and_duration(fmap, seconds)[1], [])
        return len(indices), fit_within(fmap.display_hw, req.max_side), tuple(fmap.display_hw)
    finally:
        fmap.close()


def _decode_map(req: Request, fmap, counter, started: float, sink, on_phase) -> dict:
    """Verify the tail, choose frames and decoder, decode: the body of `run` once the packets are mapped."""
    seconds = fmap.seconds
    provisional, _ = _select(req, seconds, _rate_and_duration(fmap, seconds)[1], [])
    check_memory(req, len(provisional), fit_within(fmap.display_hw, req.max_side))  # before decoding anything
    want = {fmap.pts[i] for i in provisional}
    if req.seek == "keyframe":
        want = set(snap_to_keyframes(fmap, provisional))
    if req.decoder == "decord" or req.seek == "keyframe":  # these take PyAV's tail frames from a cache
        keep = lambda f: _rgb(f, req.max_side) if f.pts in want else None  # noqa: E731
    else:  # exact PyAV: the tail's wanted frames go to the sink as they are decoded (`_TailFrames`)
        keep = _TailFrames(sorted(want), req.max_side, sink, counter)
    cache = verify_tail(req.path, fmap, counter, keep)  # the last GOP, decoded once
    notes = list(fmap.notes)
    seconds = fmap.seconds  # [N] since the first frame, as verified
    fps, duration = _rate_and_duration(fmap, seconds)
    notes += _cross_check(fmap, fps)
    indices, sampling = _select(req, seconds, duration, notes)
    source_hw = fmap.display_hw
    out_hw = fit_within(source_hw, req.max_side)
    if out_hw != source_hw:
        notes.append(f"downscaled at decode from {source_hw[1]}x{source_hw[0]} to {out_hw[1]}x{out_hw[0]}")
    decoder = choose_decoder(req, fmap)
    on_phase(decoder)
    plan = getattr(sink, "plan", None)  # a sink that passes frames on in order needs their times first
    extra = {}
    if req.seek == "keyframe":
        kept, indices, sampling, extra = _decode_keyframes(req, fmap, indices, sampling, out_hw, cache, counter,
                                                           notes, sink, plan)
    elif decoder == "decord":
        frames = _decode_decord(req, fmap, indices, out_hw, cache, counter, notes)
        sink.start(len(frames), out_hw)
        if plan is not None:
            plan(times_of(seconds, indices))
        for j, rgb in enumerate(frames):
            sink.put(j, rgb)
        kept = list(range(len(frames)))
    else:
        kept, indices = _decode_pyav(req, fmap, indices, out_hw, keep, cache, counter, notes, sink, plan)
    meta = dict(
        indices=indices,
        timestamps=times_of(seconds, indices),
        fps=fps,
        total_frames=len(fmap.pts),
        duration=duration,
        decoder=decoder,
        sampling=sampling,
        notes=notes,
        source_size=tuple(source_hw),
        stats={
            "pyav_frames_decoded": counter.frames, "pyav_passes": counter.seeks, "converted": counter.converted,
            "decode_s": round(time.perf_counter() - started, 4), **extra,
        },
    )
    meta["kept"] = kept
    return meta


def times_of(seconds: np.ndarray, indices: list[int]) -> list[float]:
    """The reported timestamps (seconds since the first frame, to the microsecond) of frames `indices`."""
    return [round(float(seconds[i]), 6) for i in indices]


def _rgb(frame, max_side: int | None) -> np.ndarray:
    """RGB of a frame at the size the request gets (display orientation, downscaled to max_side)."""
    rot = _rotation(frame)
    hw = (frame.height, frame.width) if rot % 180 == 0 else (frame.width, frame.height)
    return to_rgb(frame, fit_within(hw, max_side), rot)


def _rate_and_duration(fmap: FrameMap, seconds: np.ndarray) -> tuple[float, float]:
    """True average fps from the frame timestamps, and the duration including the last frame's display time."""
    if len(seconds) > 1 and seconds[-1] > 0:
        fps = (len(seconds) - 1) / float(seconds[-1])
        return fps, float(seconds[-1]) + float(np.median(np.diff(seconds)))
    fps = fmap.avg_rate if fmap.avg_rate and 0 < fmap.avg_rate < 1000 else 0.0  # one frame: only the claim
    return fps, (1.0 / fps if fps else 0.0)


def _cross_check(fmap: FrameMap, fps: float) -> list[str]:
    """Notes where the container's claims (frame count, fps) disagree with what decodes."""
    notes = []
    if fmap.claimed != len(fmap.pts):
        notes.append(f"container claims {fmap.claimed} frames, {len(fmap.pts)} decodable")
    if fmap.avg_rate and fps and len(fmap.pts) > 1 and abs(fmap.avg_rate / fps - 1) > 0.1:
        notes.append(f"container reports {fmap.avg_rate:.4g} fps; frame timestamps give {fps:.4g} fps (used)")
    return notes


def _select(req: Request, seconds: np.ndarray, duration: float, notes: list[str]) -> tuple[list[int], str]:
    """The frame indices to decode and a true description of the rule (notes say when a cap changed it)."""
    total = len(seconds)
    if req.fps is not None:
        idx = fps_indices(seconds, req.fps, req.max_frames, duration)
        wanted = len(fps_indices(seconds, req.fps, total, duration))
        if wanted > len(idx):
            gap = (seconds[idx[-1]] - seconds[idx[0]]) / (len(idx) - 1) if len(idx) > 1 else duration
            rate = 1 / gap if gap > 0 else 0.0
            notes.append(
                f"fps={req.fps:g} gives {wanted} frames; capped by max frames {req.max_frames}: "
                f"{len(idx)} frames {gap:.3g} s apart ({rate:.3g} fps effective)"
            )
            return idx, f"fps={req.fps:g} capped to {len(idx)} frames ({rate:.3g} fps effective)"
        return idx, f"fps={req.fps:g} (max {req.max_frames}): {_frames(len(idx))}"
    if req.frames is not None:
        n = req.frames
        if n > total:
            notes.append(f"asked for {n} frames, the video has {total}: returning all of them")
        return uniform_indices(total, n), f"{_frames(n)} uniform" + (f" (all {total})" if n > total else "")
    n = req.max_frames  # no count asked: the default count
    if n > total:
        notes.append(f"the video has {total} frames, fewer than max frames {n}: returning all of them")
    return uniform_indices(total, n), f"{_frames(min(n, total))} uniform" + (" (all)" if n > total else "")


def _frames(n: int) -> str:
    return f"{n} frame" + ("" if n == 1 else "s")


def choose_decoder(req: Request, fmap: FrameMap) -> str:
    """The decoder, chosen from the frame map before any frame is decoded (nothing is tried and thrown away).

    auto and pyav: PyAV's exact path (frames equal to a plain sequential FFmpeg decode, and faster than
    decord's get_batch in benchmarks/bench_decode.py). decord only when asked for, and refused (VideoError)
    where the map shows a file decord is known to get wrong (`decord.unfit_reason`).
    """
    if req.decoder != "decord":
        return "pyav"
    reason = unfit_reason(fmap)
    if reason:
        raise VideoError(f"{req.path}: decord cannot be trusted on this file: {reason} (use --decoder auto)")
    return "decord"
