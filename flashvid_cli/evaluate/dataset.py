"""The questions file: JSON lines read into ``Question``s, option prefixes cut, the answer resolved to an index."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# "A. text", "A) text", "(A) text", "A: text": the letter must be the option's own (A for the first, ...).
_PREFIX = re.compile(r"^\s*(?:\((?P<paren>[A-Z])\)|(?P<bare>[A-Z])[.):])\s*(?P<text>.*)$", re.DOTALL)


class DatasetError(ConfigError):
    """A questions file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question about one video."""

    video: str  # resolved against the questions file's folder
    question: str
    options: tuple[str, ...]  # the texts, any "A. " prefix cut
    answer: int  # 0-based index into options
    type: str | None = None
    id: str = ""
    source: str = ""  # "file.jsonl:line"


def read_dataset(path: str | Path) -> list[Question]:
    """Every question of a JSON-lines file; the first bad line is a one-line error naming the file and line."""
    from ..errors import InputError
    from ..inputs import read_text_lines

    path = Path(path)
    try:
        lines = read_text_lines(path, "")  # UTF-8, a BOM and CRLF line ends handled
    except InputError as exc:
        raise DatasetError(str(exc)) from None
    questions = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            where = f"{path}:{number}"
            try:
                questions.append(_parse_question(line, path.parent, where))
            except ValueError as exc:
                raise DatasetError(f"{where}: {exc}") from None
    if not questions:
        raise DatasetError(f"{path} holds no questions; expected one JSON object per line")
    return questions


def _parse_question(line: str, folder: Path, where: str) -> Question:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for key in ("video", "question", "options", "answer"):
        if key not in record:
            raise ValueError(f"missing {key!r}")
    video, question, options = record["video"], record["question"], record["options"]
    if not isinstance(video, str) or not video.strip():
        raise ValueError("'video' must be a non-empty string (a path)")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise ValueError("'options' must be a list of at least 2 strings")
    if len(options) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} options, got {len(options)}")
    texts = strip_prefixes(options)
    if any(not t for t in texts):
        raise ValueError(f"option {LETTERS[texts.index('')]} is empty")
    if len(set(texts)) < len(texts):
        raise ValueError(f"two options read the same: {next(t for t in texts if texts.count(t) > 1)!r}")
    kind = record.get("type", record.get("task_type"))
    ident = record.get("id", record.get("question_id"))
    return Question(
        video=str(folder / Path(video).expanduser()),  # an absolute path stays as it is
        question=question.strip(),
        options=tuple(texts),
        answer=answer_index(record["answer"], options, texts),
        type=None if kind is None else str(kind),
        id=str(ident) if ident is not None else where.rsplit(":", 1)[1],
        source=where,
    )


def strip_prefixes(options: Sequence[str]) -> list[str]:
    """Option texts: when every option starts with its own letter ("A. ", "B) ", "(C) "), the letters are cut."""
    matches = [_PREFIX.match(o) for o in options]
    if all(m and (m["paren"] or m["bare"]) == LETTERS[i] for i, m in enumerate(matches)):
        return [m["text"].strip() for m in matches]
    return [o.strip() for o in options]


def answer_index(answer: Any, options: Sequence[str], texts: Sequence[str]) -> int:
    """The 0-based index ``answer`` names: a letter, an index, or one option's text (with or without prefix)."""
    count = len(texts)
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < count:
            raise ValueError(f"answer index {answer} is out of range for {count} options")
        return answer
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"'answer' must be a letter, a 0-based index or an option's text, got {answer!r}")
    answer = answer.strip()
    by_text = [i for i in range(count) if answer in (texts[i], options[i].strip())]
    letter = answer.upper() if len(answer) == 1 and answer.upper() in LETTERS else None
    by_letter = LETTERS.index(letter) if letter is not None and LETTERS.index(letter) < count else None
    if by_letter is not None and by_text and by_text[0] != by_letter:
        raise ValueError(f"answer {answer!r} is ambiguous: option {letter}'s letter and option "
                         f"{LETTERS[by_text[0]]}'s text")
    if by_letter is not None:
        return by_letter
    if by_text:
        return by_text[0]
    if letter is not None:
        raise ValueError(f"answer {answer!r} is past the last option, {LETTERS[count - 1]}")
    raise ValueError(f"answer {answer!r} is neither a letter (A-{LETTERS[count - 1]}) nor an option's text")
