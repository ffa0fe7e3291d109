"""One entry of the cache on disk: an EncodedVideo's tensors in a safetensors file, with a header that is checked.

Entries are safetensors files ``<sha256 of the key>.safetensors``. The header (JSON, in the safetensors metadata)
holds the full key, the frame indices, the grid, the scalar meta, what optional tensors the entry has and each
tensor's CRC-32; a load checks all of them, so a truncated, bit-flipped, foreign or stale file is refused
(:class:`_Unusable`), never trusted. Round trip is bit for bit (every dtype, meta tensors and scalars).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .key import FORMAT_VERSION, OPTIONAL, CacheKey, _jsonable

ENTRY_SUFFIX = ".safetensors"


class _Unusable(Exception):
    """An entry that loads but must not be used (stale, foreign, damaged)."""


@dataclass
class CachedVideo:
    """A hit: the encoded video, the frame indices it was made from, and what the writer said about the video."""

    encoded: Any  # pipelines.base.EncodedVideo
    frame_indices: list[int]
    video: dict[str, Any]  # the ``video`` dict given to put (e.g. timestamps, fps, decoder), {} when none
    path: Path
    bytes: int

    @property
    def has(self) -> frozenset[str]:
        """The optional tensors this entry holds (it may hold more than the lookup needed)."""
        return frozenset(name for name in OPTIONAL if getattr(self.encoded, name) is not None)


def _checksum(tensor: Any) -> str:
    import torch

    data = tensor.detach().contiguous().view(-1).view(torch.uint8).numpy()
    return f"{zlib.crc32(data):08x}"


def _standalone(tensor: Any) -> Any:
    """A contiguous CPU tensor owning its storage (safetensors refuses views into shared storage)."""
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.untyped_storage().nbytes() != tensor.nbytes or tensor.storage_offset() != 0:
        tensor = tensor.clone()
    return tensor


def _same_bits(a: Any, b: Any) -> bool:
    """Bit-equal tensors (NaN equals the same NaN, -0.0 differs from 0.0)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


def load_entry(path: Path, key: CacheKey | None = None, device: Any = "cpu") -> tuple[dict, dict] | None:
    """(header, tensors on ``device``) of the entry at ``path``, or None when it is sound but lacks a tensor
    ``key.need`` asks for. Raises _Unusable (or anything else) for an entry that must not be used."""
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        header = json.loads(f.metadata()["vidq"])
        if header.get("format") != FORMAT_VERSION or set(f.keys()) != set(header["checksums"]):
            raise _Unusable("its tensors do not match its header")
        if key is not None:
            if header["key"] != key.fields:
                raise _Unusable("its stored key differs from the key it is named after")
            if key.frame_indices is not None and tuple(header["frame_indices"]) != key.frame_indices:
                raise _Unusable("its frame indices differ from this decode's")
            if not key.need <= set(header["has"]):
                return None  # a miss; put() keeps what this entry has
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    for name, tensor in tensors.items():
        if _checksum(tensor) != header["checksums"][name]:
            raise _Unusable(f"checksum mismatch in {name}")
    grid = [int(v) for v in header["grid"]]
    if len(grid) != 3 or list(tensors["feats"].shape[:2]) != [grid[0], grid[1] * grid[2]]:
        raise _Unusable("its features do not match its grid")
    return header, {name: tensor.to(device) for name, tensor in tensors.items()}


def entry_data(key: CacheKey, tensors: dict[str, Any], grid: Any, scalars: dict[str, Any],
               video: dict[str, Any] | None) -> bytes:
    """The safetensors bytes of an entry: ``tensors`` (standalone CPU tensors) and the header that checks them."""
    from safetensors.torch import save

    header = {
        "format": FORMAT_VERSION, "key": key.fields, "frame_indices": list(key.frame_indices),
        "grid": [grid.T, grid.H, grid.W], "has": sorted(n for n in OPTIONAL if n in tensors),
        "meta": scalars, "video": _jsonable(video or {}),
        "checksums": {name: _checksum(t) for name, t in tensors.items()},
    }
    return save(tensors, metadata={"vidq": json.dumps(header, sort_keys=True)})


def merge_previous(path: Path, key: CacheKey, tensors: dict[str, Any]) -> None:
    """Add the previous entry's importance/metric to ``tensors`` when they are missing and it is the same
    encoding (same key and frame indices, bit-equal features)."""
    missing = [name for name in OPTIONAL if name not in tensors]
    if not missing or not path.exists():
        return
    try:
        loaded = load_entry(path, dataclasses.replace(key, need=frozenset()))
    except Exception:  # noqa: BLE001 - a bad old entry is simply replaced
        return
    if loaded is not None and _same_bits(loaded[1]["feats"], tensors["feats"]):
        tensors.update({name: loaded[1][name] for name in missing if name in loaded[1]})
