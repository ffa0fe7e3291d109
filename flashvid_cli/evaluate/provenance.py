"""The eval's environment record: model, device, versions, data and scoring, so that its numbers can be trusted."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from typing import Any

from ..videoqa import VideoQA
from .dataset import Question
from .runs import EvalConfig


def environment(qa: VideoQA, config: EvalConfig, questions: Sequence[Question], rule: str | None,
                chance: float) -> dict[str, Any]:
    """Model, device, versions, data and scoring: what a reader needs to trust or reproduce the numbers."""
    import torch
    import transformers

    from .. import __version__
    from ..bench.provenance import cpu_name
    from ..pipelines.random_init import is_random

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
