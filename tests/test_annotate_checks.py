"""``vidq annotate --engine ray`` checks each video against the model before Ray starts (issue 28): a video whose
tokens pass the context, whose geometry the family refuses, or whose frame map cannot be read gets its error lines
from the frame map and the checkpoint's config files, with no Ray started and no model loaded; only the videos
that fit go to Ray. The same lines the local engine writes for them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_input_faults import QUESTION, no_model_load, short_context, vidq  # noqa: F401  (fixtures)

from flashvid_cli.annotate import ray_engine


@pytest.fixture()
def no_ray(monkeypatch) -> list[list]:
    """Ray must not start: importing it fails the test. Returns the todo lists handed to ``run_ray``, which the
    fixture replaces by a recorder that yields nothing (so a video that fits is seen to reach Ray)."""
    handed: list[list] = []

    def refuse():
        raise AssertionError("Ray was started for a request the frame map refuses")

    def record(todo, config):
        handed.append(list(todo))
        yield from ()

    monkeypatch.setattr(ray_engine, "_import_ray", refuse)
    monkeypatch.setattr(ray_engine, "run_ray", record)
    # The resource check is not what is tested: a 1-CPU machine would refuse the one actor before the videos.
    monkeypatch.setattr(ray_engine, "local_resources", lambda: {"CPU": 8.0, "GPU": 0.0})
    return handed


def annotate_ray(video_paths, model, out, *args):
    result = vidq("annotate", *map(str, video_paths), "-q", QUESTION, "-q", "And then?", "--out", str(out),
                  "--model", str(model), "--engine", "ray", "--quiet", "--max-new-tokens", "2", *args)
    # 3: the run completed, but each of these requests leaves refused pairs (error lines) in --out
    assert result.exit_code == 3 and "Traceback" not in result.stderr, (result.exit_code, result.stderr)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_video_past_the_context_is_refused_before_ray(no_ray, no_model_load, short_context, sample_video, tmp_path):
    """8 frames x 16 tokens of the tiny LLaVA-OneVision pass its 64 positions: both questions' lines say so."""
    records = annotate_ray([sample_video], short_context, tmp_path / "a.jsonl", "--method", "none", "--frames", "8")
    assert [r["question"] for r in records] == [QUESTION, "And then?"]
    for record in records:
        assert record["answer"] is None and record["decode_s"] is None
        assert "the video alone is 128 tokens (8 frames of 320x224" in record["error"], record["error"]
        assert "past the 64-token context" in record["error"], record["error"]
    assert no_ray == [] and no_model_load == []


def test_only_the_videos_that_fit_go_to_ray(no_ray, no_model_load, short_context, sample_video, tmp_path):
    """2 frames of 16 tokens fit the same model: that video is handed to Ray; the non-video file is not."""
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a_notes.mp4").write_text("not a video")
    shutil.copy(sample_video, folder / "b_clip.mp4")
    records = annotate_ray([folder], short_context, tmp_path / "a.jsonl", "--method", "none", "--frames", "2")
    assert {r["video"] for r in records} == {str(folder / "a_notes.mp4")} and len(records) == 2, records
    assert all(r["answer"] is None and r["error"] for r in records)
    assert no_ray == [[(str(folder / "b_clip.mp4"), [QUESTION, "And then?"])]]
    assert no_model_load == []


def test_geometry_the_family_refuses_is_refused_before_ray(no_ray, no_model_load, tiny_models, tmp_path):
    """An 8x2048 video (aspect 240 as decoded at 1920 wide) is past Qwen's resize rule: its line names the file
    and its size, the same line the local engine writes (tests/test_request_limits.py)."""
    from test_video_exact import encode

    video = encode(tmp_path / "thin.mp4", [np.full((8, 2048, 3), 40 * i, np.uint8) for i in range(4)])
    records = annotate_ray([video], tiny_models["qwen2_5_vl"], tmp_path / "a.jsonl", "--frames", "2")
    assert len(records) == 2
    for record in records:
        assert "(2048x8, downscaled at decode)" in record["error"], record["error"]
        assert "aspect ratio must be below 200, got 240.0" in record["error"], record["error"]
    assert no_ray == [] and no_model_load == []


def test_a_question_too_long_for_every_video_is_one_line_before_any_decode(tiny_models, sample_video, tmp_path,
                                                                             monkeypatch):
    """It cost every video its decode and encode, then wrote the same error line for each."""
    from flashvid_cli.annotate import runner

    decoded = []
    monkeypatch.setattr(runner, "timed_decode", lambda *a, **k: decoded.append(a) or pytest.fail("decoded"))
    out = tmp_path / "a.jsonl"
    result = vidq("annotate", str(sample_video), "-q", "word " * 5000, "-q", QUESTION, "--out", str(out),
                  "--model", str(tiny_models["llava_onevision"]), "--quiet", "--max-new-tokens", "2")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "question 'word word" in lines[0] and "shorten the question" in lines[0], lines[0]
    assert decoded == [] and (not out.exists() or out.read_text() == "")
