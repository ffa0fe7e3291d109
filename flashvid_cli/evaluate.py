"""Multiple-choice accuracy per compression method and keep ratio, with one loaded model.

    questions = read_dataset("mcq.jsonl")
    result = run_eval(VideoQA(model), questions, EvalConfig(methods=("flashvid", "none"), keeps=(0.5, 0.1)))
    result.rows[0].accuracy, result.to_dict()
    plot_eval(result, "eval.png")

The data is JSON lines, one question each (the shape of Video-MME and its kin)::

    {"video": "clips/00012.mp4", "question": "...", "options": ["red", "green", "blue"], "answer": "C",
     "type": "colour_at_end", "id": "00012"}

``video`` is relative to the file's folder (or absolute); a Video-MME prefix ("A. ", "A) ", "(A) ") is cut from
the options; ``answer`` is a letter, a 0-based index, or one option's text; ``type``/``task_type`` and
``id``/``question_id`` are optional.

Scoring:
* ``likelihood``: the prompt is the question alone (as ``vidq ask`` asks it); an option's score is the sum of the
  log-probabilities of its tokens as the assistant's answer. One forward pass when every option is one token
  (the last position's distribution scores them all), otherwise one forward per option over prompt + option.
* ``letter``: the question, an "A. text" line per option, then an instruction to answer with the letter (the
  convention lmms-eval uses for LLaVA-OneVision on Video-MME); an option's score is its letter's logit at the
  first generated position. One forward pass.

Each video is decoded (ahead, in a background thread), preprocessed and encoded once for all of its questions,
with every input the requested methods need; each (method, keep) compresses it once. A method that ignores keep
(``none``) gets one row, at keep 1. With ``tokens``, each (method, K) compresses each clip at the keep that makes
the LLM see as close to K visual tokens as the method can (searched per clip; the row gives the mean keep found).
A video that fails costs its questions (counted as failed, outside the denominator), not the run.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .api import AskConfig, CompressedVideo, ConfigError, PreparedVideo, VideoQA
from .bench import Run, check_runs, default_methods, is_trait, method_runs

if TYPE_CHECKING:
    from .pipelines.video import DecodedVideo

DEFAULT_KEEPS = (1.0, 0.5, 0.25, 0.1)
SCORINGS = ("likelihood", "letter")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
PREFETCH = 2  # videos decoded ahead while the model works
# "A. text", "A) text", "(A) text", "A: text": the letter must be the option's own (A for the first, ...).
_PREFIX = re.compile(r"^\s*(?:\((?P<paren>[A-Z])\)|(?P<bare>[A-Z])[.):])\s*(?P<text>.*)$", re.DOTALL)


class DatasetError(ConfigError):
    """A questions file that cannot be read; the message names the file and line."""


# -- the data -----------------------------------------------------------------------------------------------------
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
    from .errors import InputError
    from .inputs import read_text_lines

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


# -- what to run --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalConfig:
    """Methods x keeps (or x token counts), how options are scored, how many questions; ``ask`` holds frame sampling
    and decoding. ``methods=None`` means every registered method."""

    methods: tuple[str, ...] | None = None
    keeps: tuple[float, ...] = DEFAULT_KEEPS
    scoring: str = "likelihood"
    limit: int | None = None  # the first N questions
    ask: AskConfig = field(default_factory=AskConfig)
    tokens: tuple[int, ...] = ()  # visual-token counts; when given, they replace keeps

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", default_methods(self.methods, self.tokens))
        check_runs(self.methods, self.keeps, self.tokens)
        if self.scoring not in SCORINGS:
            raise ConfigError(f"--scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")

    def runs(self) -> list[Run]:
        """(method, keep, tokens) in the order given; a method that ignores keep once, at keep 1."""
        return method_runs(self.methods, self.keeps, self.tokens)


# -- results ------------------------------------------------------------------------------------------------------
@dataclass
class TypeScore:
    accuracy: float | None
    correct: int
    total: int


@dataclass
class EvalRow:
    method: str
    keep: float
    accuracy: float | None  # correct / total; None when no question could be scored
    correct: int
    total: int  # questions scored
    failed: int  # questions that could not be scored (e.g. the video does not decode): not in total
    visual_tokens: float | None  # mean over scored questions of what the LLM sees (LLaVA-OV's newline included)
    visual_tokens_before: float | None  # the same, uncompressed
    by_type: dict[str, TypeScore] = field(default_factory=dict)
    tokens: int | None = None  # --tokens: the visual tokens asked; keep is then the mean keep found per clip
    token_search_s: float | None = None  # --tokens: seconds spent searching the keep, all clips together


@dataclass
class Prediction:
    index: int  # position in the question list
    id: str
    method: str
    keep: float
    answer: int
    predicted: int | None  # None when the question failed
    correct: bool
    scores: list[float] | None = None  # one per option: summed log-probability, or the letter's logit
    error: str | None = None
    tokens: int | None = None  # --tokens: the visual tokens asked (keep is then the one found for this clip)
    # What was reused (as report.cache of ask): the encoded video from the on-disk cache; the video's prefill is
    # "off": each question is scored by one full forward (environment["notes"] says so).
    cache: dict[str, str] = field(default_factory=lambda: {"encoded": "off", "prefix": "off"})


@dataclass
class EvalResult:
    environment: dict[str, Any]
    rows: list[EvalRow]
    predictions: list[Prediction]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def failed_questions(self) -> int:
        return len({p.index for p in self.predictions if p.error is not None})


# progress(done, total, failed) in questions, called after each video's questions are scored for every row
ProgressCallback = Callable[[int, int, int], None]


# -- scoring ------------------------------------------------------------------------------------------------------
def letter_prompt(question: Question) -> str:
    """The question, one "A. text" line per option, and the instruction to answer with the letter."""
    lines = [question.question, *(f"{LETTERS[i]}. {text}" for i, text in enumerate(question.options))]
    return "\n".join([*lines, LETTER_INSTRUCTION])


def letter_scores(qa: VideoQA, inputs: dict[str, Any], count: int, prune: Any = None) -> list[float]:
    """The logit of each option's letter (A, B, ...) at the first generated position: one forward."""
    ids = [qa.token_ids(letter)[0] for letter in LETTERS[:count]]
    return qa.last_logits(inputs, prune=prune)[-1, ids].tolist()


def likelihood_scores(qa: VideoQA, inputs: dict[str, Any], option_ids: Sequence[Sequence[int]],
                      one_pass: bool = True, prune: Any = None) -> list[float]:
    """Each option's summed token log-probabilities as the answer right after the prompt.

    With ``one_pass`` and every option one token, one forward over the prompt scores them all (exact: each
    score is the last position's log-probability of that token); otherwise one forward per option.
    """
    import torch

    if one_pass and all(len(ids) == 1 for ids in option_ids):
        logp = qa.last_logits(inputs, prune=prune)[-1].log_softmax(-1)  # [vocab]
        return [float(logp[ids[0]]) for ids in option_ids]
    scores = []
    for ids in option_ids:
        # Position L - 1 + j predicts option token j; the last position (after the option) predicts nothing asked.
        logits = qa.last_logits(inputs, count=len(ids) + 1, append=ids, prune=prune)[:-1]  # [n, vocab]
        picked = logits.log_softmax(-1).gather(1, torch.tensor(ids, device=logits.device)[:, None])
        scores.append(float(picked.sum()))
    return scores


def score_question(qa: VideoQA, prepared: PreparedVideo, compressed: CompressedVideo, question: Question,
                   scoring: str, text_after_video: str | None = None) -> list[float]:
    """One score per option for ``question`` over the compressed video; the prediction is the argmax. A method's
    in-LLM stage (``llm_prune()``) runs in every forward pass, selecting as ``generate()`` would."""
    prune = compressed.method.llm_prune()
    if scoring == "letter":
        inputs = qa.prompt_inputs(prepared, compressed, letter_prompt(question), text_after_video)
        return letter_scores(qa, inputs, len(question.options), prune)
    option_ids = [qa.token_ids(text) for text in question.options]
    inputs = qa.prompt_inputs(prepared, compressed, question.question, text_after_video)
    return likelihood_scores(qa, inputs, option_ids, prune=prune)


# -- the run ------------------------------------------------------------------------------------------------------
@dataclass
class _Tally:
    correct: int = 0
    total: int = 0
    failed: int = 0
    tokens: list[int] = field(default_factory=list)
    tokens_before: list[int] = field(default_factory=list)
    by_type: dict[str, list[int]] = field(default_factory=dict)  # type -> [correct, total]
    keeps: list[float] = field(default_factory=list)  # --tokens: the keep found, per clip
    search_s: float = 0.0

    def add(self, question: Question, correct: bool, tokens: int, tokens_before: int) -> None:
        self.correct += correct
        self.total += 1
        self.tokens.append(tokens)
        self.tokens_before.append(tokens_before)
        if question.type is not None:
            counts = self.by_type.setdefault(question.type, [0, 0])
            counts[0] += correct
            counts[1] += 1

    def searched(self, compressed: CompressedVideo | None) -> None:
        """Count a --tokens compression: the keep it found and what the search cost."""
        if compressed is not None and compressed.search is not None:
            self.keeps.append(compressed.method.keep)
            self.search_s += compressed.search["seconds"]

    def row(self, method: str, keep: float, tokens: int | None = None) -> EvalRow:
        def mean(values: list[int]) -> float | None:
            return statistics.fmean(values) if values else None

        return EvalRow(
            method, mean(self.keeps) if tokens is not None and self.keeps else keep,
            self.correct / self.total if self.total else None, self.correct, self.total, self.failed,
            mean(self.tokens), mean(self.tokens_before),
            {t: TypeScore(c / n if n else None, c, n) for t, (c, n) in sorted(self.by_type.items())},
            tokens, self.search_s if tokens is not None else None,
        )


def run_eval(qa: VideoQA, questions: Sequence[Question], config: EvalConfig,
             progress: ProgressCallback | None = None) -> EvalResult:
    """Score every question under every (method, keep) of ``config``; ``progress(done, total, failed)`` follows
    the questions."""
    from .annotate import error_text
    from .kernels import build

    started, stamp = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    questions = list(questions)[: config.limit]
    if not questions:
        raise ConfigError("no questions to evaluate")
    rule = qa.text_after_video_rule(config.ask.text_after_video)
    options = config.ask.options  # --opt: every method of the run gets them
    methods = {run: build(run.method, run.keep, model_type=qa.model_type, options=options) for run in config.runs()}
    need = frozenset().union(*(m.needs for m in methods.values()))  # one encode serves every method
    by_video: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_video.setdefault(q.video, []).append(i)
    tallies = {pair: _Tally() for pair in methods}
    predictions: list[Prediction] = []
    done, failed = 0, set()  # failed: indices of questions that failed in any row

    for video, decoded, error in _decode_ahead(list(by_video), config.ask, qa.frame_resizer()):
        prepared = None
        if error is None:
            prepared, error = _attempt(qa.prepare, video, config.ask, decoded, need)
        for run, method in methods.items():
            name, tally = run.method, tallies[run]
            shared, row_error = None, error
            if row_error is None and "question" not in method.needs:
                shared, row_error = _attempt(qa.compress, prepared, method, None, run.tokens)
                tally.searched(shared)
            for i in by_video[video]:
                q = questions[i]
                compressed, scores, question_error = shared, None, row_error
                if question_error is None and compressed is None:  # the method reads the question
                    compressed, question_error = _attempt(qa.compress, prepared, method, q.question, run.tokens)
                    tally.searched(compressed)
                if question_error is None:
                    scores, question_error = _attempt(score_question, qa, prepared, compressed, q, config.scoring,
                                                      rule)
                found = compressed.method.keep if compressed is not None else run.keep  # with --tokens, per clip
                if question_error is not None:
                    tally.failed += 1
                    failed.add(i)
                    predictions.append(Prediction(i, q.id, name, found, q.answer, None, False,
                                                  error=error_text(question_error), tokens=run.tokens))
                    continue
                predicted = max(range(len(scores)), key=scores.__getitem__)  # the first of equal scores
                tally.add(q, predicted == q.answer, compressed.visual_tokens, prepared.visual_tokens)
                predictions.append(Prediction(i, q.id, name, found, q.answer, predicted, predicted == q.answer,
                                              scores, tokens=run.tokens,
                                              cache={"encoded": prepared.cache, "prefix": "off"}))
        done += len(by_video[video])
        if progress is not None:
            progress(done, len(questions), len(failed))

    rows = [tally.row(*run) for run, tally in tallies.items()]
    scored = [q for i, q in enumerate(questions) if i not in failed] or questions
    env = environment(qa, config, questions, rule, chance=chance_level(scored))
    env.update(started=stamp, elapsed_s=time.perf_counter() - started)
    env["notes"] = ["the video's prefill is not reused: each question is scored by one full forward pass"]
    return EvalResult(env, rows, predictions)


def _attempt(fn: Callable[..., Any], *args: Any) -> tuple[Any, Exception | None]:
    """``(fn(*args), None)``, or ``(None, the exception)``: one bad video or question costs its rows, not the run."""
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - recorded on the question's predictions and counted as failed
        return None, exc


def _decode_ahead(videos: list[str], ask: AskConfig, resize: Any = None
                  ) -> Iterator[tuple[str, DecodedVideo | None, Exception | None]]:
    """(video, decoded, None) or (video, None, error) in order, decoding up to PREFETCH videos ahead in threads;
    ``resize``: the model's ``frame_resizer()``, so frames are kept only at its input size."""
    with ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="vidq-decode") as pool:
        pending: dict[int, Future] = {}
        try:
            for i, video in enumerate(videos):
                for j in range(i, min(len(videos), i + 1 + PREFETCH)):
                    if j not in pending:
                        pending[j] = pool.submit(VideoQA.decode, videos[j], ask, resize)
                decoded, error = _attempt(pending.pop(i).result)
                yield video, decoded, error
        finally:
            for future in pending.values():
                future.cancel()


def chance_level(questions: Sequence[Question]) -> float:
    """The accuracy of guessing uniformly: the mean of 1 / options."""
    return statistics.fmean(1 / len(q.options) for q in questions)


def environment(qa: VideoQA, config: EvalConfig, questions: Sequence[Question], rule: str | None,
                chance: float) -> dict[str, Any]:
    """Model, device, versions, data and scoring: what a reader needs to trust or reproduce the numbers."""
    import torch
    import transformers

    from . import __version__
    from .bench import cpu_name
    from .pipelines.random_init import is_random

    info = qa.info
    device = torch.device(info.device)
    ask = config.ask
    return {
        "model": info.name,
        "model_type": info.model_type,
        "random_weights": is_random(info.name),
        "device": info.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "dtype": info.dtype,
        "load_s": qa.load_s,
        "dataset": [s for s in dict.fromkeys(q.source.rsplit(":", 1)[0] for q in questions) if s],
        "questions": len(questions),
        "videos": len({q.video for q in questions}),
        "scoring": config.scoring,
        "chance": chance,
        "methods": list(dict.fromkeys(config.methods)),
        "keeps": list(dict.fromkeys(config.keeps)) if not config.tokens else [],
        "tokens": list(dict.fromkeys(config.tokens)),
        "frames": {"frames": ask.frames, "fps": ask.fps, "max_frames": ask.max_frames, "decoder": ask.decoder,
                   "seek": ask.seek},
        "text_after_video": rule,
        "versions": {
            "vidq": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda,
        },
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- the plot -----------------------------------------------------------------------------------------------------
def require_matplotlib() -> None:
    """Fail at once, in one line, when the optional plot extra is missing (before an hour of evaluation)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'vidq[plot]'") from None


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``correct / total`` (95% for z = 1.96), as (low, high) in [0, 1].

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0% or 100% with small n. Source:
    E. B. Wilson, "Probable inference, the law of succession, and statistical inference", JASA 22 (1927);
    recommended over the Wald interval by Brown, Cai & DasGupta, Statistical Science 16 (2001).
    ``total == 0`` gives (0, 1): nothing is known.
    """
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * ((p * (1 - p) / total + z * z / (4 * total * total)) ** 0.5) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def method_offsets(methods: Sequence[str], spread: float = 0.06) -> dict[str, float]:
    """A factor per method that nudges its points along the (log) keep axis, so lines that coincide stay visible:
    the methods spread evenly over ``1 ± spread``, in the order given."""
    count = len(methods)
    if count <= 1:
        return {m: 1.0 for m in methods}
    return {m: (1 + spread) ** (2 * i / (count - 1) - 1) for i, m in enumerate(methods)}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")


def plot_eval(result: EvalResult, path: str | Path) -> Path:
    """A PNG: accuracy against keep (log scale, falling left to right), a line per method with 95% Wilson
    intervals as whiskers (points nudged apart along keep so equal results stay visible, each method its own
    marker and dash), `none` flat with its interval shaded, and chance dotted. With --tokens the x axis is the
    visual tokens the LLM sees (each method at its mean count sent for each count asked)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    env = result.environment
    fig, ax = plt.subplots(figsize=(9, 5))
    by_tokens = bool(env.get("tokens"))

    def x(r: EvalRow) -> float:
        return (r.visual_tokens or r.tokens or 1.0) if by_tokens else r.keep

    keeps = sorted({float(r.tokens) if by_tokens else r.keep for r in result.rows
                    if not is_trait(r.method, "ignores_keep") and (r.tokens or not by_tokens)} or {1.0})
    methods = [m for m in dict.fromkeys(r.method for r in result.rows) if not is_trait(m, "ignores_keep")]
    offsets = method_offsets(methods)
    for r in result.rows:
        if is_trait(r.method, "ignores_keep") and r.accuracy is not None:
            low, high = wilson_interval(r.correct, r.total)
            what = "every token" if is_trait(r.method, "baseline") else f"{r.visual_tokens or 0:,.0f} tokens"
            ax.axhspan(low, high, color="#222222", alpha=0.08, linewidth=0)
            ax.axhline(r.accuracy, color="#222222", linestyle="--", linewidth=1.2,
                       label=f"{r.method} ({what}): {r.accuracy:.1%} [{low:.0%}, {high:.0%}]")
    for i, method in enumerate(methods):
        rows = sorted((r for r in result.rows if r.method == method and r.accuracy is not None), key=x)
        if not rows:
            continue
        bounds = [wilson_interval(r.correct, r.total) for r in rows]
        ax.errorbar(
            [x(r) * offsets[method] for r in rows], [r.accuracy for r in rows],
            yerr=[[r.accuracy - low for r, (low, _) in zip(rows, bounds)],
                  [high - r.accuracy for r, (_, high) in zip(rows, bounds)]],
            marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)], markersize=6,
            markerfacecolor="none" if i % 2 else None, capsize=3, linewidth=1.4, alpha=0.9, label=method,
        )
    ax.axhline(env["chance"], color="#888888", linestyle=":", linewidth=1.2, label=f"chance: {env['chance']:.1%}")
    ax.set_xscale("log")
    ax.set_xticks(keeps, [f"{k:g}" for k in keeps])
    ax.minorticks_off()
    ax.set_xlim(max(keeps) * 1.25, min(keeps) / 1.25)  # reversed: fewer tokens to the right
    ax.set_ylim(-0.02, 1.02)  # a line at 0 or 1 stays visible
    what = ("visual tokens the LLM sees (each method at the keep that comes closest, per clip)" if by_tokens
            else "keep: share of visual tokens the LLM sees")
    ax.set_xlabel(what + "\n(each method's points nudged apart along the axis, so none hides another)")
    ax.set_ylabel("accuracy (whiskers: 95% Wilson interval)")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=9, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    failed = result.failed_questions
    scored = env["questions"] - failed
    ax.set_title(f"vidq eval: {env['model']}\nn = {scored} question{'s' if scored != 1 else ''} "
                 f"({env['scoring']} scoring)" + (f", {failed} failed" if failed else ""), loc="left", fontsize=10)
    if env.get("random_weights"):
        fig.text(0.99, 0.99, "RANDOM WEIGHTS: accuracy is meaningless", ha="right", va="top", color="#c0392b",
                 fontsize=9, fontweight="bold")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
