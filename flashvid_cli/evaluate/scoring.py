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


class Scorer:
    """The forward passes of one question's scoring: :meth:`VideoQA.last_logits` (a full forward each), or, with
    ``reuse`` (a ``PromptCache`` of the video's compressed tokens, for a method with no in-LLM stage and no
    decoding sparsity), only what the cache does not already hold: a question's options share its prompt, and
    where the template puts the video first a video's questions share its prefill. ``prefix`` says, as ask's
    report does, what became of the video's prefill: "hit" (reused from an earlier question), "miss" (prefilled,
    kept for the next) or "off" (it cannot serve another question: ``video_shared`` False, for a template that asks
    before the video or a method whose tokens are the question's; or no cache at all)."""

    def __init__(self, qa: VideoQA, prune: Any = None, sparse: Any = None, reuse: Any = None,
                 video_shared: bool = True) -> None:
        self.qa, self.prune, self.sparse = qa, prune, sparse
        self.reuse = reuse if prune is None and sparse is None else None
        self.prefix: str | None = None if self.reuse is not None and video_shared else "off"

    def logits(self, inputs: dict[str, Any], count: int = 1, append: Sequence[int] = ()) -> Any:
        """Float32 logits ``[count, vocab]`` at the last ``count`` positions of the prompt then ``append``."""
        if self.reuse is None:
            return self.qa.last_logits(inputs, count=count, append=append, prune=self.prune, sparse=self.sparse)
        logits, reused = self.reuse.logits(inputs, count, append)
        if self.prefix is None:
            from ..pipelines.prefix import video_end

            self.prefix = "hit" if reused >= video_end(self.qa.pipeline, inputs["input_ids"]) > 0 else "miss"
        return logits


def letter_scores(scorer: Scorer, inputs: dict[str, Any], count: int) -> list[float]:
    """The logit of each option's letter (A, B, ...) at the first generated position: one forward."""
    ids = [scorer.qa.token_ids(letter)[0] for letter in LETTERS[:count]]
    return scorer.logits(inputs)[-1, ids].tolist()


def likelihood_scores(scorer: Scorer, inputs: dict[str, Any], option_ids: Sequence[Sequence[int]],
                      one_pass: bool = True) -> list[float]:
    """Each option's summed token log-probabilities as the answer right after the prompt.

    With ``one_pass`` and every option one token, one forward over the prompt scores them all (exact: each
    score is the last position's log-probability of that token); otherwise one forward per option (with the
    scorer's cache: the prompt once, then each option's tokens). The method's in-LLM stage and decoding sparsity
    run as generate() runs them.
    """
    import torch

    if one_pass and all(len(ids) == 1 for ids in option_ids):
        logp = scorer.logits(inputs)[-1].log_softmax(-1)  # [vocab]
        return [float(logp[ids[0]]) for ids in option_ids]
    scores = []
    for ids in option_ids:
        # Position L - 1 + j predicts option token j; the last position (after the option) predicts nothing asked.
        logits = scorer.logits(inputs, count=len(ids) + 1, append=ids)[:-1]  # [n, vocab]
        picked = logits.log_softmax(-1).gather(1, torch.tensor(ids, device=logits.device)[:, None])
        scores.append(float(picked.sum()))
    return scores


def score_question(qa: VideoQA, prepared: PreparedVideo, compressed: CompressedVideo, question: Question,
                   scoring: str, text_after_video: str | None = None, scorer: Scorer | None = None) -> list[float]:
    """One score per option for ``question`` over the compressed video; the prediction is the argmax. A method's
    in-LLM stage (``llm_prune()``) runs in every forward pass, selecting as ``generate()`` would, and its decoding
    sparsity (``decode_sparsity()``) decodes an option's tokens after the first over the compact cache.
    ``scorer``: a :class:`Scorer` for this question (with a cache to reuse; its ``prefix`` says what it found),
    else full forward passes."""
    if scorer is None:
        scorer = Scorer(qa, compressed.method.llm_prune(), compressed.method.decode_sparsity())
    if scoring == "letter":
        inputs = qa.prompt_inputs(prepared, compressed, letter_prompt(question), text_after_video)
        return letter_scores(scorer, inputs, len(question.options))
    option_ids = [qa.token_ids(text) for text in question.options]
    inputs = qa.prompt_inputs(prepared, compressed, question.question, text_after_video)
    return likelihood_scores(scorer, inputs, option_ids)
