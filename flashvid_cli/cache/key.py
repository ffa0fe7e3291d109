"""What identifies an encoded video: the content fingerprint of a file, the model's and code's fingerprints, the key.

The key (the full key is stored in every entry's header and compared on every load, so a hash collision or a stale
file never passes; the file name is only a hash of it):

- the video's content fingerprint (:func:`fingerprint`, below);
- the sampling request (frames / fps / max_frames, the decode-time downscale ``max_side``, the seek mode, the
  decoder: exact decoders return the same pictures, but decord's colour conversion is not bit-equal to FFmpeg's,
  so an entry made with one is never served to the other);
- the sampling's result, the frame indices: stored in the entry and compared whenever the caller knows them; a
  caller that looks up before decoding (to skip decoding on a hit) gets them from the entry, which the content
  fingerprint and the request pin;
- the model (:func:`model_fingerprint`: directory, hub repo + revision, and every weight and config file's
  fingerprint), the dtype, the device kind (``cpu``, or ``cuda`` plus the GPU name: kernels differ, so features
  computed on another device would not be bit-equal to a fresh encode here), the preprocessing config;
- the environment: this format's version, torch and transformers versions, and a hash of vidq's model-adapter
  sources (:func:`code_fingerprint`), so editing the encode code never serves features of the old code.

Why the sampled fingerprint and not a full hash (``python benchmarks/bench_fingerprint.py``, docs/BENCHMARKS.md):
on a 1 GiB file on the development machine (2 shared cores, load ~9) a full SHA-256 took 4.7 s with the file in
the page cache and 4.9 s from disk (medians of 5), on every lookup; the sampled fingerprint took 23 ms and 62 ms
(200x and 80x less; it reads 6 MiB whatever the size). A hit is meant to save the decode, preprocessing and the
vision tower (1.6 s for 16 frames of the demo model on CPU; 785 ms of a 7B model's time to first token on a GPU
in FlashVID's table), so a full hash of a large video would cost more than the hit saves.

What the sampled fingerprint cannot see: a change that keeps the size, restores the mtime to the nanosecond and
touches only bytes outside the sampled ranges (the first and last MiB, and 64 ranges of 64 KiB spread evenly,
6 MiB of every file). Re-encoding, editing, downloading or copying a file over another rewrites the mtime or the
size, and a change to the container's index (at the head or tail) or to a sampled range is seen even with a
forged mtime, so only a deliberate same-size in-place edit with the mtime put back goes unseen; that is acceptable
for a cache of a user's own files (a user who does that can `vidq cache clear`). Files up to 16 MiB are hashed
whole (tens of ms), so short clips have no blind spot at all.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
OPTIONAL = ("importance", "metric", "similarity")  # EncodedVideo fields an entry holds when they were computed

# Fingerprint sampling: files up to FULL_HASH_BELOW bytes are hashed whole; larger ones by their head and tail
# (container headers and indexes live there) and SAMPLES ranges spread evenly between.
FULL_HASH_BELOW = 16 * 2**20
EDGE_BYTES = 2**20
SAMPLES = 64
SAMPLE_BYTES = 64 * 2**10
_READ_CHUNK = 8 * 2**20


def _ranges(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the sampled byte ranges of a file of ``size`` bytes (the whole file when small)."""
    if size <= FULL_HASH_BELOW:
        return [(0, size)]
    ranges = [(0, EDGE_BYTES)]
    span = size - 2 * EDGE_BYTES - SAMPLE_BYTES
    ranges += [(EDGE_BYTES + span * i // (SAMPLES - 1), SAMPLE_BYTES) for i in range(SAMPLES)]
    ranges.append((size - EDGE_BYTES, EDGE_BYTES))
    return ranges


def fingerprint(path: str | os.PathLike) -> str:
    """The content fingerprint of a file: SHA-256 of its size, mtime (ns) and sampled byte ranges, as hex.

    Files up to 16 MiB are hashed whole; larger ones by ~6 MiB of samples (see the module docstring for what
    that cannot see and the 1 GiB measurement). Raises OSError when the file cannot be read.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        digest = hashlib.sha256(f"vidq-fp1 {st.st_size} {st.st_mtime_ns}\n".encode())
        for offset, length in _ranges(st.st_size):
            f.seek(offset)
            while length > 0:
                chunk = f.read(min(length, _READ_CHUNK))
                if not chunk:
                    break
                digest.update(chunk)
                length -= len(chunk)
    return digest.hexdigest()


def full_hash(path: str | os.PathLike) -> str:
    """SHA-256 of every byte of a file, as hex (the alternative :func:`fingerprint` is measured against)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken")


def model_fingerprint(model: str | os.PathLike) -> dict[str, Any]:
    """What identifies a model's weights for the cache key, as a JSON-able dict.

    ``random:SPEC`` -> its spec and a hash of its config (the weights are a fixed-seed function of it); a local
    directory or hub repo id -> the resolved directory, the hub repo and revision when it is a hub snapshot, and
    the :func:`fingerprint` of every weight, config, tokenizer and template file in it (so a retrained checkpoint
    written in place is a different model even at the same size). Raises ModelError as ``load_pipeline`` does.
    """
    from ..pipelines.loading import resolve_checkpoint
    from ..pipelines.random_init import PREFIX, read_config_file, is_random

    name = os.fspath(model)
    if is_random(name):
        spec = name.removeprefix(PREFIX)
        _, raw = read_config_file(spec)
        config = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
        return {"kind": "random", "spec": spec, "config": config, "seed": 0}
    path = resolve_checkpoint(name).resolve()
    files = sorted({p for pattern in _WEIGHT_PATTERNS for p in path.glob(pattern) if p.is_file()})
    info: dict[str, Any] = {"kind": "directory", "path": str(path),
                            "files": {p.name: fingerprint(p) for p in files}}
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        info["repo"] = path.parent.parent.name.removeprefix("models--").replace("--", "/")
        info["revision"] = path.name
    return info


def code_fingerprint() -> str:
    """SHA-256 of the sources that turn a video into features (``pipelines/**/*.py``, this package), as hex."""
    from .. import pipelines

    digest = hashlib.sha256()
    for package in (Path(pipelines.__file__).resolve().parent, Path(__file__).resolve().parent):
        for source in sorted(package.rglob("*.py"), key=lambda p: p.relative_to(package).as_posix()):
            name = source.relative_to(package).as_posix()
            digest.update(name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()


def sampling_request(
    frames: int | None = None, fps: float | None = None, max_frames: int = 32, max_side: int | None = 1920,
    seek: str | None = None, decoder: str = "auto",
) -> dict[str, Any]:
    """The sampling part of a key: what decides which frames are decoded and at what size.

    The decoder is always part of it: exact decoders return the same pictures but not the same bytes (decord's
    colour conversion differs from FFmpeg's by a level here and there), and a non-exact seek mode (``"keyframe"``)
    changes the frames themselves.
    """
    return {"frames": frames, "fps": fps, "max_frames": max_frames, "max_side": max_side,
            "seek": seek or "exact", "decoder": decoder}


def device_kind(device: Any) -> str:
    """``"cpu"``, or ``"cuda:<GPU name>"``: features are bit-reproducible only on the same kind of device."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{torch.cuda.get_device_name(index)}"
    return device.type


@functools.lru_cache(maxsize=1)
def _environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        transformers = version("transformers")
    except PackageNotFoundError:  # pragma: no cover - vidq depends on it
        transformers = None
    return {"format": FORMAT_VERSION, "torch": torch.__version__, "transformers": transformers,
            "code": code_fingerprint()}


def _jsonable(value: Any) -> Any:
    """``value`` as canonical JSON data (dataclasses and tuples become dicts and lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass(frozen=True)
class CacheKey:
    """What an entry is the encoding of. ``fields`` (JSON data) name the file; the rest is checked on load.

    ``frame_indices``: the sampling's result, None when looking up before decoding (then the entry's are used).
    ``need``: the optional tensors (a subset of :data:`OPTIONAL`) a hit must hold.
    """

    fields: dict[str, Any]
    frame_indices: tuple[int, ...] | None = None
    need: frozenset[str] = frozenset()

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of ``fields``: the entry's file name."""
        return hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()

    def with_indices(self, frame_indices: Iterable[int]) -> CacheKey:
        """This key with the frame indices the decode returned (needed by :meth:`EncodedCache.put`)."""
        return dataclasses.replace(self, frame_indices=tuple(int(i) for i in frame_indices))
