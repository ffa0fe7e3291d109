"""The frame map: which frames of a video stream decode, by presentation time, and what the container claimed.

PyAV is the reference decoder here: the frame map decides which frames exist, and decord (when used) must agree
with it. `scan_packets` builds it by demuxing every packet (no decoding); `tail.verify_tail` then corrects its end
by decoding. The packet rules it needs (hidden VP9 frames, when skipping non-reference pictures is exact) are here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from ..errors import VideoError
from .container import open_video, pick_stream


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
