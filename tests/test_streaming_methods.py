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
    """test_streaming's bit-for-bit comparison, and the dtype and the count the stats give."""
    from test_streaming import _same as same_output

    same_output(a, b)
    assert a.tokens.dtype == b.tokens.dtype
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


def _clip(T: int, H: int = 4, W: int = 4, D: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Grid]:
    """Features with slow drift and two scene changes (so DySeg finds natural cuts), and positive importance."""
    g = torch.Generator().manual_seed(seed)
    scenes = torch.randn(3, H * W, D, generator=g)
    x = torch.stack([scenes[min(2, t * 3 // T)] + 0.3 * torch.randn(H * W, D, generator=g) for t in range(T)])
    importance = torch.rand(T, H * W, generator=g) + 0.01
    return x, importance, Grid(T, H, W)


@pytest.mark.parametrize("options", [{}, {"reference": True}, {"token_selection_method": "attn_div"},
                                     {"do_segment": False}])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_flashvid_within_one_window_streams_exactly(options, chunk):
    x, importance, grid = _clip(10)
    method = build("flashvid", 0.3, options={**options, "stream_window": 10})
    whole = method(x, grid, importance)
    streamed = _streamed(method, x, grid, chunk, importance=importance)
    _same(streamed, whole)
    assert streamed.stats["segments"] == whole.stats["segments"] and streamed.stats["windows"] == 1


@pytest.mark.parametrize("chunk", [1, 3, 4, 7])
def test_flashvid_streams_window_by_window(chunk):
    # Past one window, the stream is each window compressed as a clip of its own, with its share of
    # min_segment_num (rounded up), joined in frame order; the chunk size does not change it.
    x, importance, grid = _clip(11)
    method = build("flashvid", 0.3, options={"stream_window": 4, "min_segment_num": 6})
    streamed = _streamed(method, x, grid, chunk, importance=importance)
    windows = [(0, 4, 3), (4, 8, 3), (8, 11, 2)]  # (first, stop, ceil(6 * w / 11))
    expected = [build("flashvid", 0.3, options={"min_segment_num": m})(x[a:b], Grid(b - a, 4, 4), importance[a:b])
                for a, b, m in windows]
    assert streamed.stats["windows"] == 3
    assert streamed.stats["segments"] == [n for e in expected for n in e.stats["segments"]]
    assert sum(streamed.stats["segments"]) == 11 and len(streamed.stats["segments"]) >= 6
    assert torch.equal(streamed.tokens, torch.cat([e.tokens for e in expected]))
    assert torch.equal(streamed.index, torch.cat([e.index + a * 16 for e, (a, _, _) in zip(expected, windows)]))
    assert torch.equal(streamed.weights, torch.cat([e.weights for e in expected]))
    assert streamed.stats["per_frame"] == [n for e in expected for n in e.stats["per_frame"]]


def test_flashvid_stream_checks_its_input():
    method = build("flashvid", 0.3)
    with pytest.raises(MethodError, match="frame count is known"):
        method.stream_start((4, 4))
    state = method.stream_start((4, 4), 2)
    with pytest.raises(MethodError, match="needs importance"):
        method.stream_chunk(state, torch.randn(2, 16, 8), Grid(2, 4, 4))
    with pytest.raises(MethodError, match="stream_window must be an integer >= 1"):
        build("flashvid", 0.3, options={"stream_window": 0})


@pytest.mark.parametrize("chunk", [1, 3])
def test_flashvid_stream_video_equals_whole_clip_within_a_window(qa, sample_video, chunk):
    config = AskConfig(method="flashvid", keep=0.3, frames=7)
    assert refusal(qa.build_method(config), config) is None
    whole = qa.compress(qa.prepare(sample_video, config), config)
    _, streamed = stream_video(qa, sample_video, config, chunk_frames=chunk)
    _same(streamed.compressed, whole.compressed)
    assert streamed.visual_tokens == whole.visual_tokens


def test_vidq_methods_says_how_each_method_streams():
    from typer.testing import CliRunner

    from flashvid_cli.cli import app
    from flashvid_cli.kernels import methods

    result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    lines = {line.split(": ")[0].strip(): line.split(": ", 1)[1] for line in
             result.stdout.split("--stream (docs/STREAMING.md):")[1].strip().splitlines()}
    assert lines["per frame pair, exact"] == "evs"
    assert lines["no (selects over the whole clip)"].split(", ") == sorted(
        name for name, cls in methods().items() if cls.stream_unit is None)
    assert "flashvid" in next(v for k, v in lines.items() if k.startswith("per segment window"))
