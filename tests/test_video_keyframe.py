"""`seek="keyframe"` / `--seek keyframe` (issue 14): each sampled frame snapped to the nearest keyframe, only
keyframes decoded, and the report says the sampling is approximate.

The frames must still be bit-equal to a plain sequential PyAV decode at the indices reported, and those indices
must be the keyframes nearest the asked frames (ties to the earlier). The files are the generated ones of
tests/test_video_exact.py (H.264 with B-frames, HEVC open GOP, VP9, AV1, MPEG-TS with B-frames).
"""

from __future__ import annotations

import bisect
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from test_input_faults import no_model_load, one_error_line  # noqa: F401  (a fixture)
from test_video_exact import GENERATED, encode, generated, pictures, sequential  # noqa: F401  (a fixture)
from typer.testing import CliRunner

from flashvid_cli.cli import app
from pipelines.errors import VideoError
from pipelines.video import decode, frame_map, keyframe

runner = CliRunner()
QUESTION = "What happens last?"


def keyframe_pts(path: Path) -> list[int]:
    """pts of the packets flagged keyframe, read independently of vidq's frame map."""
    with av.open(str(path)) as c:
        return sorted({p.pts for p in c.demux(video=0) if p.is_keyframe and p.pts is not None})


def nearest(ref_pts: list[int], keys: list[int], i: int) -> int:
    """Index (in the sequential decode) of the keyframe nearest frame i by pts, ties to the earlier."""
    t = ref_pts[i]
    best = min(keys, key=lambda k: (abs(k - t), k))
    return ref_pts.index(best)


@pytest.mark.parametrize("name", list(GENERATED))
@pytest.mark.parametrize("ask", [{"frames": 1}, {"frames": 5}, {"frames": 17}, {"frames": 32}, {"fps": 3.0}])
def test_keyframe_frames_are_the_nearest_keyframes_and_exact(generated, name, ask):
    """Indices = the nearest keyframe of each asked frame (distinct), frames bit-equal to a sequential decode
    there, timestamps those of the returned frames, and the sampling and notes say it is approximate."""
    path = generated(name)
    ref_pts, ref_rgb = sequential(path)
    keys = [k for k in keyframe_pts(path) if k in set(ref_pts)]
    asked = decode(path, max_side=None, timeout_s=None, **ask)  # the exact mode: the frames asked
    v = decode(path, max_side=None, timeout_s=None, seek="keyframe", **ask)
    expected = sorted({nearest(ref_pts, keys, i) for i in asked.indices})
    assert v.indices == expected
    assert v.frames.shape[0] == len(v.indices)
    for frame, i in zip(v.frames, v.indices):
        assert np.array_equal(frame, ref_rgb[i]), f"{path.name}: keyframe {i} differs from the sequential decode"
    assert v.timestamps == pytest.approx(_seconds(path, ref_pts, v.indices), abs=1e-6)
    offsets = [abs(_seconds(path, ref_pts, [nearest(ref_pts, keys, i)])[0] - t)
               for i, t in zip(asked.indices, asked.timestamps)]
    assert v.stats["seek_offset_max_s"] == pytest.approx(max(offsets), abs=1e-5)
    assert v.stats["seek_offset_mean_s"] == pytest.approx(float(np.mean(offsets)), abs=1e-5)
    if max(offsets) > 0:
        assert v.sampling == f"{asked.sampling}, snapped to keyframes (approximate; max offset {max(offsets):.3g} s)"
        assert any(n.startswith("approximate sampling (seek keyframe)") and f"max {max(offsets):.3g} s" in n
                   for n in v.notes)
    else:
        assert "none moved" in v.sampling
    dedup = f"{len(asked.indices)} frames sampled, {len(expected)} distinct keyframe"
    assert any(n.startswith(dedup) for n in v.notes) == (len(expected) < len(asked.indices))


def _seconds(path: Path, ref_pts: list[int], indices: list[int]) -> list[float]:
    with av.open(str(path)) as c:
        tb = float(c.streams.video[0].time_base)
    return [(ref_pts[i] - ref_pts[0]) * tb for i in indices]


@pytest.mark.parametrize("name", ["h264_bframes_long_gop", "hevc_open_gop", "mpegts_bframes"])
def test_only_keyframe_packets_are_decoded(generated, name):
    """`decode_keyframes` decodes one packet per keyframe (one picture each, no group decoded forward) and its
    pictures are the sequential decode's."""
    path = generated(name)
    ref_pts, ref_rgb = sequential(path)
    fmap = frame_map.scan_packets(str(path))
    counter = frame_map.DecodeCounter()
    got = {}
    ks = list(range(len(fmap.keyframes)))
    taken = keyframe.decode_keyframes(str(path), fmap, ks, lambda j, f: got.__setitem__(j, f.to_ndarray(
        format="rgb24")), counter)
    assert taken == fmap.keyframes and len(fmap.keyframes) >= 3
    assert counter.frames == len(ks) and counter.seeks == len(ks)  # nothing decoded but the keyframes
    for j, pts in enumerate(taken):
        assert np.array_equal(got[j], ref_rgb[ref_pts.index(pts)])


def test_nearest_keyframe_ties_go_to_the_earlier():
    fmap = frame_map.FrameMap(pts=list(range(11)), keyframes=[0, 4, 8], time_base=Fraction(1, 10), claimed=11,
                              avg_rate=None, coded_hw=(2, 2), rotation=0)
    assert keyframe.snap_to_keyframes(fmap, [0, 1, 2, 3, 5, 6, 7, 9, 10]) == [0, 0, 0, 4, 4, 4, 8, 8, 8]


def test_all_intra_gives_the_exact_frames(tmp_path):
    """Every frame a keyframe: keyframe mode returns the exact mode's frames and indices, and says none moved."""
    path = encode(tmp_path / "intra.mp4", pictures(30), options={"g": "1"})
    for ask in ({"frames": 7}, {"fps": 5.0}):
        exact = decode(path, max_side=None, timeout_s=None, **ask)
        v = decode(path, max_side=None, timeout_s=None, seek="keyframe", **ask)
        assert v.indices == exact.indices and v.timestamps == exact.timestamps
        assert np.array_equal(v.frames, exact.frames)
        assert v.sampling == exact.sampling + ", snapped to keyframes (every sampled frame is a keyframe: none moved)"
        assert v.notes == exact.notes and v.stats["seek_offset_max_s"] == 0


def test_one_keyframe_gives_one_frame(tmp_path):
    """A single keyframe: every sample meets on it, one frame comes back, and the note says so."""
    path = encode(tmp_path / "one.mp4", pictures(40), options={"g": "1000", "bf": "2"})
    assert len(keyframe_pts(path)) == 1
    _, ref_rgb = sequential(path)
    v = decode(path, frames=8, max_side=None, timeout_s=None, seek="keyframe")
    assert v.indices == [0] and np.array_equal(v.frames[0], ref_rgb[0])
    assert "8 frames sampled, 1 distinct keyframe: returning one frame per keyframe" in v.notes
    assert v.stats["seek_offset_max_s"] == pytest.approx(39 / 24, abs=1e-6)


def test_keyframe_without_its_own_picture_is_decoded_exactly(generated, monkeypatch):
    """Where a keyframe's packet alone gives no picture, that keyframe is decoded exactly from its group: the
    same frames, and a note."""
    path = generated("h264_bframes_long_gop")
    want = decode(path, frames=5, max_side=None, timeout_s=None, seek="keyframe")
    monkeypatch.setattr(keyframe, "decode_keyframes", lambda path, fmap, keys, put, counter: [None] * len(keys))
    v = decode(path, frames=5, max_side=None, timeout_s=None, seek="keyframe")
    assert v.indices == want.indices and np.array_equal(v.frames, want.frames)
    assert any("did not decode from their own packet: decoded exactly" in n for n in v.notes)


def test_worker_and_in_process_agree(generated):
    path = generated("mpegts_bframes")
    a = decode(path, frames=9, max_side=None, timeout_s=None, seek="keyframe")
    b = decode(path, frames=9, max_side=None, timeout_s=30, seek="keyframe")
    assert a.indices == b.indices and a.sampling == b.sampling and np.array_equal(a.frames, b.frames)


def test_bad_seek_values_are_one_line(generated):
    path = generated("h264_bframes_long_gop")
    with pytest.raises(VideoError) as e:
        decode(path, frames=4, timeout_s=None, seek="nearest")
    assert str(e.value) == "seek must be one of exact, keyframe (got 'nearest')"
    with pytest.raises(VideoError, match="use decoder auto or pyav, not decord"):
        decode(path, frames=4, timeout_s=None, seek="keyframe", decoder="decord")


# ---------------------------------------------------------------- CLI, cache


@pytest.mark.parametrize("command", ["ask", "chat", "annotate", "eval", "bench"])
def test_cli_refuses_a_bad_seek_before_loading_the_model(no_model_load, sample_video, tmp_path, command):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"video": str(sample_video), "question": "Q?", "options": ["a", "b"],
                                "answer": "A"}) + "\n")
    head = {"ask": ["ask", str(sample_video), QUESTION], "chat": ["chat", str(sample_video)],
            "annotate": ["annotate", str(sample_video), "-q", QUESTION, "--out", str(tmp_path / "o.jsonl")],
            "eval": ["eval", str(data)], "bench": ["bench", str(sample_video)]}[command]
    bad = one_error_line(runner.invoke(app, [*head, "--model", "some/model", "--seek", "nearest"]))
    assert bad == "error: --seek 'nearest' is unknown; choose one of: exact, keyframe"
    decord = one_error_line(runner.invoke(app, [*head, "--model", "some/model", "--seek", "keyframe",
                                                "--decoder", "decord"]))
    assert decord == "error: --seek keyframe decodes keyframes with PyAV: use --decoder auto or pyav, not decord"
    assert no_model_load == []


def test_ask_reports_the_approximate_sampling(tiny_models, sample_video):
    """`vidq ask --seek keyframe --json`: the report's sampling, notes and timestamps are the keyframes'."""
    exact = decode(sample_video, frames=8, timeout_s=None)
    v = decode(sample_video, frames=8, timeout_s=None, seek="keyframe")
    assert v.indices != exact.indices  # the sample clip's keyframes are not the uniform frames
    result = runner.invoke(app, ["ask", str(sample_video), QUESTION, "--model", str(tiny_models["llava_onevision"]),
                                 "--frames", "8", "--max-new-tokens", "2", "--seek", "keyframe", "--json",
                                 "--no-cache"])
    assert result.exit_code == 0, result.stderr
    video = json.loads(result.stdout)["report"]["video"]
    assert video["sampling"] == v.sampling and "snapped to keyframes (approximate; max offset" in video["sampling"]
    assert video["frame_indices"] == v.indices
    assert video["timestamps_s"] == [round(t, 3) for t in v.timestamps]
    assert any(n.startswith("approximate sampling (seek keyframe)") for n in video["notes"])
    text = runner.invoke(app, ["ask", str(sample_video), QUESTION, "--model", str(tiny_models["llava_onevision"]),
                               "--frames", "8", "--max-new-tokens", "2", "--seek", "keyframe", "--no-cache"])
    assert text.exit_code == 0 and "snapped to keyframes (approximate" in text.stderr


def test_cache_keys_exact_and_keyframe_apart(tiny_models, sample_video, tmp_path):
    """An exact entry never serves a keyframe request (nor back): each misses once, then hits its own."""
    from flashvid_cli.api import AskConfig, VideoQA
    from flashvid_cli.cache import EncodedCache

    qa = VideoQA(str(tiny_models["llava_onevision"]), device="cpu", cache=EncodedCache(tmp_path / "cache"))
    exact, keyframe = AskConfig(frames=8), AskConfig(frames=8, seek="keyframe")
    assert qa.prepare(sample_video, exact).cache == "miss"
    first = qa.prepare(sample_video, keyframe)
    assert first.cache == "miss" and "snapped to keyframes" in first.video.sampling
    again = qa.prepare(sample_video, keyframe)
    assert again.cache == "hit" and again.video.frame_indices == first.video.frame_indices
    assert qa.prepare(sample_video, exact).cache == "hit"
    assert qa._cache_key(sample_video, exact, frozenset(), None).digest != \
        qa._cache_key(sample_video, keyframe, frozenset(), None).digest


def test_bench_and_eval_say_the_sampling_was_keyframe_snapped(tiny_models, sample_video, tmp_path):
    model = str(tiny_models["llava_onevision"])
    fast = ["--frames", "4", "--max-new-tokens", "1", "--seek", "keyframe"]
    bench = runner.invoke(app, ["bench", str(sample_video), "--model", model, "--methods", "none", "--repeat", "1",
                                "--warmup", "0", "--json", str(tmp_path / "b.json"), *fast])
    assert bench.exit_code == 0, bench.stderr
    assert "keyframe-snapped (approximate)" in " ".join(bench.stdout.split())  # the title wraps at 80
    assert json.loads((tmp_path / "b.json").read_text())["environment"]["frames"]["seek"] == "keyframe"
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"video": str(sample_video), "question": "Q?", "options": ["a", "b"],
                                "answer": "A"}) + "\n")
    ev = runner.invoke(app, ["eval", str(data), "--model", model, "--methods", "none", "--json", str(tmp_path / "e.json"),
                             *fast[:2], "--seek", "keyframe"])
    assert ev.exit_code == 0, ev.stderr
    assert "snapped to its nearest keyframe (approximate sampling)" in " ".join(ev.stdout.split())
    assert json.loads((tmp_path / "e.json").read_text())["environment"]["frames"]["seek"] == "keyframe"
