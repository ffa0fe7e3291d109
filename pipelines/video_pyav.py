"""FFmpeg (PyAV) side of decoding: open and classify a file, map the frames that really decode, sample by seeking.

PyAV is the reference decoder here: the frame map it builds decides which frames exist, and decord (when used)
must agree with it. Runs inside the decode worker, so it imports neither torch nor anything heavy.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

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

    frames: int = 0
    errors: int = 0
    last_error: str = ""


def open_video(path: str) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open `path` and return its best video stream, or raise a one-line VideoError saying what the file is."""
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: {describe_unreadable(path)} ({clean_cause(e)})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoError(f"{path}: no video stream (contains {', '.join(kinds)})")
    fmt = container.format.name
    stream = container.streams.best("video")
    if fmt.endswith("_pipe") or fmt in _IMAGE_DEMUXERS:
        codec = stream.codec_context.name
        container.close()
        raise VideoError(f"{path}: is a still image ({codec}), not a video")
    return container, stream


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


def iter_frames(container, stream, counter: DecodeCounter) -> Iterator[av.VideoFrame]:
    """Decode `stream` from the container's current position to the end, skipping packets that fail to decode."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as e:  # damaged container data: nothing more can be read
            counter.errors, counter.last_error = counter.errors + 1, clean_cause(e)
            break
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


def scan(path: str, counter: DecodeCounter) -> FrameMap:
    """Build the frame map: demux every packet (no decoding), then decode the tail to find where frames really end."""
    container, stream = open_video(path)
    with container:
        pts, keyframes, dropped = [], [], {"discard-flagged": 0, "hidden (no picture)": 0, "without timestamps": 0}
        is_vp9 = stream.codec_context.name in ("vp9", "libvpx-vp9")
        packets, total = container.demux(stream), 0
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
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None:
                dropped["without timestamps"] += 1
            elif packet.is_discard:  # edit-list pre-roll: decoded for reference, never shown
                dropped["discard-flagged"] += 1
            elif is_vp9 and not vp9_shows_frame(bytes(packet)):
                dropped["hidden (no picture)"] += 1
            else:
                pts.append(ts)
                if packet.is_keyframe:
                    keyframes.append(ts)
        rate = stream.average_rate
        fmap = FrameMap(
            pts=sorted(set(pts)),
            keyframes=sorted(set(keyframes)),
            time_base=stream.time_base or Fraction(1, 1),
            claimed=stream.frames or total,
            avg_rate=float(rate) if rate else None,
            coded_hw=(stream.codec_context.height, stream.codec_context.width),
            rotation=0,
        )
    fmap.notes += [f"{n} {what} packets skipped" for what, n in dropped.items() if n]
    if not fmap.pts:
        raise VideoError(f"{path}: the video stream has no readable packets (truncated or corrupt)")
    if not fmap.keyframes:  # no flagged keyframe: decoding can only start at the beginning
        fmap.keyframes = [fmap.pts[0]]
    _verify_tail(path, fmap, counter)
    return fmap


def _backoff_starts(n_keyframes: int) -> list[int]:
    """Keyframe indices to try decoding from, last first, stepping back 1, 2, 4, ... down to the first."""
    out, step, k = [], 1, n_keyframes - 1
    while k > 0:
        out.append(k)
        k, step = k - step, step * 2
    return out + [0]


def _verify_tail(path: str, fmap: FrameMap, counter: DecodeCounter) -> None:
    """Decode from the last keyframe to the end, and trust the decoder over the container about which frames exist.

    Truncated, zeroed or over-counted files list packets that never become pictures; decoding the last GOP
    (or further back when it yields nothing) finds the real end. Only that region is corrected: a damaged
    frame in the middle of a long file is handled by sampling, which reports the frame it really got.
    """
    for k in _backoff_starts(len(fmap.keyframes)):
        start = fmap.keyframes[k] if k > 0 else None
        got = []
        container, stream = open_video(path)
        with container:
            if start is not None:
                container.seek(start, stream=stream, backward=True, any_frame=False)
            for frame in iter_frames(container, stream, counter):
                if frame.pts is not None:
                    got.append(frame.pts)
                    if len(got) == 1:
                        fmap.coded_hw, fmap.rotation = (frame.height, frame.width), _rotation(frame)
        if got:
            kept = [p for p in fmap.pts if start is not None and p < start]
            fmap.pts = sorted(set(kept) | set(got))
            fmap.keyframes = [p for p in fmap.keyframes if p <= fmap.pts[-1]] or [fmap.pts[0]]
            fmap.decode_errors = counter.errors
            if counter.errors:
                fmap.notes.append(f"{counter.errors} packets failed to decode ({counter.last_error})")
            return
    cause = f" ({counter.last_error})" if counter.last_error else ""
    raise VideoError(f"{path}: no frame decodes: the video data is corrupt or truncated{cause}")


def _rotation(frame: av.VideoFrame) -> int:
    """The frame's display rotation rounded to a multiple of 90 degrees (counter-clockwise)."""
    return int(round((frame.rotation or 0) / 90.0)) * 90 % 360


def to_rgb(frame: av.VideoFrame, out_hw: tuple[int, int], rotation: int) -> np.ndarray:
    """Convert (and downscale) one frame to uint8 RGB [H, W, 3] in display orientation, like decord returns."""
    h, w = out_hw if rotation % 180 == 0 else out_hw[::-1]  # scale in coded orientation, then rotate
    if (h, w) != (frame.height, frame.width):
        rgb = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
    else:
        rgb = frame.to_ndarray(format="rgb24")
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


def sample(path: str, fmap: FrameMap, indices: list[int], out_hw: tuple[int, int], counter: DecodeCounter):
    """Decode the frames at `indices` of the map: seek to the keyframe before each, decode forward.

    Returns (pts, rgb) pairs of the frames really decoded, in order and without repeats. A target that does
    not decode yields the next frame that does, reported with its own timestamp.
    """
    targets = [fmap.pts[i] for i in sorted(set(indices))]
    out: list[tuple[int, np.ndarray]] = []
    reader = _Reader(path, fmap, counter)
    try:
        frames, last = None, None  # the current decode pass and the pts it last produced
        for target in targets:
            if last is not None and target <= last:
                continue  # already passed: the frame it maps to was taken for an earlier target
            k = max(bisect.bisect_right(fmap.keyframes, target) - 1, 0)
            if frames is None or fmap.keyframes[k] > last:  # a keyframe lies between: seeking skips decoding
                frames = reader.start(k, target)
            frame = next((f for f in frames if f.pts is not None and f.pts >= target), None)
            if frame is None:
                break  # nothing decodes past here
            last = frame.pts
            out.append((frame.pts, to_rgb(frame, out_hw, fmap.rotation)))
    finally:
        reader.close()
    return out


class _Reader:
    """One open file that can start a decode pass at any keyframe."""

    def __init__(self, path: str, fmap: FrameMap, counter: DecodeCounter):
        self.path, self.fmap, self.counter = path, fmap, counter
        self.container = self.stream = None

    def start(self, k: int, target: int) -> Iterator[av.VideoFrame]:
        """Frames from keyframe k on; if the demuxer lands past the target (inexact seeking), start earlier."""
        for kk in dict.fromkeys((k, k - 1, 0)):  # distinct, in order
            if kk < 0:
                continue
            frames = self._from(kk)
            first = next((f for f in frames if f.pts is not None), None)
            if first is None or first.pts <= target or kk == 0:
                break
        return _chain(first, frames)

    def _from(self, k: int) -> Iterator[av.VideoFrame]:
        """Seek to keyframe k, or reopen the file for the first one (seeking to the start is unreliable in TS)."""
        if k == 0 or self.container is None:
            self.close()
            self.container, self.stream = open_video(self.path)
            # Frame threading roughly doubles decode speed on HEVC/H.264 without slices, but conceals
            # damage differently from a plain decode: use it only on streams that decoded cleanly so far.
            if not self.fmap.decode_errors:
                self.stream.thread_type = "AUTO"
        if k > 0:
            self.container.seek(self.fmap.keyframes[k], stream=self.stream, backward=True, any_frame=False)
        return iter_frames(self.container, self.stream, self.counter)

    def close(self) -> None:
        """Close the file if open."""
        if self.container is not None:
            self.container.close()
            self.container = None


def _chain(first, rest):
    """Put back the frame that was read to check where a seek landed."""
    if first is not None:
        yield first
    yield from rest
