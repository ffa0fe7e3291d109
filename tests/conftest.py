"""Shared fixtures: tiny random checkpoints of every model family, built offline once per session."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Tests never reach the hub: every model is a local directory (set before transformers is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process with pytest's exit status once everything is reported, as the ``vidq`` entry point
    ends (``cli.end_process``: threads joined, ``atexit`` handlers run, streams flushed, no finalization): one CI
    run on 2026-12-07 passed every test, printed its summary, then died with SIGSEGV while native libraries tore
    down, and the identical rerun exited 0. ``VIDQ_DEBUG=1`` keeps the normal finalization, to look into it."""
    from flashvid_cli.cli import end_process
    from flashvid_cli.commands.shell import DEBUG_VARIABLE

    if os.environ.get(DEBUG_VARIABLE, "") in {"", "0"} and _EXIT_STATUS:
        end_process(_EXIT_STATUS[-1])


@pytest.fixture(scope="session", autouse=True)
def _encoded_cache_dir(tmp_path_factory):
    """The CLI's encoded-video cache goes to a directory of this test session, never the user's ~/.cache/vidq."""
    previous = os.environ.get("VIDQ_CACHE_DIR")
    os.environ["VIDQ_CACHE_DIR"] = str(tmp_path_factory.mktemp("vidq-cache"))
    yield
    if previous is None:
        os.environ.pop("VIDQ_CACHE_DIR", None)
    else:
        os.environ["VIDQ_CACHE_DIR"] = previous
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from flashvid_cli.pipelines.registry import families  # noqa: E402

FAMILIES = tuple(families())  # every model_type with a pipelines/<model_type>.py


def _load_sample_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "samples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{model_type: directory} of tiny random checkpoints of the real architectures."""
    builders = _load_sample_module("build_tiny_models").BUILDERS
    root = tmp_path_factory.mktemp("tiny-models")
    return {name: build(root / name) for name, build in builders.items()}


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_model(request, tiny_models) -> Path:
    """Each family's tiny checkpoint in turn."""
    return tiny_models[request.param]


@pytest.fixture(scope="module")
def qas(tiny_models) -> dict:
    """{model_type: VideoQA} on CPU, one per family's tiny checkpoint (loaded once per test module)."""
    from flashvid_cli.api import VideoQA

    return {family: VideoQA(str(path), device="cpu") for family, path in tiny_models.items()}


@pytest.fixture(scope="session")
def sample_video() -> Path:
    """The committed sample clip (48 distinct frames, 8 fps)."""
    path = REPO / "samples" / "sample.mp4"
    assert path.is_file(), "samples/sample.mp4 is missing: run python samples/make_sample_video.py"
    return path


# A chat template that puts the question before the video (the demo model's until it was retrained video first):
# no question can then reuse the video's prefill, which the reports and eval must say.
QUESTION_FIRST_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '\\n<video>' }}{% endfor %}"
    "{{'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def question_first_demo(tmp_path_factory) -> Path:
    """A copy of the demo checkpoint whose chat template asks before the video."""
    import shutil

    out = tmp_path_factory.mktemp("question-first") / "demo"
    shutil.copytree(REPO / "samples" / "vidq-demo-llava-ov", out)
    (out / "chat_template.jinja").write_text(QUESTION_FIRST_TEMPLATE)
    return out
