"""The demo model's training targets (samples/train_demo_model.py): what the auxiliary losses teach is true of
the clip, and the running answer after the last frame is the question's answer. Nothing here trains."""

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


def test_running_answer_after_the_last_frame_is_the_answer(clips):
    rng = np.random.default_rng(12)
    asked = 0
    for clip in clips:
        for qa in synthetic.questions(clip, rng, every=True):
            targets = train.frame_targets(clip, qa)
            assert targets.shape == (synthetic.FRAMES,)
            assert train.ANSWERS[targets[-1]] == qa.answer_text, (qa, clip)
            known = targets[targets >= 0]
            if qa.type == "direction":  # fixed once known
                assert (known == known[-1]).all()
            asked += 1
    assert asked > 400


def test_running_answer_follows_the_clip():
    square = synthetic.Shape("square", "red", "blue", change_at=6, appear=0, vanish=synthetic.FRAMES,
                             direction="right", start=(14.0, 14.0), end=(46.0, 14.0))
    cross = synthetic.Shape("cross", "green", "green", change_at=synthetic.FRAMES, appear=4, vanish=synthetic.FRAMES,
                            direction="down", start=(46.0, 22.0), end=(46.0, 50.0))
    clip = synthetic.Clip((square, cross))
    names = lambda qa: [train.ANSWERS[i] if i >= 0 else None for i in train.frame_targets(clip, qa)]  # noqa: E731
    qa = lambda kind, question, options: synthetic.QA(kind, question, options, 0)  # noqa: E731
    count = names(qa("how_many", "How many shapes appear in the video?", synthetic.COUNTS))
    assert count[:4] == ["one"] * 4 and count[4:] == ["two"] * 12
    last = names(qa("appears_last", "Which shape appears last?", synthetic.SHAPES))
    assert last[:4] == [None] * 4 and last[4:] == ["cross"] * 12
    colour = names(qa("colour_at_end", "What colour is the square at the end?", tuple(synthetic.COLOURS)))
    assert colour[:6] == ["red"] * 6 and colour[6:] == ["blue"] * 10
    way = names(qa("direction", "Which way does the cross move?", synthetic.DIRECTIONS))
    assert way[:6] == [None] * 6 and way[6:] == ["down"] * 10
    where = names(qa("where_at_end", "Where is the square at the end?", synthetic.QUADRANTS))
    assert where[0] == "top left" and where[-1] == "top right" and None in where  # unlabelled near the midline


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
    for clip in clips[:40]:
        targets = train.cell_targets(clip)
        for qa in synthetic.questions(clip, rng, every=True):
            flags = train.named_cells(clip, qa, targets)
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
