"""Shared timing for the benchmark scripts: warm-up, device-synchronised repeats, median and spread."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

CPU_WARNING = (
    "!!! No CUDA device: these are CPU numbers on small shapes. They check that the script runs; they say NOTHING "
    "about the GPU targets. !!!"
)


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


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
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": repeat}


def ms(stat: dict[str, float] | None) -> str:
    """``median [min-max]`` in milliseconds, or ``-``."""
    if not stat:
        return "-"
    return f"{stat['median'] * 1e3:.2f} [{stat['min'] * 1e3:.2f}-{stat['max'] * 1e3:.2f}]"


def warn_if_cpu(device: torch.device | str) -> None:
    if torch.device(device).type != "cuda":
        print(CPU_WARNING, file=sys.stderr)
        print(CPU_WARNING)
