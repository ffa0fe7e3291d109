"""The synthetic video QA generator: deterministic, balanced, answers true to the pixels, not guessable from text."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from flashvid_cli import synthetic as syn

CYCLE = 12  # the least common multiple of the value counts (4 and 6) and the letter count (4)


def test_same_seed_same_files(tmp_path):
    a = syn.write_dataset(tmp_path / "a", 6, seed=7)
    b = syn.write_dataset(tmp_path / "b", 6, seed=7)
    assert a.read_text() == b.read_text()
    for line in a.read_text().splitlines():
        name = json.loads(line)["video"]
        first, second = (syn.read_mp4(tmp_path / d / name).astype(int) for d in "ab")
        assert np.abs(first - second).max() <= 8  # same pictures; encoder bytes may vary between processes
    c = syn.write_dataset(tmp_path / "c", 6, seed=8)
    assert c.read_text() != a.read_text()


def test_balanced_values_and_letters_exactly():
    pairs = list(syn.balanced(seed=3, count=len(syn.QUESTION_TYPES) * CYCLE))
    by_type = defaultdict(list)
    for _, qa in pairs:
        by_type[qa.type].append(qa)
    assert set(by_type) == set(syn.QUESTION_TYPES)
    for kind, qas in by_type.items():
        assert len(qas) == CYCLE
        values = Counter(qa.answer_text for qa in qas)
        assert len(set(values.values())) == 1, (kind, values)  # every value equally often
        letters = Counter(qa.answer for qa in qas)
        assert letters == {i: CYCLE // 4 for i in range(4)}, (kind, letters)
        assert all(len(set(qa.options)) == 4 for qa in qas)


def test_text_alone_does_not_tell_the_answer():
    """The best a reader of the question text can do (its most common answer) stays near chance."""
    rng = np.random.default_rng(0)
    answers = defaultdict(Counter)
    letters = defaultdict(Counter)
    for _ in range(1500):
        for qa in syn.questions(syn.random_clip(rng), rng):
            answers[qa.question][qa.answer_text] += 1
            letters[qa.question][qa.answer] += 1
    for question, counts in answers.items():
        total = sum(counts.values())
        if total < 100:
            continue
        chance = 1 / (len(syn.COLOURS) if "colour" in question else 4)
        assert max(counts.values()) / total < chance + 0.12, (question, counts)
        assert max(letters[question].values()) / total < 0.25 + 0.12, (question, letters[question])


def test_answers_match_the_pixels():
    """Read every answer back from the rendered frames: count, colour, place and direction at the end."""
    rng = np.random.default_rng(1)
    for _ in range(40):
        clip = syn.random_clip(rng)
        frames = syn.render(clip)
        colours_seen = {tuple(p) for p in frames.reshape(-1, 3)} - {syn.BACKGROUND}
        assert len(colours_seen) <= len(syn.COLOURS)
        for s in clip.shapes:
            if not s.at_end:
                assert not _visible_at(frames[-1], s)
                continue
            x, y = s.end
            assert tuple(frames[-1][int(y), int(x)]) == syn.COLOURS[s.end_colour]
            assert s.quadrant == syn.QUADRANTS[2 * (y > syn.SIZE / 2) + (x > syn.SIZE / 2)]
            (x0, y0), (x1, y1) = s.centre(s.appear), s.centre(syn.FRAMES - 1)
            moved = {"left": x0 - x1, "right": x1 - x0, "up": y0 - y1, "down": y1 - y0}
            assert max(moved, key=moved.get) == s.direction
        before = {qa.type: qa for qa in syn.questions(clip, rng)}
        assert before["how_many"].answer_text == syn.COUNTS[len(clip.shapes) - 1]
        if "appears_last" in before:
            last = before["appears_last"].answer_text
            first_frame = {s.shape: min(f for f in range(syn.FRAMES) if s.visible(f)) for s in clip.shapes}
            assert first_frame[last] == max(first_frame.values())
            assert sorted(first_frame.values())[-2] <= first_frame[last] - 2


def _visible_at(frame: np.ndarray, s: syn.Shape) -> bool:
    x, y = s.end
    return tuple(frame[int(y), int(x)]) != syn.BACKGROUND


def test_codec_round_trip_keeps_colours():
    rng = np.random.default_rng(2)
    clip = syn.random_clip(rng)
    frames = syn.render(clip)
    decoded = syn.through_codec(frames)
    assert decoded.shape == frames.shape
    for s in clip.shapes:
        if s.at_end:
            x, y = (int(v) for v in s.end)
            got = decoded[-1, y, x].astype(int)
            assert np.abs(got - syn.COLOURS[s.end_colour]).max() < 40


def test_cli_writes_jsonl(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["synthetic", str(tmp_path), "--count", "5", "--seed", "1"])
    syn.main()
    rows = [json.loads(line) for line in (tmp_path / "questions.jsonl").read_text().splitlines()]
    assert [r["type"] for r in rows] == list(syn.QUESTION_TYPES)
    for r in rows:
        assert (tmp_path / r["video"]).stat().st_size > 0
        assert r["answer"] in "ABCD" and len(r["options"]) == 4


@pytest.mark.parametrize("name", syn.SHAPES)
def test_shapes_differ(name):
    masks = {n: syn._mask(n, 32.0, 32.0) for n in syn.SHAPES}
    assert 40 < masks[name].sum() < 200
    assert all((masks[name] != m).sum() > 10 for n, m in masks.items() if n != name)
