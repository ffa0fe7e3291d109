"""An on-disk cache of encoded videos: the vision tower's output before compression, so a video is encoded once.

    cache = EncodedCache()                                   # ~/.cache/vidq (VIDQ_CACHE_DIR overrides), 10 GiB cap
    key = cache.key(video, sampling=sampling_request(frames=8), model=model_fingerprint(model),
                    dtype=pipe.dtype, device=pipe.device, preprocess=pipe.preprocess_config, need=method.needs)
    hit = cache.get(key, device=pipe.device)                 # CachedVideo | None
    ...miss: decode, preprocess, encode...
    cache.put(key.with_indices(decoded.indices), encoded, video=info)

One entry serves every method and keep: it holds the features [T, N, D] in the model dtype and, whenever they
were computed, the importance [T, N], metric [T, N, Dk] and similarity [T, N, Ds] (float32). A lookup that
needs one the entry lacks is a miss; the new entry written after it holds the union (``put`` carries over what the old entry had).

The package, one concern per module: :mod:`.key` (what identifies an encoded video: the content, model and code
fingerprints, the sampling request, :class:`CacheKey`), :mod:`.entry` (one entry file: safetensors plus a checked
header), :mod:`.files` (atomic writes, partial writes left by killed writers), :mod:`.directory` (the entries,
LRU eviction to the cap, clearing), :mod:`.sizes` (``--cache-size``), :mod:`.store` (:class:`EncodedCache`),
:mod:`.compressed` (a streamed run's compressed tokens, per method and keep, in the same directory).
"""

from .directory import CacheInfo, ClearResult
from .entry import ENTRY_SUFFIX, CachedVideo
from .files import TMP_SUFFIX
from .key import (
    EDGE_BYTES, FORMAT_VERSION, FULL_HASH_BELOW, OPTIONAL, SAMPLE_BYTES, SAMPLES, CacheKey, _ranges,
    code_fingerprint, device_kind, fingerprint, full_hash, model_fingerprint, sampling_request,
)
from .sizes import DEFAULT_MAX_BYTES, CacheError, format_size, parse_size
from .store import ENV_DIR, EncodedCache, default_root

__all__ = [
    "CacheError", "CacheInfo", "CacheKey", "CachedVideo", "ClearResult", "DEFAULT_MAX_BYTES", "EncodedCache",
    "code_fingerprint", "default_root", "device_kind", "fingerprint", "format_size", "full_hash",
    "model_fingerprint", "parse_size", "sampling_request",
]
