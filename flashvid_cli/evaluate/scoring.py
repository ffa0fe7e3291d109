"""Scoring a question's options over a compressed video: summed option log-likelihoods, or the letters' logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..results import CompressedVideo, PreparedVideo
from ..videoqa import VideoQA
from .dataset import LETTERS, Question

LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def letter_prompt(question: Question) -> str:
    """The question, one "A. text" line per option, and the instruction to answer with the letter."""
    lines = [question.question, *(f"{LETTERS[i]}. {text}" for i, text in enumerate(question.options))]
    return "\n".join([*lines, LETTER_INSTRUCTION])


def letter_scores(qa: VideoQA, inputs: dict[str, Any], count: int, prune: Any = None, sparse: Any = None
                  ) -> list[float]:
    """The logit of each option's letter (A, B, ...) at the first generated position: one forward."""
    ids = [qa.token_ids(letter)[0] for letter in LETTERS[:count]]
    return qa.last_logits(inputs, prune=prune, sparse=sparse)[-1, ids].tolist()


def likelihood_scores(qa: VideoQA, inputs: dict[str, Any], option_ids: Sequence[Sequence[int]],
                      one_pass: bool = True, prune: Any = None, sparse: Any = None) -> list[float]:
    """Each option's summed token log-probabilities as the answer right after the prompt.

    With ``one_pass`` and every option one token, one forward over the prompt scores them all (exact: each
    score is the last position's log-probability of that token); otherwise one forward per option. ``prune`` and
    ``sparse``: the method's in-LLM stage and decoding sparsity, run as generate() runs them.
    """
    import torch

    if one_pass and all(len(ids) == 1 for ids in option_ids):
        logp = qa.last_logits(inputs, prune=prune, sparse=sparse)[-1].log_softmax(-1)  # [vocab]
        return [float(logp[ids[0]]) for ids in option_ids]
    scores = []
    for ids in option_ids:
        # Position L - 1 + j predicts option token j; the last position (after the option) predicts nothing asked.
        logits = qa.last_logits(inputs, count=len(ids) + 1, append=ids, prune=prune, sparse=sparse)[:-1]  # [n, vocab]
        picked = logits.log_softmax(-1).gather(1, torch.tensor(ids, device=logits.device)[:, None])
        scores.append(float(picked.sum()))
    return scores


def score_question(qa: VideoQA, prepared: PreparedVideo, compressed: CompressedVideo, question: Question,
                   scoring: str, text_after_video: str | None = None) -> list[float]:
    """One score per option for ``question`` over the compressed video; the prediction is the argmax. A method's
    in-LLM stage (``llm_prune()``) runs in every forward pass, selecting as ``generate()`` would, and its decoding
    sparsity (``decode_sparsity()``) decodes an option's tokens after the first over the compact cache."""
    prune, sparse = compressed.method.llm_prune(), compressed.method.decode_sparsity()
    if scoring == "letter":
        inputs = qa.prompt_inputs(prepared, compressed, letter_prompt(question), text_after_video)
        return letter_scores(qa, inputs, len(question.options), prune, sparse)
    option_ids = [qa.token_ids(text) for text in question.options]
    inputs = qa.prompt_inputs(prepared, compressed, question.question, text_after_video)
    return likelihood_scores(qa, inputs, option_ids, prune=prune, sparse=sparse)
