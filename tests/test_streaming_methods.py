"""Methods with their own streaming form (Method.stream_start/stream_chunk/stream_finish, kernels/base.py): EVS
streams exactly (the previous frame and a running top-budget cross chunks); the default protocol checks its input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flashvid_cli.config import AskConfig
from flashvid_cli.kernels import Grid, MethodError, build
from flashvid_cli.streaming import refusal, stream_video

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
FAMILY = "llava_onevision"


def _same(a, b) -> None:
    assert a.tokens.dtype == b.tokens.dtype
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.index, b.index)
    assert torch.equal(a.sources, b.sources)
    assert torch.equal(a.offsets, b.offsets)
    assert (a.weights is None) == (b.weights is None)
    if a.weights is not None:
        assert torch.equal(a.weights, b.weights)
    assert torch.equal(a.placement, b.placement)
    assert a.stats["per_frame"] == b.stats["per_frame"]
    assert a.stats["tokens_out"] == b.stats["tokens_out"]


def _streamed(method, x: torch.Tensor, grid: Grid, chunk: int, **inputs):
    """``method`` over ``x [T, N, D]`` a chunk of frames at a time, through the stream protocol."""
    state = method.stream_start((grid.H, grid.W), grid.T)
    for first in range(0, grid.T, chunk):
        part = {k: v[first : first + chunk] for k, v in inputs.items()}
        sub = x[first : first + chunk]
        method.stream_chunk(state, sub, Grid(sub.shape[0], grid.H, grid.W), **part)
    return method.stream_finish(state)


def _golden_evs() -> list[tuple[str, str]]:
    out = []
    for path in sorted(GOLDEN.glob("case_*.pt")):
        results = torch.load(path, weights_only=True)["results"]
        out += [(str(path), key) for key in results if key.startswith("evs_")]
    return out


@pytest.mark.parametrize(("path", "key"), _golden_evs() or [pytest.param("", "", marks=pytest.mark.skip("no golden"))])
def test_evs_streams_golden_cases_bit_for_bit(path, key):
    case = torch.load(path, weights_only=True)
    res, meta = case["results"][key], case["meta"]
    start, stop = res["params"]["frames"]
    x = case["inputs"]["features"][start:stop]
    grid = Grid(stop - start, meta["H"], meta["W"])
    method = build("evs", 1.0 - res["params"]["q"])
    whole = method(x, grid)
    assert torch.equal(whole.index, res["keep_indices_global"])  # the whole clip is the reference's
    for chunk in sorted({1, 2, 3, grid.T}):
        streamed = _streamed(method, x, grid, chunk)
        _same(streamed, whole)
        assert streamed.stats.get("retained") == whole.stats.get("retained")


@pytest.mark.parametrize("keep", [0.05, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_evs_streams_exact_ties_and_static_frames(keep, dtype):
    # Static frames and repeated content give long runs of exactly equal scores: the running top-budget must break
    # them as the whole clip's stable sort does (ascending index), across chunk boundaries.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 12, 8, generator=g).to(dtype)
    x[2] = x[1]
    x[3] = x[1]
    x[6] = x[5]
    x[7, :6] = x[6, :6]
    grid = Grid(9, 3, 4)
    method = build("evs", keep)
    whole = method(x, grid)
    for chunk in (1, 2, 3, 4, 9):
        _same(_streamed(method, x, grid, chunk), whole)


@pytest.fixture(scope="module")
def qa(tiny_models):
    from flashvid_cli.api import VideoQA

    return VideoQA(str(tiny_models[FAMILY]), device="cpu")


@pytest.mark.parametrize("keep", [0.1, 0.4])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_evs_stream_video_equals_whole_clip(qa, sample_video, keep, chunk):
    config = AskConfig(method="evs", keep=keep, frames=7)
    assert refusal(qa.build_method(config), config) is None
    whole = qa.compress(qa.prepare(sample_video, config), config)
    prepared, streamed = stream_video(qa, sample_video, config, chunk_frames=chunk)
    _same(streamed.compressed, whole.compressed)
    assert streamed.visual_tokens == whole.visual_tokens
    assert streamed.compressed.stats["streamed_chunks"] == -(-7 // chunk)
    assert prepared.encoded.feats.shape[0] == 0


def test_evs_streamed_answer_equals_whole_clip(qa, sample_video):
    config = AskConfig(method="evs", keep=0.3, frames=6, max_new_tokens=4)
    whole = qa.ask(sample_video, "what is it?", config)
    prepared, compressed = stream_video(qa, sample_video, config, chunk_frames=4)
    assert qa.answer(prepared, "what is it?", config, compressed).answer == whole.answer


def test_evs_stream_needs_the_frame_count_and_every_frame():
    method = build("evs", 0.5)
    with pytest.raises(MethodError, match="frame count is known"):
        method.stream_start((2, 2))
    state = method.stream_start((2, 2), 4)
    method.stream_chunk(state, torch.randn(3, 4, 5), Grid(3, 2, 2))
    with pytest.raises(MethodError, match="started for 4 frames and 3 came"):
        method.stream_finish(state)
    with pytest.raises(MethodError, match=r"\[t, N, D\]"):
        method.stream_chunk(state, torch.randn(1, 9, 5), Grid(1, 3, 3))


def test_default_protocol_checks_its_chunks():
    method = build("pool", 0.25)
    state = method.stream_start((4, 4), 2)
    with pytest.raises(MethodError, match="no chunk"):
        method.stream_finish(state)
    with pytest.raises(MethodError, match="3x3 tokens"):
        method.stream_chunk(state, torch.randn(1, 9, 5), Grid(1, 3, 3))
    whole_clip = build("divprune", 0.25)
    with pytest.raises(MethodError, match="cannot stream"):
        whole_clip.stream_start((4, 4), 2)
