"""One video against one model before anything is decoded: the frames the sampling picks (from the frame map), the
size the model family resizes them to, and the visual tokens that leaves against the model's context (issue 28).

A video the family's resize rule refuses (Qwen's aspect ratio over 200) is a VideoError naming the file and its
size, not an internal error out of preprocessing; a video whose tokens alone, at the least the method keeps, pass
the context is a PromptTooLongError saying what to lower, said in a moment, not after decoding and encoding it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .config import AskConfig

if TYPE_CHECKING:
    from .pipelines.preflight import InputRules


def check_video_fits(video: str | Path, config: AskConfig, rules: InputRules | None,
                     new_tokens: int | None = None) -> None:
    """Refuse ``video`` under ``config`` before decoding where ``rules`` (``pipelines.preflight.input_rules(model)``
    or ``rules_of(pipeline)``; None: nothing known, nothing checked) show the model cannot take it.

    Raises VideoError (the file, its size, the family's reason) or PromptTooLongError (its token count, the context,
    what to lower). The count is a lower bound: the fewest tokens the method keeps (all for a method that ignores
    ``--keep``, ``--tokens`` when given, else keep x N rounded down), no text, no newline token; with
    ``--seek keyframe`` (frames that meet on one keyframe give one) only the geometry is checked. ``new_tokens``:
    the tokens to generate after the prompt, ``config.max_new_tokens`` when None.
    """
    if rules is None:
        return
    from .kernels import build
    from .pipelines.video import plan

    frames, (height, width), (source_h, source_w) = plan(video, frames=config.frames, fps=config.fps,
                                                         max_frames=config.max_frames, seek=config.seek)
    name = os.fspath(video)
    if (source_h, source_w) != (height, width):
        name += f" ({source_w}x{source_h}, downscaled at decode)"
    if config.seek == "keyframe":
        rules.input_size(name, frames, height, width)
        return
    method = build(config.method, config.keep, options=config.options)
    if method.ignores_keep:
        kept = lambda n: n  # noqa: E731
    elif config.tokens is not None:
        kept = lambda n: min(n, config.tokens)  # noqa: E731
    else:
        kept = lambda n: math.floor(config.keep * n)  # noqa: E731
    rules.check(name, frames, height, width, kept, config.max_new_tokens if new_tokens is None else new_tokens)
