"""The end of the frame map verified by decoding: the last group of pictures says which frames really exist."""

from __future__ import annotations

from ..errors import VideoError
from .frame_map import DecodeCounter, FrameMap, scan_packets
from .reader import _Reader, decode_threads
from .rgb import _rotation


def scan(path: str, counter: DecodeCounter, keep=None) -> tuple[FrameMap, dict]:
    """Build the frame map: demux every packet (`scan_packets`), then decode the tail (`verify_tail`).

    Returns the map and what `keep` returned during the tail decode ({pts: value}, see `verify_tail`).
    """
    fmap = scan_packets(path)
    try:
        return fmap, verify_tail(path, fmap, counter, keep)
    finally:
        fmap.close()


def _backoff_starts(n_keyframes: int) -> list[int]:
    """Keyframe indices to try decoding from, last first, stepping back 1, 2, 4, ... down to the first."""
    out, step, k = [], 1, n_keyframes - 1
    while k > 0:
        out.append(k)
        k, step = k - step, step * 2
    return out + [0]


def verify_tail(path: str, fmap: FrameMap, counter: DecodeCounter, keep=None) -> dict:
    """Decode from the last keyframe to the end, and trust the decoder over the container about which frames exist.

    Truncated, zeroed or over-counted files list packets that never become pictures; decoding the last GOP
    (or further back when it yields nothing) finds the real end. Only that region is corrected: a damaged
    frame in the middle of a long file is handled by sampling, which reports the frame it really got.

    `keep(frame) -> value | None` is called on every frame decoded, in order, so that the frames the caller
    expects to want (the last frame, always, for uniform sampling) are used now and the last group of pictures
    is not decoded a second time: it converts them (value: rgb [H, W, 3]) or hands them on as they come
    (value: where it put them). Returns {pts: value} for the frames of the pass that counted (a pass redone
    or abandoned calls `keep` again on its frames; what an earlier pass returned is forgotten).
    The first pass uses frame threading; if it meets a damaged packet the pass is redone single-threaded,
    so concealment is FFmpeg's plain one and `fmap.decode_errors` tells the sampler to stay single-threaded.
    """
    for k in _backoff_starts(len(fmap.keyframes)):
        for threaded in (True, False):
            got, kept = [], {}
            errors_before = counter.errors
            reader = _Reader(path, fmap, counter, threads=decode_threads() if threaded else 1)
            clean = False
            try:
                frames = reader.start(k)
                for frame in frames:
                    if frame.pts is None:
                        continue
                    if not got:
                        fmap.coded_hw, fmap.rotation = (frame.height, frame.width), _rotation(frame)
                    got.append(frame.pts)
                    rgb = keep(frame) if keep is not None else None
                    if rgb is not None:
                        kept[frame.pts] = rgb
                clean = counter.errors == errors_before
            finally:
                reader.close(keep=clean)  # the sampling pass reuses the open file and decoder
            if counter.errors == errors_before or not threaded:
                break
            fmap.decode_errors = counter.errors - errors_before  # damaged: redo without frame threading
        if got:
            start = fmap.keyframes[k] if k > 0 else None
            before = [p for p in fmap.pts if start is not None and p < start]
            fmap.pts = sorted(set(before) | set(got))
            keys = [(p, d) for p, d in zip(fmap.keyframes, fmap.key_dts) if p <= fmap.pts[-1]]
            fmap.keyframes, fmap.key_dts = [p for p, _ in keys], [d for _, d in keys]
            if not fmap.keyframes:
                fmap.keyframes, fmap.key_dts = [fmap.pts[0]], [fmap.pts[0]]
            fmap.decode_errors = counter.errors
            if counter.errors:
                fmap.notes.append(f"{counter.errors} packets failed to decode ({counter.last_error})")
            return kept
    cause = f" ({counter.last_error})" if counter.last_error else ""
    raise VideoError(f"{path}: no frame decodes: the video data is corrupt or truncated{cause}")
