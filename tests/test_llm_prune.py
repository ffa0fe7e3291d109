"""The in-LLM pruning stage on the tiny models of both families, against the stock transformers decoder.

* share 1.0: the logits equal the stock model's bit for bit (generate and a single forward);
* share 0.3: the survivors are exactly the top-k of an eager attention at layer K - 1, computed separately;
* the first generated steps equal a hand computation that runs the pruned sequence through layers >= K;
* end to end: ``vidq ask`` with fastv, cdpruner and flashvid reference=true.

Every registered family (Qwen3-VL's video tokens sit in one block per temporal group). The tiny decoders have two
layers, so the stage prunes before layer K = 1 (FlashVID's scaled default there).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flashvid_cli.kernels import build, ops
from flashvid_cli.kernels.traits import LLMPrune
from flashvid_cli.pipelines import load_pipeline
from flashvid_cli.pipelines.generation import GenerationOptions
from flashvid_cli.pipelines.registry import families

QUESTION = "What happens last in the video?"
STEPS = 4
FAMILIES = tuple(families())
K = 1


@pytest.fixture(scope="module")
def clips(tiny_models):
    """{family: (pipeline, inputs of the uncompressed prompt, model directory)} for a 6-frame random clip."""
    out = {}
    for family, path in tiny_models.items():
        pipe = load_pipeline(str(path), device="cpu", dtype="float32")
        frames = np.random.default_rng(1).integers(0, 256, (6, 90, 150, 3), dtype=np.uint8)
        encoded = pipe.encode(pipe.preprocess(frames, [0.5 * i for i in range(len(frames))]))
        compressed = build("none", 1.0)(encoded.feats, encoded.grid)
        out[family] = (pipe, pipe.inputs(encoded, compressed, QUESTION), path)
    return out


def eager_keep(pipe, path, inputs, stage: LLMPrune) -> tuple[torch.Tensor, torch.Tensor]:
    """Survivors by the stock model loaded with eager attention: its returned attention probabilities at layer
    K - 1, last query, mean over heads, top-k of the visual span (ties to the lower index).

    Returns (keep [L'], score [L])."""
    eager = type(pipe.model).from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        out = eager(**inputs, use_cache=False, output_attentions=True)
    score = out.attentions[K - 1][0, :, -1, :].float().mean(0)  # [L]
    visual = pipe.visual_positions(inputs["input_ids"])  # [Lv], one run or blocks (Qwen3-VL)
    top = visual[ops.top_indices(score[visual], stage.budget(visual.numel()))]
    L = inputs["input_ids"].shape[1]
    others = torch.ones(L, dtype=torch.bool)
    others[visual] = False
    keep = torch.sort(torch.cat([others.nonzero()[:, 0], top])).values
    return keep, score


def padded(inputs: dict, pad: bool) -> dict:
    """``inputs`` with the first prompt token masked out when ``pad``: the decoder then materialises its masks
    (prefill [1, 1, L, L], decode [1, 1, 1, L + t]) instead of SDPA's is_causal, so the stage must cut them."""
    if not pad:
        return inputs
    mask = inputs["attention_mask"].clone()
    mask[0, 0] = 0
    return {**inputs, "attention_mask": mask}


@pytest.mark.parametrize("pad", [False, True], ids=["causal", "masked"])
@pytest.mark.parametrize("family", FAMILIES)
def test_share_one_equals_stock_model_bit_for_bit(clips, family, pad):
    pipe, inputs, _ = clips[family]
    inputs = padded(inputs, pad)
    stage = LLMPrune(1.0, layer=K)
    stock = pipe.model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True,
                                return_dict_in_generate=True, pad_token_id=pipe.tokenizer.pad_token_id)
    ours = pipe.generate(inputs, GenerationOptions(max_new_tokens=STEPS, return_logits=True), prune=stage)
    assert len(ours.logits) == len(stock.logits) == STEPS
    for step, (a, b) in enumerate(zip(ours.logits, stock.logits)):
        assert torch.equal(a, b), f"logits differ at step {step}"
    length = pipe.visual_positions(inputs["input_ids"]).numel()
    assert ours.visual_by_layer == [length + pipe.extra_video_tokens] * len(pipe.language_model.layers)
    assert torch.equal(pipe.last_logits(inputs, 3, prune=stage), pipe.last_logits(inputs, 3))


@pytest.mark.parametrize("family", FAMILIES)
def test_survivors_are_the_top_k_of_eager_attention(clips, family):
    pipe, inputs, path = clips[family]
    stage = LLMPrune(0.3, layer=K)
    expected, score = eager_keep(pipe, path, inputs, stage)
    with torch.inference_mode(), pipe.llm_pruning(inputs, stage) as run:
        pipe.model(**inputs, use_cache=False, logits_to_keep=1)
    torch.testing.assert_close(run.scores, score, atol=1e-6, rtol=1e-5)
    assert torch.equal(run.keep, expected)
    length = pipe.visual_positions(inputs["input_ids"]).numel()
    assert run.kept_visual == -(-3 * length // 10) < length  # ceil(0.3 * Lv)
    depth = len(pipe.language_model.layers)
    extra = pipe.extra_video_tokens
    assert run.visual_by_layer == [length + extra] * K + [run.kept_visual + extra] * (depth - K)


@pytest.mark.parametrize("pad", [False, True], ids=["causal", "masked"])
@pytest.mark.parametrize("family", FAMILIES)
def test_generation_after_pruning_equals_layers_by_hand(clips, family, pad):
    """Each greedy step's logits equal: the stock model's hidden states entering layer K for prompt + generated
    tokens (no cache), the survivors' and the new tokens' columns (with their own rotary phases), layers >= K and
    the head run by hand. The stage's decode steps read a cache whose layers >= K hold survivors only."""
    pipe, inputs, path = clips[family]
    if hasattr(pipe.language_model, "_deepstack_process"):
        pytest.skip("the hand computation does not add Qwen3-VL's DeepStack features after the cut (not modelled yet)")
    inputs = padded(inputs, pad)
    stage = LLMPrune(0.3, layer=K)
    keep, _ = eager_keep(pipe, path, inputs, stage)
    ours = pipe.generate(inputs, GenerationOptions(max_new_tokens=STEPS, return_logits=True), prune=stage)
    body, L = pipe.language_model, inputs["input_ids"].shape[1]
    assert len(ours.token_ids) == STEPS
    for t in range(STEPS):
        step = pipe.append_tokens(inputs, ours.token_ids[:t])
        valid = step["attention_mask"].bool()  # [1, L+t]
        if "position_ids" in step:
            positions = step["position_ids"][1:]  # Qwen2.5-VL: M-RoPE rows (t, h, w) [3, 1, L+t]
        else:  # LLaVA: 1-D, counted over unmasked tokens as generate() does
            positions = (step["attention_mask"].cumsum(-1) - 1).clamp_min(0)
            step = {**step, "position_ids": positions}
        with torch.no_grad():
            hidden = pipe.model(**step, use_cache=False, output_hidden_states=True).hidden_states[K]  # [1, L+t, C]
            cos, sin = body.rotary_emb(hidden, positions)
            cols = torch.cat([keep, torch.arange(L, L + t)])
            h, pe = hidden[:, cols], (cos[:, cols], sin[:, cols])
            n = cols.numel()
            mask = None  # SDPA's causal mask
            if pad:
                mask = (torch.ones(n, n, dtype=torch.bool).tril() & valid[0, cols][None, :])[None, None]
            for layer in body.layers[K:]:
                h = layer(h, attention_mask=mask, position_embeddings=pe, position_ids=None, past_key_values=None,
                          use_cache=False)
            logits = pipe.model.lm_head(body.norm(h))[0, -1].float()
        torch.testing.assert_close(ours.logits[t][0].float(), logits, atol=1e-5, rtol=1e-4)
        assert int(logits.argmax()) == ours.token_ids[t]
    stock = pipe.generate(inputs, GenerationOptions(max_new_tokens=STEPS, return_logits=True))
    assert not torch.allclose(stock.logits[0], ours.logits[0]), "pruning 70% of the video changed nothing"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", [["fastv", "--opt", "pruning_layer=1"], ["cdpruner"],
                                    ["flashvid", "--opt", "reference=true"]], ids=lambda m: m[0])
def test_vidq_ask_end_to_end(tiny_models, sample_video, family, method):
    from typer.testing import CliRunner

    from flashvid_cli.cli import app

    args = ["ask", str(sample_video), QUESTION, "--model", str(tiny_models[family]), "--frames", "4",
            "--max-new-tokens", "2", "--keep", "0.3", "--method", *method]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    tokens = report["tokens"]
    depth = 2
    if method[0] == "cdpruner":
        assert tokens["visual_by_layer"] is None and tokens["visual_after"] < tokens["visual_before"]
    else:
        by_layer = tokens["visual_by_layer"]
        assert len(by_layer) == depth and by_layer[0] == tokens["visual_after"] and by_layer[1] < by_layer[0]
    if method[0] == "flashvid":  # the stage's layer, scaled to the model (the option's None), is the one it used
        assert report["method_options"]["pruning_layer"] == 1 and report["method_options"]["llm_stage"] is True
    if method[0] == "fastv":
        extra = 1 if family == "llava_onevision" else 0
        assert tokens["visual_after"] == tokens["visual_before"]
        assert by_layer[1] - extra == round(0.3 * (tokens["visual_before"] - extra))
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0 and ("visual by layer" in text.stderr) == (method[0] != "cdpruner")


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_layer_past_the_model_is_one_line_before_any_work(tiny_models, sample_video, monkeypatch, family):
    """FastV's default K=2 on a 2-layer model: one line naming the option and the depth, read from config.json
    before the model loads or the video decodes (each would fail the test here)."""
    from typer.testing import CliRunner

    import flashvid_cli.pipelines
    from flashvid_cli.api import VideoQA
    from flashvid_cli.cli import app

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the pruning layer was checked")

    monkeypatch.setattr(flashvid_cli.pipelines, "load_pipeline", no_work)
    monkeypatch.setattr(VideoQA, "decode", no_work)
    for method, said in [(["fastv"], "--opt pruning_layer=2 needs a model with more than 2 decoder layers; "
                                     "this one has 2"),
                         (["flashvid", "--opt", "reference=true", "--opt", "pruning_layer=3"],
                          "--opt pruning_layer=3 needs a model with more than 3 decoder layers; this one has 2")]:
        result = CliRunner().invoke(app, ["ask", str(sample_video), QUESTION, "--model", str(tiny_models[family]),
                                          "--frames", "4", "--max-new-tokens", "2", "--method", *method])
        assert result.exit_code == 1 and "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and said in " ".join(result.stderr.split()), result.stderr


def test_pruning_layer_that_does_not_fit_names_the_option_in_the_library():
    """The library's own check (when the depth is known only once the model is loaded) says the same."""
    from flashvid_cli.kernels import MethodError

    with pytest.raises(MethodError, match=r"^--opt pruning_layer=2 needs a model with more than 2 decoder layers; "
                                          r"this one has 2$"):
        build("fastv", 0.5).llm_prune().layer_for(2)
    assert build("fastv", 0.5).llm_prune().layer_for(3) == 2
    stage = build("flashvid", 0.5, options={"reference": "true"}).llm_prune()  # K = round(20/28 * depth)
    assert (stage.layer_for(2), stage.layer_for(28)) == (1, 20)
    with pytest.raises(MethodError, match="at least 2 decoder layers; this one has 1"):
        stage.layer_for(1)


def test_llm_depth_is_read_without_loading(tiny_models, tmp_path):
    from flashvid_cli.pipelines import llm_depth

    assert llm_depth(str(tiny_models["qwen2_5_vl"])) == 2
    assert llm_depth("random:llava-onevision-0.5b") == 24 and llm_depth("random:qwen2.5-vl-7b") == 28
    assert llm_depth(str(tmp_path)) is None and llm_depth("random:nosuch") is None


@pytest.mark.parametrize("family", FAMILIES)
def test_one_forward_over_appended_tokens_equals_generation(clips, family):
    """Eval's scoring: one forward over prompt + answer tokens, the stage selecting by the prompt's last token,
    gives generate()'s logits at every step (the appended tokens are text: all kept)."""
    pipe, inputs, _ = clips[family]
    stage = LLMPrune(0.3, layer=K)
    gen = pipe.generate(inputs, GenerationOptions(max_new_tokens=STEPS, return_logits=True), prune=stage)
    L = inputs["input_ids"].shape[1]
    joined = pipe.append_tokens(inputs, gen.token_ids[:-1])
    logits = pipe.last_logits(joined, count=STEPS, prune=stage, scored_at=L - 1)  # [STEPS, vocab]
    for t in range(STEPS):
        torch.testing.assert_close(logits[t], gen.logits[t][0].float(), atol=1e-5, rtol=1e-4)
    drifted = pipe.last_logits(joined, count=STEPS, prune=stage)  # selecting by the last appended token instead
    assert not torch.allclose(drifted, logits, atol=1e-5, rtol=1e-4)
