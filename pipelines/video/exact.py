"""The exact decode: each group of pictures holding sampled frames decoded once, forward, into the caller's sink.

The frames are those of a plain sequential FFmpeg decode at the reported indices. The tail pass's wanted frames
go to the sink as they are decoded (`_TailFrames`); `_decode_pyav` samples the rest (`sample`).
"""

from __future__ import annotations

import bisect

from ..errors import VideoError
from .frame_map import DecodeCounter, FrameMap
from .reader import _Reader, decode_threads
from .request import fit_within
from .rgb import _rotation, to_rgb


def sample(path: str, fmap: FrameMap, targets: list[int], put, counter: DecodeCounter, skip_nonref: bool = True):
    """Decode the frames whose pts are `targets` (sorted, distinct), each group of pictures once, forward only.

    For every group of pictures (GOP) that holds targets: one seek to its keyframe (`_Reader.start`, exact
    even where the demuxer lands late), decoding forward with frame threading until its last target is
    out, then the next GOP. A GOP whose keyframe this pass already decoded is continued, not sought again.
    Only targets are converted: `put(j, frame)` receives the frame for targets[j]. Non-reference pictures
    that are not targets are skipped where that is exact (`_nonref_safe`) and the file decoded cleanly.

    Returns the pts taken for each target (None where nothing was taken). A target that does not decode
    yields the next frame that does, reported with its own pts; a frame is never taken twice. If a packet
    fails to decode under frame threading, the whole sampling is redone single-threaded (a plain decode's
    concealment), `put` receiving those frames again.
    """
    if not targets:
        return []
    threads = decode_threads() if not fmap.decode_errors else 1
    errors_before = counter.errors
    taken = _sample(path, fmap, targets, put, counter, skip_nonref, threads)
    if threads > 1 and counter.errors > errors_before:  # damage met with frame threading: redo it plainly, as
        fmap.decode_errors += counter.errors - errors_before  # concealment differs between the two
        taken = _sample(path, fmap, targets, put, counter, skip_nonref, 1)  # (`put` overwrites each slot)
    return taken


def _sample(path, fmap, targets, put, counter, skip_nonref, threads) -> list[int | None]:
    """`sample` with a given threading."""
    taken: list[int | None] = [None] * len(targets)
    wanted = set(targets)
    clean = not fmap.decode_errors
    reader = _Reader(path, fmap, counter, threads=threads)
    nonref = skip_nonref and clean and fmap.all_pts and fmap.nonref_ok
    skip = (lambda packet: packet.pts not in wanted) if nonref else None
    groups: dict[int, list[int]] = {}
    for j, t in enumerate(targets):
        groups.setdefault(max(bisect.bisect_right(fmap.keyframes, t) - 1, 0), []).append(j)
    try:
        frames, last = None, None
        for k, js in sorted(groups.items()):
            if frames is None or k > reader.fed_key:  # this GOP's keyframe not decoded yet in this pass
                frames = reader.start(k, skip)
            for j in js:
                if last is not None and targets[j] <= last:
                    continue  # passed already: the frame it maps to was taken for an earlier target
                frame = next((f for f in frames if f.pts is not None and f.pts >= targets[j]), None)
                if frame is None:
                    return taken  # nothing decodes past here
                last = taken[j] = frame.pts
                put(j, frame)
    finally:
        reader.close()
    return taken


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
        rot = _rotation(frame)
        hw = fit_within((frame.height, frame.width) if rot % 180 == 0 else (frame.width, frame.height), self.max_side)
        if self.hw is None:
            self.sink.start(len(self.slot_of), hw)
            self.hw = hw
        elif hw != self.hw:  # the picture size changed within the stream: leave this one to the sampling pass
            return None
        self.counter.converted += 1
        self.sink.put(slot, to_rgb(frame, hw, rot))
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


def _decode_pyav(req, fmap, indices, out_hw, tail, put, counter, notes, sink, plan=None
                 ) -> tuple[list[int], list[int]]:
    """Frames at `indices` via `sample` into `sink` as they are converted; those of the last group
    of pictures are there already (`tail`: the tail pass's `_TailFrames`, `put`: what it put, {pts: slot}).
    `plan(times)`, when given, gets each slot's timestamp once the slots are final, before the sampling pass.

    Returns (slots kept, their frame indices): a target that did not decode took the next frame that does,
    and a frame taken twice is kept once.
    """
    targets = sorted({fmap.pts[i] for i in indices})
    slots, done = tail.slots(targets, out_hw, put)
    if plan is not None:
        plan([round(float(fmap.seconds[bisect.bisect_left(fmap.pts, t)]), 6) for t in targets])
    taken: list[int | None] = [t if t in done else None for t in targets]
    todo = [j for j, t in enumerate(targets) if t not in done]

    def put_frame(jj: int, frame) -> None:
        counter.converted += 1
        sink.put(slots[todo[jj]], to_rgb(frame, out_hw, fmap.rotation))

    got = sample(req.path, fmap, [targets[j] for j in todo], put_frame, counter)
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
