"""Whether the encoded-video cache will hit, told before the model loads (issue 28): the CLI decodes a video ahead
while the model loads, which is wasted when the encoded video is already on disk.

The key (:meth:`~.store.EncodedCache.key`) takes five things from the loaded pipeline: its name, device, dtype,
preprocessor config and the model's fingerprint. Each is known beforehand: the device and dtype are what
``load_pipeline`` resolves ``--device``/``--dtype`` to (``resolve_device``, ``resolve_dtype``), the preprocessor
config is read from the checkpoint's ``video_preprocessor_config.json``/``preprocessor_config.json`` (or a
``random:`` spec's) exactly as the pipeline reads it, and the fingerprint hashes the checkpoint's files. So the key
built here equals the one :meth:`VideoStages.prepare` builds, and only the entry's header is read to tell a hit.

A wrong guess costs time, never an answer: ``prepare`` looks the entry up again with the loaded pipeline's own key
and decodes when that misses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def key_before_load(cache: Any, video: str | os.PathLike, config: Any, model: str, device: str = "auto",
                    dtype: str = "auto") -> Any:
    """The :class:`~.key.CacheKey` that ``VideoQA(model, device, dtype, cache).prepare(video, config)`` will look
    up, built from the checkpoint's config files without loading it; None when that cannot be told cheaply
    (cache off, a hub model not in the local cache, any error: loading the model says what is wrong)."""
    from ..kernels import build
    from ..pipelines.loading import checkpoint_preprocess, resolve_device, resolve_dtype
    from ..pipelines.random_init import is_random, random_preprocess
    from .key import model_fingerprint, sampling_request

    if cache is None or not cache.enabled:
        return None
    try:
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        if is_random(model):
            preprocess = random_preprocess(model)[1]
        else:
            path = Path(model).expanduser()
            if not path.is_dir():  # only what is already on disk: never a download for a guess
                from huggingface_hub import snapshot_download

                path = Path(snapshot_download(model, allow_patterns=["*.json"], local_files_only=True))
            preprocess = checkpoint_preprocess(path, model)
        need = build(config.method, config.keep, options=config.options).needs
        return cache.key(
            video, sampling=sampling_request(config.frames, config.fps, config.max_frames, seek=config.seek,
                                             decoder=config.decoder),
            model=model_fingerprint(model), dtype=torch_dtype, device=torch_device, preprocess=preprocess,
            need=frozenset(need) & {"importance", "metric", "similarity"},
        )
    except Exception:  # noqa: BLE001 - a guess: loading and prepare() say what is wrong
        return None


def will_hit(cache: Any, video: str | os.PathLike, config: Any, model: str, device: str = "auto",
             dtype: str = "auto") -> bool:
    """True when the cache holds an entry ``prepare`` will load for this request (see :func:`key_before_load`)."""
    key = key_before_load(cache, video, config, model, device, dtype)
    return key is not None and cache.holds(key)
