"""A streamed cache hit decodes nothing (issue 27): ``vidq ask --stream`` decodes ahead while the model loads unless
the compressed entry of its method, options and keep will hit, told before the model loads (flashvid_cli/cache/
probe.py); the key built there must equal the one stream_video looks up."""

from __future__ import annotations

import json

from flashvid_cli.config import AskConfig

QUESTION = "What happens?"


def test_the_streamed_key_before_load_is_stream_videos(qas, sample_video, tmp_path):
    from flashvid_cli.cache import EncodedCache
    from flashvid_cli.cache.probe import key_before_load
    from flashvid_cli.streaming import _compressed_key

    for config in (AskConfig(method="pool", keep=0.5, frames=3, stream=True),
                   AskConfig(method="visionzip", keep=0.3, frames=4, stream=True, options={"reference": True})):
        for model_type, qa in qas.items():
            cache = EncodedCache(tmp_path / model_type)
            qa.cache, qa._model_fingerprint = cache, None
            try:
                loaded = _compressed_key(qa, sample_video, config, qa.build_method(config), {}, None)
            finally:
                qa.cache = None
            before = key_before_load(cache, sample_video, config, qa.pipeline.name, device="cpu")
            assert before is not None and before.fields == loaded.fields, model_type
    reads = AskConfig(method="cdpruner", keep=0.3, frames=3, stream=True)  # its tokens are the question's
    assert key_before_load(EncodedCache(tmp_path / "q"), sample_video, reads, qa.pipeline.name, device="cpu") is None


def test_a_second_streamed_ask_decodes_nothing(tiny_models, sample_video, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flashvid_cli.cache import EncodedCache
    from flashvid_cli.cache.probe import will_hit
    from flashvid_cli.cli import app
    from flashvid_cli.pipelines.video import stream as stream_module
    from flashvid_cli.video_stages import VideoStages

    monkeypatch.setenv("VIDQ_CACHE_DIR", str(tmp_path / "cache"))
    decodes: list[str] = []
    whole, streamed = VideoStages.decode, stream_module.decode_stream

    def count_whole(video, *a, **k):
        decodes.append("whole")
        return whole(video, *a, **k)

    def count_streamed(video, *a, **k):
        decodes.append("streamed")
        return streamed(video, *a, **k)

    monkeypatch.setattr(VideoStages, "decode", staticmethod(count_whole))
    monkeypatch.setattr(stream_module, "decode_stream", count_streamed)
    model = str(tiny_models["llava_onevision"])
    args = ["ask", str(sample_video), QUESTION, "--model", model, "--device", "cpu", "--method", "pool", "--keep",
            "0.5", "--frames", "6", "--max-new-tokens", "4", "--stream", "--json"]
    config = AskConfig(method="pool", keep=0.5, frames=6, max_new_tokens=4, stream=True)
    assert not will_hit(EncodedCache(), sample_video, config, model, device="cpu")
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.stderr
    assert decodes == ["streamed"]  # one streamed decode, started while the model loaded
    assert will_hit(EncodedCache(), sample_video, config, model, device="cpu")
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.stderr
    assert decodes == ["streamed"]  # nothing decoded the second time, not even ahead
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["answer"] == b["answer"]
    assert (a["report"]["cache"]["encoded"], b["report"]["cache"]["encoded"]) == ("miss", "hit")
    assert any("not decoded, encoded or compressed" in n for n in b["report"]["video"]["notes"])
    assert any(n.startswith("decoded while") for n in a["report"]["video"]["notes"])
    # the first run's decode is not the second's: the entry does not bring back a note of a decode that never ran
    assert not any(n.startswith("decoded while") for n in b["report"]["video"]["notes"])
    assert b["report"]["timings"]["wall"] is not None
    # another keep is another entry: streamed and decoded again
    assert not will_hit(EncodedCache(), sample_video, AskConfig(**{**config.__dict__, "keep": 0.25}), model,
                        device="cpu")
    third = CliRunner().invoke(app, [*args[:9], "0.25", *args[10:]])
    assert third.exit_code == 0, third.stderr
    assert decodes == ["streamed", "streamed"]
