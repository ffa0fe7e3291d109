"""The CLI decodes a video ahead while the model loads unless the encoded-video cache will hit (issue 28): the key
is built before the model loads from the checkpoint's config files (flashvid_cli/cache/probe.py) and must equal
the one the loaded pipeline looks up, or a hit would decode anyway (or a miss would lose the decode ahead)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flashvid_cli.api import AskConfig
from flashvid_cli.cache import EncodedCache
from flashvid_cli.cache.probe import key_before_load, will_hit
from flashvid_cli.cli import app
from flashvid_cli.video_stages import VideoStages

QUESTION = "What happens?"


@pytest.fixture()
def decodes(monkeypatch) -> list[str]:
    """Every decode of a video (ahead of the load or in prepare), by path."""
    seen: list[str] = []
    original = VideoStages.decode

    def counted(video, *args, **kwargs):
        seen.append(str(video))
        return original(video, *args, **kwargs)

    monkeypatch.setattr(VideoStages, "decode", staticmethod(counted))
    return seen


@pytest.mark.parametrize("config", [AskConfig(method="pool", keep=0.5, frames=3),
                                    AskConfig(method="flashvid", keep=0.3, frames=2)])  # needs importance, metric
def test_the_key_before_load_is_the_loaded_pipelines(qas, sample_video, tmp_path, config):
    for model_type, qa in qas.items():
        cache = EncodedCache(tmp_path / model_type)
        qa.cache, qa._model_fingerprint = cache, None
        try:
            need = qa.build_method(config).needs & {"importance", "metric", "similarity"}
            loaded = qa._cache_key(sample_video, config, frozenset(need), None)
        finally:
            qa.cache = None
        before = key_before_load(cache, sample_video, config, qa.pipeline.name, device="cpu")
        assert before is not None and before.fields == loaded.fields, model_type
        assert before.need == loaded.need, model_type


def test_second_ask_reads_the_cache_without_decoding(tiny_models, sample_video, tmp_path, monkeypatch, decodes):
    monkeypatch.setenv("VIDQ_CACHE_DIR", str(tmp_path / "cache"))
    model = str(tiny_models["llava_onevision"])
    args = ["ask", str(sample_video), QUESTION, "--model", model, "--device", "cpu", "--method", "pool", "--keep",
            "0.5", "--frames", "4", "--max-new-tokens", "4", "--json"]
    config = AskConfig(method="pool", keep=0.5, frames=4, max_new_tokens=4)
    assert not will_hit(EncodedCache(), sample_video, config, model, device="cpu")
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.stderr
    assert decodes == [str(sample_video)]  # decoded ahead while the model loaded, once
    assert will_hit(EncodedCache(), sample_video, config, model, device="cpu")
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.stderr
    assert decodes == [str(sample_video)]  # no decode the second time
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["answer"] == b["answer"]
    assert (a["report"]["cache"]["encoded"], b["report"]["cache"]["encoded"]) == ("miss", "hit")
    assert b["report"]["timings"]["wall"] is not None  # still counted from the command's start
    # Another sampling is another key: decoded ahead again.
    assert not will_hit(EncodedCache(), sample_video, AskConfig(method="pool", keep=0.5, frames=3), model,
                        device="cpu")


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_annotate_reads_cached_videos_without_decoding(tiny_models, sample_video, tmp_path, monkeypatch, decodes,
                                                       engine):
    """A rerun of annotate (a new --out, same videos) decoded every video again in its prefetch threads or Ray
    tasks and then read the encoded video from the cache, throwing the frames away (found by a new user's trial:
    ``decode_s`` beside "not decoded")."""
    from flashvid_cli.annotate import AnnotateConfig, annotate

    if engine == "ray":
        ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'vidq[ray]'")
        pytest.importorskip("ray.data", reason="the ray engine needs Ray Data: pip install 'ray[data]'")
    monkeypatch.setenv("VIDQ_CACHE_DIR", str(tmp_path / "cache"))
    videos = [str(tmp_path / f"{name}.mp4") for name in "ab"]
    for video in videos:
        (tmp_path / video).write_bytes(sample_video.read_bytes())
    ask = AskConfig(method="pool", keep=0.5, frames=4, max_new_tokens=2)
    config = AnnotateConfig(model=str(tiny_models["llava_onevision"]), device="cpu", ask=ask, cache_size="1G",
                            engine=engine)
    questions = ["What happens?", "How many objects?"]
    annotate(videos, questions, tmp_path / "first.jsonl", AnnotateConfig(**{**config.__dict__, "engine": "local"}))
    assert decodes == videos
    if engine == "ray":  # the decode tasks run in Ray workers: the count is the lines' decode_s
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        annotate(videos, questions, tmp_path / "again.jsonl", config)
    finally:
        if engine == "ray":
            ray.shutdown()
    assert decodes == videos  # nothing decoded in this process the second time
    first, again = ([json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
                    for name in ("first.jsonl", "again.jsonl"))
    assert all(r["decode_s"] is not None and r["report"]["cache"]["encoded"] == "miss" for r in first)
    assert all(r["decode_s"] is None and r["report"]["cache"]["encoded"] == "hit" for r in again), again
    answers = lambda lines: {(r["video"], r["question"]): r["answer"] for r in lines}  # noqa: E731
    assert answers(again) == answers(first)
