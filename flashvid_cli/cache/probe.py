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
    up, built from the checkpoint's config files without loading it; for a streamed request (``config.stream``)
    the key of its compressed entry (:func:`~.compressed.compressed_key`: method name and options, keep among
    them), that ``stream_video`` looks up. None when that cannot be told cheaply (cache off, a hub model not in
    the local cache, a streamed method that reads the question, any error: loading the model says what is wrong)."""
    from ..kernels import build
    from ..pipelines.loading import checkpoint_preprocess, read_json, resolve_device, resolve_dtype
    from ..pipelines.random_init import is_random, random_preprocess
    from ..pipelines.registry import family
    from .compressed import compressed_key
    from .key import model_fingerprint, sampling_request

    if cache is None or not cache.enabled:
        return None
    try:
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        if is_random(model):
            adapter, preprocess = random_preprocess(model)
        else:
            path = Path(model).expanduser()
            if not path.is_dir():  # only what is already on disk: never a download for a guess
                from huggingface_hub import snapshot_download

                path = Path(snapshot_download(model, allow_patterns=["*.json"], local_files_only=True))
            preprocess = checkpoint_preprocess(path, model)
            adapter = family((read_json(path, "config.json") or {}).get("model_type"), model)
        # the method as the loaded stages build it (the family's recipe first): its options are in a streamed key
        method = build(config.method, config.keep, model_type=adapter.model_type, options=config.options)
        streamed = getattr(config, "stream", False)
        if streamed and "question" in method.needs:
            return None  # its streamed tokens are the question's: never cached (streaming._compressed_key)
        need = frozenset() if streamed else frozenset(method.needs) & {"importance", "metric", "similarity"}
        key = cache.key(
            video, sampling=sampling_request(config.frames, config.fps, config.max_frames, seek=config.seek,
                                             decoder=config.decoder),
            model=model_fingerprint(model), dtype=torch_dtype, device=torch_device, preprocess=preprocess, need=need,
        )
        return compressed_key(key, method) if streamed else key
    except Exception:  # noqa: BLE001 - a guess: loading and prepare() say what is wrong
        return None


def will_hit(cache: Any, video: str | os.PathLike, config: Any, model: str, device: str = "auto",
             dtype: str = "auto") -> bool:
    """True when the cache holds an entry this request will load: for a streamed one (``config.stream``), the
    compressed entry of its method, options and keep (``stream_video`` then decodes nothing); else the encoded
    video ``prepare`` reads (see :func:`key_before_load`)."""
    key = key_before_load(cache, video, config, model, device, dtype)
    if key is None:
        return False
    if getattr(config, "stream", False):
        from .compressed import holds_compressed

        return holds_compressed(cache, key)
    return cache.holds(key)
