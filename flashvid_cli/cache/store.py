"""The EncodedCache: look an encoded video up by its key, store one, and the directory's housekeeping calls.

One entry serves every method and keep: it holds the features [T, N, D] in the model dtype and, whenever they
were computed, the importance [T, N], metric [T, N, Dk] and similarity [T, N, Ds] (float32). A lookup that
needs one the entry lacks is a miss; the new entry written after it holds the union (``put`` carries over what
the old entry had). A bad entry is ignored, deleted and rewritten, never trusted (:mod:`.entry`); writes are
atomic (:mod:`.files`); the total size is capped by LRU eviction (:mod:`.directory`). A directory that cannot be written gives one warning line
(:attr:`EncodedCache.warning`, also logged once) and no cache, never a crash.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import directory
from .entry import ENTRY_SUFFIX, CachedVideo, _standalone, _Unusable, entry_data, load_entry, merge_previous
from .files import TMP_SUFFIX, write_atomic
from .key import OPTIONAL, CacheKey, _environment, _jsonable, device_kind, fingerprint
from .sizes import DEFAULT_MAX_BYTES, format_size, parse_size

ENV_DIR = "VIDQ_CACHE_DIR"

log = logging.getLogger("vidq.cache")


def default_root() -> Path:
    """``$VIDQ_CACHE_DIR`` when set, else the platform cache directory (``~/.cache/vidq`` on Linux)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("vidq", appauthor=False))


@dataclass
class EncodedCache:
    """The cache in ``root`` (:func:`default_root` when None) holding at most ``max_bytes`` (0 disables it).

    Construction never raises: when ``root`` cannot be created or written, :attr:`warning` holds one line saying
    so (also logged once on ``vidq.cache``), :attr:`enabled` is False, and every get/put is a quiet miss.
    """

    root: Path | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    enabled: bool = field(init=False, default=True)
    warning: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser() if self.root is not None else default_root()
        self.max_bytes = parse_size(self.max_bytes)
        if self.max_bytes == 0:
            self.enabled = False
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".probe-", suffix=TMP_SUFFIX)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            self._disable(f"cache directory {self.root} is not writable ({exc.strerror or exc}); continuing "
                          f"without the cache (set {ENV_DIR} to a writable directory, or pass --no-cache)")

    def _disable(self, message: str) -> None:
        self.enabled = False
        if self.warning is None:
            self.warning = message
            log.warning(message)

    def _path(self, key: CacheKey) -> Path:
        return self.root / f"{key.digest}{ENTRY_SUFFIX}"

    # -- keys ----------------------------------------------------------------------------------------------------
    def key(
        self,
        video: str | os.PathLike,
        *,
        sampling: dict[str, Any],
        model: dict[str, Any],
        dtype: Any,
        device: Any,
        preprocess: Any,
        frame_indices: Sequence[int] | None = None,
        need: Iterable[str] = (),
    ) -> CacheKey:
        """The key of ``video`` encoded by ``model`` (see :mod:`flashvid_cli.cache.key` for each part).

        ``sampling``: :func:`sampling_request`; ``model``: :func:`model_fingerprint`; ``dtype``: a torch dtype or
        its name; ``device``: a torch device or its name; ``preprocess``: the PreprocessConfig (or a dict);
        ``need``: the optional tensors a hit must hold. Raises VideoError when the video cannot be read.
        """
        from ..pipelines.errors import VideoError

        unknown = set(need) - set(OPTIONAL)
        if unknown:
            raise ValueError(f"need must be a subset of {OPTIONAL}, got {sorted(unknown)}")
        try:
            content = fingerprint(video)
        except OSError as exc:
            raise VideoError(f"cannot read video {os.fspath(video)!r}: {exc.strerror or exc}") from None
        fields = _jsonable({
            "video": content,
            "sampling": sampling,
            "model": model,
            "dtype": str(dtype).removeprefix("torch."),
            "device": device_kind(device),
            "preprocess": preprocess,
            "environment": _environment(),
        })
        indices = tuple(int(i) for i in frame_indices) if frame_indices is not None else None
        return CacheKey(fields, indices, frozenset(need))

    # -- reading -------------------------------------------------------------------------------------------------
    def _discard(self, path: Path, inode: int, why: str) -> None:
        """Delete a bad entry, unless another process has replaced it since we read it."""
        log.info("cache entry %s ignored and removed: %s", path.name, why)
        try:
            if path.stat().st_ino == inode:
                path.unlink()
        except OSError:
            pass

    def get(self, key: CacheKey, device: Any = "cpu") -> CachedVideo | None:
        """The entry of ``key`` on ``device``, or None (miss, cache off, or an entry that is bad: then removed).

        A hit holds every tensor in ``key.need``, its stored key equals ``key`` and its frame indices equal
        ``key.frame_indices`` when those are given; it refreshes the entry's mtime (its place in the LRU order).
        Round trip is bit for bit (every dtype, meta tensors and scalars). Never raises for the cache's own faults.
        """
        from ..kernels import Grid
        from ..pipelines.base import EncodedVideo

        if not self.enabled:
            return None
        path = self._path(key)
        try:
            st = path.stat()
        except OSError:
            return None
        try:
            loaded = load_entry(path, key, device)
            if loaded is None:
                return None
            header, tensors = loaded
            meta = dict(header["meta"])
            meta.update({name.removeprefix("meta."): t for name, t in tensors.items() if name.startswith("meta.")})
            encoded = EncodedVideo(
                feats=tensors["feats"],  # [T, N, D] model dtype
                grid=Grid(*header["grid"]),
                importance=tensors.get("importance"),  # [T, N] float32
                metric=tensors.get("metric"),  # [T, N, Dk] float32
                similarity=tensors.get("similarity"),  # [T, N, Ds] float32
                meta=meta,
            )
            hit = CachedVideo(encoded, list(header["frame_indices"]), dict(header.get("video") or {}), path,
                              st.st_size)
        except FileNotFoundError:  # evicted or cleared meanwhile
            return None
        except Exception as exc:  # noqa: BLE001 - truncated, corrupt, foreign or stale: never trusted
            self._discard(path, st.st_ino, str(exc) if isinstance(exc, _Unusable)
                          else f"it does not load ({type(exc).__name__}: {exc})")
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        return hit

    def holds(self, key: CacheKey) -> bool:
        """Whether an entry for ``key`` is on disk whose header matches it and has every tensor ``key.need`` asks
        for: the header only, no tensor read (a probe before the model loads; :meth:`get` still checks all)."""
        from safetensors import safe_open

        if not self.enabled:
            return False
        try:
            with safe_open(self._path(key), framework="pt", device="cpu") as f:
                header = json.loads(f.metadata()["vidq"])
            return header.get("key") == key.fields and key.need <= set(header.get("has", ()))
        except Exception:  # noqa: BLE001 - missing, foreign or corrupt: not a hit
            return False

    # -- writing -------------------------------------------------------------------------------------------------
    def put(self, key: CacheKey, encoded: Any, video: dict[str, Any] | None = None) -> bool:
        """Store ``encoded`` (an EncodedVideo) under ``key``; True when an entry was written.

        ``key.frame_indices`` must be set (:meth:`CacheKey.with_indices`). ``video``: JSON data returned with a
        hit (e.g. timestamps, fps, decoder, so a hit can skip decoding). The importance/metric of an existing
        entry for the same key are carried over when ``encoded`` lacks them and its features are bit-equal, so
        the entry holds the union. Then least-recently-used entries are evicted to fit ``max_bytes``.
        Returns False without writing when the cache is off, the entry alone exceeds the cap, a meta value is
        neither a tensor nor JSON data, or the disk refuses (a warning, once); never raises for those.
        """
        import torch

        if not self.enabled:
            return False
        if key.frame_indices is None:
            raise ValueError("put() needs the frame indices: use key.with_indices(decoded.indices)")
        tensors: dict[str, torch.Tensor] = {"feats": encoded.feats}
        for name in OPTIONAL:
            if getattr(encoded, name) is not None:
                tensors[name] = getattr(encoded, name)
        scalars: dict[str, Any] = {}
        for name, value in encoded.meta.items():
            if isinstance(value, torch.Tensor):
                tensors[f"meta.{name}"] = value
            else:
                try:
                    if json.loads(json.dumps(value)) != value:
                        raise TypeError(f"meta {name!r} does not survive JSON")
                except (TypeError, ValueError) as exc:
                    log.info("not cached: %s", exc)
                    return False
                scalars[name] = value
        tensors = {name: _standalone(t) for name, t in tensors.items()}
        path = self._path(key)
        merge_previous(path, key, tensors)
        data = entry_data(key, tensors, encoded.grid, scalars, video)
        if len(data) > self.max_bytes:
            log.info("not cached: the entry (%s) is larger than the cap (%s)", format_size(len(data)),
                     format_size(self.max_bytes))
            return False
        try:
            write_atomic(self.root, path, data)
        except OSError as exc:
            self._disable(f"cannot write to the cache directory {self.root} ({exc.strerror or exc}); continuing "
                          "without the cache")
            return False
        self.evict(keep=path)
        return True

    # -- housekeeping --------------------------------------------------------------------------------------------
    def evict(self, keep: Path | None = None) -> int:
        """Remove least-recently-used entries (oldest mtime first, never ``keep``) until the total fits
        ``max_bytes``; returns how many were removed."""
        return directory.evict(self.root, self.max_bytes, keep)

    def info(self) -> directory.CacheInfo:
        """The directory, its entries and bytes, the cap, and any partial writes."""
        entries = directory.list_entries(self.root)
        return directory.CacheInfo(self.root, len(entries), sum(st.st_size for _, st in entries), self.max_bytes,
                                   directory.count_temporaries(self.root), self.enabled, self.warning)

    def clear(self) -> directory.ClearResult:
        """Delete every entry and temporary file; returns what was removed. Raises CacheError when it cannot."""
        return directory.clear(self.root)
