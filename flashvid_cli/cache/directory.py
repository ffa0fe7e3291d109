"""The cache directory as a whole: its entries, least-recently-used eviction to the size cap, and clearing it.

The total size is capped (10 GiB by default); after each write the least-recently-used entries (a hit refreshes
the entry's mtime) are removed until the rest fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .entry import ENTRY_SUFFIX
from .files import TMP_SUFFIX
from .sizes import CacheError


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


def list_entries(root: Path | None) -> list[tuple[Path, os.stat_result]]:
    """Every entry file in ``root`` with its stat (none when the directory does not exist)."""
    found = []
    if root is None or not root.is_dir():
        return found
    for path in root.glob(f"*{ENTRY_SUFFIX}"):
        try:
            found.append((path, path.stat()))
        except OSError:
            pass
    return found


def evict(root: Path, max_bytes: int, keep: Path | None = None) -> int:
    """Remove least-recently-used entries (oldest mtime first, never ``keep``) until the total fits
    ``max_bytes``; returns how many were removed."""
    entries = sorted(list_entries(root), key=lambda e: e[1].st_mtime_ns)
    total = sum(st.st_size for _, st in entries)
    removed = 0
    for path, st in entries:
        if total <= max_bytes:
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


def count_temporaries(root: Path) -> int:
    """How many partial writes (in flight, or left by a killed writer) ``root`` holds."""
    return len(list(root.glob(f".*{TMP_SUFFIX}"))) if root.is_dir() else 0


def clear(root: Path) -> ClearResult:
    """Delete every entry and temporary file; returns what was removed. Raises CacheError when it cannot."""
    entries = removed_bytes = temporaries = 0
    for path, st in list_entries(root):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CacheError(f"cannot delete {path}: {exc.strerror or exc}") from None
        entries += 1
        removed_bytes += st.st_size
    if root.is_dir():
        for tmp in root.glob(f".*{TMP_SUFFIX}"):
            try:
                removed_bytes += tmp.stat().st_size
                tmp.unlink()
                temporaries += 1
            except OSError:
                pass
    return ClearResult(entries, removed_bytes, temporaries)
