"""Qwen3-VL: the per-frame layout, positions and DeepStack features after compression, every method end to end."""

from __future__ import annotations

import dataclasses

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from flashvid_cli import AskConfig, VideoQA
from flashvid_cli.kernels import Compressed, Grid, build, methods
from flashvid_cli.pipelines import load_pipeline
from flashvid_cli.pipelines.generation import GenerationOptions
from flashvid_cli.pipelines.preprocess import PreprocessConfig
from flashvid_cli.pipelines.qwen3_vl import group_timestamps, pixel_budget

QUESTION = "What happens last in the video?"
# Every method at keep 0.25 with whatever options it needs to run on the tiny grid (4 groups of 3 x 5 tokens).
KEEP = 0.25


@pytest.fixture(scope="module")
def clip(tiny_models):
    """(pipeline, encoded) for an 8-frame random clip: 4 temporal groups of 3 x 5 tokens."""
    pipe = load_pipeline(str(tiny_models["qwen3_vl"]), device="cpu", dtype="float32")
    frames = np.random.default_rng(3).integers(0, 256, (8, 90, 150, 3), dtype=np.uint8)
    pixels = pipe.preprocess(frames, [0.25 * i for i in range(8)])
    encoded = pipe.encode(pixels, need=frozenset({"importance", "metric"}))
    assert (encoded.grid.T, encoded.grid.H, encoded.grid.W) == (4, 3, 5)
    return pipe, encoded


def _compress(encoded, name, keep=KEEP, **options):
    method = build(name, keep, model_type="qwen3_vl", options=options)
    return method(encoded.feats, encoded.grid, encoded.importance, encoded.metric)


@contextmanager
def _injected(pipe):
    """Record what the LLM adds to the video tokens' hidden states after each early layer: [K, D] per layer."""
    body = pipe.language_model
    seen: list[torch.Tensor] = []
    original = body._deepstack_process

    def record(hidden, mask, embeds):
        seen.append(embeds.detach().clone())
        return original(hidden, mask, embeds)

    body._deepstack_process = record
    try:
        yield seen
    finally:
        del body._deepstack_process


def _injected_features(pipe, inputs):
    with _injected(pipe) as seen:
        pipe.last_logits(inputs)
    return seen


def test_prompt_has_one_timestamped_block_per_temporal_group(clip):
    pipe, encoded = clip
    inputs = pipe.inputs(encoded, _compress(encoded, "none", 1.0), QUESTION)
    text = pipe.tokenizer.decode(inputs["input_ids"][0])
    stamps = group_timestamps([0.25 * i for i in range(8)], 2)
    assert stamps == [0.125, 0.625, 1.125, 1.625]
    blocks = "".join(f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * 15 + "<|vision_end|>" for t in stamps)
    assert blocks in text and text.count("<|vision_start|>") == 4


@pytest.mark.parametrize("name", ["pool", "flashvid", "divprune", "visionzip"])
def test_kept_tokens_take_their_columns_of_the_full_positions(clip, name):
    pipe, encoded = clip
    compressed = _compress(encoded, name)
    full_ids, full_pos = pipe.full_positions(encoded, QUESTION)
    video_id = pipe.model.config.video_token_id
    full_video = (full_ids[0] == video_id).nonzero()[:, 0]
    inputs = pipe.inputs(encoded, compressed, QUESTION)
    ids, positions = inputs["input_ids"][0], inputs["position_ids"]  # [L'], [4, 1, L']
    kept = (ids == video_id).nonzero()[:, 0]
    assert kept.numel() == compressed.tokens.shape[0] < full_video.numel()
    assert torch.equal(positions[1:, 0, kept], full_pos[:, 0, full_video[compressed.index]])
    # Every text token (timestamps, block marks, question) stays, in order, at its own position.
    text, full_text = ids != video_id, full_ids[0] != video_id
    assert torch.equal(ids[text], full_ids[0, full_text])
    assert torch.equal(positions[1:, 0, text], full_pos[:, 0, full_text])
    assert torch.equal(positions[0, 0], torch.arange(ids.numel()))
    # The tokens of a group sit inside that group's block.
    starts = (ids == pipe.tokenizer.convert_tokens_to_ids("<|vision_start|>")).nonzero()[:, 0]
    block_of = torch.searchsorted(starts, kept, right=True) - 1
    assert torch.equal(block_of, compressed.index // encoded.grid.N)


@pytest.mark.parametrize("name", ["divprune", "flashvid", "visionzip"])
def test_kept_tokens_deepstack_features_equal_the_full_runs(clip, name):
    pipe, encoded = clip
    compressed = _compress(encoded, name)
    full = _injected_features(pipe, pipe.inputs(encoded, _compress(encoded, "none", 1.0), QUESTION))
    ours = _injected_features(pipe, pipe.inputs(encoded, compressed, QUESTION))
    layers = len(pipe.model.config.vision_config.deepstack_visual_indexes)
    assert len(full) == len(ours) == layers
    alone = torch.diff(compressed.offsets) == 1  # kept tokens
    assert alone.any()
    for ours_layer, full_layer in zip(ours, full):
        assert ours_layer.shape[0] == compressed.tokens.shape[0]
        assert torch.equal(ours_layer[alone], full_layer[compressed.index[alone]])


@pytest.mark.parametrize("name", ["pool", "flashvid", "visionzip"])
def test_merged_tokens_take_the_same_merge_of_their_sources_deepstack_features(clip, name):
    pipe, encoded = clip
    compressed = _compress(encoded, name, **({"contextual": "2"} if name == "visionzip" else {}))
    assert compressed.weights is not None and (torch.diff(compressed.offsets) > 1).any()
    # The weights state the merge the method made of the main features ...
    torch.testing.assert_close(compressed.carry(encoded.feats), compressed.tokens, rtol=1e-5, atol=1e-6)
    # ... and the LLM receives that merge of the DeepStack features.
    ours = _injected_features(pipe, pipe.inputs(encoded, compressed, QUESTION))
    for layer, injected in zip(encoded.meta["deepstack"], ours):
        flat = layer.reshape(-1, layer.shape[-1])
        expected = torch.stack([
            (flat[compressed.sources[a:b]] * compressed.weights[a:b, None]).sum(0)
            for a, b in zip(compressed.offsets[:-1].tolist(), compressed.offsets[1:].tolist())
        ])
        torch.testing.assert_close(injected, expected, rtol=1e-5, atol=1e-6)


def test_pool_merges_deepstack_as_the_mean_of_its_bins(clip):
    pipe, encoded = clip
    compressed = _compress(encoded, "pool")
    layer = encoded.meta["deepstack"][0].reshape(-1, encoded.feats.shape[-1])
    means = torch.stack([layer[group].mean(0) for group in compressed.groups()])
    torch.testing.assert_close(compressed.carry(encoded.meta["deepstack"][0]), means, rtol=1e-5, atol=1e-6)


def test_flashvid_reference_takes_the_representatives_deepstack_features(clip):
    pipe, encoded = clip
    default = _compress(encoded, "flashvid")
    reference = _compress(encoded, "flashvid", reference="true")
    assert default.weights is not None and reference.weights is None
    assert (torch.diff(reference.offsets) > 1).any()  # it does merge tokens ...
    ours = _injected_features(pipe, pipe.inputs(encoded, reference, QUESTION))
    for layer, injected in zip(encoded.meta["deepstack"], ours):  # ... yet each carries its representative's
        assert torch.equal(injected, layer.reshape(-1, layer.shape[-1])[reference.index])


def test_a_group_left_without_tokens_keeps_its_empty_block(clip):
    pipe, encoded = clip
    N = encoded.grid.N
    index = torch.tensor([0, 1, 2 * N + 4])  # nothing from groups 1 and 3
    compressed = Compressed.kept(encoded.feats, index, encoded.grid)
    inputs = pipe.inputs(encoded, compressed, QUESTION)
    text = pipe.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<|vision_start|>") == 4 and text.count("<|vision_start|><|vision_end|>") == 2
    out = pipe.generate(inputs, GenerationOptions(max_new_tokens=2))
    assert len(out.token_ids) >= 1


def test_importance_is_a_distribution_per_group(clip):
    _, encoded = clip
    torch.testing.assert_close(encoded.importance.sum(1), torch.full((encoded.grid.T,), 0.25))
    assert encoded.metric.shape[:2] == (encoded.grid.T, encoded.grid.N)


def test_pixel_budget_caps_each_frame_only_when_asked():
    size = {"shortest_edge": 4096, "longest_edge": 100 * 32 * 32 * 10}
    plain = PreprocessConfig(mean=(0.5,) * 3, std=(0.5,) * 3, size=size, patch_size=16)
    capped = PreprocessConfig(mean=(0.5,) * 3, std=(0.5,) * 3, size=size, patch_size=16, cap_pixels_per_frame=True,
                              max_video_tokens=40)
    assert pixel_budget(plain, 8) == (4096, 1024000)
    assert pixel_budget(capped, 8) == (4096, 40 * 32 * 32 * 8)  # 40 tokens a frame, below longest_edge // 8
    assert pixel_budget(capped, 1000) == (4096, int(4096 * 1.05) * 1000)  # the per-frame floor


@pytest.mark.parametrize("name", sorted(methods()))
def test_every_method_answers_end_to_end(tiny_models, sample_video, name):
    qa = VideoQA(str(tiny_models["qwen3_vl"]), device="cpu")
    cls = methods()[name]
    # the tiny model has 2 decoder layers: an in-LLM stage prunes before the last one
    options = {"pruning_layer": "1"} if "pruning_layer" in {f.name for f in dataclasses.fields(cls)} else {}
    config = AskConfig(method=name, keep=KEEP, frames=4, max_new_tokens=2, options=options)
    result = qa.ask(sample_video, QUESTION, config)
    tokens = result.report.tokens
    assert result.report.model_type == "qwen3_vl" and tokens.generated >= 1
    if cls.baseline:
        assert tokens.visual_after == tokens.visual_before
    elif cls(keep=KEEP).llm_prune() is not None:  # the stage cuts the tokens entering the LLM at layer 1
        assert tokens.visual_before >= tokens.visual_after == tokens.visual_by_layer[0] > tokens.visual_by_layer[-1]
    else:
        assert tokens.visual_after < tokens.visual_before


def test_moe_variant_answers_with_deepstack(tiny_models, sample_video):
    qa = VideoQA(str(tiny_models["qwen3_vl_moe"]), device="cpu")
    result = qa.ask(sample_video, QUESTION, AskConfig(method="flashvid", keep=0.5, frames=4, max_new_tokens=2))
    assert result.report.model_type == "qwen3_vl_moe" and result.report.tokens.generated >= 1


def test_bench_and_annotate_run_on_qwen3_vl(tiny_models, sample_video, tmp_path):
    import json

    from typer.testing import CliRunner

    from flashvid_cli.annotate import AnnotateConfig, annotate
    from flashvid_cli.cli import app

    model = str(tiny_models["qwen3_vl"])
    result = CliRunner().invoke(app, [
        "bench", str(sample_video), "--model", model, "--methods", "flashvid,none", "--keep", "0.5",
        "--repeat", "1", "--warmup", "0", "--frames", "4", "--max-new-tokens", "2", "--json", str(tmp_path / "b.json"),
    ])
    assert result.exit_code == 0, result.stderr
    assert "flashvid 0.5" in result.stdout and "qwen3_vl" in (tmp_path / "b.json").read_text()
    out = tmp_path / "out.jsonl"
    config = AnnotateConfig(model=model, device="cpu", ask=AskConfig(method="pool", keep=0.5, frames=4, max_new_tokens=2))
    summary = annotate([str(sample_video)], [QUESTION], out, config)
    assert summary.done == 1
    line = json.loads(out.read_text().splitlines()[0])
    assert line["question"] == QUESTION and "answer" in json.dumps(line)


def test_moe_prefill_estimate_counts_only_the_active_experts(tiny_models):
    from flashvid_cli.bench import LanguageModelSize

    qa = VideoQA(str(tiny_models["qwen3_vl_moe"]), device="cpu")
    text = qa.pipeline.model.config.text_config
    named = dict(qa.pipeline.language_model.named_parameters())
    expert = sum(p.numel() for n, p in named.items() if ".experts." in f".{n}")
    embed = qa.pipeline.model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in named.values()) - embed
    assert expert > 0
    expected = total - expert + expert * text.num_experts_per_tok // text.num_experts
    assert abs(LanguageModelSize.of(qa).params - expected) <= len(named)  # per-tensor floor division


@pytest.mark.parametrize("name", sorted(methods()))
def test_every_method_states_its_merge(name):
    """What DeepStack relies on: a method either states each token's merge (``weights``, which rebuild its tokens
    from the features) or emits tokens that are exactly their representatives' features (FlashVID's reference
    mode is the one documented exception: it merges, and its merged tokens carry their representative's DeepStack
    features)."""
    cls = methods()[name]
    if not cls.needs <= {"importance", "metric", "similarity"}:
        pytest.skip(f"{name} needs {sorted(cls.needs)}, beyond the vision tower's outputs")
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 36, 16, generator=gen)
    importance = torch.rand(4, 36, generator=gen).softmax(-1)
    metric = torch.randn(4, 36, 8, generator=gen)
    similarity = torch.randn(4, 36, 12, generator=gen)
    compressed = build(name, 0.3)(feats, Grid(4, 6, 6), importance, metric, similarity=similarity)
    if compressed.weights is None:
        assert torch.equal(compressed.tokens, feats.reshape(-1, 16)[compressed.index])
    else:
        torch.testing.assert_close(compressed.carry(feats), compressed.tokens, rtol=1e-5, atol=1e-6)
