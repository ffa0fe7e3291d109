"""A run of ``image_url`` parts as one video: what clients that cannot send a video send instead.

The rule (docs/SERVING.md): the consecutive ``image_url`` parts of the first user message, in their order, are the
frames of one clip at 1 frame per second. They are written losslessly (FFV1 in Matroska) so the decoder reads back
exactly the pixels sent, then the clip goes through the same sampling, compression and caches as any video.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from .errors import bad_request

FRAMES_PER_SECOND = 1


def frames_video(images: list[bytes], folder: Path) -> Path:
    """``images`` (encoded PNG/JPEG/... bytes, all one size; the first frame of an animated one) as ``folder/<sha256>.mkv``, written once per content.

    Raises APIError 400 when an image does not open or the images differ in size.
    """
    import av

    digest = hashlib.sha256()
    for data in images:
        digest.update(hashlib.sha256(data).digest())
    path = folder / f"{digest.hexdigest()}.mkv"
    if path.exists():
        return path
    pixels = []
    for i, data in enumerate(images):
        try:
            with av.open(io.BytesIO(data)) as image:  # FFmpeg's image demuxers: PNG, JPEG, WebP, BMP, ...
                pixels.append(next(image.decode(video=0)).to_ndarray(format="rgb24"))  # [H, W, 3] uint8
        except (av.FFmpegError, StopIteration, ValueError, IndexError):
            raise bad_request(f"image_url part {i + 1} is not an image FFmpeg can open", "invalid_image") from None
        if pixels[-1].shape != pixels[0].shape:
            h, w = pixels[0].shape[:2]
            raise bad_request(f"image_url part {i + 1} is {pixels[-1].shape[1]}x{pixels[-1].shape[0]}, the first is "
                              f"{w}x{h}: the frames of one video must share a size", "frame_size_mismatch")
    part = path.with_suffix(".part")
    with av.open(str(part), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=FRAMES_PER_SECOND)
        stream.height, stream.width = pixels[0].shape[:2]
        stream.pix_fmt = "bgr0"
        for frame in pixels:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    part.replace(path)
    return path
