"""An on-disk cache of encoded videos: the vision tower's output before compression, so a video is encoded once.

    cache = EncodedCache()                                   # ~/.cache/vidq (VIDQ_CACHE_DIR overrides), 10 GiB cap
    key = cache.key(video, sampling=sampling_request(frames=8), model=model_fingerprint(model),
                    dtype=pipe.dtype, device=pipe.device, preprocess=pipe.preprocess_config, need=method.needs)
    hit = cache.get(key, device=pipe.device)                 # CachedVideo | None
    ...miss: decode, preprocess, encode...
    cache.put(key.with_indices(decoded.indices), encoded, video=info)

One entry serves every method and keep: it holds the features [T, N, D] in the model dtype and, whenever they
were computed, the importance [T, N] and metric [T, N, Dk] (float32). A lookup that needs one the entry lacks is a
miss; the new entry written after it holds the union (``put`` carries over what the old entry had).

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

Entries are safetensors files ``<sha256 of the key>.safetensors``; each tensor's CRC-32 is in the header and checked
on load, so a truncated, bit-flipped or foreign file is ignored, deleted and rewritten, never trusted. Writes go to
a temporary file in the same directory, are fsynced, then ``os.replace``d over the entry: a kill -9 mid-write leaves
only a ``.tmp`` file no lookup reads (the next write removes it once its writer is dead); two processes writing the
same entry both succeed and the last replace wins, with one valid entry. The total size is capped (10 GiB by
default); after each write the least-recently-used entries (a hit refreshes the entry's mtime) are removed until
the rest fit. A directory that cannot be written gives one warning line (:attr:`EncodedCache.warning`, also
logged once) and no cache, never a crash.

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
import logging
import os
import re
import tempfile
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pipelines.errors import VidqError

FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 10 * 2**30
ENV_DIR = "VIDQ_CACHE_DIR"
ENTRY_SUFFIX = ".safetensors"
TMP_SUFFIX = ".tmp"
OPTIONAL = ("importance", "metric")  # EncodedVideo fields an entry holds when they were computed

# Fingerprint sampling: files up to FULL_HASH_BELOW bytes are hashed whole; larger ones by their head and tail
# (container headers and indexes live there) and SAMPLES ranges spread evenly between.
FULL_HASH_BELOW = 16 * 2**20
EDGE_BYTES = 2**20
SAMPLES = 64
SAMPLE_BYTES = 64 * 2**10
_READ_CHUNK = 8 * 2**20
_STALE_TMP_S = 24 * 3600.0  # a temporary file this old is removed even if its writer's pid is alive (pid reuse)

log = logging.getLogger("vidq.cache")


class _Unusable(Exception):
    """An entry that loads but must not be used (stale, foreign, damaged)."""


class CacheError(VidqError):
    """A cache setting the user gave cannot be used (e.g. a ``--cache-size`` that is not a size)."""


# -- sizes ---------------------------------------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str | int) -> int:
    """``"2GB"`` -> 2_000_000_000, ``"500MiB"`` -> 524_288_000, ``"0"`` -> 0 (bytes).

    KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB and bare K/M/G/T powers of 1024, case-insensitive.
    Raises CacheError for anything else (negative, unknown unit, not a number).
    """
    if isinstance(text, int):
        if text < 0:
            raise CacheError(f"--cache-size must be at least 0, got {text}")
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise CacheError(f"--cache-size: cannot read {text!r} as a size; write e.g. 0, 500MiB, 2GB or 10GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    """Bytes as a short binary-unit string: ``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# -- fingerprints --------------------------------------------------------------------------------------------------
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
    from .pipelines.base import resolve_checkpoint
    from .pipelines.random_init import PREFIX, _config_file, is_random

    name = os.fspath(model)
    if is_random(name):
        spec = name.removeprefix(PREFIX)
        _, raw = _config_file(spec)
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
    """SHA-256 of the sources that turn a video into features (``pipelines/*.py``, this module), as hex."""
    from . import pipelines

    digest = hashlib.sha256()
    sources = sorted(Path(pipelines.__file__).resolve().parent.glob("*.py")) + [Path(__file__).resolve()]
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
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


# -- keys and entries ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheKey:
    """What an entry is the encoding of. ``fields`` (JSON data) name the file; the rest is checked on load.

    ``frame_indices``: the sampling's result, None when looking up before decoding (then the entry's are used).
    ``need``: the optional tensors (a subset of ``{"importance", "metric"}``) a hit must hold.
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


@dataclass
class CacheInfo:
    root: Path
    entries: int
    bytes: int
    max_bytes: int
    temporary_files: int  # partial writes (in flight, or left by a killed writer)
    enabled: bool
    warning: str | None = None


@dataclass
class ClearResult:
    entries: int
    bytes: int
    temporary_files: int


def default_root() -> Path:
    """``$VIDQ_CACHE_DIR`` when set, else the platform cache directory (``~/.cache/vidq`` on Linux)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("vidq", appauthor=False))


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        """The key of ``video`` encoded by ``model`` (see the module docstring for each part).

        ``sampling``: :func:`sampling_request`; ``model``: :func:`model_fingerprint`; ``dtype``: a torch dtype or
        its name; ``device``: a torch device or its name; ``preprocess``: the PreprocessConfig (or a dict);
        ``need``: the optional tensors a hit must hold. Raises VideoError when the video cannot be read.
        """
        from .pipelines.errors import VideoError

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
    def _load(self, path: Path, key: CacheKey | None = None, device: Any = "cpu") -> tuple[dict, dict] | None:
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
        from .kernels import Grid
        from .pipelines.base import EncodedVideo

        if not self.enabled:
            return None
        path = self._path(key)
        try:
            st = path.stat()
        except OSError:
            return None
        try:
            loaded = self._load(path, key, device)
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
        from safetensors.torch import save

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
        self._merge_previous(path, key, tensors)
        grid = encoded.grid
        header = {
            "format": FORMAT_VERSION, "key": key.fields, "frame_indices": list(key.frame_indices),
            "grid": [grid.T, grid.H, grid.W], "has": sorted(n for n in OPTIONAL if n in tensors),
            "meta": scalars, "video": _jsonable(video or {}),
            "checksums": {name: _checksum(t) for name, t in tensors.items()},
        }
        data = save(tensors, metadata={"vidq": json.dumps(header, sort_keys=True)})
        if len(data) > self.max_bytes:
            log.info("not cached: the entry (%s) is larger than the cap (%s)", format_size(len(data)),
                     format_size(self.max_bytes))
            return False
        try:
            self._write_atomic(path, data)
        except OSError as exc:
            self._disable(f"cannot write to the cache directory {self.root} ({exc.strerror or exc}); continuing "
                          "without the cache")
            return False
        self.evict(keep=path)
        return True

    def _merge_previous(self, path: Path, key: CacheKey, tensors: dict[str, Any]) -> None:
        """Add the previous entry's importance/metric to ``tensors`` when they are missing and it is the same
        encoding (same key and frame indices, bit-equal features)."""
        missing = [name for name in OPTIONAL if name not in tensors]
        if not missing or not path.exists():
            return
        try:
            loaded = self._load(path, dataclasses.replace(key, need=frozenset()))
        except Exception:  # noqa: BLE001 - a bad old entry is simply replaced
            return
        if loaded is not None and _same_bits(loaded[1]["feats"], tensors["feats"]):
            tensors.update({name: loaded[1][name] for name in missing if name in loaded[1]})

    def _write_atomic(self, path: Path, data: bytes) -> None:
        """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
        self._remove_dead_temporaries()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{path.stem[:16]}.{os.getpid()}.", suffix=TMP_SUFFIX)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view[:_READ_CHUNK])
                view = view[written:]
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass

    def _remove_dead_temporaries(self) -> None:
        """Remove temporary files whose writer is gone (killed mid-write) or that are a day old."""
        now = time.time()
        for tmp in self.root.glob(f".*{TMP_SUFFIX}"):
            parts = tmp.name.split(".")
            try:
                pid = int(parts[2])
            except (IndexError, ValueError):
                pid = -1
            try:
                age = now - tmp.stat().st_mtime
                if age > _STALE_TMP_S or (pid > 0 and not _pid_alive(pid)):
                    tmp.unlink()
            except OSError:
                pass

    # -- housekeeping --------------------------------------------------------------------------------------------
    def _entries(self) -> list[tuple[Path, os.stat_result]]:
        found = []
        if self.root is None or not self.root.is_dir():
            return found
        for path in self.root.glob(f"*{ENTRY_SUFFIX}"):
            try:
                found.append((path, path.stat()))
            except OSError:
                pass
        return found

    def evict(self, keep: Path | None = None) -> int:
        """Remove least-recently-used entries (oldest mtime first, never ``keep``) until the total fits
        ``max_bytes``; returns how many were removed."""
        entries = sorted(self._entries(), key=lambda e: e[1].st_mtime_ns)
        total = sum(st.st_size for _, st in entries)
        removed = 0
        for path, st in entries:
            if total <= self.max_bytes:
                break
            if keep is not None and path == keep:
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError:
                continue
            total -= st.st_size
        return removed

    def info(self) -> CacheInfo:
        """The directory, its entries and bytes, the cap, and any partial writes."""
        entries = self._entries()
        temporaries = len(list(self.root.glob(f".*{TMP_SUFFIX}"))) if self.root.is_dir() else 0
        return CacheInfo(self.root, len(entries), sum(st.st_size for _, st in entries), self.max_bytes,
                         temporaries, self.enabled, self.warning)

    def clear(self) -> ClearResult:
        """Delete every entry and temporary file; returns what was removed. Raises CacheError when it cannot."""
        entries = removed_bytes = temporaries = 0
        for path, st in self._entries():
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CacheError(f"cannot delete {path}: {exc.strerror or exc}") from None
            entries += 1
            removed_bytes += st.st_size
        if self.root.is_dir():
            for tmp in self.root.glob(f".*{TMP_SUFFIX}"):
                try:
                    removed_bytes += tmp.stat().st_size
                    tmp.unlink()
                    temporaries += 1
                except OSError:
                    pass
        return ClearResult(entries, removed_bytes, temporaries)


__all__ = [
    "CacheError", "CacheInfo", "CacheKey", "CachedVideo", "ClearResult", "DEFAULT_MAX_BYTES", "EncodedCache",
    "code_fingerprint", "default_root", "device_kind", "fingerprint", "format_size", "full_hash",
    "model_fingerprint", "parse_size", "sampling_request",
]
