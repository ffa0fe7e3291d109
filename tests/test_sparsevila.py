"""SparseVILA's prefill side (kernels/sparsevila.py, shared/ALGORITHMS.md §13.1).

* the kept set is, per frame, the top ``round(keep * N)`` by importance, ties to the lower index, tokens unchanged;
* options are validated with one-line errors naming the option;
* ``vidq ask --method sparsevila`` on every family keeps ``tokens_for`` visual tokens (plus LLaVA-OV's newline).
"""

from __future__ import annotations

import json

import pytest
import torch

from flashvid_cli.kernels import Grid, build
from flashvid_cli.kernels.errors import MethodError
from flashvid_cli.pipelines.registry import families

FAMILIES = tuple(families())


def loop_reference(importance: torch.Tensor, K: int) -> list[list[int]]:
    """Per frame, the K indices of highest importance (equal scores: lower index first), ascending."""
    out = []
    for row in importance.tolist():
        order = sorted(range(len(row)), key=lambda n: (-row[n], n))
        out.append(sorted(order[:K]))
    return out


@pytest.mark.parametrize("keep", [0.07, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(1, 3, 5), (4, 6, 6), (3, 7, 9)], ids=str)
def test_prefill_keeps_the_top_share_per_frame_ties_low(keep, shape):
    T, H, W = shape
    grid = Grid(T, H, W)
    gen = torch.Generator().manual_seed(T * 100 + H)
    # Quantised scores so ties are common; the loop breaks them toward the lower index.
    importance = torch.randint(0, 4, (T, H * W), generator=gen).float()
    feats = torch.randn(T, H * W, 8, generator=gen)
    method = build("sparsevila", keep=keep)
    out = method(feats, grid, importance=importance)
    K = max(1, round(keep * H * W))
    expected = [n + t * H * W for t, row in enumerate(loop_reference(importance, K)) for n in row]
    assert out.index.tolist() == expected
    assert torch.equal(out.tokens, feats.reshape(-1, 8)[out.index])
    assert method.tokens_for(grid) == T * K == out.tokens.shape[0]


@pytest.mark.parametrize("options, match", [
    ({"decode_keep": 0.0}, "sparsevila.decode_keep"), ({"decode_keep": 1.5}, "sparsevila.decode_keep"),
    ({"decode_keep": 0.06}, "decoding sparsity is not built yet"),
    ({"sinks": -1}, "sparsevila.sinks"), ({"sinks": 1.5}, "sparsevila.sinks"), ({"sinks": True}, "sparsevila.sinks"),
])
def test_bad_options(options, match):
    with pytest.raises(MethodError, match=match):
        build("sparsevila", keep=0.5, options=options)


def test_needs_importance():
    with pytest.raises(MethodError, match="needs importance"):
        build("sparsevila", keep=0.5)(torch.randn(2, 4, 3), Grid(2, 2, 2))


@pytest.mark.parametrize("family", FAMILIES)
def test_vidq_ask_sparsevila_end_to_end(tiny_models, sample_video, family):
    from typer.testing import CliRunner

    from flashvid_cli.cli import app

    args = ["ask", str(sample_video), "Where is the red square?", "--model", str(tiny_models[family]), "--frames",
            "4", "--max-new-tokens", "3", "--keep", "0.3", "--method", "sparsevila", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    tokens = report["tokens"]
    extra = 1 if family == "llava_onevision" else 0
    assert tokens["visual_after"] < tokens["visual_before"]
    assert (tokens["visual_after"] - extra) % report["method_stats"]["budget"] == 0
    assert report["method_options"]["decode_keep"] == 1.0 and report["method_options"]["sinks"] == 4
