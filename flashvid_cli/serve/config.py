"""What a ``vidq serve`` process serves: the model, the request defaults, the media rules and the limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEFAULT_MODEL, AskConfig, ConfigError

DEFAULT_MAX_DATA_BYTES = 64 * 1024 * 1024  # a data: URL's decoded size cap, and a downloaded video's


@dataclass
class ServeConfig:
    """One server: ``defaults`` is every request's AskConfig before its own ``vidq`` and ``media_io_kwargs``."""

    model: str = DEFAULT_MODEL
    served_model_name: str | None = None  # the id clients send as "model"; the model's path or name by default
    device: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    defaults: AskConfig = field(default_factory=AskConfig)
    allowed_local_media_path: Path | None = None  # file:// URLs only under it; none allowed when None
    allow_url_download: bool = False  # http(s):// video URLs are downloaded
    allow_private_urls: bool = False  # ... even from hosts resolving to private, loopback or link-local addresses
    download_timeout: float = 30.0  # seconds for one whole download
    max_data_bytes: int = DEFAULT_MAX_DATA_BYTES
    kv_cache_size: int = 16  # conversations whose KV cache is kept (LRU); 0: every request prefills in full
    video_cache_size: int = 8  # compressed videos kept in memory (LRU)
    max_queue: int = 16  # requests waiting behind the one being generated; more get 429
    request_timeout: float | None = None  # seconds from arrival to the last token, queue included; None: no limit
    api_key: str | None = None
    encoded_cache: object = None  # an EncodedCache (the on-disk layer) or None
    engine: str = "local"  # "local": this process; "ray": Ray Serve replicas behind one ingress (serve/ray_engine.py)
    replicas: int | None = None  # --engine ray: model replicas (1 when None)
    gpus_per_replica: float | None = None  # --engine ray: GPUs each replica holds (0 when None: on CPU)
    replica: str | None = None  # set on each Ray replica: its id, reported as the response's vidq.replica

    def __post_init__(self) -> None:
        if self.kv_cache_size < 0:
            raise ConfigError(f"--kv-cache-size must be >= 0, got {self.kv_cache_size}")
        if self.video_cache_size < 0:
            raise ConfigError(f"--video-cache-size must be >= 0, got {self.video_cache_size}")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.max_data_bytes < 1:
            raise ConfigError(f"--max-data-bytes must be >= 1, got {self.max_data_bytes}")
        if not self.download_timeout > 0:
            raise ConfigError(f"--download-timeout must be > 0 seconds, got {self.download_timeout}")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ConfigError(f"--request-timeout must be > 0 seconds, got {self.request_timeout}")
        if not (0 <= self.port <= 65535):
            raise ConfigError(f"--port must be in 0..65535, got {self.port}")
        if self.allowed_local_media_path is not None:
            root = Path(self.allowed_local_media_path).expanduser()
            if not root.is_dir():
                raise ConfigError(f"--allowed-local-media-path {root} is not a directory")
            self.allowed_local_media_path = root.resolve()
        if self.api_key == "":
            self.api_key = None
        if self.engine not in {"local", "ray"}:
            raise ConfigError(f"--engine must be local or ray, got {self.engine!r}")
        if self.engine != "ray" and (self.replicas is not None or self.gpus_per_replica is not None):
            raise ConfigError("--replicas and --gpus-per-replica need --engine ray")
        if self.replicas is not None and self.replicas < 1:
            raise ConfigError(f"--replicas must be >= 1, got {self.replicas}")
        if self.gpus_per_replica is not None and not self.gpus_per_replica >= 0:
            raise ConfigError(f"--gpus-per-replica must be >= 0, got {self.gpus_per_replica}")

    @property
    def name(self) -> str:
        return self.served_model_name or self.model
