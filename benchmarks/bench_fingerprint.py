"""The encoded-video cache's costs: the video fingerprint (sampled byte ranges vs a full SHA-256) on a large file,
then writing and reading one entry at LLaVA-OneVision-7B shapes.

    python benchmarks/bench_fingerprint.py                  # a 1 GiB file, 5 interleaved repeats
    python benchmarks/bench_fingerprint.py --size-mib 256 --repeat 3 --dir /some/disk

Writes a file of random bytes (its own temporary directory under ``--dir``, default the system temp dir), then
times both fingerprints with the file in the page cache ("warm") and evicted from it with
``posix_fadvise(DONTNEED)`` after an fsync ("cold", read from the disk), in interleaved repeats (sampled, full,
sampled, full...), and removes the file. Also shows how many bytes each reads. Then ``put`` and ``get`` of an entry
of 32 frames x 196 tokens x 3584 bf16 features with importance and metric [32, 196, 1152] float32 (73 MiB), get
with its per-tensor CRC check, in a temporary cache directory. Prints tables, then one JSON document on the last
line. The choice and its reasoning are in flashvid_cli/cache/key.py's docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from flashvid_cli.cache import CacheKey, EncodedCache, _ranges, fingerprint, full_hash
from flashvid_cli.kernels import Grid
from flashvid_cli.pipelines.base import EncodedVideo


def write_file(path: Path, size: int) -> None:
    """``size`` bytes of random data (a 64 MiB random block repeated), fsynced."""
    block = os.urandom(64 * 2**20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            left -= f.write(block[: min(left, len(block))])
        f.flush()
        os.fsync(f.fileno())


def evict(path: Path) -> bool:
    """Drop the file's pages from the page cache; False where the platform cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def time_entry(root: Path, repeat: int) -> dict[str, float]:
    """Median seconds of put and get (hit) of one LLaVA-OneVision-7B-sized entry, interleaved."""
    g = torch.Generator().manual_seed(0)
    encoded = EncodedVideo(torch.randn(32, 196, 3584, generator=g).bfloat16(), Grid(32, 14, 14),
                           importance=torch.rand(32, 196, generator=g), metric=torch.randn(32, 196, 1152, generator=g),
                           meta={"newline": torch.randn(3584, generator=g).bfloat16()})
    cache = EncodedCache(root)
    key = CacheKey({"benchmark": "entry"}, tuple(range(32)), frozenset({"importance", "metric"}))
    puts, gets = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        assert cache.put(key, encoded)
        puts.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert cache.get(key) is not None
        gets.append(time.perf_counter() - t)
    size = cache.info().bytes
    return {"put_ms": statistics.median(puts) * 1e3, "get_ms": statistics.median(gets) * 1e3, "entry_bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the temporary file goes (default: the system temp dir)")
    args = parser.parse_args()

    size = args.size_mib * 2**20
    work = Path(tempfile.mkdtemp(prefix="vidq-bench-fp-", dir=args.dir))
    try:
        path = work / "big.bin"
        started = time.perf_counter()
        write_file(path, size)
        write_s = time.perf_counter() - started
        kinds = {"sampled": fingerprint, "full": full_hash}
        times: dict[tuple[str, str], list[float]] = {(k, c): [] for k in kinds for c in ("warm", "cold")}
        can_evict = evict(path)
        for _ in range(args.repeat):
            for kind, fn in kinds.items():
                for cache_state in ("cold", "warm"):
                    if cache_state == "cold":
                        if not can_evict:
                            continue
                        evict(path)
                    else:
                        fn(path)  # make sure what it reads is in the page cache
                    t = time.perf_counter()
                    fn(path)
                    times[(kind, cache_state)].append(time.perf_counter() - t)
        read = {"sampled": sum(length for _, length in _ranges(size)), "full": size}
        path.unlink()
        entry = time_entry(work / "cache", args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    print(f"file: {args.size_mib} MiB of random bytes in {work} (written in {write_s:.1f} s, removed)")
    print(f"{'fingerprint':<12}{'page cache':<12}{'MiB read':>10}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
    for (kind, cache_state), values in times.items():
        if not values:
            continue
        row = {"fingerprint": kind, "page_cache": cache_state, "bytes_read": read[kind],
               "median_ms": statistics.median(values) * 1e3, "min_ms": min(values) * 1e3,
               "max_ms": max(values) * 1e3, "n": len(values)}
        rows.append(row)
        print(f"{kind:<12}{cache_state:<12}{read[kind] / 2**20:>10.1f}{row['median_ms']:>12.1f}"
              f"{row['min_ms']:>10.1f}{row['max_ms']:>10.1f}")
    ratio = {c: statistics.median(times[("full", c)]) / statistics.median(times[("sampled", c)])
             for c in ("warm", "cold") if times[("full", c)] and times[("sampled", c)]}
    for cache_state, value in ratio.items():
        print(f"full / sampled ({cache_state}): {value:.0f}x")
    print(f"entry of {entry['entry_bytes'] / 2**20:.1f} MiB (LLaVA-OV-7B, 32 frames, importance + metric): "
          f"put {entry['put_ms']:.0f} ms, get {entry['get_ms']:.0f} ms (medians of {args.repeat})")
    print(json.dumps({
        "benchmark": "fingerprint", "entry": entry, "size_bytes": size, "repeat": args.repeat, "rows": rows,
        "full_over_sampled": ratio, "cold_measured": can_evict,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
    }))


if __name__ == "__main__":
    sys.exit(main())
