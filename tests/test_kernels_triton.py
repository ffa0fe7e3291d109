"""Every Triton kernel against its torch reference (the checks live in ``kernel_checks.py``), one test per check.

On CUDA the real kernels run in this process. Without a GPU they run in triton's CPU interpreter, which needs
``TRITON_INTERPRET=1`` before triton is first imported; setting it here would leak into every other test module
of this pytest process, so the checks run once in a subprocess (``session`` fixture) and each test reports its
check's outcome. Running ``TRITON_INTERPRET=1 pytest tests/test_kernels_triton.py`` runs them in-process instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flashvid_cli.kernels import Grid, build, dispatch

if importlib.util.find_spec("triton") is None:  # find_spec, not import: importing would fix the interpreter mode
    pytest.skip("triton is not installed", allow_module_level=True)

import kernel_checks  # noqa: E402 - after the skip, which must win when triton is missing

CUDA = torch.cuda.is_available()
IN_PROCESS = CUDA or dispatch.interpreting()
CHECKS = Path(kernel_checks.__file__)


@pytest.fixture(scope="session")
def interpreter_results(tmp_path_factory) -> dict[str, dict[str, str]]:
    """All checks, run once under ``TRITON_INTERPRET=1`` in a fresh interpreter."""
    out = tmp_path_factory.mktemp("triton") / "results.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("VIDQ_KERNELS", None)
    proc = subprocess.run(
        [sys.executable, str(CHECKS), "--out", str(out)], env=env, capture_output=True, text=True, timeout=900
    )
    if not out.is_file():
        pytest.fail(f"the interpreter run crashed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", list(kernel_checks.CASES))
def test_kernel(name: str, request) -> None:
    if IN_PROCESS:
        try:
            kernel_checks.CASES[name]()
        except kernel_checks.Skip as exc:
            pytest.skip(str(exc))
        return
    result = request.getfixturevalue("interpreter_results")[name]
    if result["outcome"] == "skipped":
        pytest.skip(result["detail"])
    if result["outcome"] == "failed":
        pytest.fail(f"under TRITON_INTERPRET=1:\n{result['detail']}", pytrace=False)


def test_dispatcher(monkeypatch) -> None:
    x = torch.zeros(2, 2)
    for mode in ("auto", "torch"):
        monkeypatch.setenv("VIDQ_KERNELS", mode)
        assert dispatch.use_triton(x) is False  # CPU tensors take the torch path unless forced
    monkeypatch.setenv("VIDQ_KERNELS", "bogus")
    with pytest.raises(ValueError, match="VIDQ_KERNELS"):
        dispatch.use_triton(x)
    monkeypatch.setenv("VIDQ_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(dispatch.KernelUnavailable, match="TRITON_INTERPRET"):
        dispatch.use_triton(x)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["flashvid", "divprune"])
def test_real_shape_on_gpu(name: str) -> None:
    """LLaVA-OneVision-7B shapes: 32 frames x 14x14 tokens, D = 3584, keep 0.1, bf16 in (float32 maths inside)."""
    feats, attn, _ = kernel_checks.make_clip(32, 14, 14, 3584)
    grid = Grid(32, 14, 14)
    method = build(name, 0.1, model_type="llava_onevision")
    ref, out = kernel_checks.both(lambda: method(feats.bfloat16(), grid, attn))
    kernel_checks.same_compressed(ref, out, torch.bfloat16)
