"""The decode job: map the frames, choose the frames and the decoder, decode, describe the result.

`run` does the work in any process. `main` is the entry point of the long-lived worker process that
`video.DecodeWorker` starts: it imports numpy, PyAV and (only if asked for) decord, never torch, serves one
request after another from a pipe, and exits as soon as its parent is gone.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import video_decord, video_pyav
from .errors import VideoError
from .video_sampling import fps_indices, uniform_indices


class VideoTooLarge(VideoError):
    """The frames a request asks for would not fit in memory; raised before any frame is decoded."""


@dataclass(frozen=True)
class Request:
    """What to decode; validated by `video.decode` before it gets here."""

    path: str
    frames: int | None
    fps: float | None
    max_frames: int
    decoder: str  # "auto" | "decord" | "pyav"
    max_side: int | None
    max_bytes: int | None = None  # refuse requests whose frames need more; None: the memory available now
    keep_pixels: int | None = None  # the caller resizes as frames arrive and keeps at most this many px per frame...
    chunk: int = 2  # ...holding this many at decoded size meanwhile (for the memory estimate)
    file: str = ""  # the absolute path opened (a long-lived worker's working directory is not the caller's)
    hang_in: str = ""  # test hook: "start" or a decoder phase ("decord", "pyav") in which to stall...
    hang_s: float = 0.0  # ...for this long, to exercise the deadline
    seek: str = "exact"  # "exact" | "keyframe": each sampled frame snapped to the nearest keyframe (approximate)


def run(req: Request, on_phase=lambda phase: None) -> tuple[dict, np.ndarray]:
    """Decode `req` in this process: (DecodedVideo fields except frames, frames uint8 [T, H, W, 3])."""
    sink = ArraySink()
    meta = run_into(req, sink, on_phase)
    return meta, sink.result(meta.pop("kept"))


class ArraySink:
    """Receives the frames of a decode into one preallocated array, each in its slot, as they are decoded."""

    def start(self, n: int, hw: tuple[int, int]) -> None:
        """(Re)start the result: n slots of (H, W); a second call discards what was put (see `serve`)."""
        self.array = np.empty((n, *hw, 3), np.uint8)  # [T, H, W, 3]

    def put(self, slot: int, rgb: np.ndarray) -> None:
        self.array[slot] = rgb

    def buffer(self, slot: int) -> np.ndarray:
        """Where frame `slot`'s bytes go when they arrive raw (then `filled(slot)`)."""
        return self.array[slot]

    def filled(self, slot: int) -> None:
        pass

    def result(self, kept: list[int]) -> np.ndarray:
        """The frames of the `kept` slots (all of them, without a copy, unless some did not decode)."""
        return self.array if len(kept) == len(self.array) else self.array[kept]


class PipeSink:
    """Sends each frame to the caller the moment it is converted: the worker never holds the whole set."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def start(self, n: int, hw: tuple[int, int]) -> None:
        self.conn.send(("frames", n, tuple(hw)))

    def put(self, slot: int, rgb: np.ndarray) -> None:
        self.conn.send(("frame", slot))
        self.conn.send_bytes(memoryview(np.ascontiguousarray(rgb)).cast("B"))  # raw bytes, no pickling


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
    counter = video_pyav.DecodeCounter()
    fmap = video_pyav.scan_packets(req.path)  # demux only: cheap
    try:
        return _decode_map(req, fmap, counter, started, sink, on_phase)
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
    cache = video_pyav.verify_tail(req.path, fmap, counter, keep)  # the last GOP, decoded once
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
    extra = {}
    if req.seek == "keyframe":
        kept, indices, sampling, extra = _decode_keyframes(req, fmap, indices, sampling, out_hw, cache, counter,
                                                           notes, sink)
    elif decoder == "decord":
        frames = _decode_decord(req, fmap, indices, out_hw, cache, counter, notes)
        sink.start(len(frames), out_hw)
        for j, rgb in enumerate(frames):
            sink.put(j, rgb)
        kept = list(range(len(frames)))
    else:
        kept, indices = _decode_pyav(req, fmap, indices, out_hw, keep, cache, counter, notes, sink)
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
        stats={
            "pyav_frames_decoded": counter.frames, "pyav_passes": counter.seeks, "converted": counter.converted,
            "decode_s": round(time.perf_counter() - started, 4), **extra,
        },
    )
    meta["kept"] = kept
    return meta


class _TailFrames:
    """The `keep` of the tail pass on the PyAV path: puts each wanted frame into the sink the moment it is
    decoded, as the sampling pass does, instead of holding converted frames until the map is verified.

    Holding them cost a fresh buffer per frame (all of a short clip's frames are in its last group of
    pictures: 30 x 2.3 MB page-faulted for a 1080x720 clip, 8 x 100 MB for an 8K one) and kept them in
    memory. The sink is started, at the first wanted frame, for the frames wanted before verification
    (`want`, sorted pts); `slots` then says where each verified target goes (`_decode_pyav`).
    """

    def __init__(self, want: list[int], max_side: int | None, sink, counter) -> None:
        self.slot_of = {t: j for j, t in enumerate(want)}
        self.max_side, self.sink, self.counter = max_side, sink, counter
        self.hw: tuple[int, int] | None = None  # (H, W) the sink was started with

    def __call__(self, frame) -> int | None:
        """Put `frame` into its slot if it is wanted; returns the slot (None: not wanted, or of another size)."""
        slot = self.slot_of.get(frame.pts)
        if slot is None:
            return None
        rot = video_pyav._rotation(frame)  # noqa: SLF001
        hw = fit_within((frame.height, frame.width) if rot % 180 == 0 else (frame.width, frame.height), self.max_side)
        if self.hw is None:
            self.sink.start(len(self.slot_of), hw)
            self.hw = hw
        elif hw != self.hw:  # the picture size changed within the stream: leave this one to the sampling pass
            return None
        self.counter.converted += 1
        self.sink.put(slot, video_pyav.to_rgb(frame, hw, rot))
        return slot

    def slots(self, targets: list[int], out_hw: tuple[int, int], put: dict[int, int]) -> tuple[list[int], set[int]]:
        """The slot of each verified target (sorted pts) and the targets already in theirs (`put`: the tail
        pass's {pts: slot}). The sink is kept when verification changed nothing (the same targets at the same
        size), else started again for `targets` (the caller's result is replaced; the count it was started with
        must be the final one: a caller may size its frames by the count, e.g. Qwen3-VL's pixel budget)."""
        if self.hw == out_hw and targets == list(self.slot_of):
            return list(range(len(targets))), {t for t in targets if t in put}
        self.sink.start(len(targets), out_hw)
        return list(range(len(targets))), set()


def _rgb(frame, max_side: int | None) -> np.ndarray:
    """RGB of a frame at the size the request gets (display orientation, downscaled to max_side)."""
    rot = video_pyav._rotation(frame)  # noqa: SLF001
    hw = (frame.height, frame.width) if rot % 180 == 0 else (frame.width, frame.height)
    return video_pyav.to_rgb(frame, fit_within(hw, max_side), rot)


def frame_bytes(n: int, hw: tuple[int, int]) -> int:
    """Bytes of n uint8 RGB frames of (height, width)."""
    return n * hw[0] * hw[1] * 3


def check_memory(req: Request, n: int, hw: tuple[int, int]) -> None:
    """Refuse (VideoTooLarge) a request whose frames would not fit in the caller's array (the worker holds
    only frames in flight). The limit is `req.max_bytes`, else the memory available now (psutil). A caller that
    resizes as frames arrive (`req.keep_pixels`) holds n frames of at most that many pixels and `req.chunk` at
    decoded size."""
    need = frame_bytes(n, hw)
    if req.keep_pixels is not None:
        need = n * 3 * min(hw[0] * hw[1], req.keep_pixels) + frame_bytes(min(n, req.chunk), hw)
    if req.max_bytes is not None:
        limit, what = req.max_bytes, "the limit"
    else:
        import psutil

        limit, what = psutil.virtual_memory().available, "available"
    if need > limit:
        size = f"at {hw[1]}x{hw[0]}" if req.keep_pixels is None else f"of {hw[1]}x{hw[0]} resized for the model"
        raise VideoTooLarge(
            f"{req.path}: {n} frames {size} need {_gib(need)} of memory ({_gib(limit)} {what}): "
            "ask for fewer frames (--frames, --max-frames, --fps)"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


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


def fit_within(hw: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(height, width) scaled down, keeping aspect, so the longer side is at most max_side (never scaled up)."""
    h, w = hw
    if max_side is None or max(h, w) <= max_side:
        return (h, w)
    scale = max_side / max(h, w)
    return (max(1, round(h * scale)), max(1, round(w * scale)))


def choose_decoder(req: Request, fmap: video_pyav.FrameMap) -> str:
    """The decoder, chosen from the frame map before any frame is decoded (nothing is tried and thrown away).

    auto and pyav: PyAV's exact path (frames equal to a plain sequential FFmpeg decode, and faster than
    decord's get_batch in benchmarks/bench_decode.py). decord only when asked for, and refused (VideoError)
    where the map shows a file decord is known to get wrong (`video_decord.unfit_reason`).
    """
    if req.decoder != "decord":
        return "pyav"
    reason = video_decord.unfit_reason(fmap)
    if reason:
        raise VideoError(f"{req.path}: decord cannot be trusted on this file: {reason} (use --decoder auto)")
    return "decord"


def _decode_pyav(req, fmap, indices, out_hw, tail, put, counter, notes, sink) -> tuple[list[int], list[int]]:
    """Frames at `indices` via `video_pyav.sample` into `sink` as they are converted; those of the last group
    of pictures are there already (`tail`: the tail pass's `_TailFrames`, `put`: what it put, {pts: slot}).

    Returns (slots kept, their frame indices): a target that did not decode took the next frame that does,
    and a frame taken twice is kept once.
    """
    targets = sorted({fmap.pts[i] for i in indices})
    slots, done = tail.slots(targets, out_hw, put)
    taken: list[int | None] = [t if t in done else None for t in targets]
    todo = [j for j, t in enumerate(targets) if t not in done]

    def put_frame(jj: int, frame) -> None:
        counter.converted += 1
        sink.put(slots[todo[jj]], video_pyav.to_rgb(frame, out_hw, fmap.rotation))

    got = video_pyav.sample(req.path, fmap, [targets[j] for j in todo], put_frame, counter)
    for jj, pts in enumerate(got):
        taken[todo[jj]] = pts
    keep = _in_order(taken)
    if not keep:
        raise VideoError(f"{req.path}: none of the sampled frames decode (corrupt video data)")
    if len(keep) < len(targets):
        notes.append(f"{len(targets) - len(keep)} sampled frames did not decode; returning {len(keep)}")
    return [slots[j] for j in keep], [min(bisect.bisect_left(fmap.pts, taken[j]), len(fmap.pts) - 1) for j in keep]


def _in_order(taken: list[int | None]) -> list[int]:
    """The slots whose frame decoded (pts not None), each later than the one kept before: a frame taken for two
    slots (a target that did not decode took the next frame) is kept once."""
    keep, last = [], None
    for j, pts in enumerate(taken):
        if pts is not None and (last is None or pts > last):
            keep.append(j)
            last = pts
    return keep


def snap_to_keyframes(fmap: video_pyav.FrameMap, indices: list[int]) -> list[int]:
    """For each frame index, the pts of the nearest keyframe picture by presentation time (ties to the earlier).

    Keyframes are the map's keyframe packets that are frames of the map (the decoder is trusted about which
    frames exist); a map without one falls back to the first frame.
    """
    frames = set(fmap.pts)
    keys = [p for p in fmap.keyframes if p in frames] or [fmap.pts[0]]
    out = []
    for i in indices:
        t = fmap.pts[i]
        b = bisect.bisect_left(keys, t)
        if b == len(keys) or (b > 0 and t - keys[b - 1] <= keys[b] - t):
            b -= 1
        out.append(keys[b])
    return out


def _decode_keyframes(req, fmap, indices, sampling, out_hw, cache, counter, notes, sink):
    """`seek="keyframe"`: each sampled frame replaced by the nearest keyframe picture, and only those decoded.

    Keyframes come from `video_pyav.decode_keyframes` (one packet decoded per keyframe, bit-equal to a plain
    sequential decode) or, where that packet alone gives no picture, from the exact `video_pyav.sample`; the
    last group's from the tail pass when it converted them. Two samples that snap to one keyframe give one
    frame. Returns (slots kept, their frame indices, the sampling description, stats of the offsets).
    """
    seconds = fmap.seconds  # [N]
    snapped = snap_to_keyframes(fmap, indices)
    keys = sorted(set(snapped))
    key_index = {p: i for i, p in enumerate(fmap.keyframes)}
    sink.start(len(keys), out_hw)
    taken: list[int | None] = [None] * len(keys)
    todo = []
    for j, t in enumerate(keys):
        if t in cache and cache[t].shape == (*out_hw, 3):
            sink.put(j, cache.pop(t))
            taken[j] = t
            counter.converted += 1
        elif t in key_index:
            todo.append(j)
    cache.clear()

    def putter(slots: list[int]):
        def put(jj: int, frame) -> None:
            counter.converted += 1
            sink.put(slots[jj], video_pyav.to_rgb(frame, out_hw, fmap.rotation))
        return put

    got = video_pyav.decode_keyframes(req.path, fmap, [key_index[keys[j]] for j in todo], putter(todo), counter)
    for jj, pts in enumerate(got):
        taken[todo[jj]] = pts
    exact = [j for j, pts in enumerate(taken) if pts is None]  # the keyframe packet alone gave no picture
    if exact:
        got = video_pyav.sample(req.path, fmap, [keys[j] for j in exact], putter(exact), counter)
        for jj, pts in enumerate(got):
            taken[exact[jj]] = pts
        notes.append(f"{len(exact)} keyframes did not decode from their own packet: decoded exactly from their group")
    keep = _in_order(taken)
    if not keep:
        raise VideoError(f"{req.path}: none of the keyframes decode (corrupt video data)")
    frame_of = {keys[j]: taken[j] for j in keep}
    index = lambda pts: min(bisect.bisect_left(fmap.pts, pts), len(fmap.pts) - 1)  # noqa: E731
    offsets = [abs(float(seconds[index(frame_of[s])] - seconds[i])) for i, s in zip(indices, snapped) if s in frame_of]
    mean, worst = float(np.mean(offsets)), max(offsets)
    if worst > 0:
        sampling += f", snapped to keyframes (approximate; max offset {worst:.3g} s)"
        notes.append(f"approximate sampling (seek keyframe): each sampled frame is the keyframe nearest its time; "
                     f"offset from the asked time mean {mean:.3g} s, max {worst:.3g} s")
    else:
        sampling += ", snapped to keyframes (every sampled frame is a keyframe: none moved)"
    if len(keys) < len(indices):
        distinct = f"{len(keys)} distinct keyframe" + ("s" if len(keys) > 1 else "")
        notes.append(f"{len(indices)} frames sampled, {distinct}: returning one frame per keyframe")
    if len(keep) < len(keys):
        notes.append(f"{len(keys) - len(keep)} keyframes did not decode; returning {len(keep)} frames")
    stats = {"seek_offset_mean_s": round(mean, 6), "seek_offset_max_s": round(worst, 6)}
    return keep, [index(taken[j]) for j in keep], sampling, stats


def _decode_decord(req, fmap, indices, out_hw, cache, counter, notes) -> np.ndarray:
    """decord's get_batch, checked cheaply: timestamps against the map, the last frame against PyAV's
    decode of it (from the tail pass), and repeated frames against PyAV's decode of those frames."""
    try:
        frames = video_decord.sample(req.path, fmap, indices, out_hw, notes)
        last = cache.get(fmap.pts[indices[-1]])
        if last is not None and last.shape == frames.shape[1:]:
            video_decord.check_against(frames[-1], last, indices[-1])
        repeats = video_decord.repeated_pairs(frames)
        if repeats:
            a, b = repeats[0]
            ref = {}
            put = lambda j, f: ref.__setitem__(j, video_pyav.to_rgb(f, out_hw, fmap.rotation))  # noqa: E731
            video_pyav.sample(req.path, fmap, [fmap.pts[indices[a]], fmap.pts[indices[b]]], put, counter)
            if len(ref) < 2 or not np.array_equal(ref[0], ref[1]):
                raise video_decord.DecordUnfit("decord returned repeated frames where the video's differ")
    except video_decord.DecordUnfit as e:
        raise VideoError(f"{req.path}: decord cannot be trusted on this file: {e} (use --decoder auto)") from None
    return frames


def _maybe_hang(req: Request, phase: str) -> None:
    """Stall in `phase` if the request asks to (tests only)."""
    if req.hang_in == phase:
        time.sleep(req.hang_s)


def serve(req: Request, replies) -> None:
    """Decode one request; send ("frames", n, (H, W)), ("phase", p), ("frame", slot) + bytes per frame as
    decoded, then ("ok", meta, kept slots); or ("error", kind, msg).

    "frames" may come before or after "phase", and a second time (rarely: the verified frame map changed
    the selection after the tail's frames were sent): it then starts the result over, with its own n.
    """
    try:
        _reset_peak_rss()
        _maybe_hang(req, "start")

        def on_phase(phase: str) -> None:
            replies.send(("phase", phase))
            _maybe_hang(req, phase)

        meta = run_into(req, PipeSink(replies), on_phase)
        meta["stats"]["torch_loaded"] = "torch" in sys.modules  # the worker must stay light
        meta["stats"]["decord_loaded"] = "decord" in sys.modules
        meta["stats"]["worker_pid"] = os.getpid()
        meta["stats"]["peak_rss_bytes"] = _peak_rss_bytes()  # the caller's report adds it to its own peak
        replies.send(("ok", meta, meta.pop("kept")))
    except VideoError as e:
        replies.send(("error", type(e).__name__, str(e)))
    except Exception as e:  # anything else still reaches the user as one line
        msg = f"{req.path}: decoding failed: {type(e).__name__}: {video_pyav.clean_cause(e)}"
        replies.send(("error", "VideoError", msg))


def _peak_rss_bytes() -> int | None:
    """This process's peak resident set size in bytes since the current request began (`_reset_peak_rss`):
    Linux's VmHWM, which starts afresh at exec (``ru_maxrss`` would not do: it keeps the forking parent's
    peak across the exec). None where unknown."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _reset_peak_rss() -> None:
    """Start VmHWM over at the current RSS (Linux: "5" to /proc/self/clear_refs), so a long-lived worker
    reports each request's own peak, not the largest of all the videos before it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _watch_parent(parent: int) -> None:
    """Exit the moment the parent process is gone (it was killed, or exited without closing us).

    Polls os.getppid() (the parent's death re-parents this process) rather than prctl(PR_SET_PDEATHSIG),
    which fires when the parent *thread* that started the worker exits, not the process.
    """
    while os.getppid() == parent:
        time.sleep(0.1)
    os._exit(0)


class _Heap:
    """glibc's allocator, told to keep frame-sized buffers between frames while a request runs.

    glibc serves every block over 32 MiB with a fresh mmap and unmaps it when freed, so each converted 8K
    frame (7680x4320 RGB: 100 MB) cost a fresh zeroed mapping: 100 ms of page faults for a 20 ms conversion.
    With mmap off (M_MMAP_MAX 0) and a high trim threshold, the freed block is reused by the next frame;
    `release()` hands the free memory back to the system after each request (malloc_trim), so an idle worker
    stays small. Does nothing where the C library is not glibc.
    """

    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, glibc's malloc.h

    def __init__(self) -> None:
        self.libc = None
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            if libc.mallopt(self.M_MMAP_MAX, 0) and libc.mallopt(self.M_TRIM_THRESHOLD, 1 << 30):
                self.libc = libc
        except (OSError, AttributeError):  # no dlopen of the process, or no mallopt (not glibc)
            pass

    def release(self) -> None:
        if self.libc is not None:
            self.libc.malloc_trim(0)


def main() -> None:
    """Worker entry: argv = [request fd, reply fd, parent pid]; serves requests until the request pipe closes."""
    from multiprocessing.connection import Connection

    threading.Thread(target=_watch_parent, args=(int(sys.argv[3]),), daemon=True).start()
    requests = Connection(int(sys.argv[1]), writable=False)
    replies = Connection(int(sys.argv[2]), readable=False)
    heap = _Heap()
    while True:
        try:
            fields = requests.recv()
        except (EOFError, OSError):
            return
        serve(Request(**fields), replies)
        heap.release()


if __name__ == "__main__":
    main()
