"""vidq's injection path against the stock transformers model: bit for bit when nothing is compressed, every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashvid_cli.kernels import build
from flashvid_cli.pipelines import load_pipeline
from flashvid_cli.pipelines.generation import GenerationOptions
from flashvid_cli.pipelines.registry import families

FAMILIES = tuple(families())

QUESTION = "What happens last in the video?"
STEPS = 6


def _frames(count: int, height: int = 90, width: int = 150, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def encoded_clips(tiny_models):
    """{family: (pipeline, pixels, encoded)} for a 6-frame random clip."""
    clips = {}
    for family, path in tiny_models.items():
        pipe = load_pipeline(str(path), device="cpu", dtype="float32")
        frames = _frames(6)
        pixels = pipe.preprocess(frames, [0.5 * i for i in range(len(frames))])
        clips[family] = (pipe, pixels, pipe.encode(pixels, need=frozenset({"importance", "metric"})))
    return clips


def _stock_generate(pipe, pixels, input_ids):
    """The stock model fed pixel values (the family's own video inputs): the reference vidq must equal."""
    return pipe.model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=STEPS, do_sample=False,
        output_logits=True, return_dict_in_generate=True, pad_token_id=pipe.tokenizer.pad_token_id,
        **pipe.stock_inputs(pixels, input_ids),
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["none", "pool"])
def test_uncompressed_logits_equal_stock_model_bit_for_bit(encoded_clips, family, method):
    pipe, pixels, encoded = encoded_clips[family]
    compressed = build(method, 1.0)(encoded.feats, encoded.grid, encoded.importance, encoded.metric)
    inputs = pipe.inputs(encoded, compressed, QUESTION)
    ours = pipe.generate(inputs, GenerationOptions(max_new_tokens=STEPS, return_logits=True))
    stock = _stock_generate(pipe, pixels, inputs["input_ids"])
    assert len(ours.logits) == len(stock.logits) == STEPS
    for step, (a, b) in enumerate(zip(ours.logits, stock.logits)):
        assert torch.equal(a, b), f"logits differ at greedy step {step}"
    assert ours.token_ids == stock.sequences[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_pool_quarter_generates_with_fewer_tokens(encoded_clips, family):
    pipe, _, encoded = encoded_clips[family]
    full = build("none", 1.0)(encoded.feats, encoded.grid)
    pooled = build("pool", 0.25)(encoded.feats, encoded.grid)
    full_len = pipe.inputs(encoded, full, QUESTION)["input_ids"].shape[1]
    inputs = pipe.inputs(encoded, pooled, QUESTION)
    assert inputs["input_ids"].shape[1] == full_len - (full.tokens.shape[0] - pooled.tokens.shape[0])
    out = pipe.generate(inputs, GenerationOptions(max_new_tokens=3))
    assert len(out.token_ids) >= 1


@pytest.mark.parametrize("rule", ["hf", "qwen"])
def test_qwen_kept_tokens_take_their_columns_of_the_full_positions(encoded_clips, rule):
    pipe, _, encoded = encoded_clips["qwen2_5_vl"]
    pipe.text_after_video = rule
    try:
        full_ids, full_pos = pipe.full_positions(encoded, QUESTION)
        pooled = build("pool", 0.25)(encoded.feats, encoded.grid)
        inputs = pipe.inputs(encoded, pooled, QUESTION)
    finally:
        pipe.text_after_video = "hf"
    video_token = pipe.model.config.video_token_id
    first = int((full_ids[0] == video_token).nonzero()[0])
    positions = inputs["position_ids"]  # [4, 1, L']
    kept = (inputs["input_ids"][0] == video_token).nonzero()[:, 0]
    assert torch.equal(positions[1:, 0, kept], full_pos[:, 0, first + pooled.index])
    # Text before and after the video keeps its original positions; the text row is contiguous.
    n_after = inputs["input_ids"].shape[1] - int(kept[-1]) - 1
    assert torch.equal(positions[1:, 0, :first], full_pos[:, 0, :first])
    assert torch.equal(positions[1:, 0, -n_after:], full_pos[:, 0, -n_after:])
    assert torch.equal(positions[0, 0], torch.arange(inputs["input_ids"].shape[1]))


def test_qwen_text_after_video_rules(encoded_clips):
    pipe, _, encoded = encoded_clips["qwen2_5_vl"]
    _, hf = pipe.full_positions(encoded, QUESTION, rule="hf")
    _, qwen = pipe.full_positions(encoded, QUESTION, rule="qwen")
    ids = pipe.expand_prompt(QUESTION, encoded.grid.T * encoded.grid.N)[0]
    video = (ids == pipe.model.config.video_token_id).nonzero()[:, 0]
    first, after = int(video[0]), int(video[-1]) + 1
    start = first  # text before the video is 0..first-1, so the video starts at position `first`
    assert int(hf[:, 0, after].min()) == start + max(encoded.grid.H, encoded.grid.W)
    assert int(qwen[:, 0, after].min()) == int(qwen[:, 0, :after].max()) + 1
    assert torch.equal(hf[:, 0, :after], qwen[:, 0, :after])


def test_llava_importance_equals_eager_attention(encoded_clips):
    pipe, pixels, encoded = encoded_clips["llava_onevision"]
    model = pipe.model
    model.set_attn_implementation("eager")
    try:
        out = model.model.vision_tower(pixels.values, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    weights = out.attentions[pipe._feature_layer()]  # [T, heads, L, L], eager softmax
    expected = pipe._pool(weights.float().mean(1).mean(1), drop_cls=False)
    torch.testing.assert_close(encoded.importance, expected, rtol=1e-5, atol=1e-7)


def test_qwen_importance_is_a_distribution_per_group_in_raster_order(encoded_clips):
    pipe, _, encoded = encoded_clips["qwen2_5_vl"]
    # Each group's patches receive attention summing to 1; a merged token averages its 4 patches.
    torch.testing.assert_close(encoded.importance.sum(1), torch.full((encoded.grid.T,), 0.25))
    assert encoded.metric.shape[:2] == (encoded.grid.T, encoded.grid.N)
