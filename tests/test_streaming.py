"""Streaming (flashvid_cli/streaming.py): a chunk of frames at a time gives the whole-clip path's tokens exactly."""

from __future__ import annotations

import pytest
import torch

from flashvid_cli.config import AskConfig, ConfigError
from flashvid_cli.kernels import methods
from flashvid_cli.streaming import refusal, stream_video

FAMILY = "llava_onevision"
PER_FRAME = [
    ("none", 1.0, {}), ("pool", 0.25, {}), ("visionzip", 0.3, {}), ("visionzip", 0.3, {"reference": True}),
    ("nuwa", 0.3, {"llm_stage": False}), ("nuwa", 0.3, {}), ("fastv", 0.5, {}),
]


@pytest.fixture(scope="module")
def qa(tiny_models):
    from flashvid_cli.api import VideoQA

    return VideoQA(str(tiny_models[FAMILY]), device="cpu")


def _same(a, b) -> None:
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.index, b.index)
    assert torch.equal(a.sources, b.sources)
    assert torch.equal(a.offsets, b.offsets)
    assert (a.weights is None) == (b.weights is None)
    if a.weights is not None:
        assert torch.equal(a.weights, b.weights)
    assert torch.equal(a.placement, b.placement)
    assert a.stats["per_frame"] == b.stats["per_frame"]


@pytest.mark.parametrize(("method", "keep", "options"), PER_FRAME)
@pytest.mark.parametrize("chunk", [1, 3])
def test_streaming_equals_whole_clip(qa, sample_video, method, keep, options, chunk):
    config = AskConfig(method=method, keep=keep, options=options, frames=7)
    whole = qa.compress(qa.prepare(sample_video, config), config, question="what moves?")
    seen: list[tuple[str, int, int]] = []
    prepared, streamed = stream_video(qa, sample_video, config, question="what moves?", chunk_frames=chunk,
                                      progress=lambda *a: seen.append(a))
    _same(streamed.compressed, whole.compressed)
    assert streamed.visual_tokens == whole.visual_tokens
    assert prepared.encoded.feats.shape[0] == 0  # the features were not kept
    assert prepared.visual_tokens == 7 * whole.compressed.grid.N + qa.pipeline.extra_video_tokens
    assert ("compressed", 7, 7) == seen[-1] and ("decoded", min(chunk, 7), 7) == seen[0]
    decoded = [s[1] for s in seen if s[0] == "decoded"]  # a chunk's frames counted as it arrives, before its encode
    assert decoded == list(range(chunk, 7, chunk)) + [7]
    assert sum(1 for s in seen if s[0] == "encoded") == -(-7 // chunk)


def test_streamed_answer_equals_whole_clip(qa, sample_video):
    config = AskConfig(method="pool", keep=0.25, frames=5, max_new_tokens=4)
    whole = qa.ask(sample_video, "what is it?", config)
    prepared, compressed = stream_video(qa, sample_video, config, chunk_frames=2)
    streamed = qa.answer(prepared, "what is it?", config, compressed)
    assert streamed.answer == whole.answer


@pytest.mark.parametrize("name", sorted(m for m, cls in methods().items() if cls.stream_unit is None))
def test_whole_clip_methods_are_refused_in_one_line(qa, sample_video, name):
    config = AskConfig(method=name, keep=0.5, frames=4)
    why = refusal(qa.build_method(config), config)
    assert why is not None and "\n" not in why and name in why
    with pytest.raises(ConfigError, match="cannot stream"):
        stream_video(qa, sample_video, config)


def test_tokens_and_bad_chunk_are_refused(qa, sample_video):
    with pytest.raises(ConfigError, match="--tokens 50"):
        stream_video(qa, sample_video, AskConfig(method="pool", tokens=50, frames=4))
    with pytest.raises(ConfigError, match="at least 1 frame"):
        stream_video(qa, sample_video, AskConfig(method="pool", frames=4), chunk_frames=0)


def test_family_that_encodes_frames_together_is_refused(tiny_models, sample_video):
    from flashvid_cli.api import VideoQA

    qwen = VideoQA(str(tiny_models["qwen2_5_vl"]), device="cpu")
    with pytest.raises(ConfigError, match="cannot stream yet"):
        stream_video(qwen, sample_video, AskConfig(method="pool", keep=0.25, frames=4))


def test_ask_many_streams_when_config_says_so(qa, sample_video):
    base = dict(method="visionzip", keep=0.3, frames=6, max_new_tokens=4)
    whole = qa.ask_many(sample_video, ["what is it?", "what moves?"], AskConfig(**base))
    seen: list[tuple[str, int, int]] = []
    qa.progress = lambda *a: seen.append(a)
    try:
        streamed = qa.ask_many(sample_video, ["what is it?", "what moves?"], AskConfig(**base, stream=True))
    finally:
        qa.progress = None
    assert [r.answer for r in streamed] == [r.answer for r in whole]
    assert [r.report.tokens for r in streamed] == [r.report.tokens for r in whole]
    assert any("streamed" in note for note in streamed[0].report.video.notes)
    assert seen and seen[-1] == ("compressed", 6, 6)


def _vidq_ask(model, video, stderr) -> int:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    argv = [sys.executable, "-m", "flashvid_cli", "ask", str(video), "what is it?", "--model", str(model),
            "--device", "cpu", "--method", "pool", "--frames", "6", "--max-new-tokens", "2", "--no-cache", "--stream"]
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env, timeout=300).returncode


def test_stream_bar_on_a_terminal_and_not_when_piped(tiny_models, sample_video, tmp_path):
    import os
    import pty
    import threading

    model = tiny_models[FAMILY]
    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert _vidq_ask(model, sample_video, follower) == 0
    finally:
        os.close(follower)
        reader.join(10)
        os.close(leader)
    on_terminal = b"".join(chunks).decode(errors="replace")
    assert "compressed" in on_terminal and "6/6" in on_terminal and "ETA" in on_terminal
    piped = tmp_path / "stderr.txt"
    with piped.open("w") as f:
        assert _vidq_ask(model, sample_video, f) == 0
    text = piped.read_text()
    assert "vidq report" in text and "6/6" not in text and "ETA" not in text


def test_a_streamed_run_caches_its_compressed_tokens_and_a_second_run_loads_them(tiny_models, sample_video,
                                                                                 tmp_path, monkeypatch):
    from flashvid_cli.api import VideoQA
    from flashvid_cli.cache import EncodedCache

    cache = EncodedCache(tmp_path / "cache")
    qa = VideoQA(str(tiny_models[FAMILY]), device="cpu", cache=cache)
    config = AskConfig(method="visionzip", keep=0.3, frames=5, max_new_tokens=2, stream=True)
    first_prepared, first = stream_video(qa, sample_video, config, chunk_frames=2)
    assert first_prepared.cache == "miss" and cache.info().entries == 1 and cache.info().temporary_files == 0

    def no_decode(*args, **kwargs):
        raise AssertionError("a cached streamed result must not be decoded again")

    monkeypatch.setattr(qa, "decode", no_decode)
    monkeypatch.setattr(qa, "decode_stream", no_decode)
    prepared, again = stream_video(qa, sample_video, config, chunk_frames=3)
    assert prepared.cache == "hit" and prepared.timings.encode == 0.0
    _same(again.compressed, first.compressed)
    assert prepared.video.timestamps_s == first_prepared.video.timestamps_s
    result = qa.ask(sample_video, "what is it?", config)
    assert result.report.cache["encoded"] == "hit"
    from flashvid_cli.report import cache_line

    assert cache_line([result.report]).startswith("compressed tokens: hit")
    assert any("read from the on-disk cache" in note for note in result.report.video.notes)
    monkeypatch.undo()
    other, _ = stream_video(qa, sample_video, AskConfig(**{**config.__dict__, "keep": 0.5}))
    assert other.cache == "miss" and cache.info().entries == 2  # another keep is another entry
    whole = qa.ask(sample_video, "what is it?", AskConfig(**{**config.__dict__, "stream": False}))
    assert whole.report.cache["encoded"] == "miss"  # the encoded-video entry is its own
    assert cache_line([whole.report]).startswith("encoded video: miss")


def test_a_streamed_run_stopped_midway_leaves_no_entry_that_loads(tiny_models, sample_video, tmp_path):
    from flashvid_cli.api import VideoQA
    from flashvid_cli.cache import EncodedCache

    cache = EncodedCache(tmp_path / "cache")
    qa = VideoQA(str(tiny_models[FAMILY]), device="cpu", cache=cache)
    config = AskConfig(method="pool", keep=0.25, frames=6, stream=True)

    def stop(stage, done, total):
        if stage == "compressed" and done < total:
            raise KeyboardInterrupt  # as a Ctrl-C between two chunks

    with pytest.raises(KeyboardInterrupt):
        stream_video(qa, sample_video, config, chunk_frames=2, progress=stop)
    assert cache.info().entries == 0 and cache.info().temporary_files == 0
    prepared, _ = stream_video(qa, sample_video, config, chunk_frames=2)
    assert prepared.cache == "miss"  # computed, not loaded
    (entry,) = [p for p in cache.root.iterdir() if p.suffix == ".safetensors"]
    entry.write_bytes(entry.read_bytes()[:-100])  # a torn file (a write that was not atomic)
    torn, _ = stream_video(qa, sample_video, config, chunk_frames=2)
    assert torn.cache == "miss"  # refused and rewritten, not trusted
    assert stream_video(qa, sample_video, config, chunk_frames=2)[0].cache == "hit"


def test_cli_refuses_a_method_that_cannot_stream_in_one_line_before_loading(tmp_path, sample_video):
    from typer.testing import CliRunner

    from flashvid_cli.cli import app

    # a model path that does not exist: the refusal must come before anything loads it
    out = CliRunner().invoke(app, ["ask", str(sample_video), "q?", "--model", str(tmp_path / "absent"),
                                   "--method", "divprune", "--stream", "--device", "cpu"])
    assert out.exit_code == 1
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert "cannot stream" in lines[0] and "divprune" in lines[0] and "Traceback" not in out.output
