"""FFmpeg (PyAV) side of decoding: open and classify a file, map the frames that really decode, sample by seeking.

PyAV is the reference decoder here: the frame map it builds decides which frames exist, and decord (when used)
must agree with it. Runs inside the decode worker, so it imports neither torch nor anything heavy.
"""

from __future__ import annotations

import bisect
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .errors import VideoError

# Demuxers that read a single still image; FFmpeg "decodes" them, but they are not videos.
_IMAGE_DEMUXERS = ("image2",)  # and every "*_pipe" demuxer (png_pipe, jpeg_pipe, ...)


@dataclass
class FrameMap:
    """The frames of one video stream that decode, by presentation time, plus what the container claimed."""

    pts: list[int]  # sorted presentation timestamps (stream ticks) of the frames believed to decode
    keyframes: list[int]  # sorted pts of keyframe packets: where a seek can start decoding
    time_base: Fraction
    claimed: int  # the container's frame count: header nb_frames, else the number of video packets
    avg_rate: float | None  # the container's average frame rate, unverified
    coded_hw: tuple[int, int]  # (height, width) of the decoded picture, before rotation
    rotation: int  # display rotation in degrees counter-clockwise (a multiple of 90)
    decode_errors: int = 0  # packets that failed while verifying the tail
    notes: list[str] = field(default_factory=list)
    key_dts: list[int] = field(default_factory=list)  # decode timestamp of each keyframe packet (seek target)
    stream_index: int = 0  # which stream of the file (see `pick_stream`)
    video_streams: int = 1  # how many video streams the file has
    codec: str = ""  # FFmpeg decoder name, e.g. "h264", "hevc", "libdav1d"
    pix_fmt: str = ""  # e.g. "yuv420p", "yuv420p10le"
    container: str = ""  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "mpegts"
    skipped: int = 0  # packets not shown: edit-list pre-roll, hidden VP9 frames, no timestamp
    all_pts: bool = True  # every shown packet carries a pts: a packet can be matched to the frame it becomes
    nonref_ok: bool = False  # skipping unreferenced pictures is exact for this stream (`_nonref_safe`)
    first_packet: tuple = ()  # (pts, dts, size) of the stream's first packet: checks a rewind to the start
    source: object = field(default=None, repr=False, compare=False)  # the open (container, stream), reused

    def close(self) -> None:
        """Close the file the map keeps open for the decode passes."""
        if self.source is not None:
            self.source[0].close()
            self.source = None

    @property
    def display_hw(self) -> tuple[int, int]:
        """(height, width) as shown, after the display rotation."""
        return self.coded_hw if self.rotation % 180 == 0 else self.coded_hw[::-1]

    @property
    def seconds(self) -> np.ndarray:
        """Presentation time of every frame in seconds since the first frame. [N]"""
        p = np.asarray(self.pts, dtype=np.float64)
        return (p - p[0]) * float(self.time_base)


@dataclass
class DecodeCounter:
    """How much the PyAV side decoded: lets tests assert that sampling a long video stays bounded."""

    frames: int = 0  # frames the decoder output (skipped non-reference frames are not output)
    errors: int = 0
    last_error: str = ""
    seeks: int = 0  # decode passes started (one per group of pictures holding wanted frames, at most)
    converted: int = 0  # frames converted to RGB


# Streams that carry a picture but are not the video: cover art, thumbnails.
_NOT_VIDEO = ("attached_pic", "still_image", "timed_thumbnails")


def pick_stream(container) -> tuple[av.video.stream.VideoStream, list[str]]:
    """The video stream to decode and a note when there was a choice.

    Rule: the largest picture (width x height) among the real video streams (not cover art or thumbnails);
    among equal sizes the one FFmpeg marks default, then the first. Size comes first because muxers
    (FFmpeg's mp4 muxer included) mark the first track default, and a small preview is often first.
    """
    streams = [s for s in container.streams.video if not any(_has_disposition(s, d) for d in _NOT_VIDEO)]
    streams = streams or list(container.streams.video)
    if len(streams) == 1:
        return streams[0], []
    def key(s) -> tuple:
        area = (s.codec_context.width or 0) * (s.codec_context.height or 0)
        return (-area, not _has_disposition(s, "default"), s.index)

    chosen = min(streams, key=key)
    size = lambda s: f"{s.codec_context.width}x{s.codec_context.height}"  # noqa: E731
    others = ", ".join(f"#{s.index} {size(s)}" for s in streams if s is not chosen)
    note = f"{len(streams)} video streams: decoded #{chosen.index} ({size(chosen)}, the largest); ignored {others}"
    return chosen, [note]


def _has_disposition(stream, name: str) -> bool:
    """Whether the stream carries an FFmpeg disposition flag (PyAV >= 14 exposes an IntFlag)."""
    flag = getattr(av.stream.Disposition, name, None) if hasattr(av.stream, "Disposition") else None
    return bool(flag is not None and stream.disposition & flag)


def open_video(path: str, stream_index: int | None = None):
    """Open `path` and return (container, video stream), or raise a one-line VideoError saying what the file is.

    `path` is always a file: it is opened as `file:` + its absolute path, so names such as `file:x.mp4`,
    `cam1:clip.mp4` or `pipe:0.mp4` are never read as FFmpeg protocols. `stream_index` picks the stream
    (default: `pick_stream`).
    """
    try:
        container = av.open(ffmpeg_url(path), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: {describe_unreadable(path)} ({clean_cause(e)})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoError(f"{path}: no video stream (contains {', '.join(kinds)})")
    fmt = container.format.name
    stream = pick_stream(container)[0] if stream_index is None else container.streams[stream_index]
    if fmt.endswith("_pipe") or fmt in _IMAGE_DEMUXERS:
        codec = stream.codec_context.name
        container.close()
        raise VideoError(f"{path}: is a still image ({codec}), not a video")
    return container, stream


def ffmpeg_url(path: str) -> str:
    """The URL FFmpeg reads `path` through: FFmpeg's file protocol and the absolute path, never another protocol."""
    return "file:" + os.path.abspath(path)


def describe_unreadable(path: str) -> str:
    """Say what a file FFmpeg cannot open probably is, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "MP4/MOV file whose container is corrupt or truncated"
    if head.startswith(b"\x1aE\xdf\xa3"):
        return "Matroska/WebM file whose container is corrupt or truncated"
    if head.startswith(b"RIFF"):
        return "RIFF/AVI file whose container is corrupt or truncated"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")):
        return "an image file, not a video"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file, not a video"
    return "not a video (FFmpeg does not recognise the data)"


def clean_cause(e: BaseException) -> str:
    """A short single-line cause from an FFmpeg/decord exception, without file paths or C++ source locations."""
    msg = " ".join(str(getattr(e, "strerror", None) or e).split())
    # decord: "[10:29:12] /project/src/video/video_reader.cc:445: [/path/x.ts]Unable to ..." or "...cc:218: Check failed: ..."
    msg = re.sub(r"\[\d\d:\d\d:\d\d\]\s*|\S+\.(?:cc|cpp|h):\d+:\s*|\[/[^\]]*\]\s*", "", msg)
    if "Check failed" in msg:
        msg = msg[msg.index("Check failed") :]
    return msg[:120].strip()


def vp9_shows_frame(data: bytes) -> bool:
    """Whether a VP9 packet displays a picture: hidden alt-ref packets do not, yet containers count them."""
    return any(_vp9_frame_shown(f) for f in _vp9_superframe_split(data))


def _vp9_superframe_split(data: bytes) -> list[bytes]:
    """Split a VP9 superframe into its frames (VP9 bitstream spec, Annex B); a plain frame is returned alone."""
    if not data:
        return []
    marker = data[-1]
    if marker & 0xE0 == 0xC0:
        count, size_bytes = (marker & 7) + 1, ((marker >> 3) & 3) + 1
        index_size = 2 + size_bytes * count
        if len(data) >= index_size and data[-index_size] == marker:
            sizes = data[-index_size + 1 : -1]
            out, pos = [], 0
            for i in range(count):
                n = int.from_bytes(sizes[i * size_bytes : (i + 1) * size_bytes], "little")
                out.append(data[pos : pos + n])
                pos += n
            return out
    return [data]


def _vp9_frame_shown(frame: bytes) -> bool:
    """Read show_existing_frame / show_frame from a VP9 uncompressed header (spec 6.2)."""
    bits = int.from_bytes(frame[:2].ljust(2, b"\0"), "big")
    bit = lambda i: (bits >> (15 - i)) & 1  # noqa: E731  (i counts from the most significant bit)
    if bits >> 14 != 2:  # no frame_marker: not a header we understand, so do not drop the frame
        return True
    profile = bit(2) | (bit(3) << 1)
    i = 5 if profile == 3 else 4  # profile 3 has a reserved bit
    if bit(i):  # show_existing_frame: re-displays a decoded frame
        return True
    return bool(bit(i + 2))  # skip frame_type, read show_frame


def decode_threads() -> int:
    """Threads for one decoder: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# Decoders whose skip_frame="NONREF" drops only pictures that no other picture references, so skipping an
# unwanted one cannot change any other frame. HEVC qualifies only with a single temporal sub-layer (see
# `_nonref_safe`); MPEG-4 Part 2 is left out (packed B-frames break the packet-to-frame match).
_NONREF_CODECS = ("h264", "vp9", "libdav1d", "av1", "hevc")


def _nonref_safe(stream) -> bool:
    """Whether skipping non-reference pictures of this stream is exact (the output of every other frame unchanged).

    H.264 (nal_ref_idc 0), VP9 (no reference refreshed) and AV1 (dav1d decodes only reference frames) are
    exact by their specs. In HEVC a sub-layer non-reference picture may still be referenced by a higher
    temporal sub-layer, so it is allowed only when the hvcC record says there is one layer (ISO/IEC 14496-15,
    8.3.3.1: numTemporalLayers is bits 3-5 of byte 21); Annex B streams (no hvcC) are not skipped.
    """
    cc = stream.codec_context
    if cc.name not in _NONREF_CODECS:
        return False
    if cc.name == "hevc":
        extra = bytes(cc.extradata or b"")
        return len(extra) > 22 and extra[0] == 1 and ((extra[21] >> 3) & 7) == 1
    return True


def iter_frames(container, stream, counter: DecodeCounter, packets=None, skip=None) -> Iterator[av.VideoFrame]:
    """Decode `stream` from `packets` (default: the container's current position) to the end.

    Packets that fail to decode are skipped (later frames may still decode). `skip(packet) -> bool` says
    per packet whether its picture may be dropped when no other picture references it (skip_frame NONREF).
    """
    packets = container.demux(stream) if packets is None else packets
    cc, skipping = stream.codec_context, False
    if cc.skip_frame != "DEFAULT":  # left over from an earlier pass of this decoder
        cc.skip_frame = "DEFAULT"
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as e:  # damaged container data: nothing more can be read
            counter.errors, counter.last_error = counter.errors + 1, clean_cause(e)
            break
        if skip is not None and packet.size and skip(packet) != skipping:
            skipping = not skipping
            cc.skip_frame = "NONREF" if skipping else "DEFAULT"
        try:
            frames = packet.decode()
        except av.error.FFmpegError as e:  # one corrupt packet: keep going, later frames may decode
            counter.errors, counter.last_error = counter.errors + 1, clean_cause(e)
            continue
        for frame in frames:
            counter.frames += 1
            yield frame
    try:  # drain the decoder in case demuxing stopped before the flush packet
        for frame in stream.codec_context.decode(None):
            counter.frames += 1
            yield frame
    except (av.error.FFmpegError, ValueError):
        pass


def scan(path: str, counter: DecodeCounter, keep=None) -> tuple[FrameMap, dict]:
    """Build the frame map: demux every packet (`scan_packets`), then decode the tail (`verify_tail`).

    Returns the map and what `keep` returned during the tail decode ({pts: value}, see `verify_tail`).
    """
    fmap = scan_packets(path)
    try:
        return fmap, verify_tail(path, fmap, counter, keep)
    finally:
        fmap.close()


def scan_packets(path: str) -> FrameMap:
    """The provisional frame map from demuxing every packet of the chosen stream (no decoding: fast).

    The file stays open in `fmap.source` for the decode passes (saving an open); `fmap.close()` closes it.
    """
    container, stream = open_video(path)
    try:
        _, stream_notes = pick_stream(container)
        pts, keyframes, key_dts = [], {}, {}
        dropped = {"discard-flagged": 0, "hidden (no picture)": 0, "without timestamps": 0}
        is_vp9 = stream.codec_context.name in ("vp9", "libvpx-vp9")
        packets, total, all_pts, first = container.demux(stream), 0, True, ()
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError:  # truncated/damaged data: the decodable part ends here
                break
            if packet.size == 0:
                continue
            total += 1
            first = first or (packet.pts, packet.dts, packet.size)
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None:
                dropped["without timestamps"] += 1
            elif packet.is_discard:  # edit-list pre-roll: decoded for reference, never shown
                dropped["discard-flagged"] += 1
            elif is_vp9 and not vp9_shows_frame(bytes(packet)):
                dropped["hidden (no picture)"] += 1
            else:
                all_pts = all_pts and packet.pts is not None
                pts.append(ts)
                if packet.is_keyframe:
                    keyframes[ts] = None
                    key_dts[ts] = packet.dts if packet.dts is not None else ts
        rate = stream.average_rate
        cc = stream.codec_context
        keys = sorted(keyframes)
        fmap = FrameMap(
            pts=sorted(set(pts)),
            keyframes=keys,
            key_dts=[key_dts[k] for k in keys],
            time_base=stream.time_base or Fraction(1, 1),
            claimed=stream.frames or total,
            avg_rate=float(rate) if rate else None,
            coded_hw=(cc.height, cc.width),
            rotation=0,
            stream_index=stream.index,
            video_streams=len(container.streams.video),
            codec=cc.name,
            pix_fmt=cc.format.name if cc.format else "",
            container=container.format.name,
            skipped=sum(dropped.values()),
            all_pts=all_pts,
            nonref_ok=_nonref_safe(stream),
            first_packet=first,
            source=(container, stream),
        )
    except BaseException:
        container.close()
        raise
    fmap.notes += stream_notes + [f"{n} {what} packets skipped" for what, n in dropped.items() if n]
    if not fmap.pts:
        fmap.close()
        raise VideoError(f"{path}: the video stream has no readable packets (truncated or corrupt)")
    if not fmap.keyframes:  # no flagged keyframe: decoding can only start at the beginning
        fmap.keyframes, fmap.key_dts = [fmap.pts[0]], [fmap.pts[0]]
    return fmap


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


def _rotation(frame: av.VideoFrame) -> int:
    """The frame's display rotation rounded to a multiple of 90 degrees (counter-clockwise)."""
    return int(round((frame.rotation or 0) / 90.0)) * 90 % 360


_LOCAL = threading.local()


def to_rgb(frame: av.VideoFrame, out_hw: tuple[int, int], rotation: int) -> np.ndarray:
    """Convert (and downscale) one frame to uint8 RGB [H, W, 3] in display orientation, like decord returns.

    Bit-equal to `frame.to_ndarray(format="rgb24", ...)`, but through one VideoReformatter per thread, which
    keeps FFmpeg's scaler between frames: 0.7 ms instead of 17 ms for a 1080x720 frame here.
    """
    reformatter = getattr(_LOCAL, "reformatter", None)
    if reformatter is None:
        reformatter = _LOCAL.reformatter = VideoReformatter()
    h, w = out_hw if rotation % 180 == 0 else out_hw[::-1]  # scale in coded orientation, then rotate
    if (h, w) != (frame.height, frame.width):
        rgb = reformatter.reformat(frame, format="rgb24", width=w, height=h, interpolation="AREA").to_ndarray()
    else:
        rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
    if rotation:
        rgb = rotate(rgb, rotation)
    return rgb


def rotate(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """`np.rot90(rgb, rotation // 90)` as a new contiguous array [H', W', 3], moving whole 3-byte pixels.

    The same bytes as `np.ascontiguousarray(np.rot90(rgb, k))`, 2x faster: numpy's strided copy of a
    1-byte channel axis costs more than the decode of a 1080p frame.
    """
    pixels = rgb.view(np.dtype("V3"))[..., 0]  # [H, W], one 3-byte element per pixel (a view)
    turned = np.ascontiguousarray(np.rot90(pixels, k=rotation // 90))  # [W, H] (or [H, W] for 180)
    return turned.view(np.uint8).reshape(*turned.shape, 3)


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


class _Reader:
    """One open file that can start a decode pass at any keyframe of the map, exactly there."""

    def __init__(self, path: str, fmap: FrameMap, counter: DecodeCounter, threads: int = 1):
        self.path, self.fmap, self.counter, self.threads = path, fmap, counter, threads
        self.container = self.stream = None
        self.fed_key = -1  # index of the last keyframe whose packet this pass fed to the decoder
        if fmap.source is not None:  # adopt the map's open file if its decoder is unopened or threaded alike
            container, stream, *opened = fmap.source
            fmap.source = None
            if not opened or opened[0] == threads:
                self.container, self.stream = container, stream
                if not opened:
                    self._configure()
            else:
                container.close()

    def start(self, k: int, skip=None) -> Iterator[av.VideoFrame]:
        """Frames decoded from keyframe k on (k = 0: from the start of the file, as a plain decode does).

        Demuxers seek by decode time and some land late (MPEG-TS with B-frames lands after the keyframe
        when given its pts): this seeks to the keyframe's dts, reads (without decoding) up to the keyframe
        packet, and if it landed past it, seeks to earlier keyframes, finally re-reading from the start.
        """
        self.fed_key = -1
        if k > 0:
            packets = self._packets_at_key(k)
            if packets is None:  # the keyframe packet is not where the map saw it: nothing to decode
                return iter(())
        else:
            self.counter.seeks += 1
            if self.container is None:
                self._reopen()
            packets = self._rewind()
        return iter_frames(self.container, self.stream, self.counter, packets, skip)

    def key_packet(self, k: int):
        """The packet of keyframe k, read (not decoded) after a seek as in `start`; None if it is not found."""
        packets = self._packets_at_key(k)
        return next(packets) if packets is not None else None

    def _packets_at_key(self, k: int):
        """Packets from keyframe k's own packet on: a seek to its dts, then to earlier keyframes' where the
        demuxer lands late, finally read from the start; None when its packet is not where the map saw it."""
        self.counter.seeks += 1
        if self.container is None:
            self._reopen()
        for kk in (k, k - 1, k - 4):
            if kk < 1:
                break
            self.container.seek(self.fmap.key_dts[kk], stream=self.stream, backward=True, any_frame=False)
            packets = self._to_keyframe(k)
            if packets is not None:
                return packets
        return self._to_keyframe(k, self._rewind())

    def _rewind(self):
        """Packets from the very first one: a seek to it, checked against the map, else the file reopened."""
        first = self.fmap.first_packet
        at = (first[1] if first[1] is not None else first[0]) if first else None  # Matroska gives no dts: its pts
        if at is not None:
            try:
                self.container.seek(at, stream=self.stream, backward=True, any_frame=True)
                packets = self._track(self.container.demux(self.stream))
                packet = next(packets, None)
                if packet is not None and (packet.pts, packet.dts, packet.size) == first:
                    return _chain(packet, packets)
            except av.error.FFmpegError:
                pass
        self._reopen()
        return self._track(self.container.demux(self.stream))

    def _to_keyframe(self, k: int, packets=None):
        """Read packets up to keyframe k's (not decoding them); None if the position was already past it."""
        packets = self._track(self.container.demux(self.stream)) if packets is None else packets
        key_pts, key_dts = self.fmap.keyframes[k], self.fmap.key_dts[k]
        for packet in packets:
            if packet.size == 0:
                return None  # end of file
            if packet.is_keyframe and packet.pts == key_pts:
                return _chain(packet, packets)
            late_key = packet.is_keyframe and packet.pts is not None and packet.pts > key_pts
            if late_key or (packet.dts is not None and packet.dts > key_dts):
                return None
        return None

    def _track(self, packets):
        """Pass packets through, noting the keyframes fed (so a later GOP can continue this pass)."""
        keys = self.fmap.keyframes
        for packet in packets:
            if packet.is_keyframe and packet.pts is not None:
                i = bisect.bisect_left(keys, packet.pts)
                if i < len(keys) and keys[i] == packet.pts:
                    self.fed_key = max(self.fed_key, i)
            yield packet

    def _reopen(self) -> None:
        """Open the file afresh with this reader's threading."""
        self.close()
        self.container, self.stream = open_video(self.path, self.fmap.stream_index)
        self._configure()

    def _configure(self) -> None:
        """Threading for a decoder not opened yet: frame + slice threads (frame threads roughly double H.264/HEVC)."""
        if self.threads > 1:
            self.stream.thread_type = "AUTO"
            self.stream.codec_context.thread_count = self.threads

    def close(self, keep: bool = False) -> None:
        """Close the file, or with `keep` give it back to the map for the next pass (same threading only)."""
        if self.container is not None:
            if keep:
                self.fmap.source = (self.container, self.stream, self.threads)
            else:
                self.container.close()
            self.container = None


def _chain(first, rest):
    """Put back the packet that was read to find where a seek landed."""
    yield first
    yield from rest
