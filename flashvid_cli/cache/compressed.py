"""Streamed runs' compressed results in the cache (issue 27 item 4): the tokens a method kept, per method and keep.

A streamed run keeps no uncompressed features (an hour of them fits no sensible cap), so what it can store is its
output: ``tokens [K, D]`` and the indices that place them, a few MiB at most. The key is the encoded-video key of
the same video, sampling, model, dtype and preprocessing (:meth:`EncodedCache.key`) plus the method's name and
options (its keep among them): another method or keep is another entry. An entry is one ``.safetensors`` file in
the cache directory beside the encoded ones, so the size cap, LRU eviction, ``vidq cache info`` and ``clear``
count it; it is written atomically once the whole video is compressed (:func:`.files.write_atomic`), so a run
killed midway leaves at most a temporary file no lookup reads. A load checks the header's key, kind and each
tensor's CRC-32; a bad entry is removed, never trusted.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .entry import ENTRY_SUFFIX, _checksum, _standalone
from .files import write_atomic
from .key import FORMAT_VERSION, CacheKey, _jsonable

KIND = "compressed"
_TENSORS = ("tokens", "index", "sources", "offsets", "weights", "placed")


@dataclasses.dataclass
class CompressedHit:
    """A hit: the method's output on the whole video, the frame indices and the video facts the writer gave."""

    compressed: Any  # kernels.Compressed on the whole grid
    frame_indices: list[int]
    video: dict[str, Any]
    path: Path


def compressed_key(key: CacheKey, method: Any) -> CacheKey:
    """The key of ``method``'s (a built Method) output on the encoding ``key`` names."""
    fields = {**key.fields, KIND: _jsonable({"method": method.name, "options": method.options()})}
    return CacheKey(fields, key.frame_indices, frozenset())


def put_compressed(cache: Any, key: CacheKey, out: Any, video: dict[str, Any] | None = None) -> bool:
    """Store ``out`` (a Compressed: ``tokens [K, D]``, ``index``, ``sources``, ``offsets``, optional ``weights``
    and ``placed``) under ``key`` (with its frame indices) in ``cache`` (an EncodedCache); True when written. Off,
    over the cap or a disk that refuses: False, never raises for those."""
    from safetensors.torch import save

    if cache is None or not cache.enabled or key.frame_indices is None:
        return False
    tensors = {name: _standalone(getattr(out, name)) for name in _TENSORS if getattr(out, name) is not None}
    header = {"format": FORMAT_VERSION, "kind": KIND, "key": key.fields, "frame_indices": list(key.frame_indices),
              "grid": [out.grid.T, out.grid.H, out.grid.W], "stats": _jsonable(out.stats),
              "video": _jsonable(video or {}),
              "checksums": {name: _checksum(t) for name, t in tensors.items()}}
    data = save(tensors, metadata={"vidq": json.dumps(header, sort_keys=True)})
    if len(data) > cache.max_bytes:
        return False
    path = cache.root / f"{key.digest}{ENTRY_SUFFIX}"
    try:
        write_atomic(cache.root, path, data)
    except OSError:
        return False
    cache.evict(keep=path)
    return True


def holds_compressed(cache: Any, key: CacheKey) -> bool:
    """Whether ``cache`` has a compressed entry whose header is ``key``'s: the header only, no tensor read (a probe
    before the model loads, :mod:`.probe`; :func:`get_compressed` still checks everything)."""
    from safetensors import safe_open

    if cache is None or not cache.enabled:
        return False
    try:
        with safe_open(cache.root / f"{key.digest}{ENTRY_SUFFIX}", framework="pt", device="cpu") as f:
            header = json.loads(f.metadata()["vidq"])
        return header.get("kind") == KIND and header.get("format") == FORMAT_VERSION and header["key"] == key.fields
    except Exception:  # noqa: BLE001 - missing, foreign or corrupt: not a hit
        return False


def get_compressed(cache: Any, key: CacheKey, device: Any = "cpu") -> CompressedHit | None:
    """The entry of ``key`` in ``cache`` with its tensors on ``device``, or None (a miss, the cache off, or a bad
    entry: then removed). Frame indices are checked when ``key`` has them. Never raises for the cache's faults."""
    from safetensors import safe_open

    from ..kernels import Compressed, Grid

    if cache is None or not cache.enabled:
        return None
    path = cache.root / f"{key.digest}{ENTRY_SUFFIX}"
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            header = json.loads(f.metadata()["vidq"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        if header.get("kind") != KIND or header.get("format") != FORMAT_VERSION or header["key"] != key.fields:
            raise ValueError("not this compressed entry")
        if key.frame_indices is not None and tuple(header["frame_indices"]) != key.frame_indices:
            raise ValueError("its frame indices differ from this decode's")
        if set(tensors) != set(header["checksums"]) or any(_checksum(t) != header["checksums"][n]
                                                           for n, t in tensors.items()):
            raise ValueError("checksum mismatch")
        t = {name: tensor.to(device) for name, tensor in tensors.items()}
        out = Compressed(t["tokens"], t["index"], t["sources"], t["offsets"], Grid(*header["grid"]),
                         weights=t.get("weights"), placed=t.get("placed"))
        out.stats = dict(header["stats"])
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - truncated, corrupt, foreign or stale: removed, never trusted
        try:
            path.unlink()
        except OSError:
            pass
        return None
    try:
        path.touch()  # its place in the LRU order
    except OSError:
        pass
    return CompressedHit(out, list(header["frame_indices"]), dict(header.get("video") or {}), path)
