"""lmms-eval's ``openai_compatible`` model evaluates a tiny local video task against ``vidq serve`` (issue 25).

The task (a YAML, its ``utils.py`` and a two-question JSONL about the demo clips) is written into ``tmp_path``;
lmms-eval runs as a subprocess, offline (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``), against a server on
127.0.0.1 that this test starts with the demo model. ``pass_video_url=True`` makes lmms-eval send each video as a
``file://`` ``video_url`` part with ``media_io_kwargs.video.num_frames``, as it does for vLLM.

lmms-eval is not in the dev extra and is never imported by this test: lmms-eval 0.7.3 requires ``av<16`` (vidq runs
av 18), ``torchvision`` (which replaces the pinned CPU torch 2.13 with torch 2.14 and its nvidia CUDA 13 wheels),
wandb, ruff and pre-commit, and breaks with filelock 4 (it imports ``filelock._api``). It runs from a venv of its own
that sees vidq's packages (``--system-site-packages``) and holds lmms-eval without its dependencies, the few it
imports on this path, and ``filelock<4`` (in the venv only; vidq's environment keeps its filelock). ``.ci/run``
builds that venv at ``~/.cache/vidq/lmms-eval-venv``; ``VIDQ_LMMS_EVAL_PYTHON`` names another python to run lmms-eval
with. The test skips, saying so, only when that python is absent. By hand, as ``.ci/run`` does:

    python -m venv --system-site-packages --without-pip ~/.cache/vidq/lmms-eval-venv
    ~/.cache/vidq/lmms-eval-venv/bin/python -m pip install loguru sacrebleu evaluate datasets pytz tenacity \
        pytablewriter "filelock<4"
    ~/.cache/vidq/lmms-eval-venv/bin/python -m pip install --no-deps lmms-eval==0.7.3

lmms-eval exits 0 even when the evaluation fails, so the test checks the files it writes, not its exit status alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from flashvid_cli.config import AskConfig  # noqa: E402
from flashvid_cli.serve import ServeConfig  # noqa: E402
from serve_server import Server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "samples" / "demo" / "clips"
DEMO = REPO / "samples" / "vidq-demo-llava-ov"
NAME = "vidq-demo"
LMMS_EVAL_PYTHON = Path(os.environ.get("VIDQ_LMMS_EVAL_PYTHON")
                        or Path.home() / ".cache" / "vidq" / "lmms-eval-venv" / "bin" / "python")
if not LMMS_EVAL_PYTHON.is_file():
    pytest.skip(f"no python for lmms-eval at {LMMS_EVAL_PYTHON} (.ci/run builds that venv; VIDQ_LMMS_EVAL_PYTHON "
                "names another)", allow_module_level=True)
QUESTIONS = [("00000.mp4", "How many shapes appear in the video?"), ("00001.mp4", "Which shape appears last?")]

TASK_YAML = """\
task: vidq_tiny_video
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: question
doc_to_messages: !function utils.doc_to_messages
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: answered
    aggregation: mean
    higher_is_better: true
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

TASK_UTILS = '''\
def doc_to_messages(doc, lmms_eval_specific_kwargs=None):
    return [{"role": "user", "content": [{"type": "video", "url": doc["video"]},
                                         {"type": "text", "text": doc["question"]}]}]


def process_results(doc, results):
    answer = results[0].strip()
    return {"answered": float(bool(answer)), "exact_match": float(answer.lower() == doc["answer"].lower())}
'''


@pytest.fixture()
def server(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for clip, _ in QUESTIONS:
        shutil.copy(CLIPS / clip, media / clip)
    config = ServeConfig(model=str(DEMO), served_model_name=NAME, device="cpu", allowed_local_media_path=media,
                         defaults=AskConfig(method="divprune", keep=0.5, max_new_tokens=8))
    made = Server(config, wait_ready=True, timeout=120)  # the model loads in the app's startup
    yield made, media
    made.stop()


def _task(root: Path, media: Path, answers: list[str]) -> Path:
    tasks = root / "tasks"
    tasks.mkdir()
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"video": str(media / clip), "question": q, "answer": a}) + "\n"
                            for (clip, q), a in zip(QUESTIONS, answers)))
    (tasks / "vidq_tiny_video.yaml").write_text(TASK_YAML.format(data=data))
    (tasks / "utils.py").write_text(TASK_UTILS)
    return tasks


def test_lmms_eval_openai_compatible_evaluates_a_local_video_task(server, tmp_path):
    srv, media = server
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=120)
    greedy, prompt_tokens = [], []
    for clip, question in QUESTIONS:  # what the server answers itself, greedy, as lmms-eval will ask it
        done = client.chat.completions.create(
            model=NAME, max_tokens=8, temperature=0, extra_body={"media_io_kwargs": {"video": {"num_frames": 8}}},
            messages=[{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": f"file://{media / clip}"}},
                {"type": "text", "text": question}]}])
        greedy.append(done.choices[0].message.content)
        prompt_tokens.append(done.usage.prompt_tokens)
    assert all(a.strip() for a in greedy)
    # The first question's expected answer is the server's own, the second's one it never gives: exact_match 0.5.
    tasks = _task(tmp_path, media, [greedy[0], "no such answer"])
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "OPENAI_API_KEY": "none", "WANDB_MODE": "disabled"}
    model_args = (f"model={NAME},base_url={srv.url}/v1,pass_video_url=True,max_frames_num=8,num_concurrent=1,"
                  "timeout=120")
    run = subprocess.run([str(LMMS_EVAL_PYTHON), "-m", "lmms_eval", "--model", "openai_compatible", "--model_args",
                          model_args, "--tasks", "vidq_tiny_video", "--include_path", str(tasks), "--batch_size", "1",
                          "--output_path", str(out), "--log_samples"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = (run.stdout + run.stderr)[-4000:]
    assert run.returncode == 0, log
    results = sorted(out.rglob("*_results.json"))
    assert results, f"no results file under {out}: {log}"
    metrics = json.loads(results[-1].read_text())["results"]["vidq_tiny_video"]
    assert metrics["answered,none"] == 1.0
    assert metrics["exact_match,none"] == 0.5
    samples = [json.loads(line) for p in out.rglob("*_samples_vidq_tiny_video.jsonl") for line in p.open()]
    # lmms-eval got the server's greedy answers, to prompts of the same length (the same video, frames and question).
    assert {s["input"]: s["filtered_resps"] for s in samples} == {q: a for (_, q), a in zip(QUESTIONS, greedy)}
    assert {s["input"]: s["token_counts"][0]["input_tokens"] for s in samples} == \
        {q: n for (_, q), n in zip(QUESTIONS, prompt_tokens)}
