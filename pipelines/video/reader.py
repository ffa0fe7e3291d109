"""Decode passes over one open file: `_Reader` starts a pass at any keyframe of the frame map, exactly there.

Demuxers seek by decode time and some land late; the reader checks where a seek landed against the map, and
`iter_frames` decodes forward, skipping packets that fail.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator

import av

from .container import clean_cause, open_video
from .frame_map import DecodeCounter, FrameMap


def decode_threads() -> int:
    """Threads for one decoder: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


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
