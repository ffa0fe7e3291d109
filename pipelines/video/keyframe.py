"""Approximate seek (`seek="keyframe"`): each sampled frame snapped to the nearest keyframe, only those decoded.

A keyframe picture decoded from its own packet is bit-equal to a plain sequential decode's frame at that pts.
"""

from __future__ import annotations

import bisect

import av
import numpy as np

from ..errors import VideoError
from .container import clean_cause
from .exact import _in_order, sample
from .frame_map import DecodeCounter, FrameMap
from .reader import _Reader, decode_threads
from .rgb import to_rgb


def snap_to_keyframes(fmap: FrameMap, indices: list[int]) -> list[int]:
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


def decode_keyframes(path: str, fmap: FrameMap, keys: list[int], put, counter: DecodeCounter) -> list[int | None]:
    """Decode only the keyframe pictures `fmap.keyframes[k]` for k in `keys` (sorted, distinct): approximate seek.

    Per keyframe: one seek (`_Reader.key_packet`, exact even where the demuxer lands late), its packet alone
    decoded and the decoder drained, so no other packet of the group is ever decoded. A keyframe (IDR, CRA,
    VP9/AV1 key frame) is intra coded: its picture does not depend on any other packet, so it is bit-equal to
    a plain sequential decode's frame at that pts. `put(j, frame)` receives the frame for keys[j].

    Returns the pts taken for each key, None where the packet alone gave no key picture with the keyframe's
    pts (a packet that also carries hidden frames, a keyframe flag the decoder disagrees with): the caller
    decodes those exactly (`sample`).
    """
    taken: list[int | None] = [None] * len(keys)
    reader = _Reader(path, fmap, counter, threads=decode_threads() if not fmap.decode_errors else 1)
    try:
        for j, k in enumerate(keys):
            try:
                packet = reader.key_packet(k)
            except av.error.FFmpegError as e:  # damaged container data: the caller decodes this one exactly
                counter.errors, counter.last_error = counter.errors + 1, clean_cause(e)
                reader.close()
                continue
            if packet is None:
                continue
            cc = reader.stream.codec_context
            try:
                frames = list(packet.decode()) + list(cc.decode(None))  # the packet, then drain the decoder
            except av.error.FFmpegError as e:
                counter.errors, counter.last_error = counter.errors + 1, clean_cause(e)
                frames = []
            cc.flush_buffers()  # out of draining mode, ready for the next keyframe
            counter.frames += len(frames)
            # the decoder must agree that it is a key picture (a container's keyframe flag can be wrong)
            frame = next((f for f in frames if f.pts == fmap.keyframes[k] and f.key_frame), None)
            if frame is not None:
                taken[j] = frame.pts
                put(j, frame)
    finally:
        reader.close()
    return taken


def _decode_keyframes(req, fmap, indices, sampling, out_hw, cache, counter, notes, sink, plan=None):
    """`seek="keyframe"`: each sampled frame replaced by the nearest keyframe picture, and only those decoded.

    Keyframes come from `decode_keyframes` (one packet decoded per keyframe, bit-equal to a plain
    sequential decode) or, where that packet alone gives no picture, from the exact `exact.sample`; the
    last group's from the tail pass when it converted them. Two samples that snap to one keyframe give one
    frame. Returns (slots kept, their frame indices, the sampling description, stats of the offsets).
    """
    seconds = fmap.seconds  # [N]
    snapped = snap_to_keyframes(fmap, indices)
    keys = sorted(set(snapped))
    key_index = {p: i for i, p in enumerate(fmap.keyframes)}
    sink.start(len(keys), out_hw)
    if plan is not None:  # each slot's timestamp, for a sink that passes frames on in order
        plan([round(float(seconds[min(bisect.bisect_left(fmap.pts, t), len(fmap.pts) - 1)]), 6) for t in keys])
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
            sink.put(slots[jj], to_rgb(frame, out_hw, fmap.rotation))
        return put

    got = decode_keyframes(req.path, fmap, [key_index[keys[j]] for j in todo], putter(todo), counter)
    for jj, pts in enumerate(got):
        taken[todo[jj]] = pts
    exact = [j for j, pts in enumerate(taken) if pts is None]  # the keyframe packet alone gave no picture
    if exact:
        got = sample(req.path, fmap, [keys[j] for j in exact], putter(exact), counter)
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
