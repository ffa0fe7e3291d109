"""Train vidq's demo model: a small ``LlavaOnevisionForConditionalGeneration`` that answers synthetic video questions.

    python samples/train_demo_model.py --out samples/vidq-demo-llava-ov          # CPU, 2 cores

The model is the real transformers class with a small config (SigLIP 3 x 128 at 64 px with 8 px patches, so 16
tokens per frame after LLaVA-OneVision's 2x2 pooling; a Qwen2 language model 4 x 128) and its own byte-level BPE
tokenizer trained on the questions' words. It learns from a fresh stream of clips from
:mod:`flashvid_cli.synthetic`, each frame put through an H.264 round trip and the same preprocessing ``vidq``
uses, so training sees exactly what inference sees. Each step encodes a batch of clips once and holds one
conversation about each clip: three questions of different types, each a turn answered with its true answer,
the answer loss on the answers only. Every sequence is byte for byte the prompt ``vidq ask`` builds for the first
question and ``vidq chat`` for the later ones, and the answer is the option's text (``red``, ``up``...), so
``vidq ask`` answers in words, ``vidq chat`` answers follow-ups and ``vidq eval --scoring likelihood`` scores the
options. The chat template puts the video first, as LLaVA-OneVision's own does, so every question after the first
about a video reuses its prefill (annotate, eval, chat).

With the video first no visual token can see what is asked, so the language model has to find the object a
question names from the question's side; at the same CPU budget, the answer loss alone learnt counts and colours
but never which object a question names. Training has two stages. Stage one trains the vision tower and
projector alone on single frames (two from each of 64 fresh clips per step): from scratch, telling a circle from
a cross in a 16-pixel cell is the slowest thing to learn, and whole clips, sixteen near-identical frames each,
teach it far more slowly. Stage two trains the whole model on conversations. Auxiliary losses make it fit
in half an hour on a CPU; their heads are thrown away, so the checkpoint is the stock architecture:

- per visual token (both stages): a linear head on the tokens the language model reads predicts which shape covers
  the token's cell, its colour, and, only where a shape covers it, the cell's row and column.
- per frame: a linear head on the language model's hidden state at each frame's last visual token (and at the
  newline after the last frame) predicts what the clip has shown so far, whatever is asked: how many shapes have
  appeared and which appeared latest. After the last frame that answers the two questions that name no shape.
- per question that names a shape, at the shape's word in the question, in the language model's first layer: one
  attention head is taught to look at the named shape's tokens in the last frame that shows it, and another at
  those of the first (the loss is minus the log of the attention mass they get); the word's own embedding says
  which shape, the tokens say what covers them, so the match is one layer's work. A linear probe on that word's
  hidden state after the layer predicts the shape's colour and quadrant in the last frame that shows it and the
  way it moves, and in the second layer one head of every token that predicts the answer is taught to look at
  the word (minus the log of its attention there), so the answer reads what the word found.

Without the last two (the heads taught to look, nothing making the answer read the word), the heads found the
named shape within 1,000 steps while the answers to those three questions stayed at chance at 1,600.

Two things about the initial weights matter. SigLIP's position embeddings start at std 1, not a tenth of the patch
embeddings' scale (from the default init, training wiped where a token is from its features), and the patch
embeddings start four times their default scale, so a patch's content stands out from its position. In half the
steps the language model reads only a random 10-100% of the visual tokens (the same share for the whole batch),
so the model has seen inputs as short as compression makes them; the choice is random, not any method's, so it
favours none of the methods that ``vidq eval`` compares.

It validates on a fixed balanced set (seed 999) as it goes, writes the
checkpoint with its tokenizer, preprocessor configs and a model card, and prints one JSON line of its statistics.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from flashvid_cli import synthetic
from flashvid_cli.pipelines.prefix import conversation_ids
from flashvid_cli.pipelines.prompt import prompt_ids
from flashvid_cli.pipelines.llava_onevision import SPECIAL_TOKENS as LLAVA_SPECIAL
from flashvid_cli.pipelines.llava_onevision import preprocessors as llava_preprocessors
from flashvid_cli.pipelines.preprocess import PreprocessConfig, normalize, resize, to_tensor
from flashvid_cli.pipelines.tiny import build_tokenizer

# The demo model's own chat template: the video first, then the question, as LLaVA-OneVision's own template has it,
# so a second question about the same video (annotate, eval, a chat's next turn) reuses the video's prefill. Unlike
# the stock template, an earlier answer renders exactly as it was generated ("<|im_start|>assistant\n" before it in
# both), so a chat's whole history stays a prefix of its next prompt.
DEMO_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
VALIDATION_SEED = 999  # the balanced validation set; the test set in docs/ACCURACY.md uses another seed


def corpus() -> list[str]:
    """Every question and answer the generator can produce, so each word is one token."""
    lines = []
    for shape in synthetic.SHAPES:
        lines += [f"Which way does the {shape} move?", f"What colour is the {shape} at the end?",
                  f"Where is the {shape} at the end?"]
    lines += ["How many shapes appear in the video?", "Which shape appears last?"]
    answers = [*synthetic.SHAPES, *synthetic.COLOURS, *synthetic.DIRECTIONS, *synthetic.QUADRANTS, *synthetic.COUNTS]
    lines += answers + [" ".join(answers)]
    return (lines + ["<|im_start|>user\nvideo\n<|im_end|>\n<|im_start|>assistant\n"]) * 8


def build_model(tokenizer, seed: int, text_layers: int = 4, text_width: int = 128, position_std: float = 1.0,
                patch_scale: float = 1.0):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    vision = dict(
        model_type="siglip_vision_model", hidden_size=128, intermediate_size=256, num_hidden_layers=3,
        num_attention_heads=4, image_size=synthetic.SIZE, patch_size=8,
    )
    text = dict(
        model_type="qwen2", vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=3 * text_width,
        num_hidden_layers=text_layers, num_attention_heads=text_width // 32, num_key_value_heads=text_width // 32,
        max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[[64, 64]], tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    # SigLIP's default init makes position embeddings a tenth the size of patch embeddings; from there, training
    # wiped where a token is from its features (a linear probe of a token's row fell to chance) and no question
    # about place or motion was ever learnt. At the patch embeddings' scale, row and column are learnt in 75 steps.
    embeddings = model.model.vision_tower.embeddings
    torch.nn.init.normal_(embeddings.position_embedding.weight, std=position_std)
    # Scaled up, a patch's content stands out from its position (a 200-step trial learnt shapes a little faster).
    with torch.no_grad():
        embeddings.patch_embedding.weight.mul_(patch_scale)
    return model


class Batcher:
    """Turns clips and conversations into model inputs, the prompts built by the code ``vidq ask`` and ``vidq chat``
    use (:func:`prompt_ids` for the first question, :func:`conversation_ids` for the later ones)."""

    def __init__(self, tokenizer, video_tokens: int):
        self.tok = tokenizer
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.video_id = tokenizer.convert_tokens_to_ids("<video>")
        self.video_tokens = video_tokens
        words = {shape: self.ids(f" {shape}") for shape in synthetic.SHAPES}  # a question's shape word
        assert all(len(ids) == 1 for ids in words.values()), "a shape's name is not one token"
        self.shape_ids = {shape: ids[0] for shape, ids in words.items()}
        image, video = llava_preprocessors(synthetic.SIZE)
        self.preprocess = PreprocessConfig.from_dict(video)
        # what conversation_ids reads of a pipeline
        self.pipe = SimpleNamespace(tokenizer=tokenizer, chat_template=DEMO_CHAT_TEMPLATE, video_token="<video>",
                                    name="the demo model")

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def first_prompt(self, question: str, video_tokens: int | None = None) -> list[int]:
        return prompt_ids(self.tok, DEMO_CHAT_TEMPLATE, "<video>", question, video_tokens or self.video_tokens)

    def conversation(self, qas: Sequence[synthetic.QA], video_tokens: int | None = None
                     ) -> tuple[list[int], list[int], list[range]]:
        """One conversation about a clip, a turn per question in ``qas`` with its true answer: token ids, labels
        (-100 except on each answer and the end token after it) and, per turn, the positions whose next token is
        one of its answer's (the first-turn prompt's last token, then each answer token but the last)."""
        first = self.first_prompt(qas[0].question, video_tokens)
        head = first[: first.index(self.video_id) + (video_tokens or self.video_tokens)]
        answers = [self.ids(qa.answer_text) for qa in qas]
        prompts = [first] + [conversation_ids(self.pipe, [(q.question, a) for q, a in zip(qas[:k], answers)],
                                              qas[k].question, head) for k in range(1, len(qas))]
        ids = prompts[-1] + answers[-1] + [self.end_id]
        labels = [-100] * len(ids)
        queries = []
        for prompt, answer in zip(prompts, answers):
            start = len(prompt)
            assert ids[:start] == prompt and ids[start + len(answer)] == self.end_id, "a turn is not a prefix"
            labels[start:start + len(answer) + 1] = ids[start:start + len(answer) + 1]
            queries.append(range(start - 1, start + len(answer) - 1))
        return ids, labels, queries

    def pixels(self, clips: list[np.ndarray]) -> torch.Tensor:
        size = self.preprocess.size
        return torch.stack([
            normalize(resize(to_tensor(frames), size["height"], size["width"], self.preprocess.resample),
                      self.preprocess)
            for frames in clips
        ])

    def batch(self, clips: list[np.ndarray], conversations: list[Sequence[synthetic.QA]],
              video_tokens: int | None = None) -> dict:
        """One sequence per conversation, its clip's pixels beside it; ``queries`` as :meth:`conversation`'s."""
        seqs = [self.conversation(qas, video_tokens) for qas in conversations]
        width = max(len(ids) for ids, _, _ in seqs)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _, _ in seqs])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab, _ in seqs])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in seqs])
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
                "pixel_values_videos": self.pixels(clips), "queries": [q for _, _, q in seqs]}


CELL = 16  # pixels per side of the patch block one pooled token sees (2x2 patches of 8 px)
SIDE = synthetic.SIZE // CELL
TARGETS = {"shape": 1 + len(synthetic.SHAPES), "colour": 1 + len(synthetic.COLOURS), "row": SIDE, "column": SIDE}


def cell_targets(clip: synthetic.Clip, frames: Sequence[int] = range(synthetic.FRAMES)) -> np.ndarray:
    """[len(frames), cells, 4] class indices per pooled token of the given frames (all by default): the shape that
    covers most of its cell (0 for none, else 1 + its index in SHAPES; a shape covers a cell with >= 8 pixels), that
    shape's colour in the frame (0 for none), and, only where a shape covers it, the cell's row and column (-100,
    ignored, elsewhere).

    Only the auxiliary loss reads these: it teaches the vision tower what is where, so the language model has
    something to look for from the start. A background token carries no place: attention that spreads over the
    whole frame then still sums to where the shapes are. The head that predicts them is not part of the checkpoint.
    """
    targets = np.zeros((len(frames), SIDE * SIDE, len(TARGETS)), dtype=np.int64)
    targets[..., 2:] = -100
    best = np.zeros((len(frames), SIDE * SIDE))
    rows, columns = np.divmod(np.arange(SIDE * SIDE), SIDE)
    for i, f in enumerate(frames):
        for s in clip.shapes:
            if s.visible(f):
                cover = synthetic._mask(s.shape, *s.centre(f)).reshape(SIDE, CELL, SIDE, CELL).sum((1, 3)).ravel()
                cells = np.flatnonzero((cover >= 8) & (cover > best[i]))
                best[i, cells] = cover[cells]
                targets[i, cells] = np.stack([
                    np.full(len(cells), 1 + synthetic.SHAPES.index(s.shape)),
                    np.full(len(cells), 1 + list(synthetic.COLOURS).index(s.colour_at(f))),
                    rows[cells], columns[cells]], axis=1)
    return targets


def probe_loss(head: torch.nn.Linear, features: torch.Tensor, targets: torch.Tensor, classes: dict[str, int]
               ) -> torch.Tensor:
    """The summed cross-entropies of ``head``'s predictions, one per entry of ``classes`` (its logits split by those
    counts), against ``targets`` [..., len(classes)] (-100 ignored); ``features`` [..., D]. The auxiliary losses'
    probes (TARGETS per visual token, STATE per frame, WORD per shape word) all read this way."""
    logits = head(features).flatten(0, -2).split(list(classes.values()), dim=-1)
    wanted = targets.flatten(0, -2)
    return sum(torch.nn.functional.cross_entropy(part, wanted[:, i], ignore_index=-100)
               for i, part in enumerate(logits))


def named_shape_of(qa: synthetic.QA) -> str | None:
    """The shape a question names, from its words alone (None for one that names none)."""
    return next((shape for shape in synthetic.SHAPES if f" {shape} " in f" {qa.question[:-1]} "), None)


def named_shape(clip: synthetic.Clip, qa: synthetic.QA) -> synthetic.Shape | None:
    """The object the question names, if it names one."""
    return next((s for s in clip.shapes if s.shape == named_shape_of(qa)), None)


def named_cells(clip: synthetic.Clip, qa: synthetic.QA, targets: np.ndarray) -> np.ndarray:
    """[FRAMES * cells] 1.0 where the shape that ``qa`` names covers the token's cell, else 0.0; all -1.0 (ignored)
    when the question names no shape. ``targets`` is the clip's :func:`cell_targets`.

    Only the third auxiliary loss reads these (through :func:`look_targets`): they are where the question's word
    that names the shape should look."""
    named = named_shape(clip, qa)
    if named is None:
        return np.full(targets.shape[0] * targets.shape[1], -1.0, dtype=np.float32)
    return (targets[..., 0].ravel() == 1 + synthetic.SHAPES.index(named.shape)).astype(np.float32)


STATE = {"count": len(synthetic.COUNTS), "latest": len(synthetic.SHAPES)}  # what a frame's state holds


def frame_state(clip: synthetic.Clip) -> np.ndarray:
    """[FRAMES, 2] what the clip has shown so far, after each frame, whatever is asked: how many shapes have
    appeared (an index into COUNTS) and which appeared latest (an index into SHAPES; -100, ignored, until two have
    appeared or while the latest is tied). After the last frame they answer "how many" and "which appears last".

    Only the second auxiliary loss reads these: read at the last visual token of each frame (and at the newline
    after the last frame), which sees the clip up to that frame and no question, they break the two questions
    that name no shape into what one frame adds, in tokens every later question can read."""
    state = np.full((synthetic.FRAMES, len(STATE)), -100, dtype=np.int64)
    for f in range(synthetic.FRAMES):
        seen = [s for s in clip.shapes if s.appear <= f]
        state[f, 0] = len(seen) - 1
        latest = [s for s in seen if s.appear == max(o.appear for o in seen)]
        if len(seen) > 1 and len(latest) == 1:
            state[f, 1] = synthetic.SHAPES.index(latest[0].shape)
    return state


WORD = {"colour": len(synthetic.COLOURS), "quadrant": len(synthetic.QUADRANTS), "direction": len(synthetic.DIRECTIONS)}


def word_targets(shape: synthetic.Shape) -> np.ndarray:
    """[3] what the word naming ``shape`` should carry after the first layer: its colour and quadrant in the last
    frame that shows it (-100, ignored, for a quadrant within 3 px of a midline) and the way it moves, as indices
    into COLOURS, QUADRANTS and DIRECTIONS.

    Only the third auxiliary loss's probe reads these, on that word's hidden state: what the first layer's heads
    looked at is then there, in a form the answer can read."""
    last = max(f for f in range(synthetic.FRAMES) if shape.visible(f))
    x, y = shape.centre(last)
    near = min(abs(x - synthetic.SIZE / 2), abs(y - synthetic.SIZE / 2)) < 3
    return np.array([list(synthetic.COLOURS).index(shape.colour_at(last)),
                     -100 if near else synthetic.QUADRANTS.index(synthetic.quadrant(x, y)),
                     synthetic.DIRECTIONS.index(shape.direction)], dtype=np.int64)


def look_targets(flags: np.ndarray, kept: np.ndarray, tokens_per_frame: int) -> tuple[np.ndarray, np.ndarray]:
    """(last, first): the positions among the kept tokens ``kept`` of the named shape's tokens in the latest and
    in the earliest frame that keeps any of them (both empty when none is kept or the question names no shape).
    ``flags`` is the question's :func:`named_cells`.

    Only the third auxiliary loss reads these: from the question's word that names the shape, one attention head of
    the language model's first layer is taught to look at ``last`` and another at ``first``. Where the named shape
    is at the end and what colour, and (from the two together) which way it moved, are then read off tokens that
    already say what covers them; with the video before the question, no visual token can see what is asked."""
    on = np.flatnonzero(flags[kept] == 1)
    if not len(on):
        return on, on
    frames = kept[on] // tokens_per_frame
    return on[frames == frames.max()], on[frames == frames.min()]


def kept_tokens(rng: np.random.Generator, clips: int, tokens_per_frame: int, drop_prob: float) -> list[np.ndarray]:
    """Which visual tokens (indices in temporal-then-raster order) each clip's questions read this step: all of them,
    or with probability ``drop_prob`` a random sorted subset of 10-100% (the same count for every clip), so the
    language model also learns from the fewer tokens a compression method leaves. Random, not any one method's
    choice, so the demo model favours none of the methods ``vidq eval`` compares."""
    total = synthetic.FRAMES * tokens_per_frame
    if rng.random() >= drop_prob:
        return [np.arange(total)] * clips
    count = int(rng.integers(round(0.1 * total), total + 1))
    return [np.sort(rng.choice(total, count, replace=False)) for _ in range(clips)]


def frame_ends(kept: np.ndarray, tokens_per_frame: int) -> np.ndarray:
    """[FRAMES] the position, among the kept tokens, of each frame's last one (-1 where none of a frame is kept)."""
    frames = kept // tokens_per_frame
    last = np.searchsorted(frames, np.arange(synthetic.FRAMES), side="right") - 1
    return np.where((last >= 0) & (frames[np.maximum(last, 0)] == np.arange(synthetic.FRAMES)), last, -1)


def validation_set(count: int) -> list[tuple[np.ndarray, synthetic.QA, synthetic.QA | None]]:
    """The balanced validation set (seed VALIDATION_SEED): each clip, its question, and another question of a
    different type about the same clip (None when the clip has no other type) to ask first in a two-turn check."""
    rng = np.random.default_rng(VALIDATION_SEED + 2)
    out = []
    for clip, qa in synthetic.balanced(VALIDATION_SEED, count):
        before = [o for o in synthetic.questions(clip, rng) if o.type != qa.type]
        out.append((synthetic.through_codec(synthetic.render(clip)), qa, before[0] if before else None))
    return out


@torch.no_grad()
def accuracy(model, batcher: Batcher, data, second_turn: bool = False, batch_size: int = 25
             ) -> tuple[float, dict[str, float]]:
    """Share of questions whose answer scores highest: the summed log-probability of each option's tokens after
    the first-turn prompt (one forward when the options' first tokens differ, else one per option), or with
    ``second_turn`` after a first turn that asked the item's other question and got its true answer."""
    model.eval()
    scored: list[list[float]] = [[] for _ in data]
    jobs = []  # (item, option index or None for "all first tokens", the conversation)
    for i, (_, qa, before) in enumerate(data):
        turns = [before] if second_turn and before is not None else []
        firsts = [batcher.ids(o)[0] for o in qa.options]
        if len(set(firsts)) == len(firsts):
            jobs.append((i, None, [*turns, qa]))
        else:
            jobs += [(i, k, [*turns, synthetic.QA(qa.type, qa.question, qa.options, k)])
                     for k in range(len(qa.options))]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        inputs = batcher.batch([data[i][0] for i, _, _ in chunk], [qas for _, _, qas in chunk])
        queries = inputs.pop("queries")
        labels = inputs.pop("labels")  # the answer's ids where they are scored
        logp = torch.log_softmax(model(**inputs).logits.float(), dim=-1)
        for row, (i, k, qas) in enumerate(chunk):
            where = torch.tensor(list(queries[row][-1]))  # the positions that predict the scored answer's tokens
            if k is None:
                firsts = [batcher.ids(o)[0] for o in qas[-1].options]
                scored[i] = logp[row, where[0], firsts].tolist()
            else:
                scored[i].append(float(logp[row, where, labels[row, where + 1]].sum()))
    model.train()
    hits: dict[str, list[bool]] = {}
    for (_, qa, _), scores in zip(data, scored):
        hits.setdefault(qa.type, []).append(int(np.argmax(scores)) == qa.answer)
    every = [h for v in hits.values() for h in v]
    return sum(every) / len(every), {k: sum(v) / len(v) for k, v in hits.items()}


def video_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """[B, FRAMES * cells + 1, D]: the visual tokens the language model reads, LLaVA-OneVision's newline last."""
    config = model.config
    return model.model.get_video_features(
        pixels, vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy).pooler_output


def warm_up_vision(model, head: torch.nn.Linear, batcher: Batcher, rng: np.random.Generator, steps: int,
                   lr: float, clips: int = 64) -> list[dict]:
    """Stage one: the vision tower and projector alone learn :func:`cell_targets` (which shape covers each token's
    cell, its colour, the cell's row and column). Each step shows two random frames of each of ``clips`` fresh
    clips, as clip-sized stacks of unrelated frames through the same H.264 round trip: many more clips per second
    than whole videos, so shapes are told apart within minutes. Returns the log: the share of shape-covered
    tokens whose shape is right, on held-out clips."""
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
              *head.parameters()]
    optim = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    check_rng = np.random.default_rng(VALIDATION_SEED + 1)
    check = [synthetic.random_clip(check_rng) for _ in range(8)]
    check_pixels = batcher.pixels([synthetic.through_codec(synthetic.render(clip)) for clip in check])
    check_shapes = torch.from_numpy(np.stack([cell_targets(clip)[..., 0].ravel() for clip in check]))
    log, started = [], time.perf_counter()
    for step in range(steps):
        frames, targets = [], []
        for _ in range(clips):
            clip = synthetic.random_clip(rng)
            picked = rng.choice(synthetic.FRAMES, 2, replace=False)
            frames.append(synthetic.render(clip, picked))
            targets.append(cell_targets(clip, picked))
        stacks = np.concatenate(frames).reshape(-1, synthetic.FRAMES, *frames[0].shape[1:])
        pixels = batcher.pixels([synthetic.through_codec(stack) for stack in stacks])
        wanted = torch.from_numpy(np.concatenate(targets)).view(len(stacks), -1, len(TARGETS))
        for group in optim.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20)
        loss = probe_loss(head, video_tokens(model, pixels)[:, :-1], wanted, TARGETS)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            with torch.no_grad():
                guess = head(video_tokens(model, check_pixels)[:, :-1])[..., :TARGETS["shape"]].argmax(-1)
            covered = check_shapes > 0
            log.append({"step": step + 1, "minutes": round((time.perf_counter() - started) / 60, 2),
                        "loss": round(loss.item(), 4),
                        "shape_accuracy": round(float((guess[covered] == check_shapes[covered]).float().mean()), 3)})
            print(json.dumps({"vision": log[-1]}), flush=True)
    return log


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer(LLAVA_SPECIAL, vocab_size=512, corpus=corpus())
    model = build_model(tokenizer, args.seed, args.text_layers, args.text_width, patch_scale=args.patch_scale)
    model.set_attn_implementation("eager")  # the third auxiliary loss reads attention weights; not saved
    tokens_per_frame = (math.ceil(synthetic.SIZE / 8 / 2)) ** 2
    batcher = Batcher(tokenizer, synthetic.FRAMES * tokens_per_frame + 1)  # + LLaVA-OneVision's newline
    val = validation_set(args.val_count)
    rng = np.random.default_rng(args.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                              lr=args.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(args.steps - args.warmup, 1)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    aux_head = torch.nn.Linear(model.config.text_config.hidden_size, sum(TARGETS.values()))
    vision_log = warm_up_vision(model, aux_head, batcher, rng, args.vision_steps, args.vision_lr)
    state_head = torch.nn.Linear(model.config.text_config.hidden_size, sum(STATE.values()))
    word_head = torch.nn.Linear(model.config.text_config.hidden_size, sum(WORD.values()))
    heads = [*aux_head.parameters(), *state_head.parameters(), *word_head.parameters()]
    optim.add_param_group({"params": heads, "weight_decay": 0.0})
    model.train()
    started = time.perf_counter()
    history = []
    running = None
    for step in range(args.steps):
        clips, clips_drawn, conversations, cells, states, flags = [], [], [], [], [], []
        for _ in range(args.batch):
            clip = synthetic.random_clip(rng)
            clips_drawn.append(clip)
            clips.append(synthetic.through_codec(synthetic.render(clip)))
            asked = synthetic.questions(clip, rng)[: args.questions]  # distinct types, random order: the turns
            conversations.append(asked)
            cells.append(cell_targets(clip))
            states.append(frame_state(clip))
            flags.append([named_cells(clip, qa, cells[-1]) for qa in asked])
        for group in optim.param_groups:
            group["lr"] = lr_at(step)
        kept = kept_tokens(rng, len(clips), tokens_per_frame, args.drop_prob)
        inputs = batcher.batch(clips, conversations, len(kept[0]) + 1)
        queries = inputs.pop("queries")
        video = video_tokens(model, inputs.pop("pixel_values_videos"))  # [B, FRAMES * cells + 1, D]
        aux = probe_loss(aux_head, video[:, :-1], torch.from_numpy(np.stack(cells)).flatten(1, 2), TARGETS)
        video = torch.stack([torch.cat([v[torch.from_numpy(k)], v[-1:]]) for v, k in zip(video, kept)])
        out = model(**inputs, mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=video)},
                    output_hidden_states=True, output_attentions=True)
        answer = out.loss
        first = (inputs["input_ids"] == batcher.video_id).int().argmax(1)  # where each sequence's video starts
        last = np.stack([frame_ends(k, tokens_per_frame) for k in kept])  # [B, FRAMES]
        targets = np.stack(states)
        targets[last < 0] = -100  # a frame that lost every token has no state to read
        ends = np.concatenate([np.maximum(last, 0), np.full((len(kept), 1), len(kept[0]))], axis=1)  # + newline
        targets = torch.from_numpy(np.concatenate([targets, targets[:, -1:]], axis=1))
        hidden = out.hidden_states[args.state_layer][torch.arange(len(clips))[:, None],
                                                     first[:, None] + torch.from_numpy(ends)]  # [B, FRAMES + 1, D]
        state = probe_loss(state_head, hidden, targets, STATE)
        attention = out.attentions[args.look_layer]  # [B, heads, L, L]
        reading = out.attentions[args.look_layer + 1]  # the next layer: the answer reads the word
        looks, copies, words, word_wanted = [], [], [], []
        for row, (k, turns) in enumerate(zip(kept, queries)):
            for qa, flag, where in zip(conversations[row], flags[row], turns):
                if (named := named_shape_of(qa)) is None:
                    continue
                ids = inputs["input_ids"][row, : where.start].tolist()  # the question's word names the shape
                word = len(ids) - 1 - ids[::-1].index(batcher.shape_ids[named])
                for head, cells_at in enumerate(look_targets(flag, k, tokens_per_frame)):
                    if len(cells_at):
                        mass = attention[row, head, word, first[row] + cells_at].sum()
                        looks.append(-torch.log(mass + 1e-6))
                copies.append(-torch.log(reading[row, 0, torch.tensor(list(where)), word] + 1e-6).mean())
                words.append(out.hidden_states[args.look_layer + 1][row, word])
                word_wanted.append(word_targets(named_shape(clips_drawn[row], qa)))
        look = torch.stack(looks).mean() if looks else answer * 0
        copy = torch.stack(copies).mean() if copies else answer * 0
        said = probe_loss(word_head, torch.stack(words), torch.from_numpy(np.stack(word_wanted)), WORD) \
            if words else answer * 0
        loss = (answer + args.aux_weight * aux + args.state_weight * state
                + args.look_weight * (look + copy + said))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*model.parameters(), *heads], 1.0)
        optim.step()
        running = answer.item() if running is None else 0.95 * running + 0.05 * answer.item()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            acc, per_type = accuracy(model, batcher, val)
            second, _ = accuracy(model, batcher, val, second_turn=True)
            elapsed = time.perf_counter() - started
            history.append({"step": step + 1, "minutes": round(elapsed / 60, 2), "loss": round(running, 4),
                            "state_loss": round(state.item(), 4), "look_loss": round(look.item(), 4),
                            "copy_loss": round(copy.item(), 4), "word_loss": round(said.item(), 4),
                            "val_accuracy": round(acc, 4), "val_second_turn": round(second, 4),
                            "per_type": {k: round(v, 3) for k, v in per_type.items()}})
            print(json.dumps(history[-1]), flush=True)
    minutes = (time.perf_counter() - started) / 60
    final_acc, per_type = accuracy(model, batcher, val)
    second, second_per_type = accuracy(model, batcher, val, second_turn=True)
    model.set_attn_implementation("sdpa")
    stats = {
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "seed": args.seed,
        "threads": args.threads, "questions": args.questions, "vision_steps": args.vision_steps,
        "vision_minutes": vision_log[-1]["minutes"] if vision_log else 0.0,
        "vision_shape_accuracy": vision_log[-1]["shape_accuracy"] if vision_log else None,
        "train_minutes": round(minutes, 1), "clips_seen": args.steps * args.batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "val_accuracy": round(final_acc, 4), "val_per_type": {k: round(v, 3) for k, v in per_type.items()},
        "val_second_turn": round(second, 4),
        "val_second_turn_per_type": {k: round(v, 3) for k, v in second_per_type.items()},
        "val_count": len(val), "val_seed": VALIDATION_SEED, "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "vision_history": vision_log, "history": history,
        "command": "python samples/train_demo_model.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
    }
    save(model, tokenizer, Path(args.out), stats)
    return stats


def save(model, tokenizer, out: Path, stats: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    tokenizer.chat_template = DEMO_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(DEMO_CHAT_TEMPLATE)
    image, video = llava_preprocessors(synthetic.SIZE)
    (out / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out / "README.md").write_text(MODEL_CARD.format(**stats))


MODEL_CARD = """\
# vidq demo model: LLaVA-OneVision architecture, trained on synthetic videos

**What it is.** A {parameters:,}-parameter `LlavaOnevisionForConditionalGeneration` (the real transformers class:
SigLIP vision tower 3 layers x 128 at 64x64 px with 8 px patches, 2-layer projector, Qwen2 language model 4 layers
x 128, its own byte-level BPE tokenizer, and a chat template that puts the video first, as LLaVA-OneVision's
does) trained from scratch by the vidq project. It is a **demo model for synthetic videos only**: 16-frame 64x64 clips of coloured
shapes from `flashvid_cli/synthetic.py`. It knows five questions and answers each with one word or two:

- How many shapes appear in the video? (one, two, three, four)
- Which shape appears last? (circle, square, triangle, cross)
- Which way does the <shape> move? (left, right, up, down)
- What colour is the <shape> at the end? (red, green, blue, yellow, purple, white)
- Where is the <shape> at the end? (top left, top right, bottom left, bottom right)

It knows nothing about real videos or other questions. It exists so that vidq's whole pipeline, and every
compression method's effect on accuracy, can be checked offline with a model whose answers mean something.

**How it was trained.** `{command}`, seed {seed}, float32 on CPU with {threads} threads, torch {torch}, on
{cpu}, in two stages. Stage one: {vision_steps} steps of the vision tower and projector alone on 128 single frames
each (two from each of 64 fresh clips), {vision_minutes} minutes; it ends telling the shape under a token right
{vision_shape_accuracy:.0%} of the time on held-out clips. Stage two: {steps} steps of {batch} fresh clips each
({clips_seen:,} clips), each a conversation of {questions} questions of different types with their true answers,
AdamW, peak learning rate {lr}, {warmup} warm-up steps then cosine decay, {train_minutes} minutes. The loss is the
answers' cross-entropy plus auxiliary losses whose heads are not part of the checkpoint: per visual token, which
shape covers its cell, its colour and the cell's row and column (the only loss of stage one); per frame, at its last
visual token, how many shapes have appeared so far and which latest; at a question's word that names a shape, two
attention heads of the language model's first layer pointed at that shape in the last and in the first frame that
shows it, a probe of what the word then holds (that shape's colour and quadrant at the end, its direction), and a
head of the second layer pointed from the answer at the word. SigLIP's position embeddings started at std 1 and
its patch embeddings at four times their default scale (see the script's docstring for why). In half the steps the
language model read only a random 10-100% of the visual tokens, so the model has also seen inputs as short as
compression makes them. Every frame went through an H.264 round trip and vidq's own preprocessing, so training
saw what inference sees.

**How good it is.** On the balanced validation set (seed {val_seed}, {val_count} questions, one clip each; an
option's score is the summed log-probability of its tokens): accuracy {val_accuracy:.1%} (chance 25%). Per
question type: {val_per_type}.
Asked as the second question of a conversation (after another question about the
same clip and its true answer): {val_second_turn:.1%}. `training.json` holds the full log. The accuracy of every
compression method and keep ratio on a held-out test set is in vidq's `docs/ACCURACY.md`.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("vidq-demo-llava-ov"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8, help="clips per step")
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--questions", type=int, default=3, help="questions per training clip (distinct types)")
    parser.add_argument("--aux-weight", type=float, default=1.0, help="weight of the per-token attribute loss")
    parser.add_argument("--text-layers", type=int, default=4, help="layers of the Qwen2 language model")
    parser.add_argument("--text-width", type=int, default=128, help="hidden size of the language model (32 per head)")
    parser.add_argument("--state-weight", type=float, default=1.0,
                        help="weight of the per-frame loss on what the clip has shown so far")
    parser.add_argument("--state-layer", type=int, default=3, help="the hidden state that loss reads")
    parser.add_argument("--look-weight", type=float, default=1.0,
                        help="weight of the losses that point two attention heads at the named shape, probe what "
                             "its word found, and point the answer at the word")
    parser.add_argument("--look-layer", type=int, default=0, help="the language model layer whose heads it trains")
    parser.add_argument("--drop-prob", type=float, default=0.5,
                        help="share of steps whose questions read a random 10-100%% of the visual tokens")
    parser.add_argument("--vision-steps", type=int, default=800,
                        help="steps of stage one, the vision tower alone on single frames (128 per step)")
    parser.add_argument("--vision-lr", type=float, default=2e-3, help="learning rate of stage one")
    parser.add_argument("--patch-scale", type=float, default=4.0, help="factor on the initial patch embeddings")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--val-count", type=int, default=150)
    args = parser.parse_args()
    stats = train(args)
    print(json.dumps({k: v for k, v in stats.items() if k != "history"}))


if __name__ == "__main__":
    main()
