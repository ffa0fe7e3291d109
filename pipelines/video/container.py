"""Opening a video file with FFmpeg (PyAV): which stream to decode, and a one-line reason when it is not a video.

Runs inside the decode worker, so it imports neither torch nor anything heavy.
"""

from __future__ import annotations

import os
import re

import av

from ..errors import VideoError


# Demuxers that read a single still image; FFmpeg "decodes" them, but they are not videos.
_IMAGE_DEMUXERS = ("image2",)  # and every "*_pipe" demuxer (png_pipe, jpeg_pipe, ...)


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
