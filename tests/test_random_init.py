"""``random:`` models: the kept full-size configs have the published sizes, and the builder runs end to end."""

from __future__ import annotations

import json

import pytest
import torch

from flashvid_cli import AskConfig, VideoQA
from flashvid_cli.pipelines.random_init import CONFIGS, fill_random, full_size_configs
from flashvid_cli.pipelines.registry import families

# Published totals (vision tower + projector + LLM), to 0.5%: a wrong width or depth shows at once.
PARAMS = {"llava-onevision-0.5b": 0.894e9, "llava-onevision-7b": 8.03e9, "qwen2.5-vl-7b": 8.29e9,
          "qwen3-vl-8b": 8.77e9, "qwen3-vl-30b-a3b": 31.1e9}


def test_the_full_size_configs_are_kept():
    assert full_size_configs() == sorted(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_full_size_configs_have_the_published_sizes(name):
    import transformers

    raw = json.loads((CONFIGS / f"{name}.json").read_text())
    config = transformers.AutoConfig.for_model(**raw)
    cls = getattr(transformers, raw["architectures"][0])
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = cls(config)
    total = sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(PARAMS[name], rel=0.02)
    text = config.text_config
    if name == "qwen2.5-vl-7b":
        assert config.vision_config.fullatt_block_indexes == [7, 15, 23, 31]
        assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    elif name.startswith("qwen3-vl"):
        assert list(config.vision_config.deepstack_visual_indexes) == [8, 16, 24]
        assert text.rope_parameters["mrope_section"] == [24, 20, 20] and text.rope_parameters["mrope_interleaved"]
        assert (config.vision_config.patch_size, text.head_dim) == (16, 128)
    else:
        assert (config.vision_config.hidden_size, config.vision_config.image_size) == (1152, 384)


def test_fill_random_sets_norms_to_one_and_the_rest_normal():
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.LayerNorm(256))
    fill_random(model)
    assert torch.all(model[1].weight == 1) and torch.all(model[1].bias == 0)
    assert model[0].weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("family", tuple(families()))
def test_random_model_from_a_config_path_answers(tiny_models, sample_video, family):
    """The mechanism on a tiny config (the full-size ones need GBs): same buffers as a normal build, and it runs."""
    import transformers

    qa = VideoQA(f"random:{tiny_models[family] / 'config.json'}", device="cpu")
    reference = getattr(transformers, qa.pipeline.model_class)(qa.pipeline.model.config)
    buffers = dict(reference.named_buffers())
    for name, buffer in qa.pipeline.model.named_buffers():  # rotary inv_freq computed, not left empty
        assert torch.equal(buffer, buffers[name]), name
    result = qa.ask(sample_video, "What happens?", AskConfig(method="pool", keep=0.5, frames=4, max_new_tokens=2))
    assert result.report.model.startswith("random:") and result.report.tokens.generated >= 1


def test_unknown_random_name_is_one_clear_error():
    from flashvid_cli.pipelines.errors import ModelError

    with pytest.raises(ModelError, match="llava-onevision-7b"):
        VideoQA("random:nosuch", device="cpu")
