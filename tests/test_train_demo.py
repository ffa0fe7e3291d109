"""The demo model's training data (samples/train_demo_model.py): each sequence is the prompt vidq builds, what the
auxiliary losses teach is true of the clip, and the state after the last frame answers its questions. Nothing here
trains."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import _load_sample_module
from flashvid_cli import synthetic

train = _load_sample_module("train_demo_model")
TOKENS_PER_FRAME = train.SIDE * train.SIDE


@pytest.fixture(scope="module")
def clips() -> list[synthetic.Clip]:
    rng = np.random.default_rng(11)
    return [synthetic.random_clip(rng) for _ in range(120)]


def test_frame_state_after_the_last_frame_answers_the_questions_that_name_no_shape(clips):
    rng = np.random.default_rng(12)
    asked = 0
    for clip in clips:
        state = train.frame_state(clip)
        assert state.shape == (synthetic.FRAMES, len(train.STATE))
        counts = state[:, 0]
        assert (np.diff(counts) >= 0).all() and counts[0] >= 0  # shapes only ever add up
        for qa in synthetic.questions(clip, rng, every=True):
            if qa.type == "how_many":
                assert synthetic.COUNTS[counts[-1]] == qa.answer_text
                asked += 1
            elif qa.type == "appears_last":
                assert synthetic.SHAPES[state[-1, 1]] == qa.answer_text
                asked += 1
    assert asked > 150


def test_frame_state_follows_the_clip():
    square = synthetic.Shape("square", "red", "blue", change_at=6, appear=0, vanish=synthetic.FRAMES,
                             direction="right", start=(14.0, 14.0), end=(46.0, 14.0))
    cross = synthetic.Shape("cross", "green", "green", change_at=synthetic.FRAMES, appear=4, vanish=synthetic.FRAMES,
                            direction="down", start=(46.0, 22.0), end=(46.0, 50.0))
    circle = synthetic.Shape("circle", "white", "white", change_at=synthetic.FRAMES, appear=0, vanish=10,
                             direction="up", start=(14.0, 50.0), end=(14.0, 30.0))
    state = train.frame_state(synthetic.Clip((square, cross, circle)))
    assert [synthetic.COUNTS[i] for i in state[:, 0]] == ["two"] * 4 + ["three"] * 12  # a vanished one still counts
    assert list(state[:4, 1]) == [-100] * 4  # square and circle tie until the cross appears
    assert [synthetic.SHAPES[i] for i in state[4:, 1]] == ["cross"] * 12


def test_conversation_is_the_chat_prompt_with_true_answers():
    """Every training sequence is the prompt vidq builds: the first turn is ask's prompt, each later turn the
    template's rendering of the whole conversation (the video placeholder repeated), and the labels are exactly
    each answer and its end token; the queries are the positions that predict the answer tokens."""
    tokenizer = train.build_tokenizer(train.LLAVA_SPECIAL, vocab_size=512, corpus=train.corpus())
    batcher = train.Batcher(tokenizer, 9)
    rng = np.random.default_rng(21)
    clip = next(c for c in (synthetic.random_clip(rng) for _ in range(50)) if len(c.shapes) >= 3)
    qas = synthetic.questions(clip, rng)[:3]
    ids, labels, queries = batcher.conversation(qas[:1])
    assert ids == batcher.first_prompt(qas[0].question) + batcher.ids(qas[0].answer_text) + [batcher.end_id]
    ids, labels, queries = batcher.conversation(qas)
    messages = []
    for i, qa in enumerate(qas):
        content = [{"type": "video"}] if i == 0 else []
        messages.append({"role": "user", "content": [*content, {"type": "text", "text": qa.question}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": qa.answer_text}]})
    text = tokenizer.apply_chat_template(messages, chat_template=train.DEMO_CHAT_TEMPLATE, tokenize=False)
    assert tokenizer.decode(ids) == text.replace("<video>", "<video>" * 9).removesuffix("\n")
    assert text.index("<video>") < text.index(qas[0].question)  # the video comes first
    answered = [i for i, label in enumerate(labels) if label != -100]
    wanted = []
    for qa, where in zip(qas, queries):
        answer = batcher.ids(qa.answer_text)
        assert [ids[q + 1] for q in where] == answer
        wanted += [*(q + 1 for q in where), where[-1] + 2]
        assert ids[where[-1] + 2] == batcher.end_id
    assert answered == wanted and all(labels[i] == ids[i] for i in answered)


def flagged_questions(clips, rng):
    """Every question of each clip, with the clip's cell targets and the question's named cells."""
    for clip in clips:
        targets = train.cell_targets(clip)
        for qa in synthetic.questions(clip, rng, every=True):
            yield clip, qa, targets, train.named_cells(clip, qa, targets)


def test_look_targets_are_the_named_shape_in_its_last_and_first_kept_frame(clips):
    rng = np.random.default_rng(22)
    checked = 0
    for _, qa, _, flags in flagged_questions(clips[:40], rng):
        for kept in (np.arange(synthetic.FRAMES * TOKENS_PER_FRAME),
                     np.sort(rng.choice(synthetic.FRAMES * TOKENS_PER_FRAME, 40, replace=False))):
            last, first = train.look_targets(flags, kept, TOKENS_PER_FRAME)
            if qa.type in ("how_many", "appears_last"):
                assert len(last) == len(first) == 0
                continue
            on = kept[flags[kept] == 1]
            if not len(on):
                assert len(last) == len(first) == 0
                continue
            assert set(kept[last]) == set(on[on // TOKENS_PER_FRAME == on.max() // TOKENS_PER_FRAME])
            assert set(kept[first]) == set(on[on // TOKENS_PER_FRAME == on.min() // TOKENS_PER_FRAME])
            checked += 1
    assert checked > 100


def test_cell_targets_name_the_shape_that_covers_the_cell_with_its_colour_and_place(clips):
    for clip in clips[:30]:
        targets = train.cell_targets(clip)
        assert targets.shape == (synthetic.FRAMES, TOKENS_PER_FRAME, len(train.TARGETS))
        frames = synthetic.render(clip)
        some = [15, 3, 8]  # stage one renders and labels only the frames it picks: the same as slicing
        assert (synthetic.render(clip, some) == frames[some]).all()
        assert (train.cell_targets(clip, some) == targets[some]).all()
        for f in range(synthetic.FRAMES):
            for cell in range(TOKENS_PER_FRAME):
                shape, colour, row, column = targets[f, cell]
                place = divmod(cell, train.SIDE)
                cell_rows, cell_columns = (slice(i * train.CELL, (i + 1) * train.CELL) for i in place)
                block = frames[f, cell_rows, cell_columns]
                if shape == 0:  # no shape covers 8 pixels of it: a background cell carries no colour and no place
                    assert colour == 0 and row == column == -100
                    assert (block != synthetic.BACKGROUND).any(-1).sum() < 8 * len(clip.shapes)
                    continue
                assert (row, column) == place
                s = next(s for s in clip.shapes if s.shape == synthetic.SHAPES[shape - 1])
                assert s.visible(f) and colour == 1 + list(synthetic.COLOURS).index(s.colour_at(f))
                assert (block == synthetic.COLOURS[s.colour_at(f)]).all(-1).sum() >= 8


def test_named_cells_mark_the_tokens_of_the_shape_the_question_names(clips):
    rng = np.random.default_rng(14)
    named = 0
    for clip, qa, targets, flags in flagged_questions(clips[:40], rng):
        assert flags.shape == (synthetic.FRAMES * TOKENS_PER_FRAME,)
        if qa.type in ("how_many", "appears_last"):  # names no shape: ignored
            assert (flags == -1).all()
            continue
        s = train.named_shape(clip, qa)
        assert s.shape in qa.question
        on = flags.reshape(synthetic.FRAMES, TOKENS_PER_FRAME) == 1
        assert set(np.unique(flags)) <= {0.0, 1.0}
        assert all(on[f].any() == (targets[f, :, 0] == 1 + synthetic.SHAPES.index(s.shape)).any()
                   for f in range(synthetic.FRAMES))
        assert not on[[f for f in range(synthetic.FRAMES) if not s.visible(f)]].any()
        named += 1
    assert named > 60


def test_kept_tokens_and_frame_ends():
    rng = np.random.default_rng(13)
    every = train.kept_tokens(rng, 3, TOKENS_PER_FRAME, drop_prob=0.0)
    assert all((k == np.arange(synthetic.FRAMES * TOKENS_PER_FRAME)).all() for k in every)
    ends = train.frame_ends(every[0], TOKENS_PER_FRAME)
    assert (ends == np.arange(1, synthetic.FRAMES + 1) * TOKENS_PER_FRAME - 1).all()
    for _ in range(20):
        kept = train.kept_tokens(rng, 4, TOKENS_PER_FRAME, drop_prob=1.0)
        assert len({len(k) for k in kept}) == 1 and len(kept[0]) >= 0.1 * synthetic.FRAMES * TOKENS_PER_FRAME
        for k in kept:
            assert (np.diff(k) > 0).all()
            ends = train.frame_ends(k, TOKENS_PER_FRAME)
            for f, end in enumerate(ends):
                in_frame = np.flatnonzero(k // TOKENS_PER_FRAME == f)
                assert end == (in_frame[-1] if len(in_frame) else -1)


def test_what_the_word_should_carry_answers_its_questions(clips):
    rng = np.random.default_rng(23)
    checked = 0
    for clip, qa, _, _ in flagged_questions(clips, rng):
        if qa.type not in ("direction", "colour_at_end", "where_at_end"):
            continue
        colour, quadrant, direction = train.word_targets(train.named_shape(clip, qa))
        if qa.type == "direction":
            assert synthetic.DIRECTIONS[direction] == qa.answer_text
        elif qa.type == "colour_at_end":
            assert list(synthetic.COLOURS)[colour] == qa.answer_text
        else:  # end positions keep away from the midlines, so the quadrant is always labelled
            assert synthetic.QUADRANTS[quadrant] == qa.answer_text
        checked += 1
    assert checked > 200
