"""The synthetic eval's spatial question set: balanced, and every answer read back from the decoded mp4's pixels.

The pixel checks find each shape in a decoded frame on their own (connected blobs of non-background pixels, each
named by the shape mask that fits it best), so a clip drawn somewhere other than its ground truth fails them.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from flashvid_cli import synthetic as syn

SEED, COUNT = 11, 32  # 8 questions of each of the 4 spatial types


def _blobs(frame: np.ndarray) -> list[np.ndarray]:
    """Connected (4-neighbour) masks of the pixels that are clearly not background, in a decoded [H, W, 3] frame."""
    ink = np.abs(frame.astype(int) - syn.BACKGROUND).max(axis=-1) > 100  # halfway to the dimmest colour
    seen = np.zeros_like(ink)
    out = []
    for y0, x0 in zip(*np.nonzero(ink)):
        if seen[y0, x0]:
            continue
        mask, stack = np.zeros_like(ink), [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            mask[y, x] = True
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < ink.shape[0] and 0 <= xx < ink.shape[1] and ink[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        if mask.sum() > 20:  # codec specks are not shapes
            out.append(mask)
    return out


def _shapes_in(frame: np.ndarray) -> dict[str, tuple[float, float]]:
    """Each shape found in the frame -> its centre (x, y), the centre of its blob's bounding box."""
    found = {}
    for blob in _blobs(frame):
        ys, xs = np.nonzero(blob)
        cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        iou = {n: (blob & syn._mask(n, cx, cy)).sum() / (blob | syn._mask(n, cx, cy)).sum() for n in syn.SHAPES}
        name = max(iou, key=iou.get)
        assert iou[name] > 0.6, iou
        assert name not in found  # each shape at most once a clip
        found[name] = (float(cx), float(cy))
    return found


def _shape_in_question(question: str) -> list[str]:
    words = question.rstrip("?").split()
    return [w for w in words if w in syn.SHAPES]


def _relation_from(a: tuple[float, float], b: tuple[float, float]) -> str:
    dx, dy = a[0] - b[0], a[1] - b[1]
    assert abs(abs(dx) - abs(dy)) >= 4  # never a diagonal (the generator's margin, less the codec's blur)
    if abs(dx) > abs(dy):
        return "to its left" if dx < 0 else "to its right"
    return "above it" if dy < 0 else "below it"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("spatial")
    path = syn.write_dataset(root, COUNT, SEED, question_set="spatial")
    return root, [json.loads(line) for line in path.read_text().splitlines()]


def test_spatial_set_types_values_and_letters_balanced():
    pairs = list(syn.balanced(SEED, 4 * len(syn.SPATIAL_TYPES) * 2, "spatial"))
    by_type = defaultdict(list)
    for _, qa in pairs:
        by_type[qa.type].append(qa)
    assert set(by_type) == set(syn.SPATIAL_TYPES) == set(syn.QUESTION_SETS["spatial"])
    for kind, qas in by_type.items():
        assert Counter(qa.answer_text for qa in qas) == {v: 2 for v in syn._VALUES[kind]}, kind
        assert Counter(qa.answer for qa in qas) == {i: 2 for i in range(4)}, kind
        assert all(len(set(qa.options)) == 4 for qa in qas)


def test_default_set_is_unchanged_by_the_spatial_one():
    """A seed's default questions do not depend on the spatial set existing (ACCURACY.md's runs stay reproducible)."""
    default = [(qa.type, qa.question, qa.options, qa.answer) for _, qa in syn.balanced(3, 10)]
    assert [t for t, *_ in default] == list(syn.QUESTION_TYPES) * 2
    assert default == [(qa.type, qa.question, qa.options, qa.answer) for _, qa in syn.balanced(3, 10, "default")]


def test_every_spatial_answer_is_where_the_pixels_put_it(written):
    root, rows = written
    assert Counter(r["type"] for r in rows) == {t: COUNT // 4 for t in syn.SPATIAL_TYPES}
    for r in rows:
        frames = syn.read_mp4(root / r["video"])
        answer = r["options"][syn.LETTERS.index(r["answer"])]
        names = _shape_in_question(r["question"])
        last = _shapes_in(frames[-1])
        if r["type"] == "where_at_end":
            (name,) = names
            assert syn.quadrant(*last[name]) == answer, r
        elif r["type"] == "which_corner":
            corner = next(q for q in syn.QUADRANTS if f"in the {q} " in r["question"])
            inside = [n for n, c in last.items() if syn.quadrant(*c) == corner]
            assert inside == [answer], (r, last)
        elif r["type"] == "relation":
            a, b = names
            assert _relation_from(last[a], last[b]) == answer, (r, last)
        else:
            (name,) = names
            first = next(_shapes_in(f)[name] for f in frames if name in _shapes_in(f))
            assert syn.quadrant(*first) == answer, (r, first)


def test_relation_reads_the_longer_axis():
    assert syn.relation((10.0, 30.0), (40.0, 32.0)) == "to its left"
    assert syn.relation((50.0, 30.0), (20.0, 20.0)) == "to its right"
    assert syn.relation((30.0, 5.0), (32.0, 40.0)) == "above it"
    assert syn.relation((30.0, 50.0), (20.0, 20.0)) == "below it"
    assert syn.relation((10.0, 10.0), (30.0, 32.0)) is None  # 20 against 22: a diagonal


def test_spatial_text_alone_does_not_tell_the_answer():
    rng = np.random.default_rng(0)
    answers = defaultdict(Counter)
    for _ in range(1500):
        for qa in syn.questions(syn.random_clip(rng), rng, kinds=syn.SPATIAL_TYPES):
            answers[qa.question][qa.answer_text] += 1
    assert {q.split()[0] for q in answers} == {"Where", "Which", "At"}
    for question, counts in answers.items():
        total = sum(counts.values())
        if total >= 100:
            assert max(counts.values()) / total < 0.25 + 0.15, (question, counts)


def test_cli_set_option_and_an_unknown_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["synthetic", str(tmp_path), "--count", "4", "--seed", "1", "--set", "spatial"])
    syn.main()
    rows = [json.loads(line) for line in (tmp_path / "questions.jsonl").read_text().splitlines()]
    assert [r["type"] for r in rows] == list(syn.SPATIAL_TYPES)
    with pytest.raises(ValueError, match="unknown question set 'layout'; choose one of default, spatial"):
        syn.write_dataset(tmp_path / "x", 1, 1, question_set="layout")
    assert not (tmp_path / "x").exists()
    monkeypatch.setattr("sys.argv", ["synthetic", str(tmp_path / "y"), "--set", "layout"])
    with pytest.raises(SystemExit) as exc:
        syn.main()
    assert exc.value.code == 2 and "invalid choice: 'layout'" in capsys.readouterr().err


def test_spatial_set_shows_up_in_evals_rows(tiny_models, tmp_path):
    from typer.testing import CliRunner

    from flashvid_cli.cli import app

    data = syn.write_dataset(tmp_path / "data", 4, SEED, question_set="spatial")
    result = CliRunner().invoke(app, ["eval", str(data), "--model", str(tiny_models["llava_onevision"]),
                                      "--methods", "pool,visionzip", "--keep", "0.5",
                                      "--frames", "4", "--json", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["pool", "visionzip"]
    for r in rows:  # the per-type accuracies (the console table has none; ACCURACY.md's come from --json)
        assert r["total"] == 4 and set(r["by_type"]) == set(syn.SPATIAL_TYPES)
        assert all(t["total"] == 1 for t in r["by_type"].values())
        assert sum(t["correct"] for t in r["by_type"].values()) == r["correct"]
