"""The bench's environment record: device, versions, model and sampling, so that its numbers can be trusted."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from typing import Any

from ..videoqa import VideoQA
from .runs import BenchConfig


def environment(qa: VideoQA, config: BenchConfig, videos: Sequence[str]) -> dict[str, Any]:
    """Device, versions, model and sampling: what a reader needs to trust or reproduce the numbers."""
    import torch
    import transformers

    from .. import __version__
    from ..pipelines.random_init import is_random

    info = qa.info
    device = torch.device(info.device)
    ask = config.ask
    return {
        "device": info.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "dtype": info.dtype,
        "model": info.name,
        "model_type": info.model_type,
        "random_weights": is_random(info.name),
        "load_s": qa.load_s,
        "videos": [str(v) for v in videos],
        "question": config.question,
        "frames": {"frames": ask.frames, "fps": ask.fps, "max_frames": ask.max_frames, "decoder": ask.decoder,
                   "seek": ask.seek},
        "tokens": list(config.tokens),
        "max_new_tokens": ask.max_new_tokens,
        "repeat": config.repeat,
        "warmup": config.warmup,
        "options": dict(config.options),
        "versions": {
            "vidq": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda,
        },
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "prefill_tflops_formula": "(2 * N_llm_non_embedding * L + 4 * layers * hidden * L^2 / 2) / 1e12, L = prompt tokens",
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
