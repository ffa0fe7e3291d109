"""Requests bounded before any work (issue 28): a sampling rate far above the frames that exist, a bad `seek`
through the library, an output in a folder that does not exist, a prompt or geometry the model cannot take."""

from __future__ import annotations

import numpy as np
import pytest
from test_input_faults import QUESTION, no_model_load, one_error_line, short_context, vidq  # noqa: F401  (fixtures)

from flashvid_cli.pipelines.video import decode, fps_indices, sampling


@pytest.fixture()
def no_huge_arange(monkeypatch):
    """np.arange refuses to build more than a million values: a sampling plan must not be sized by duration x fps."""
    real = np.arange

    def bounded(*args, **kwargs):
        start, stop, step = (0.0, args[0], 1.0) if len(args) == 1 else (args[0], args[1], args[2] if len(args) > 2
                                                                        else 1.0)
        assert (stop - start) / step < 1e6, f"np.arange of {(stop - start) / step:.3g} values"
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "arange", bounded)


def test_fps_far_above_the_frames_is_capped_by_the_frames(sample_video, no_huge_arange):
    """`--fps 1e9` on the 48-frame sample: the plan holds every frame once (then max_frames of them), built per
    frame; before, it built 6e9 sample times and the decode worker died of memory."""
    seconds = np.arange(48) / 8.0
    assert fps_indices(seconds, 1e9, 1000, 6.0) == list(range(48))
    assert len(fps_indices(seconds, 1e9, 32, 6.0)) == 32
    decoded = decode(sample_video, fps=1e9, max_frames=32, timeout_s=None)
    assert len(decoded.indices) == 32 and decoded.frames.shape[0] == 32
    assert decoded.sampling.startswith("fps=1e+09 capped to 32 frames"), decoded.sampling


def test_per_frame_rule_equals_the_sample_time_rule():
    """The per-frame answer (used above _TICKS_PER_FRAME sample times a frame) picks exactly the frames the
    sample-time rule picks: constant, variable and duplicated timestamps, rates below and above the frames'."""
    rng = np.random.default_rng(0)
    for trial in range(600):
        n = int(rng.integers(1, 60))
        seconds = [np.arange(n) / 30.0, np.sort(rng.uniform(0, 5, n)), np.round(np.sort(rng.uniform(0, 3, n)), 1)][
            trial % 3]
        seconds = seconds - seconds[0]
        fps = float(rng.choice([0.5, 1, 7.3, 29.97, 60, 1000]))
        end = float(seconds[-1]) + float(rng.uniform(1e-9, 0.1))
        times = np.arange(0.0, end, 1.0 / fps)
        expected = np.unique(np.clip(np.searchsorted(seconds, times + 1e-6, side="right") - 1, 0, n - 1))
        assert sampling._frames_with_a_tick(seconds, fps, end).tolist() == expected.tolist(), (seconds, fps, end)


@pytest.mark.parametrize("fps", ["inf", "nan"])
def test_fps_that_is_no_rate_is_one_line(no_model_load, sample_video, fps):
    line = one_error_line(vidq("ask", str(sample_video), QUESTION, "--model", "some/model", "--fps", fps))
    assert "--fps must be positive and finite" in line, line
    assert no_model_load == []


def test_library_bad_seek_is_a_config_error(no_model_load, sample_video):
    """Before: the library's AskConfig took any seek and the decoder raised VideoError("seek must be one of...")."""
    from flashvid_cli import ask
    from flashvid_cli.api import AskConfig, ConfigError

    with pytest.raises(ConfigError, match="--seek 'nearest' is unknown; choose one of: exact, keyframe"):
        ask(sample_video, QUESTION, model="some/model", seek="nearest")
    with pytest.raises(ConfigError, match="--decoder 'ffmpeg' is unknown"):
        AskConfig(decoder="ffmpeg")
    with pytest.raises(ConfigError, match="not decord"):
        AskConfig(seek="keyframe", decoder="decord")
    assert AskConfig(seek="keyframe").seek == "keyframe"
    assert no_model_load == []


def test_annotate_out_in_a_missing_folder_is_refused(no_model_load, sample_video, tmp_path):
    """Before: annotate created the missing folder (and the file) silently; now one line, nothing created, like
    bench's and eval's --json and --plot (tested in test_input_faults)."""
    out = tmp_path / "typo" / "a.jsonl"
    line = one_error_line(vidq("annotate", str(sample_video), "-q", QUESTION, "--model", "some/model",
                               "--out", str(out)))
    assert f"--out {out}: the folder {out.parent} does not exist; create it or write elsewhere" in line, line
    assert not out.parent.exists() and no_model_load == []


def test_annotate_library_output_does_not_create_folders(tmp_path):
    from flashvid_cli.annotate.output import JsonLines, OutputError

    out = tmp_path / "typo" / "a.jsonl"
    with pytest.raises(OutputError, match="does not exist"):
        JsonLines(out)
    assert not out.parent.exists()


# -- a video the model cannot take, refused before decoding or loading ---------------------------------------------
@pytest.fixture()
def no_decode(monkeypatch) -> None:
    """Any decode fails the test: the refusal must come from the frame map alone."""
    from flashvid_cli import pipelines

    def refuse(*args, **kwargs):
        raise AssertionError("the video was decoded before the request was checked")

    monkeypatch.setattr(pipelines.video, "decode", refuse)


def test_video_alone_past_the_context_is_refused_before_decode(no_model_load, no_decode, short_context,
                                                               sample_video):
    """Before: `--frames 1500 --method none` decoded and encoded (~30 s) and was refused at prefill. Here 8 frames
    x 16 tokens of the tiny LLaVA-OneVision pass its 64 positions: one line, nothing decoded, no model loaded."""
    line = one_error_line(vidq("ask", str(sample_video), QUESTION, "--model", str(short_context), "--method", "none",
                               "--frames", "8", "--max-new-tokens", "4"))
    assert "the video alone is 128 tokens (8 frames of 320x224" in line, line
    assert "past the 64-token context" in line and "lower --frames or --max-frames" in line, line
    assert "compress the video (--method, --keep)" in line, line
    line = one_error_line(vidq("ask", str(sample_video), QUESTION, "--model", str(short_context), "--method", "pool",
                               "--keep", "0.9", "--frames", "8"))
    assert "the video alone is 115 tokens" in line and "or --keep" in line, line  # floor(0.9 x 128)
    assert no_model_load == []


def test_library_prepare_refuses_before_decode(short_context, sample_video, no_decode):
    from flashvid_cli.api import AskConfig, VideoQA
    from flashvid_cli.pipelines.errors import PromptTooLongError

    qa = VideoQA(str(short_context), device="cpu")
    with pytest.raises(PromptTooLongError, match="the video alone is 128 tokens"):
        qa.ask(sample_video, QUESTION, AskConfig(method="none", frames=8, max_new_tokens=4))


@pytest.mark.parametrize("frames", [1, 3])
def test_visual_token_count_before_decode_is_the_encoders(tiny_model, sample_video, frames):
    """The count the check uses equals what each family's encoder makes (odd counts: Qwen pads a temporal pair)."""
    from flashvid_cli.api import AskConfig, VideoQA
    from flashvid_cli.pipelines.preflight import rules_of

    qa = VideoQA(str(tiny_model), device="cpu")
    prepared = qa.prepare(sample_video, AskConfig(method="none", frames=frames))
    pipe = qa.pipeline
    size = pipe.frame_resizer().size(frames, 224, 320)
    rules = rules_of(pipe)
    assert rules.adapter.visual_tokens(rules.cfg, frames, *size) == prepared.visual_tokens - pipe.extra_video_tokens


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_geometry_the_family_refuses_is_one_line_before_load(no_model_load, no_decode, tiny_models, tmp_path,
                                                            family):
    """Before: an 8x2048 video (aspect 240 as decoded at 1920 wide) ended in "internal error: ValueError: aspect
    ratio must be below 200" after the model loaded. Now one line naming the file and its size, nothing loaded."""
    from test_video_exact import encode

    video = encode(tmp_path / "thin.mp4", [np.full((8, 2048, 3), 40 * i, np.uint8) for i in range(4)])
    line = one_error_line(vidq("ask", str(video), QUESTION, "--model", str(tiny_models[family]), "--frames", "2"))
    assert f"{video} (2048x8, downscaled at decode): its 1920x8 frames cannot be given to" in line, line
    assert "aspect ratio must be below 200, got 240.0" in line, line
    assert no_model_load == []


def test_annotate_writes_the_geometry_line_without_decoding(no_decode, tiny_models, tmp_path):
    """annotate decodes ahead itself: the video it cannot take is its error line, naming file and size."""
    import json

    from test_video_exact import encode

    video = encode(tmp_path / "thin.mp4", [np.full((8, 2048, 3), 40 * i, np.uint8) for i in range(4)])
    out = tmp_path / "a.jsonl"
    result = vidq("annotate", str(video), "-q", QUESTION, "--out", str(out), "--model", str(tiny_models["qwen2_5_vl"]),
                  "--frames", "2", "--quiet")
    assert result.exit_code == 3 and "Traceback" not in result.stderr
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["answer"] is None and "(2048x8, downscaled at decode)" in record["error"], record["error"]


def test_eval_refuses_a_video_no_run_can_take_before_decoding(short_context, sample_video, tmp_path, monkeypatch):
    """eval decodes ahead itself: a video whose tokens pass the context under every run is each question's error
    from the frame map, undecoded; when one run fits, the video decodes and that run is scored."""
    import json

    from flashvid_cli.api import AskConfig, VideoQA
    from flashvid_cli.evaluate import EvalConfig, read_dataset, run_eval
    from flashvid_cli.videoqa import VideoQA as Stages

    dataset = tmp_path / "q.jsonl"
    dataset.write_text(json.dumps({"video": str(sample_video), "question": "What colour?",
                                   "options": ["red", "green"], "answer": 0}) + "\n")
    qa = VideoQA(str(short_context), device="cpu")
    decodes = []
    original = Stages.decode
    monkeypatch.setattr(Stages, "decode", staticmethod(lambda *a, **k: decodes.append(a[0]) or original(*a, **k)))
    ask = AskConfig(frames=8, max_new_tokens=4)
    result = run_eval(qa, read_dataset(dataset), EvalConfig(methods=("none",), ask=ask))
    [prediction] = result.predictions
    assert prediction.predicted is None and "the video alone is 128 tokens" in prediction.error, prediction.error
    assert decodes == []
    result = run_eval(qa, read_dataset(dataset), EvalConfig(methods=("none", "pool"), keeps=(0.25,), ask=ask))
    assert decodes == [str(sample_video)]
    errors = {p.method: p.error for p in result.predictions}
    assert errors["pool"] is None and errors["none"] is not None
