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

Modules: ``dataset`` (the questions file), ``runs`` (which runs to make), ``scoring``, ``measure`` (the run),
``results``, ``provenance`` (the environment record), ``plot`` (the PNG).
"""

from .dataset import LETTERS, DatasetError, Question, answer_index, read_dataset, strip_prefixes
from .measure import PREFETCH, ProgressCallback, chance_level, run_eval
from .plot import LINESTYLES, MARKERS, method_offsets, plot_eval, require_matplotlib, wilson_interval
from .provenance import environment
from .results import EvalResult, EvalRow, Prediction, TypeScore
from .runs import DEFAULT_KEEPS, SCORINGS, EvalConfig
from .scoring import LETTER_INSTRUCTION, Scorer, letter_prompt, letter_scores, likelihood_scores, score_question

__all__ = [
    "DEFAULT_KEEPS", "LETTERS", "LETTER_INSTRUCTION", "LINESTYLES", "MARKERS", "PREFETCH", "SCORINGS", "DatasetError",
    "EvalConfig", "EvalResult", "EvalRow", "Prediction", "ProgressCallback", "Question", "TypeScore", "answer_index",
    "chance_level", "environment", "letter_prompt", "letter_scores", "likelihood_scores", "method_offsets",
    "plot_eval", "read_dataset", "require_matplotlib", "run_eval", "Scorer", "score_question", "strip_prefixes",
    "wilson_interval",
]
