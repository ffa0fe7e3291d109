"""The cache's size cap as the user writes it: ``--cache-size`` parsed, sizes printed, and the cache's user error."""

from __future__ import annotations

import re

from ..pipelines.errors import VidqError

DEFAULT_MAX_BYTES = 10 * 2**30


class CacheError(VidqError):
    """A cache setting the user gave cannot be used (e.g. a ``--cache-size`` that is not a size)."""


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
