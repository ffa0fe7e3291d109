"""Synthetic video QA: short clips of coloured shapes that move, appear, vanish and change colour, with questions.

Every clip is 16 frames of 64x64 pixels at 8 fps. It holds one to four objects, each a different shape (circle,
square, triangle, cross), each moving in a straight line left, right, up or down; objects after the first may
appear later, an object may vanish before the end, and an object may change colour once. The questions need
the video's content over time and space, and a question's text never tells its answer:

    how_many        How many shapes appear in the video?          one, two, three, four
    appears_last    Which shape appears last?                     a shape (the one that appears strictly last)
    direction       Which way does the circle move?               left, right, up, down
    colour_at_end   What colour is the circle at the end?         one of six colours (the start colour is a distractor)
    where_at_end    Where is the circle at the end?               top left, top right, bottom left, bottom right

Those five are the ``default`` question set. The ``spatial`` set (``--set spatial``) asks only where things are in
the frame, so a method that tears the layout loses it:

    where_at_end    (as above)
    where_at_start  Where is the circle when it first appears?    the quarter of its first visible position
    which_corner    Which shape is in the top left at the end?    a shape (the only one in that quarter)
    relation        At the end, where is the circle relative to the square?   to its left, to its right, above it,
                                                                  below it (by the longer axis; no diagonals)

Everything is drawn from a seeded ``numpy`` generator, so a seed always gives the same clips, questions, options
and files. :func:`write_dataset` writes the clips as H.264 mp4s and one JSONL line per question in the format
``vidq eval`` reads (``video``, ``question``, ``options``, ``answer`` as a letter, ``type``, ``id``); the answer
values and the correct letters are balanced exactly, round-robin, over each question type.

    python -m flashvid_cli.synthetic OUT_DIR --count 500 --seed 1234 [--set spatial]
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

SIZE = 64  # frame side in pixels
FRAMES = 16
FPS = 8
HALF = 6.5  # half the side of a shape's bounding box
BACKGROUND = (24, 24, 24)
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 250),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 230),
    "white": (235, 235, 235),
}
DIRECTIONS = ("left", "right", "up", "down")
STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # (x, y), y grows down
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
COUNTS = ("one", "two", "three", "four")
RELATIONS = ("to its left", "to its right", "above it", "below it")  # where a shape is from another one
QUESTION_TYPES = ("how_many", "appears_last", "direction", "colour_at_end", "where_at_end")
SPATIAL_TYPES = ("where_at_end", "where_at_start", "which_corner", "relation")
QUESTION_SETS = {"default": QUESTION_TYPES, "spatial": SPATIAL_TYPES}  # --set NAME picks the types
_VALUES = {"how_many": COUNTS, "appears_last": SHAPES, "direction": DIRECTIONS, "colour_at_end": tuple(COLOURS),
           "where_at_end": QUADRANTS, "where_at_start": QUADRANTS, "which_corner": SHAPES, "relation": RELATIONS}
LETTERS = "ABCD"
_CENTRE_MIN, _CENTRE_MAX = HALF + 2, SIZE - 1 - HALF - 2  # a shape's centre keeps it fully inside the frame
_MIDLINE_GAP = 8.0  # an end position is this far from the frame's midlines, so its quadrant is unambiguous
_MIN_GAP = 15.0  # centres of two visible shapes are never closer than this (no overlaps)
_START_GAP = 4.0  # a first position this close to a midline has no where_at_start question (its quarter is unclear)
_RELATION_MARGIN = 6.0  # a relation's main axis is at least this much longer than the other (no diagonal ties)


@dataclass(frozen=True)
class Shape:
    """One object of a clip; ``start``/``end`` are its centre (x, y) at the first and last frame."""

    shape: str
    colour: str
    end_colour: str
    change_at: int  # first frame drawn in end_colour (FRAMES when the colour never changes)
    appear: int  # first visible frame
    vanish: int  # first frame no longer visible (FRAMES when it stays to the end)
    direction: str
    start: tuple[float, float]
    end: tuple[float, float]

    def centre(self, frame: int) -> tuple[float, float]:
        t = frame / (FRAMES - 1)
        return (self.start[0] + t * (self.end[0] - self.start[0]), self.start[1] + t * (self.end[1] - self.start[1]))

    def visible(self, frame: int) -> bool:
        return self.appear <= frame < self.vanish

    def colour_at(self, frame: int) -> str:
        return self.end_colour if frame >= self.change_at else self.colour

    @property
    def at_end(self) -> bool:
        return self.vanish == FRAMES

    @property
    def quadrant(self) -> str:
        return quadrant(*self.end)

    @property
    def first(self) -> tuple[float, float]:
        """The centre (x, y) in the first frame the shape is visible."""
        return self.centre(self.appear)


def quadrant(x: float, y: float) -> str:
    """The quarter of the frame that holds the point (x, y)."""
    return QUADRANTS[2 * (y > SIZE / 2) + (x > SIZE / 2)]


@dataclass(frozen=True)
class Clip:
    shapes: tuple[Shape, ...]


@dataclass(frozen=True)
class QA:
    type: str
    question: str
    options: tuple[str, ...]
    answer: int  # index into options

    @property
    def answer_text(self) -> str:
        return self.options[self.answer]


# -- clips --------------------------------------------------------------------------------------------------


def random_clip(rng: np.random.Generator) -> Clip:
    """A clip of 1-4 non-overlapping shapes; every field is drawn from ``rng``."""
    count = int(rng.integers(1, 5))  # drawn once, so crowded clips are not rarer than sparse ones
    while True:
        names = rng.permutation(SHAPES)[:count]
        colours = rng.permutation(list(COLOURS))[:count]
        shapes: list[Shape] = []
        for i, (name, colour) in enumerate(zip(names, colours)):
            shape = _random_shape(rng, str(name), str(colour), first=i == 0, others=shapes)
            if shape is None:
                break
            shapes.append(shape)
        if len(shapes) == count:
            return Clip(tuple(shapes))


def _random_shape(rng: np.random.Generator, name: str, colour: str, first: bool, others: list[Shape]
                  ) -> Shape | None:
    appear = 0 if first else int(rng.choice([0, 0, 0, *range(2, 11)]))
    vanish = int(rng.integers(9, 13)) if appear == 0 and rng.random() < 0.2 else FRAMES
    change_at, end_colour = FRAMES, colour
    if rng.random() < 0.5:
        change_at = int(rng.integers(max(appear + 2, 4), 13))
        end_colour = str(rng.choice([c for c in COLOURS if c != colour]))
    direction = str(rng.choice(DIRECTIONS))
    dx, dy = STEP[direction]
    for _ in range(50):
        end = _end_position(rng)
        distance = float(rng.uniform(20.0, 32.0))
        start = (end[0] - dx * distance, end[1] - dy * distance)
        if not all(_CENTRE_MIN <= v <= _CENTRE_MAX for v in start):
            continue
        shape = Shape(name, colour, end_colour, change_at, appear, vanish, direction, start, end)
        if all(_apart(shape, other) for other in others):
            return shape
    return None


def _end_position(rng: np.random.Generator) -> tuple[float, float]:
    def coordinate() -> float:
        low = rng.random() < 0.5
        return float(rng.uniform(_CENTRE_MIN, SIZE / 2 - _MIDLINE_GAP) if low
                     else rng.uniform(SIZE / 2 + _MIDLINE_GAP, _CENTRE_MAX))

    return coordinate(), coordinate()


def _apart(a: Shape, b: Shape) -> bool:
    for frame in range(FRAMES):
        if a.visible(frame) and b.visible(frame):
            (ax, ay), (bx, by) = a.centre(frame), b.centre(frame)
            if max(abs(ax - bx), abs(ay - by)) < _MIN_GAP:
                return False
    return True


# -- rendering ----------------------------------------------------------------------------------------------

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def _mask(name: str, cx: float, cy: float) -> np.ndarray:
    dx, dy = _XX - cx, _YY - cy
    if name == "circle":
        return dx * dx + dy * dy <= HALF * HALF
    if name == "square":
        return (np.abs(dx) <= HALF - 0.5) & (np.abs(dy) <= HALF - 0.5)
    if name == "triangle":  # apex up
        return (dy <= HALF) & (np.abs(dx) <= (dy + HALF) / 2)
    if name == "cross":
        arm = 2.0
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= HALF)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= HALF))
    raise ValueError(f"unknown shape {name!r}")


def render(clip: Clip, frames: Sequence[int] = range(FRAMES)) -> np.ndarray:
    """The clip's frames (all, or those whose indices are given) as uint8 RGB [len(frames), SIZE, SIZE, 3]."""
    out = np.empty((len(frames), SIZE, SIZE, 3), dtype=np.uint8)
    out[:] = BACKGROUND
    for i, f in enumerate(frames):
        for shape in clip.shapes:
            if shape.visible(f):
                out[i][_mask(shape.shape, *shape.centre(f))] = COLOURS[shape.colour_at(f)]
    return out


def encode_mp4(frames: np.ndarray, target: str | Path | io.BytesIO) -> None:
    """H.264 yuv420p at FPS, fixed settings and one thread, so the bytes are deterministic."""
    import av

    with av.open(target, "w", format="mp4", options={"fflags": "+bitexact"}) as out:  # no creation time
        stream = out.add_stream("libx264", rate=Fraction(FPS))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "medium", "threads": "1", "g": str(FRAMES)}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def through_codec(frames: np.ndarray) -> np.ndarray:
    """The frames after an H.264 round trip in memory: what a decoder returns for the written file."""
    buffer = io.BytesIO()
    encode_mp4(frames, buffer)
    buffer.seek(0)
    return read_mp4(buffer)


def read_mp4(source: str | Path | io.BytesIO) -> np.ndarray:
    """Every frame of a video as uint8 RGB [T, H, W, 3], decoded by PyAV."""
    import av

    with av.open(str(source) if isinstance(source, Path) else source) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# -- questions ----------------------------------------------------------------------------------------------


def questions(clip: Clip, rng: np.random.Generator, every: bool = False,
              kinds: Sequence[str] = QUESTION_TYPES) -> list[QA]:
    """One question of every type of ``kinds`` (a QUESTION_SETS value) the clip can answer (``every``: all of them),
    in a random order; options are shuffled. The spatial set draws apart, so the default set's draws are as before."""
    if set(kinds) <= set(SPATIAL_TYPES):
        return _spatial_questions(clip, rng, every, kinds)
    by_type: dict[str, list[QA]] = {kind: [] for kind in kinds}
    by_type["how_many"].append(_qa(rng, "how_many", "How many shapes appear in the video?", COUNTS,
                                   COUNTS[len(clip.shapes) - 1]))
    appears = sorted(s.appear for s in clip.shapes)
    if len(appears) > 1 and appears[-1] - appears[-2] >= 2:
        last = max(clip.shapes, key=lambda s: s.appear)
        by_type["appears_last"].append(_qa(rng, "appears_last", "Which shape appears last?", SHAPES, last.shape))
    for s in clip.shapes:
        by_type["direction"].append(_qa(rng, "direction", f"Which way does the {s.shape} move?", DIRECTIONS,
                                        s.direction))
        if s.at_end:
            by_type["colour_at_end"].append(_qa(rng, "colour_at_end", f"What colour is the {s.shape} at the end?",
                                                _colour_options(rng, s), s.end_colour))
            by_type["where_at_end"].append(_qa(rng, "where_at_end", f"Where is the {s.shape} at the end?",
                                               QUADRANTS, s.quadrant))
    return _pick(rng, by_type, every)


def _spatial_questions(clip: Clip, rng: np.random.Generator, every: bool, kinds: Sequence[str]) -> list[QA]:
    """The questions of the spatial types: where a shape is, which shape a corner holds, where one is from another."""
    by_type: dict[str, list[QA]] = {kind: [] for kind in SPATIAL_TYPES}
    at_end = [s for s in clip.shapes if s.at_end]
    for s in at_end:
        by_type["where_at_end"].append(_qa(rng, "where_at_end", f"Where is the {s.shape} at the end?", QUADRANTS,
                                           s.quadrant))
    for s in clip.shapes:
        if min(abs(v - SIZE / 2) for v in s.first) >= _START_GAP:
            by_type["where_at_start"].append(_qa(rng, "where_at_start", f"Where is the {s.shape} when it first "
                                                 "appears?", QUADRANTS, quadrant(*s.first)))
    for corner in QUADRANTS:
        inside = [s for s in at_end if s.quadrant == corner]
        if len(inside) == 1:
            by_type["which_corner"].append(_qa(rng, "which_corner", f"Which shape is in the {corner} at the end?",
                                               SHAPES, inside[0].shape))
    for a in at_end:
        for b in at_end:
            if a is not b and (where := relation(a.end, b.end)) is not None:
                by_type["relation"].append(_qa(rng, "relation", f"At the end, where is the {a.shape} relative "
                                               f"to the {b.shape}?", RELATIONS, where))
    return _pick(rng, {k: v for k, v in by_type.items() if k in kinds}, every)


def relation(a: tuple[float, float], b: tuple[float, float]) -> str | None:
    """Where point ``a`` (x, y; y grows down) is from ``b``, one of RELATIONS by the longer axis; None when the two
    axes are within _RELATION_MARGIN of each other (a diagonal, no one answer)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(abs(dx) - abs(dy)) < _RELATION_MARGIN:
        return None
    if abs(dx) > abs(dy):
        return RELATIONS[0] if dx < 0 else RELATIONS[1]
    return RELATIONS[2] if dy < 0 else RELATIONS[3]


def _pick(rng: np.random.Generator, by_type: dict[str, list[QA]], every: bool) -> list[QA]:
    if every:
        picked = [qa for found in by_type.values() for qa in found]
    else:
        picked = [found[int(rng.integers(len(found)))] for found in by_type.values() if found]
    return [picked[i] for i in rng.permutation(len(picked))]


def _colour_options(rng: np.random.Generator, s: Shape) -> list[str]:
    """The end colour, the start colour when it changed (the tempting wrong answer), and random others."""
    chosen = [s.end_colour] + ([s.colour] if s.colour != s.end_colour else [])
    rest = [c for c in COLOURS if c not in chosen]
    return chosen + [str(c) for c in rng.permutation(rest)[: 4 - len(chosen)]]


def _qa(rng: np.random.Generator, kind: str, question: str, options, answer: str) -> QA:
    order = [str(o) for o in rng.permutation(list(options)[:4])]
    return QA(kind, question, tuple(order), order.index(answer))


def balanced(seed: int, count: int, question_set: str = "default") -> Iterator[tuple[Clip, QA]]:
    """``count`` (clip, question) pairs of the named set's types: types round-robin, and within a type the answer
    values and the correct letter both cycle, so every value and every letter is equally common (exactly, for
    multiples of the cycle). Raises ValueError for a set not in QUESTION_SETS."""
    kinds = question_set_types(question_set)
    rng = np.random.default_rng(seed)
    seen: dict[str, int] = {kind: 0 for kind in kinds}
    for i in range(count):
        kind = kinds[i % len(kinds)]
        n = seen[kind]
        seen[kind] += 1
        want, letter = _VALUES[kind][n % len(_VALUES[kind])], n % len(LETTERS)
        while True:
            clip = random_clip(rng)
            found = [qa for qa in questions(clip, rng, kinds=kinds) if qa.type == kind and qa.answer_text == want]
            if found:
                break
        qa = found[0]
        options = [o for o in qa.options if o != want]
        options.insert(letter, want)
        yield clip, QA(kind, qa.question, tuple(options), letter)


def question_set_types(name: str) -> tuple[str, ...]:
    """The question types of a set named in QUESTION_SETS; raises ValueError naming the known sets."""
    if name not in QUESTION_SETS:
        raise ValueError(f"unknown question set {name!r}; choose one of {', '.join(QUESTION_SETS)}")
    return QUESTION_SETS[name]


def write_dataset(out: str | Path, count: int, seed: int, question_set: str = "default") -> Path:
    """Write ``count`` clips (``clips/NNNNN.mp4``) and ``questions.jsonl`` under ``out`` with questions of the named
    set (QUESTION_SETS); returns the JSONL path. Raises ValueError for an unknown set."""
    question_set_types(question_set)  # before any folder is made
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (clip, qa) in enumerate(balanced(seed, count, question_set)):
        name = f"clips/{i:05d}.mp4"
        encode_mp4(render(clip), out / name)
        lines.append(json.dumps({"id": f"{seed}-{i:05d}", "video": name, "question": qa.question,
                                 "options": list(qa.options), "answer": LETTERS[qa.answer], "type": qa.type}))
    path = out / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic multiple-choice video QA set (mp4 + JSONL).")
    parser.add_argument("out", type=Path, help="folder for clips/ and questions.jsonl")
    parser.add_argument("--count", type=int, default=500, help="number of questions (one clip each)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--set", dest="question_set", choices=list(QUESTION_SETS), default="default",
                        help="question types: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in QUESTION_SETS.items()))
    args = parser.parse_args()
    path = write_dataset(args.out, args.count, args.seed, args.question_set)
    print(f"wrote {path} ({args.count} {args.question_set} questions)")


if __name__ == "__main__":
    main()
