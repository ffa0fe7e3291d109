"""Frames resized to the model's input size while they decode: the same pixel values as resizing full-size frames.

Resizing as frames arrive (``video.decode(..., resize=...)``, a few full-size frames at a time) is what keeps a
long high-resolution request's memory at the model's size; it is only allowed if the model then sees exactly
what the HF processor's preprocessing of the full-size frames gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flashvid_cli.api import AskConfig, VideoQA, load_and_decode
from flashvid_cli.pipelines import frame_resizer, load_pipeline
from flashvid_cli.pipelines.preprocess import FrameResizer
from flashvid_cli.pipelines.video import ResizingSink, VideoTooLarge, api, decode, sinks
from tests.test_video_exact import encode, pictures

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def odd_video(tmp_path_factory):
    """24 frames of 150x90 (not a multiple of any patch size), H.264 with B-frames."""
    return encode(tmp_path_factory.mktemp("resize") / "odd.mp4", pictures(24, size=(90, 150)))


@pytest.mark.parametrize("chunk", [3, 8])
@pytest.mark.parametrize("in_worker", [False, True])
def test_pixel_values_equal_preprocessing_full_size_frames(tiny_model, odd_video, sample_video, monkeypatch,
                                                           chunk, in_worker):
    pipe = load_pipeline(str(tiny_model), device="cpu", dtype="float32")
    for where in (sinks, api):  # the sink's chunk, and the request's (its memory estimate)
        monkeypatch.setattr(where, "RESIZE_CHUNK", chunk)  # 16 and 13 frames: a short last chunk too
    timeout = 60.0 if in_worker else None
    for path, n in ((sample_video, 16), (odd_video, 13)):
        full = decode(path, frames=n, timeout_s=timeout)
        small = decode(path, frames=n, timeout_s=timeout, resize=pipe.frame_resizer())
        size = pipe.input_size(pipe.preprocess_config, n, *full.frames.shape[1:3])
        assert small.frames.shape == (n, *size, 3) and small.stats["resized_to"] == size
        assert small.indices == full.indices and small.timestamps == full.timestamps
        a = pipe.preprocess(full.frames, full.timestamps)
        b = pipe.preprocess(small.frames, small.timestamps)
        assert torch.equal(a.values, b.values)
        assert a.meta.keys() == b.meta.keys() and all(torch.equal(torch.as_tensor(a.meta[k]), torch.as_tensor(b.meta[k]))
                                                      for k in a.meta)


def test_resizer_read_before_loading_equals_the_loaded_models(tiny_model):
    before = frame_resizer(str(tiny_model), device="cpu")
    after = load_pipeline(str(tiny_model), device="cpu", dtype="float32").frame_resizer()
    for n, h, w in ((1, 90, 150), (16, 224, 320), (7, 1080, 1920), (64, 2160, 3840)):
        assert before.size(n, h, w) == after.size(n, h, w)
    assert (before.resample, before.max_pixels) == (after.resample, after.max_pixels)


def test_resizer_of_a_model_it_cannot_read_is_none(tmp_path):
    assert frame_resizer(str(tmp_path / "missing")) is None
    assert frame_resizer(str(tmp_path)) is None  # a directory without config.json
    assert frame_resizer("random:no-such-config") is None
    assert frame_resizer("random:llava-onevision-0.5b").size(8, 1080, 1920) == (384, 384)


def test_a_rule_that_would_resize_again_keeps_decoded_size(sample_video):
    halve = FrameResizer(lambda n, h, w: (h // 2, w // 2), 3, torch.device("cpu"))  # not idempotent
    v = decode(sample_video, frames=4, timeout_s=None, resize=halve)
    assert v.frames.shape[1:3] == v.source_size and v.stats["resized_to"] is None


def test_a_count_dependent_size_is_not_kept_when_fewer_frames_decoded():
    by_count = FrameResizer(lambda n, h, w: (8 * n, 8 * n), 3, torch.device("cpu"))
    sink = ResizingSink(by_count, chunk=2)
    sink.start(4, (64, 64))
    for slot in range(4):
        sink.put(slot, np.full((64, 64, 3), slot * 40, np.uint8))
    assert sink.result([0, 1, 2]) is None  # 3 frames would be sized 24x24, not the 32x32 they were resized to
    sink = ResizingSink(by_count, chunk=3)
    sink.start(4, (64, 64))
    for slot in (0, 1, 2, 3, 1):  # a frame sent again replaces the first copy
        sink.put(slot, np.full((64, 64, 3), slot * 40, np.uint8))
    out = sink.result([0, 1, 2, 3])
    assert out.shape == (4, 32, 32, 3) and [int(f[0, 0, 0]) for f in out] == [0, 40, 80, 120]


def test_memory_estimate_counts_resized_frames(sample_video):
    """320x224 frames: 48 of them at full size need 10.3 MB; resized to 64x64, plus 2 in flight, 1.0 MB."""
    resize = frame_resizer(str(REPO / "samples" / "vidq-demo-llava-ov"))
    with pytest.raises(VideoTooLarge, match="need"):
        decode(sample_video, frames=48, timeout_s=None, max_bytes=4_000_000)
    v = decode(sample_video, frames=48, timeout_s=None, max_bytes=4_000_000, resize=resize)
    assert v.frames.shape == (48, 64, 64, 3)


def test_load_and_decode_reports_the_hidden_decode_and_the_wall_time(tiny_models, sample_video):
    path = str(tiny_models["llava_onevision"])
    config = AskConfig(frames=8, max_new_tokens=3)
    qa, decoded = load_and_decode(sample_video, config, model=path, device="cpu", dtype="float32")
    size = qa.pipeline.input_size(qa.pipeline.preprocess_config, 8, *decoded.source_size)
    assert decoded.frames.shape[1:3] == size  # resized while the model loaded
    ahead = qa.ask(sample_video, "what happens?", config, decoded=decoded)
    plain = VideoQA(path, device="cpu", dtype="float32").ask(
        sample_video, "what happens?", config, decoded=VideoQA.decode(sample_video, config))
    assert ahead.token_ids == plain.token_ids
    t = ahead.report.timings
    assert t.decode_ahead == decoded.stats["decode_s"] and t.wall is not None and t.wall >= t.total
    assert plain.report.timings.wall is None and plain.report.timings.decode_ahead is not None
    assert VideoQA(path, device="cpu").ask(sample_video, "what?", config).report.timings.decode_ahead is None


def test_keyframe_seek_frames_are_resized_the_same_way(tiny_models, odd_video):
    pipe = load_pipeline(str(tiny_models["qwen2_5_vl"]), device="cpu", dtype="float32")
    full = decode(odd_video, frames=6, seek="keyframe")
    small = decode(odd_video, frames=6, seek="keyframe", resize=pipe.frame_resizer())
    assert small.indices == full.indices and small.sampling == full.sampling
    assert torch.equal(pipe.preprocess(full.frames, full.timestamps).values,
                       pipe.preprocess(small.frames, small.timestamps).values)


def test_the_wait_for_frames_after_the_load_is_in_the_decode_stage(tiny_models, sample_video, monkeypatch):
    """A decode slower than the model load: the time blocked on it after the load is the report's decode stage."""
    import time as clock

    slow = VideoQA.decode

    def slower(*args, **kwargs):
        clock.sleep(1.5)
        return slow(*args, **kwargs)

    monkeypatch.setattr(VideoQA, "decode", staticmethod(slower))
    config = AskConfig(frames=4, max_new_tokens=1)
    qa, decoded = load_and_decode(sample_video, config, model=str(tiny_models["llava_onevision"]), device="cpu")
    waited = decoded.stats["waited_after_load_s"]
    t = qa.ask(sample_video, "what?", config, decoded=decoded).report.timings
    assert waited > 0.1 and t.decode >= waited and t.time_to_first_token >= waited


def test_a_decoded_video_of_another_file_or_sampling_is_refused(tiny_models, sample_video, odd_video, tmp_path):
    from flashvid_cli.api import ConfigError
    from flashvid_cli.cache import EncodedCache

    qa = VideoQA(str(tiny_models["llava_onevision"]), device="cpu", cache=EncodedCache(root=tmp_path / "cache"))
    config = AskConfig(frames=4, max_new_tokens=1)
    decoded = VideoQA.decode(odd_video, config, resize=qa.frame_resizer())
    with pytest.raises(ConfigError, match="not .*sample.mp4"):
        qa.ask(sample_video, "what?", config, decoded=decoded)
    with pytest.raises(ConfigError, match="other frames"):
        qa.ask(odd_video, "what?", AskConfig(frames=6), decoded=decoded)
    assert list((tmp_path / "cache").glob("**/*.safetensors")) == []  # nothing cached under the wrong name
    first = qa.prepare(odd_video, config, decoded=decoded)
    again = qa.prepare(odd_video, config, decoded=VideoQA.decode(odd_video, config))
    assert (first.cache, again.cache) == ("miss", "hit") and list((tmp_path / "cache").glob("**/*.safetensors"))
    assert not any("decoded ahead" in n for n in again.video.notes)  # a hit was not decoded for this answer
