"""The ``ray`` engine of ``vidq annotate``: the same per-video work on Ray Data, for more than one machine.

Two stages streamed by Ray Data: decoding runs as plain CPU tasks (each in vidq's killable worker, with the time
limit), and answering runs in an actor pool whose actors load the model once (``num_gpus`` each). The driver
gets one row per line back and writes them through the same fsynced JSON-lines sink as the local engine, so the
output and resumability are identical. Connects to ``RAY_ADDRESS`` when set, else starts a local Ray.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterator
from typing import Any

from .annotate import AnnotateConfig, answer_video, timed_decode
from .api import AskConfig, ConfigError, VideoQA


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the Data extra, not only the core
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'vidq[ray]' (or pip install 'ray[data]')") from None
    return ray


def _decode_row(row: dict[str, Any], ask: dict[str, Any]) -> dict[str, Any]:
    """Ray task: decode one video; the frames (or the error) travel pickled to the answering actors."""
    config = AskConfig(**ask)
    try:
        decoded, seconds = timed_decode(row["video"], config)
        payload = {"decoded": decoded, "decode_s": seconds, "error": None}
    except Exception as exc:  # noqa: BLE001 - becomes the video's error lines
        payload = {"decoded": None, "decode_s": None, "error": exc}
    return {"video": row["video"], "questions": row["questions"], "payload": pickle.dumps(payload)}


class _Answerer:
    """Ray actor: one loaded model, answering every question of the videos it is given."""

    def __init__(self, model: str, device: str, dtype: str, ask: dict[str, Any], options: dict[str, Any]):
        self.qa = VideoQA(model, device=device, dtype=dtype)
        self.ask = AskConfig(**ask)
        self.options = options

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        lines = []
        for video, questions, payload in zip(batch["video"], batch["questions"], batch["payload"]):
            p = pickle.loads(payload)
            records = answer_video(self.qa, str(video), json.loads(questions), self.ask, self.options,
                                   p["decoded"], p["error"], p["decode_s"])
            lines += [json.dumps(r, ensure_ascii=False) for r in records]
        return {"line": lines}


def run_ray(todo: list[tuple[str, list[str]]], config: AnnotateConfig) -> Iterator[dict[str, Any]]:
    """Run ``todo`` on Ray Data and yield each line as it arrives (in no particular order)."""
    import dataclasses

    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # vidq draws its own
    context.print_on_execution_start = False
    ask = dataclasses.asdict(config.ask)
    items = [{"video": video, "questions": json.dumps(questions)} for video, questions in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Different CPU requests keep Ray Data from fusing the decode into the actors, so decoding overlaps answering.
    ds = ds.map(_decode_row, fn_kwargs={"ask": ask}, num_cpus=0.5)
    ds = ds.map_batches(
        _Answerer,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=config.ray_actors),
        num_cpus=1,
        num_gpus=config.ray_gpus_per_actor or None,
        fn_constructor_kwargs={"model": config.model, "device": config.device, "dtype": config.dtype, "ask": ask,
                               "options": config.options()},
    )
    for row in ds.iter_rows():
        yield json.loads(row["line"])
