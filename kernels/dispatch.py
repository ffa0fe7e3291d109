"""Chooses, per call, between a hot op's torch reference (the spec and the CPU path) and its Triton kernel.

``VIDQ_KERNELS`` = ``auto`` (default: Triton when every tensor is on CUDA and triton imports), ``torch`` or
``triton`` (forced; on CPU tensors that needs ``TRITON_INTERPRET=1`` before the kernel modules are imported,
which is how the tests run the kernels without a GPU). Read at every call, so tests and benchmarks can switch it.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from types import ModuleType

from torch import Tensor

MODES = ("auto", "torch", "triton")


class KernelUnavailable(RuntimeError):
    """``VIDQ_KERNELS=triton`` was asked for where the Triton kernels cannot run."""


def mode() -> str:
    """The current ``VIDQ_KERNELS`` value, validated."""
    value = os.environ.get("VIDQ_KERNELS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"VIDQ_KERNELS must be one of {', '.join(MODES)}, got {value!r}")
    return value


@cache
def triton_importable() -> bool:
    """Whether ``import triton`` works here (cached: an import attempt costs ~1 s)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure (missing, broken driver libs) means: use torch
        return False
    return True


def interpreting() -> bool:
    """Whether triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "on", "yes"}


def interpreter_tiles() -> bool:
    """Whether launchers pick big tiles: the interpreter pays per operation, not per element.

    ``VIDQ_TRITON_TILES=gpu`` keeps the GPU tile sizes under the interpreter, so tests cover their multi-tile loops.
    """
    return interpreting() and os.environ.get("VIDQ_TRITON_TILES", "").strip().lower() != "gpu"


def use_triton(*tensors: Tensor) -> bool:
    """True when the Triton kernel should run on ``tensors``; raises if it is forced but cannot run."""
    chosen = mode()
    if chosen == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if chosen == "auto":
        return on_cuda and triton_importable()
    if not triton_importable():
        raise KernelUnavailable("VIDQ_KERNELS=triton but triton cannot be imported")
    if not on_cuda and not interpreting():
        raise KernelUnavailable("VIDQ_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 (set before import)")
    return True


def kernel(name: str) -> ModuleType:
    """The ``kernels/<name>_triton.py`` module (imported on first use, so CPU-only runs never import triton)."""
    return importlib.import_module(f"{__package__}.{name}_triton")
