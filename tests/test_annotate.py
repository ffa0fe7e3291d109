"""``vidq annotate``: the right lines for good, corrupt and non-video files; resuming; kills; the Ray engine."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashvid_cli.annotate import (
    AnnotateConfig, JsonLines, OutputError, annotate, find_videos, read_questions,
)
from flashvid_cli.api import AskConfig, ConfigError
from flashvid_cli.cli import app

runner = CliRunner()
QUESTIONS = ["What happens?", "How many objects?"]
FAST = AskConfig(method="pool", keep=0.5, frames=4, max_new_tokens=2)
FAST_ARGS = ["--method", "pool", "--keep", "0.5", "--frames", "4", "--max-new-tokens", "2"]


@pytest.fixture()
def folder(tmp_path, sample_video) -> Path:
    """Three good videos (one nested, one .mkv), a corrupt .mp4 and a text file."""
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    for name in ["a.mp4", "sub/b.mp4", "sub/c.mkv"]:
        shutil.copy(sample_video, root / name)
    (root / "corrupt.mp4").write_bytes(sample_video.read_bytes()[:3000])
    (root / "notes.txt").write_text("not a video\n")
    return root


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def keys(lines: list[dict]) -> list[tuple[str, str]]:
    return [(r["video"], r["question"]) for r in lines]


def test_find_videos_by_extension_recursively(folder):
    found = find_videos(folder)
    assert [Path(p).relative_to(folder).as_posix() for p in found] == ["a.mp4", "corrupt.mp4", "sub/b.mp4", "sub/c.mkv"]
    assert find_videos(str(folder / "sub" / "*.mkv")) == [str(folder / "sub" / "c.mkv")]
    with pytest.raises(ConfigError, match="no video files"):
        find_videos(folder / "*.txt")


def test_read_questions_skips_blanks_and_duplicates(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("What happens?\n\n  How many?  \nWhat happens?\n")
    assert read_questions(path) == ["What happens?", "How many?"]


def test_annotate_writes_one_line_per_video_and_question(tiny_models, folder, tmp_path):
    out = tmp_path / "out.jsonl"
    config = AnnotateConfig(model=str(tiny_models["llava_onevision"]), device="cpu", ask=FAST)
    summary = annotate(find_videos(folder), QUESTIONS, out, config)
    lines = read_lines(out)
    assert (summary.done, summary.failed, summary.skipped, summary.total) == (6, 2, 0, 8)
    assert sorted(keys(lines)) == sorted((str(folder / v), q) for v in ["a.mp4", "corrupt.mp4", "sub/b.mp4",
                                                                          "sub/c.mkv"] for q in QUESTIONS)
    assert all(raw.startswith('{"video": ') for raw in out.read_text().splitlines())  # what a torn first line shows
    for line in lines:
        assert set(line) == {"video", "question", "answer", "error", "decode_s", "report", "options"}
        assert line["options"]["method"] == "pool" and line["options"]["frames"] == 4
        if line["video"].endswith("corrupt.mp4"):
            assert line["answer"] is None and line["report"] is None and "corrupt.mp4" in line["error"]
        else:
            assert line["error"] is None and isinstance(line["answer"], str) and line["decode_s"] > 0
            assert line["report"]["tokens"]["generated"] >= 1 and len(line["report"]["video"]["frame_indices"]) == 4

    again = annotate(find_videos(folder), QUESTIONS, out, config)  # resumed: nothing left to do
    assert (again.done, again.failed, again.skipped) == (0, 0, 8)
    assert read_lines(out) == lines


def record(video: str, question: str, error: str | None = None) -> str:
    return json.dumps({"video": video, "question": question, "answer": None if error else "yes", "error": error,
                       "decode_s": 0.1, "report": None, "options": {}})


@pytest.mark.parametrize("content, found", [
    (None, "binary data at line 1"),  # the sample video itself
    (b"Shopping list\neggs\n", "line 1 is not JSON: 'Shopping list'"),
    (b'{"id": 1, "label": "cat"}\n{"id": 2, "label": "dog"}\n', "line 1 is JSON but not a vidq record"),
    (b"no newline at all", "line 1 is not JSON"),
])
def test_an_out_that_is_not_vidq_output_is_refused_untouched(tmp_path, sample_video, content, found):
    out = tmp_path / "existing"
    out.write_bytes(content if content is not None else sample_video.read_bytes())
    before = out.read_bytes()
    with pytest.raises(OutputError, match="is not a vidq output file") as caught:
        JsonLines(out)
    assert found in str(caught.value)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_cli_refuses_a_video_as_out_in_one_line(tiny_models, folder, sample_video, tmp_path):
    out = tmp_path / "clip.mp4"
    shutil.copy(sample_video, out)
    result = runner.invoke(app, ["annotate", str(folder), "-q", "Q", "--out", str(out),
                                 "--model", str(tiny_models["llava_onevision"]), *FAST_ARGS])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "not a vidq output file (binary data" in lines[0]
    assert out.read_bytes() == sample_video.read_bytes()


def test_a_first_line_torn_by_a_kill_is_cut_not_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(record("/v/a.mp4", "Q1")[:25])  # the only line, cut mid-write
    sink = JsonLines(out)
    sink.close()
    assert sink.repaired == 25 and out.read_bytes() == b"" and sink.done() == set()


def test_an_out_the_run_created_and_wrote_nothing_to_is_removed(tmp_path):
    made, kept, written = (tmp_path / f"{name}.jsonl" for name in ("made", "kept", "written"))
    JsonLines(made).close()  # a run refused after opening its output (a question too long for the model)
    kept.write_text("")  # the user's own empty file stays
    JsonLines(kept).close()
    with JsonLines(written) as sink:
        sink.write(json.loads(record("/v/a.mp4", "Q1")))
    assert not made.exists() and kept.exists() and written.read_text() == record("/v/a.mp4", "Q1") + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.jsonl", "written.jsonl"]  # no lock file either


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(record("/v/a.mp4", "Q1") + "\n" + record("/v/b.mp4", "Q1"))  # e.g. written by hand
    sink = JsonLines(out)
    sink.close()
    assert sink.repaired == 0 and sink.existing.newline_added
    assert sink.done() == {("/v/a.mp4", "Q1"), ("/v/b.mp4", "Q1")}
    assert out.read_text() == record("/v/a.mp4", "Q1") + "\n" + record("/v/b.mp4", "Q1") + "\n"


def test_lines_that_are_not_records_are_reported_by_number_and_kept(tiny_models, folder, tmp_path):
    out = tmp_path / "out.jsonl"
    video = str(folder / "a.mp4")
    content = "\n".join([record(video, "Q1"), "garbage", record(video, "Q2"), '{"half": ', "", "[1, 2]",
                         record(video, "Q3", error="boom")]) + "\n"
    out.write_text(content)
    sink = JsonLines(out)
    sink.close()
    assert sink.existing.bad_lines == [2, 4, 6] and out.read_text() == content
    assert sink.done() == {(video, "Q1"), (video, "Q2"), (video, "Q3")} and sink.done(retry_failed=True) == {
        (video, "Q1"), (video, "Q2")}
    result = runner.invoke(app, ["annotate", video, "-q", "Q1", "-q", "Q2", "--out", str(out), "--quiet",
                                 "--model", str(tiny_models["llava_onevision"]), *FAST_ARGS])
    assert result.exit_code == 0, result.stderr
    assert "3 lines of the output are not vidq records (lines 2, 4, 6): kept" in " ".join(result.stderr.split())
    assert out.read_text() == content


def test_a_second_run_on_the_same_out_exits_at_once_naming_the_first(tiny_models, sample_video, tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(4):
        shutil.copy(sample_video, root / f"v{i}.mp4")
    out, lock = tmp_path / "out.jsonl", tmp_path / "out.jsonl.lock"
    command = [sys.executable, "-m", "flashvid_cli", "annotate", str(root), "-q", QUESTIONS[0], "-q", QUESTIONS[1],
               "--out", str(out), "--model", str(tiny_models["llava_onevision"]), "--quiet", *FAST_ARGS]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if lock.exists() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # frozen while holding the lock: the second run must meet it
        assert first.poll() is None and lock.read_text().strip() == str(first.pid)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    assert f"another vidq annotate (pid {first.pid}) is writing {out}" in " ".join(second.stderr.split())
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    records = read_lines(out)
    assert len(records) == len(set(keys(records))) == 8 and not lock.exists()


def test_a_torn_last_line_is_cut_off_and_redone(tiny_models, folder, tmp_path):
    out = tmp_path / "out.jsonl"
    config = AnnotateConfig(model=str(tiny_models["qwen2_5_vl"]), device="cpu", ask=FAST)
    videos = find_videos(folder / "sub")
    annotate(videos[:1], QUESTIONS[:1], out, config)
    with open(out, "a") as f:  # what a kill in the middle of a write leaves
        f.write('{"video": "' + videos[1] + '", "question": "What ha')
    sink = JsonLines(out)
    sink.close()
    assert sink.repaired > 0 and len(read_lines(out)) == 1
    summary = annotate(videos, QUESTIONS[:1], out, config)
    assert (summary.done, summary.skipped) == (1, 1)
    assert sorted(keys(read_lines(out))) == [(v, QUESTIONS[0]) for v in videos]


def test_a_decode_past_its_time_limit_costs_only_its_lines(tiny_models, folder, tmp_path):
    out = tmp_path / "out.jsonl"
    ask = AskConfig(method="pool", keep=0.5, frames=4, max_new_tokens=2, decode_timeout_s=0.001)
    summary = annotate(find_videos(folder / "sub"), QUESTIONS[:1], out,
                       AnnotateConfig(model=str(tiny_models["llava_onevision"]), device="cpu", ask=ask))
    assert (summary.done, summary.failed) == (0, 2)
    assert all("timed out" in line["error"] for line in read_lines(out))


def test_cli_progress_summary_and_quiet(tiny_models, folder, tmp_path):
    out = tmp_path / "out.jsonl"
    base = ["annotate", str(folder), "--question", QUESTIONS[0], "--out", str(out),
            "--model", str(tiny_models["llava_onevision"]), *FAST_ARGS]
    quiet = runner.invoke(app, [*base, "--quiet"])  # a broken video: its failure is named even when quiet
    assert quiet.exit_code == 3, quiet.stderr  # the others are written, but --out is not complete
    failures = [line for line in quiet.stderr.splitlines() if line.strip()]
    assert len(failures) == 1 and failures[0].startswith("failed: ") and "corrupt.mp4" in failures[0], quiet.stderr
    assert "corrupt or truncated" in failures[0] and len(read_lines(out)) == 4 and quiet.stdout == ""
    again = runner.invoke(app, base)
    assert again.exit_code == 3, again.stderr  # the error line is still the pair's last: still incomplete
    said = " ".join(again.stderr.split())  # rich wraps at the terminal's width
    assert "0 done, 4 skipped" in said and "1 of them failed earlier: --retry-failed asks them again" in said
    assert "0 failed" in said and "failed: " not in said and again.stdout == ""


def test_progress_rate_is_this_runs_lines_per_second_of_wall_time(monkeypatch):
    """The bar's rate is lines written in this run over the wall time since it started (model load and slow first
    video included; skipped pairs not counted), not rich's windowed speed, which read 20x too fast."""
    from rich.console import Console

    import flashvid_cli.commands.annotate as command

    clock = [100.0]
    console = Console(width=80, force_terminal=False, record=True, file=open(os.devnull, "w"))
    monkeypatch.setattr(command, "err", console)
    progress = command._Progress(get_time=lambda: clock[0])
    progress.event("start", {"total": 10, "skipped": 4})  # 4 pairs already in --out: 6 left
    clock[0] += 10.0  # loading the model and answering the first video
    for _ in range(3):  # three lines in quick succession (one video's questions)
        clock[0] += 0.01
        progress.event("done", {"video": "/v.mp4", "error": None})
    progress.stop()
    shown = console.export_text()
    assert "3/6" in shown and "0.30 questions/s ETA 0:00:10" in shown, shown  # 3 lines in 10.03 s, 3 left
    assert all(len(line) <= 80 for line in shown.splitlines()), shown
    assert command.rate_and_eta(0, 6, 5.0) == ("", "-:--:--")


def test_retry_failed_asks_again_after_a_forced_decode_timeout(tiny_models, folder, tmp_path):
    out = tmp_path / "out.jsonl"
    model = str(tiny_models["llava_onevision"])
    videos = find_videos(folder / "sub")
    timeout = AskConfig(method="pool", keep=0.5, frames=4, max_new_tokens=2, decode_timeout_s=0.001)
    first = annotate(videos, QUESTIONS[:1], out, AnnotateConfig(model=model, device="cpu", ask=timeout))
    assert (first.done, first.failed) == (0, 2) and [f[0] for f in first.failures] == videos
    config = AnnotateConfig(model=model, device="cpu", ask=FAST)
    plain = annotate(videos, QUESTIONS[:1], out, config)  # a plain rerun keeps the failures and counts them
    assert (plain.done, plain.failed, plain.skipped, plain.failed_before) == (0, 0, 2, 2)
    retried = annotate(videos, QUESTIONS[:1], out, config, retry_failed=True)
    assert (retried.done, retried.failed, retried.skipped, retried.failed_before) == (2, 0, 0, 0)
    lines = read_lines(out)
    assert len(lines) == 4 and all("timed out" in r["error"] for r in lines[:2])
    assert all(r["error"] is None and r["answer"] is not None for r in lines[2:])  # the later line wins
    final = annotate(videos, QUESTIONS[:1], out, config, retry_failed=True)  # nothing failed is left
    assert (final.done, final.skipped, final.failed_before) == (0, 2, 0)


@pytest.mark.parametrize("args, expected", [
    ([], "give --question (repeatable) or --questions FILE"),
    (["--question", "Q", "--engine", "spark"], "--engine must be one of local, ray"),
    (["--question", "Q", "--method", "nosuch"], "unknown method 'nosuch'"),
    (["--questions", "/nonexistent/q.txt"], "cannot read --questions"),
])
def test_cli_bad_options_get_one_line(tiny_models, folder, tmp_path, args, expected):
    result = runner.invoke(app, ["annotate", str(folder), "--out", str(tmp_path / "o.jsonl"),
                                 "--model", str(tiny_models["llava_onevision"]), *args])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_no_videos_is_one_line(tiny_models, tmp_path):
    result = runner.invoke(app, ["annotate", str(tmp_path), "-q", "Q", "--out", str(tmp_path / "o.jsonl"),
                                 "--model", str(tiny_models["llava_onevision"])])
    assert result.exit_code == 1 and "no video files" in result.stderr


def test_killed_run_resumes_without_duplicates_or_loss(tiny_models, sample_video, tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(8):
        shutil.copy(sample_video, root / f"v{i}.mp4")
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "flashvid_cli", "annotate", str(root), "-q", QUESTIONS[0], "-q", QUESTIONS[1],
               "--out", str(out), "--model", str(tiny_models["llava_onevision"]), "--quiet", *FAST_ARGS]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    survived = [line for line in out.read_text().splitlines(keepends=True) if line.endswith("\n")]
    assert 1 <= len(survived) < 16, "the kill should land mid-run"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    lines = out.read_text().splitlines(keepends=True)
    assert lines[: len(survived)] == survived  # nothing finished was lost or rewritten
    records = [json.loads(line) for line in lines]
    assert len(keys(records)) == len(set(keys(records))) == 16
    assert all(r["error"] is None for r in records)


def test_ray_engine_without_ray_is_one_clear_error(monkeypatch, tiny_models, folder, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    config = AnnotateConfig(model=str(tiny_models["llava_onevision"]), device="cpu", ask=FAST, engine="ray")
    with pytest.raises(ConfigError, match=r"pip install 'vidq\[ray\]'"):
        annotate(find_videos(folder), QUESTIONS[:1], tmp_path / "o.jsonl", config)


def test_ray_engine_gives_the_same_lines_as_the_local_one(tiny_models, folder, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'vidq[ray]'")
    pytest.importorskip("ray.data", reason="the ray engine needs Ray Data: pip install 'ray[data]'")
    videos = find_videos(folder)
    model = str(tiny_models["llava_onevision"])
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    annotate(videos, QUESTIONS, local, AnnotateConfig(model=model, device="cpu", ask=FAST))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        summary = annotate(videos, QUESTIONS, remote,
                           AnnotateConfig(model=model, device="cpu", ask=FAST, engine="ray", ray_actors=1))
    finally:
        ray.shutdown()
    assert (summary.done, summary.failed) == (6, 2)

    def comparable(path: Path) -> dict:
        return {(r["video"], r["question"]): (r["answer"], r["error"], r["options"],
                                              r["report"] and r["report"]["tokens"]) for r in read_lines(path)}

    assert comparable(remote) == comparable(local)


def test_ray_decode_task_gives_the_local_engines_frames_at_the_models_size(tiny_models, sample_video):
    """The Ray decode task decoded at the video's own size (the frames travel pickled to the actors) where the
    local engine resizes to the model's input size as it decodes; now both give the same frames, bit for bit."""
    import dataclasses
    import pickle

    import torch

    from flashvid_cli.annotate.answer import timed_decode
    from flashvid_cli.annotate.ray_engine import _decode_row
    from flashvid_cli.api import VideoQA

    model = str(tiny_models["llava_onevision"])
    row = _decode_row({"video": str(sample_video), "questions": "[]"}, dataclasses.asdict(FAST),
                      {"model": model, "device": "cpu", "dtype": "auto"})
    payload = pickle.loads(row["payload"])
    assert payload["error"] is None and payload["decode_s"] > 0
    local, _ = timed_decode(str(sample_video), FAST, VideoQA(model, device="cpu").frame_resizer())
    plain, _ = timed_decode(str(sample_video), FAST)
    assert payload["decoded"].frames.shape == local.frames.shape != plain.frames.shape
    assert torch.equal(torch.as_tensor(payload["decoded"].frames), torch.as_tensor(local.frames))


def test_ray_engine_fails_at_once_on_a_request_no_cluster_here_can_hold(tiny_models, folder, tmp_path):
    from flashvid_cli.annotate.ray_engine import RayResourceError, local_resources

    have = local_resources()  # what a local Ray would get: the request below is one more than that
    model = str(tiny_models["llava_onevision"])
    for field_values, missing in [({"ray_actors": int(have["CPU"]) + 1}, "CPUs; this machine has"),
                                  ({"ray_gpus_per_actor": have["GPU"] + 1}, "GPUs?; this machine has")]:
        config = AnnotateConfig(model=model, device="cpu", ask=FAST, engine="ray", **field_values)
        with pytest.raises(RayResourceError, match=missing):
            annotate(find_videos(folder), QUESTIONS[:1], tmp_path / "o.jsonl", config)
        assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # nothing was started
    assert not (tmp_path / "o.jsonl").exists()
    result = runner.invoke(app, ["annotate", str(folder), "-q", "Q", "--out", str(tmp_path / "o.jsonl"), "--model",
                                 model, "--engine", "ray", "--ray-actors", str(int(have["CPU"]) + 7), *FAST_ARGS])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "1 CPU for decoding need" in lines[0], result.stderr


def test_check_resources_names_what_is_missing():
    from flashvid_cli.annotate.ray_engine import RayResourceError, check_resources

    cluster = {"CPU": 8.0, "GPU": 2.0}
    check_resources(AnnotateConfig(engine="ray", ray_actors=2, ray_gpus_per_actor=1), cluster, "the Ray cluster")
    with pytest.raises(RayResourceError, match=r"2 actors x 1 CPU \+ 1 CPU for decoding need 3 CPUs; the Ray cluster "
                                               r"has 2: lower --ray-actors to 1"):
        check_resources(AnnotateConfig(engine="ray", ray_actors=2), {"CPU": 2.0}, "the Ray cluster")
    with pytest.raises(RayResourceError, match=r"3 actors x --gpus-per-actor 1 need 3 GPUs; the Ray cluster has 2"):
        check_resources(AnnotateConfig(engine="ray", ray_actors=3, ray_gpus_per_actor=1), cluster, "the Ray cluster")


def test_ray_run_stopped_by_sigterm_leaves_no_process_behind(tiny_models, sample_video, tmp_path):
    pytest.importorskip("ray.data", reason="the ray engine needs Ray Data: pip install 'ray[data]'")
    psutil = pytest.importorskip("psutil")
    root = tmp_path / "many"
    root.mkdir()
    for i in range(32):  # far more work than fits between the first line and the signal, so the run is mid-way
        shutil.copy(sample_video, root / f"v{i}.mp4")
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "flashvid_cli", "annotate", str(root), "-q", QUESTIONS[0], "--out", str(out),
               "--model", str(tiny_models["llava_onevision"]), "--engine", "ray", *FAST_ARGS]
    proc = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    seen: dict[int, psutil.Process] = {}  # every descendant: raylet, GCS, workers, the answering actor
    names: set[str] = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
                with contextlib.suppress(psutil.Error):
                    names.add(child.name())  # a Ray worker renames itself when it becomes the actor
        except psutil.NoSuchProcess:
            break
        if out.exists() and out.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run should still be going when it is stopped"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr.decode()
    assert "raylet" in names and any("_Answerer" in name for name in names), names  # Ray ran under this driver
    _, alive = psutil.wait_procs(list(seen.values()), timeout=30)
    assert alive == [], [p.name() for p in alive]
    noise = [line for line in stderr.decode().splitlines() if line.strip() and "annotating" not in line]
    assert noise == [], noise  # nothing of Ray's on the terminal
    assert all(json.loads(line)["error"] is None for line in out.read_text().splitlines())


def test_ray_teardown_stops_and_joins_the_threads_the_run_started():
    """Before ray.shutdown, the threads started since the run began end: a parked prefetcher-like thread (its
    target a bound method of a ray.* object with stop(), as Ray Data's WaitBlockPrefetcher) is stopped first, a
    worker thread is waited for; threads from before the run are left alone."""
    import threading

    from flashvid_cli.annotate.ray_engine import _join_new_threads

    class Parked:
        def __init__(self):
            self.stopped = threading.Event()

        def run(self):
            self.stopped.wait()

        def stop(self):
            self.stopped.set()

    Parked.__module__ = "ray.data._internal.block_batching.util"
    older = Parked()
    before_thread = threading.Thread(target=older.run, daemon=True)
    before_thread.start()
    before = set(threading.enumerate())
    parked, finished = Parked(), threading.Event()
    started = [threading.Thread(target=parked.run, daemon=True),
               threading.Thread(target=lambda: (time.sleep(0.2), finished.set()), daemon=True)]
    for thread in started:
        thread.start()
    _join_new_threads(before, timeout_s=30)
    assert not any(thread.is_alive() for thread in started) and finished.is_set()
    assert before_thread.is_alive() and not older.stopped.is_set()  # not the run's: not stopped
    older.stop()
