"""Where a request's video comes from: a ``file://`` path under the allowed folder, a ``data:`` URL, or an
``http(s)://`` URL under ``--allow-url-download`` (:mod:`.download`). Every check runs before a byte of video is
decoded."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from .config import ServeConfig
from .errors import APIError, bad_request


class MediaStore:
    """Resolves video URLs to local files; ``data:`` videos are written once per content (by SHA-256) to a
    temporary folder removed by :meth:`close`, so a conversation that resends the same video reuses its file."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self._tmp = tempfile.TemporaryDirectory(prefix="vidq-serve-")

    @property
    def folder(self) -> Path:
        """The temporary folder of ``data:``, downloaded and image-frame videos (gone after :meth:`close`)."""
        return Path(self._tmp.name)

    def close(self) -> None:
        """Remove :attr:`folder` and what it holds. Idempotent."""
        self._tmp.cleanup()

    def resolve(self, url: str) -> Path:
        """The local file of ``url``; APIError 400 (refused, malformed or not downloaded), 413 (over the size cap).
        Blocks for as long as a download takes (at most ``download_timeout`` seconds): call it off the event loop."""
        if not isinstance(url, str) or not url:
            raise bad_request("video_url.url must be a non-empty string")
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "file":
            return self._local(url)
        if scheme == "data":
            return self._data(url)
        if scheme in {"http", "https"}:
            if not self.config.allow_url_download:
                raise bad_request("http(s) video URLs are off: start the server with --allow-url-download, or send "
                                  "the video as a data: URL or a file:// path", "url_download_disabled")
            from .download import download

            c = self.config
            return download(url, Path(self._tmp.name), c.max_data_bytes, c.download_timeout, c.allow_private_urls)
        raise bad_request(f"unsupported video URL scheme {scheme or url[:20]!r}: use file://, data: or http(s)://",
                          "unsupported_url")

    def _local(self, url: str) -> Path:
        root = self.config.allowed_local_media_path
        if root is None:
            raise bad_request("file:// video URLs are off: start the server with --allowed-local-media-path DIR",
                              "local_media_disabled")
        parsed = urlparse(url)
        if parsed.netloc not in {"", "localhost"}:
            raise bad_request(f"file:// URL with host {parsed.netloc!r}: only local paths", "invalid_url")
        raw = unquote(parsed.path)
        if not raw.startswith("/"):
            raise bad_request("file:// URLs need an absolute path", "invalid_url")
        # Resolve first (symlinks and ../ followed), then check: a link or a traversal out of the folder is refused.
        path = Path(os.path.realpath(raw))
        if not path.is_relative_to(root):
            raise APIError(400, f"{raw} is outside the allowed media folder (--allowed-local-media-path)",
                           "path_not_allowed")
        if not path.is_file():
            raise bad_request(f"no video file at {raw}", "video_not_found")
        return path

    def frames(self, urls: list[str]) -> Path:
        """One video file of the images at ``urls`` (``data:`` or ``file://``), in order, at 1 frame per second
        (:mod:`.frames`). APIError 400 for a refused URL or an image that does not open, 413 when the images
        together are over ``--max-data-bytes``."""
        from .frames import frames_video

        images, total = [], 0
        for url in urls:
            if not isinstance(url, str) or not url:
                raise bad_request("image_url.url must be a non-empty string")
            scheme = url.split(":", 1)[0].lower() if ":" in url else ""
            if scheme == "data":
                data = self._decode(url, "image", self.config.max_data_bytes - total)
            elif scheme == "file":
                data = self._local(url).read_bytes()
            else:
                raise bad_request(f"image_url parts must be data: or file:// URLs, not {scheme or url[:20]!r}",
                                  "unsupported_url")
            total += len(data)
            if total > self.config.max_data_bytes:
                raise APIError(413, f"the images are over {self.config.max_data_bytes:,} bytes together "
                               "(--max-data-bytes)", "payload_too_large")
            images.append(data)
        return frames_video(images, Path(self._tmp.name))

    def _decode(self, url: str, what: str, cap: int) -> bytes:
        head, sep, payload = url.partition(",")
        if not sep or not head.lower().endswith(";base64"):
            raise bad_request(f"a data: {what} URL must be base64: data:{what}/...;base64,...", "invalid_url")
        # The cap is checked on the encoded length, before decoding: 4 characters carry 3 bytes.
        size = len(payload) * 3 // 4
        if size > cap:
            raise APIError(413, f"the data: {what} is about {size:,} bytes, over the server's cap of "
                           f"{self.config.max_data_bytes:,} (--max-data-bytes)", "payload_too_large")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"the data: {what} URL is not valid base64", "invalid_url") from None

    def _data(self, url: str) -> Path:
        data = self._decode(url, "video", self.config.max_data_bytes)
        path = Path(self._tmp.name) / f"{hashlib.sha256(data).hexdigest()}.video"
        if not path.exists():
            part = path.with_suffix(".part")
            part.write_bytes(data)
            part.replace(path)
        return path
