"""The ``ray`` engine of ``vidq annotate``: the same per-video work on Ray Data, for more than one machine.

A plug-in of the runner (:class:`RayEngine`, an :class:`~.engine.Engine`): it imports the config and the
per-video work (:mod:`.answer`), never the runner, which imports it only for ``--engine ray``.

Two stages streamed by Ray Data: decoding runs as plain CPU tasks (each in vidq's killable worker, with the time
limit), and answering runs in an actor pool whose actors load the model once (``num_gpus`` each). The driver
gets one row per line back and writes them through the same fsynced JSON-lines sink as the local engine, so the
output and resumability are identical. Connects to ``RAY_ADDRESS`` when set, else starts a local Ray.

Never a hang on an impossible request: the actors (``ray_actors`` x 1 CPU and ``ray_gpus_per_actor`` GPUs) plus
one CPU for the decode tasks are checked against the cluster's resources before anything starts (for a local
Ray, against this machine's CPUs and GPUs before Ray is even started). On SIGTERM or any error the driver shuts
Ray down, which ends the job's actors. Ray's own logs stay off the terminal (``log_to_driver=False``, level
ERROR, no usage-stats notice).

Ray's core worker ends the whole process with exit code 1 ("The core worker has already been shutdown ... The
process will exit") when any thread calls into it after ``ray.shutdown()``. Ray Data's scheduling thread and its
prefetch threads outlive the row iterator (the executor waits 2 s for its thread, the prefetcher not at all), so
the driver closes the iterator and waits for those threads before shutting Ray down, and a SIGTERM that comes
during that teardown is held until it is done (then exits 143), never raised inside it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from ..api import AskConfig, ConfigError, VideoQA
from .answer import answer_video, timed_decode
from .config import AnnotateConfig
from .engine import Todo

DECODE_CPUS = 0.5  # each decode task's CPU request; the check asks for at least one whole CPU besides the actors
ACTOR_CPUS = 1.0
# Set before Ray is imported (a user's own setting wins): no usage-stats notice and no "Unhandled error"
# tracebacks printed by Ray; the errors that matter reach vidq as exceptions.
RAY_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_IGNORE_UNHANDLED_ERRORS": "1", "RAY_DEDUP_LOGS": "0"}


class RayEngineError(ConfigError):
    """The Ray run failed (an actor died, the cluster went away); the lines written so far stay, a rerun resumes."""


class RayResourceError(ConfigError):
    """The cluster cannot hold what --ray-actors / --gpus-per-actor ask for; the message says what is missing."""


def _import_ray() -> Any:
    for key, value in RAY_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
        import ray.data  # noqa: F401 - the Data extra, not only the core
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'vidq[ray]' (or pip install 'ray[data]')") from None
    return ray


def _decode_row(row: dict[str, Any], ask: dict[str, Any], model: dict[str, str],
                cache_size: str | None = None) -> dict[str, Any]:
    """Ray task: decode one video; the frames (or the error) travel pickled to the answering actors.

    ``model`` (its ``model``, ``device``, ``dtype``): the frames are resized to its input size as they decode
    (``pipelines.frame_resizer``, from the checkpoint's config files), as the local engine does, so a 1080p video
    travels at the model's size, not its own. ``cache_size`` (None: no cache): when the encoded-video cache on
    this machine holds the video's encoding (:func:`~flashvid_cli.cache.probe.will_hit`), nothing is decoded and
    the actor's prepare reads the entry (or decodes, should it miss there); None too for ``--tokens auto``, which
    sizes its budget from the frames.
    """
    from ..pipelines import frame_resizer

    config = AskConfig(**ask)
    payload: dict[str, Any] = {"decoded": None, "decode_s": None, "error": None}
    if cache_size is not None:
        from ..cache import EncodedCache
        from ..cache.probe import will_hit

        if will_hit(EncodedCache(max_bytes=cache_size), row["video"], config, **model):
            return {"video": row["video"], "questions": row["questions"], "payload": pickle.dumps(payload)}
    try:
        payload["decoded"], payload["decode_s"] = timed_decode(
            row["video"], config, frame_resizer(model["model"], model["device"]))
    except Exception as exc:  # noqa: BLE001 - becomes the video's error lines
        payload["error"] = exc
    return {"video": row["video"], "questions": row["questions"], "payload": pickle.dumps(payload)}


class _Answerer:
    """Ray actor: one loaded model, answering every question of the videos it is given."""

    def __init__(self, model: str, device: str, dtype: str, ask: dict[str, Any], options: dict[str, Any],
                 cache_size: str | None = None, tokens_auto: bool = False):
        from ..cache import EncodedCache

        cache = EncodedCache(max_bytes=cache_size) if cache_size is not None else None
        self.qa = VideoQA(model, device=device, dtype=dtype, cache=cache)
        self.ask = AskConfig(**ask)
        self.options = options
        self.tokens_auto = tokens_auto

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        lines = []
        for video, questions, payload in zip(batch["video"], batch["questions"], batch["payload"]):
            p = pickle.loads(payload)
            records = answer_video(self.qa, str(video), json.loads(questions), self.ask, self.options,
                                   p["decoded"], p["error"], p["decode_s"], self.tokens_auto)
            lines += [json.dumps(r, ensure_ascii=False) for r in records]
        return {"line": lines}


def needed(config: AnnotateConfig) -> dict[str, float]:
    """What the run asks of the cluster: ``{"CPU": actors x 1 + 1 for decoding, "GPU": actors x GPUs per actor}``."""
    return {"CPU": config.ray_actors * ACTOR_CPUS + 1.0, "GPU": config.ray_actors * config.ray_gpus_per_actor}


def check_resources(config: AnnotateConfig, cluster: dict[str, float], where: str) -> None:
    """Raise RayResourceError, one line naming what is missing, when ``cluster`` (Ray's resource dict, e.g.
    ``ray.cluster_resources()``) cannot hold the actors plus a CPU for the decode tasks."""
    need = needed(config)
    have_cpu, have_gpu = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    actors = f"{config.ray_actors} actor{'s' if config.ray_actors != 1 else ''}"
    if need["GPU"] > have_gpu:
        raise RayResourceError(
            f"--engine ray: {actors} x --gpus-per-actor {config.ray_gpus_per_actor:g} need {need['GPU']:g} "
            f"GPU{'s' if need['GPU'] != 1 else ''}; "
            f"{where} has {have_gpu:g}: lower --gpus-per-actor (0 runs on CPU) or --ray-actors")
    if need["CPU"] > have_cpu:
        fits = int((have_cpu - 1.0) // ACTOR_CPUS)
        fix = f"lower --ray-actors to {fits}" if fits >= 1 else "use --engine local"
        raise RayResourceError(
            f"--engine ray: {actors} x {ACTOR_CPUS:g} CPU + 1 CPU for decoding need {need['CPU']:g} CPUs; {where} "
            f"has {have_cpu:g}: {fix} or add CPUs")


def local_resources() -> dict[str, float]:
    """The CPUs (this process's affinity) and CUDA GPUs a local Ray started here gets (they are passed to it)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is a dependency
        gpus = 0
    return {"CPU": float(cpus), "GPU": float(gpus)}


def preflight(config: AnnotateConfig) -> None:
    """Fail in a second, before Ray or the model is loaded, on a request a local Ray started here cannot hold."""
    initialized = "ray" in sys.modules and sys.modules["ray"] is not None and sys.modules["ray"].is_initialized()
    if not initialized and not os.environ.get("RAY_ADDRESS"):
        check_resources(config, local_resources(), "this machine")


def run_ray(todo: list[tuple[str, list[str]]], config: AnnotateConfig) -> Iterator[dict[str, Any]]:
    """Run ``todo`` on Ray Data and yield each line as it arrives (in no particular order).

    Raises RayResourceError before starting anything the cluster cannot hold; shuts down the Ray it started
    (ending its actors) on return, error or SIGTERM (then exits 143).
    """
    import dataclasses

    ray = _import_ray()
    started_here = local = False
    main = threading.current_thread() is threading.main_thread()
    before_ray = (signal.getsignal(signal.SIGTERM) or signal.SIG_DFL) if main else None  # ray.init sets its own
    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):  # a local Ray: check before paying for its start
            here = local_resources()
            check_resources(config, here, "this machine")
            ray.init(num_cpus=int(here["CPU"]), num_gpus=int(here["GPU"]), include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR", configure_logging=True)
            local = True
        else:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
        started_here = True
    held: list[int] = []  # a SIGTERM that came during the teardown, raised once it is done
    threads_before = set(threading.enumerate())
    try:
        check_resources(config, ray.cluster_resources(), "the Ray cluster")
        if not local:  # a shared cluster may be busy: what its other jobs hold now would make this one wait
            check_resources(config, ray.available_resources(), "the Ray cluster (free now)")
        if main:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)  # after ray.init, which sets its own
        yield from _stream(ray, todo, config, dataclasses.asdict(config.ask))
    finally:
        if main:
            signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
        try:
            if started_here:
                _join_new_threads(threads_before)  # nothing may call into Ray once it is shut down
                ray.shutdown()  # ends this job's actors and the local Ray's processes
        finally:
            if main:
                signal.signal(signal.SIGTERM, before_ray)
    if held:
        raise SystemExit(128 + held[0])


class RayEngine:
    """``--engine ray`` as the runner calls it: :func:`preflight`, then :func:`run_ray`."""

    def preflight(self, config: AnnotateConfig) -> None:
        """Fail in a second, before Ray or the model is loaded, on a request a local Ray cannot hold."""
        preflight(config)

    def run(self, todo: Todo, config: AnnotateConfig) -> Iterator[dict[str, Any]]:
        """Run ``todo`` on Ray Data, yielding each line as it arrives; closing it shuts down the Ray it started.

        Each video is first checked against the model from its frame map and the checkpoint's config files
        (:func:`~flashvid_cli.preflight.check_video_fits`, as the local engine does before decoding): one the
        model cannot take (tokens past the context, a geometry the family refuses, a sampling that fails) gets
        its error lines here, with no Ray started and no model loaded for it; only the others go to Ray.
        """
        return _checked_then_run(todo, config)


def _checked_then_run(todo: Todo, config: AnnotateConfig) -> Iterator[dict[str, Any]]:
    from ..pipelines.preflight import input_rules
    from ..preflight import check_video_fits
    from .answer import error_text, make_record

    rules, options, left = input_rules(config.model), config.options(), []
    for video, questions in todo:
        try:
            check_video_fits(video, config.checked(), rules)
        except Exception as exc:  # noqa: BLE001 - one bad video costs its lines, never the run (as locally)
            for question in questions:
                yield make_record(video, question, options, error=error_text(exc))
        else:
            left.append((video, questions))
    if left:
        yield from run_ray(left, config)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_ray's finally: Ray is shut down, the output closed


THREADS_JOIN_S = 30.0  # the most the teardown waits for Ray Data's threads to see the executor has stopped


def _join_new_threads(before: set[threading.Thread], timeout_s: float = THREADS_JOIN_S) -> None:
    """Wait (at most ``timeout_s`` in all) for the daemon threads started since ``before`` (Ray Data's scheduling
    and prefetch threads) to end, so none of them calls into Ray after ``ray.shutdown()``.

    Ray Data's block prefetcher thread (``WaitBlockPrefetcher``) is stopped only at the end of a complete
    iteration, and its thread keeps its owner alive, so after an early stop it would wait for the process's end,
    woken by the pipeline thread's last ``prefetch_blocks`` into a ``ray.wait``: a thread whose target is a bound
    method of a Ray object with ``stop()`` is stopped first, then joined like the others.
    """
    import time

    deadline = time.monotonic() + timeout_s
    for thread in set(threading.enumerate()) - before:
        if thread is threading.current_thread() or not thread.daemon:
            continue
        owner = getattr(getattr(thread, "_target", None), "__self__", None)
        if type(owner).__module__.startswith("ray.") and callable(getattr(owner, "stop", None)):
            owner.stop()
        thread.join(max(0.0, deadline - time.monotonic()))


def _stream(ray: Any, todo: list[tuple[str, list[str]]], config: AnnotateConfig,
            ask: dict[str, Any]) -> Iterator[dict[str, Any]]:
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # vidq draws its own
    context.print_on_execution_start = False
    items = [{"video": video, "questions": json.dumps(questions)} for video, questions in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Different CPU requests keep Ray Data from fusing the decode into the actors, so decoding overlaps answering.
    decode = {"ask": ask, "model": {"model": config.model, "device": config.device, "dtype": config.dtype},
              "cache_size": None if config.tokens_auto else config.cache_size}
    ds = ds.map(_decode_row, fn_kwargs=decode, num_cpus=DECODE_CPUS)
    answer = dict(
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=config.ray_actors),
        num_cpus=ACTOR_CPUS,
        num_gpus=config.ray_gpus_per_actor or None,
        fn_constructor_kwargs={"model": config.model, "device": config.device, "dtype": config.dtype, "ask": ask,
                               "options": config.options(), "cache_size": config.cache_size,
                               "tokens_auto": config.tokens_auto},
    )
    # Ray Data restarts a dead actor without end by default; an actor that dies (say, killed for memory) should
    # stop the run with its error instead (a rerun resumes). No restarts also keeps Ray's C++ warning about
    # restartable actors with arguments in the object store off the terminal. Only the deprecated
    # ray_remote_args path takes max_restarts: its deprecation warning is silenced, and a Ray without it is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = ds.map_batches(_Answerer, **answer, max_restarts=0)
        except TypeError:
            ds = ds.map_batches(_Answerer, **answer)
    rows = iter(ds.iter_rows())
    try:
        for row in rows:
            yield json.loads(row["line"])
    except ray.exceptions.RayError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise RayEngineError(f"--engine ray: {type(exc).__name__}: {lines[-1] if lines else ''} (the lines "
                             "written so far are kept; rerun to resume)") from None
    finally:  # now, not when the generator is collected: its close shuts the executor down (before ray.shutdown)
        close = getattr(rows, "close", None)
        if close is not None:
            close()
