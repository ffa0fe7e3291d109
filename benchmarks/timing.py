"""Shared timing for the benchmark scripts: warm-up, device-synchronised repeats, median and spread."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used, so a script's --help stays quick
    import torch

CPU_WARNING = (
    "!!! No CUDA device: these are CPU numbers on small shapes. They check that the script runs; they say NOTHING "
    "about the GPU targets. !!!"
)


def sync(device: torch.device | str) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def stat(values: list[float]) -> dict[str, float]:
    """``{"median", "min", "max", "n"}`` of ``values`` (seconds, or whatever they are)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def cpu_context() -> dict[str, float]:
    """The machine's state a CPU figure depends on: torch's thread count and the 1-minute load average."""
    import torch

    return {"threads": torch.get_num_threads(), "load_average": os.getloadavg()[0]}


def print_tail(out: dict[str, Any], repeat: int) -> None:
    """The last two lines of a benchmark: the CPU context (from :func:`cpu_context` in ``out``), then ``out`` as
    one JSON line."""
    print(f"(CPU, {out['threads']} torch threads, load average {out['load_average']:.1f} at the start; "
          f"{repeat} interleaved repeats)")
    print(json.dumps(out))


def measure(fn: Callable[[], Any], device: torch.device | str, repeat: int, warmup: int) -> dict[str, float]:
    """Seconds per call of ``fn``: median, min, max over ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return stat(times)


def ms(stat: dict[str, float] | None) -> str:
    """``median [min-max]`` in milliseconds, or ``-``."""
    if not stat:
        return "-"
    return f"{stat['median'] * 1e3:.2f} [{stat['min'] * 1e3:.2f}-{stat['max'] * 1e3:.2f}]"


def warn_if_cpu(device: torch.device | str) -> None:
    import torch

    if torch.device(device).type != "cuda":
        print(CPU_WARNING, file=sys.stderr)
        print(CPU_WARNING)
