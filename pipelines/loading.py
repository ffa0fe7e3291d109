"""Finding and reading a checkpoint: the device and dtype asked for, the model directory (local, hub cache or a
download), and the files in it (config, tokenizer, weights' headers, preprocessor config, chat template).

Every failure a user's model, option or machine can cause is one :class:`~.errors.ModelError` line naming the
culprit. Heavy imports (transformers, huggingface_hub, safetensors) happen inside the function that needs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError
from .preprocess import PreprocessConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> a torch device that exists here; else a one-line ModelError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):  # torch's own message lists ~20 device types vidq does not run on
        raise ModelError(f"--device {device!r} is not a device vidq runs on; choose one of: auto, cpu, cuda, "
                         "cuda:N") from None
    if resolved.type not in {"cpu", "cuda"}:
        raise ModelError(f"--device {device!r} is not supported; choose one of: auto, cpu, cuda, cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ModelError(f"--device {device} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _looks_like_path(model: str) -> bool:
    """A hub repo id is ``name`` or ``org/name``; anything else is meant as a local path."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1


# Files a checkpoint needs; weights in other formats (.bin, .pt) are not fetched.
_CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def resolve_checkpoint(model: str) -> Path:
    """A local directory holding ``model``: the directory itself, the hub cache, or a fresh download.

    The cache is tried first, so a cached model loads offline without waiting on the network; an uncached repo
    id is downloaded only after a quick reachability check, so a machine without network gets one clear line
    at once instead of minutes of retries.
    """
    path = Path(model).expanduser()
    if path.exists() and not path.is_dir():
        raise ModelError(f"--model {model!r} is a file; give a model directory or a Hugging Face repo id")
    if path.is_dir():
        return path
    if _looks_like_path(model):
        raise ModelError(f"model directory {model!r} does not exist")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=_CHECKPOINT_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - not (fully) cached: fall through to the download
        pass
    if constants.HF_HUB_OFFLINE or not _hub_reachable(constants.ENDPOINT):
        raise ModelError(
            f"model {model!r} is not in the local Hugging Face cache and the hub cannot be reached: download it "
            f"where there is network (`hf download {model}`), or point --model at a local directory holding its "
            "config.json, weights, tokenizer and preprocessor config"
        )
    try:
        return Path(snapshot_download(model, allow_patterns=_CHECKPOINT_FILES))
    except Exception as exc:  # noqa: BLE001 - gated, missing or failed repos all end here
        raise ModelError(f"cannot download {model!r} from the hub: {_first_line(exc)}") from None


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_config(path: Path, model: str) -> Any:
    """The checkpoint's config; a directory that is not a transformers model is a one-line error."""
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise ModelError(f"{model!r} is not a model directory: it has no config.json")
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{model!r} is not a supported model directory: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """The whole message on one line (a first line may stop mid-sentence, "...from one of: "), capped at ``limit``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# Files one of which a checkpoint's tokenizer needs (fast tokenizer, BPE vocabulary, SentencePiece, tiktoken).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer.tiktoken", "vocab.txt")


def load_tokenizer(path: Path, name: str) -> Any:
    """The checkpoint's tokenizer; a directory without tokenizer files is one whole sentence saying so."""
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"{name!r} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); copy the tokenizer "
                         "files from the checkpoint it came from into the model directory")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot load the tokenizer of {name!r}: {_one_line(exc)}") from None


def check_weights(path: Path) -> None:
    """Every ``*.safetensors`` file of ``path`` opens: its header parses and its tensors lie inside the file.

    Cheap (the header only; the data is memory-mapped, not read). A truncated download or a garbled file is
    one ModelError naming the file, instead of an internal error from deep inside loading.
    """
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - SafetensorError and OSError alike: the file is unusable
            raise ModelError(f"cannot read the weights {file}: {_one_line(exc, 160)}; the file is truncated or "
                             "corrupt: download or copy it again") from None


def read_json(path: Path, name: str) -> dict[str, Any] | None:
    """A JSON file of the checkpoint directory, or None when it has none; a file that does not parse is a
    ModelError naming it."""
    text = read_text(path, name)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ModelError(f"{path / name} is not valid JSON ({_first_line(exc)}); fix or replace the file") from None


def checkpoint_preprocess(path: Path, name: str) -> PreprocessConfig:
    """The checkpoint's video preprocessor config (or its image one); ModelError when it has neither."""
    preprocess = read_json(path, "video_preprocessor_config.json") or read_json(path, "preprocessor_config.json")
    if preprocess is None:
        raise ModelError(f"{name!r} has no preprocessor_config.json; vidq needs it to prepare frames")
    return PreprocessConfig.from_dict(preprocess)


def read_text(path: Path, name: str) -> str | None:
    return (path / name).read_text(encoding="utf-8") if (path / name).is_file() else None
