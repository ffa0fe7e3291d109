"""What every model adapter shares: loading, the chat prompt, timed generation, and the data passed between stages.

An adapter (one file per HF ``model_type``) writes only what its family does differently: preprocessing, how the
vision tower is run and its importance read, and how compressed tokens enter the prompt.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList

from ..kernels import Compressed, Grid
from .errors import ModelError, NonFiniteLogitsError, PromptTooLongError
from .preprocess import FrameResizer, PreprocessConfig

if TYPE_CHECKING:
    from ..kernels.fastv import LLMPrune
    from .llm_prune import PruneRun

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Pixels:
    """Model-ready pixel values and what the adapter needs to read them (e.g. Qwen's grid)."""

    values: Tensor
    frames: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EncodedVideo:
    """Visual tokens of one clip before compression."""

    feats: Tensor  # [T, N, D] in the model dtype (post-projector/pooling or post-merger)
    grid: Grid
    importance: Tensor | None = None  # [T, N] float32, attention received in the hooked vision layer
    metric: Tensor | None = None  # [T, N, Dk] float32, that layer's keys averaged over heads
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationOptions:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    return_logits: bool = False


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_s: float  # time to first token: the prefill forward and the first sampled token
    decode_s: float  # every later token
    logits: list[Tensor] | None = None  # per step [1, vocab], only with return_logits
    visual_by_layer: list[int] | None = None  # with an in-LLM stage: visual tokens each decoder layer saw


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a perf_counter reading after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


class _Clock:
    """A generate() streamer that timestamps the first generated token (device-synchronised) and hands each
    generated token id to ``on_token`` (for streaming) when given."""

    def __init__(self, device: torch.device, on_token: Any = None):
        self.device = device
        self.calls = 0
        self.first_token_at: float | None = None
        self.on_token = on_token

    def put(self, value: Tensor) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            synchronize(self.device)
            self.first_token_at = time.perf_counter()
        if self.calls >= 2 and self.on_token is not None:
            for token in value.reshape(-1).tolist():
                self.on_token(token)

    def end(self) -> None:
        pass


def chat_prompt(tokenizer: Any, chat_template: str | None, question: str) -> str:
    """The chat prompt of one user turn (a video, then the question) ready for the assistant's answer."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                         add_generation_prompt=True)


# Stands for the question while the chat template is rendered: plain letters no template or tokenizer treats specially.
_QUESTION_SLOT = "VIDQQUESTIONSLOTf3a9c1"


def prompt_ids(tokenizer: Any, chat_template: str | None, video_token: str, question: str, count: int,
               name: str = "the model") -> list[int]:
    """Token ids of :func:`chat_prompt` with its one ``video_token`` placeholder repeated ``count`` times.

    The single place that builds a prompt's ids: inference and the demo model's training both call it.
    The question is text, never control: the template is rendered around a stand-in, its own parts are tokenized
    with special tokens parsed (``<|im_start|>``...), and the question with them split
    (``split_special_tokens=True``), so ``<video>``, ``<|video_pad|>`` or ``<|im_end|>`` typed into a question are
    ordinary characters and cannot change the prompt's structure. Each part starts and ends at a pre-tokenizer
    boundary (after a template newline or special token, before a special token), so an ordinary question gets
    the ids of the whole prompt tokenized in one piece (a test checks it on both families' tokenizers).
    """
    if chat_template is None and getattr(tokenizer, "chat_template", None) is None:
        raise ModelError(f"{name!r} has no chat template; copy chat_template.jinja from the checkpoint it came from "
                         "into the model directory")
    try:
        text = chat_prompt(tokenizer, chat_template, _QUESTION_SLOT)
    except ValueError as exc:  # a template that raises on a video and a text part
        raise ModelError(f"the chat template of {name!r} cannot make a prompt: {_one_line(exc, 200)}") from None
    if text.count(video_token) != 1 or text.count(_QUESTION_SLOT) != 1:
        raise ModelError(f"the chat template of {name!r} must hold one {video_token} placeholder and the question "
                         "once")
    ids: list[int] = []
    for part in re.split(f"({re.escape(video_token)}|{_QUESTION_SLOT})", text):
        if part == video_token:
            ids += [tokenizer.convert_tokens_to_ids(video_token)] * count
        elif part == _QUESTION_SLOT:
            ids += tokenizer(question, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        elif part:
            ids += tokenizer(part, add_special_tokens=False)["input_ids"]
    return ids


class _FiniteLogits(LogitsProcessor):
    """Checks the first generated position's logits: NaN or +inf (corrupt weights, an overflowing dtype) raise.

    Without it a checkpoint with NaN weights "answers" token 0 max_new_tokens times, decoded as ''. One
    reduction and one device sync per generate() call; -inf alone is allowed (processors mask tokens with it).
    """

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype, self.checked = name, dtype, False

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if not self.checked:
            self.checked = True
            raise_if_not_finite(scores, self.name, self.dtype, allow_masked=True)
        return scores


def raise_if_not_finite(logits: Tensor, name: str, dtype: torch.dtype, allow_masked: bool = False) -> None:
    """NonFiniteLogitsError naming the checkpoint when ``logits`` [..., vocab] hold NaN or +inf (or -inf, unless
    ``allow_masked``; all -inf is always an error)."""
    if allow_masked:
        bad = torch.isnan(logits).any() | torch.isposinf(logits).any() | torch.isneginf(logits).all()
    else:
        bad = ~torch.isfinite(logits).all()
    if bool(bad):
        if dtype == torch.float32:
            cause, fix = "its weights are corrupt", "check its *.safetensors files (download them again)"
        else:
            dtype_name = str(dtype).removeprefix("torch.")
            cause = f"its weights are corrupt or {dtype_name} overflows"
            fix = "try --dtype float32, or check its *.safetensors files (download them again)"
        raise NonFiniteLogitsError(f"{name!r} produced non-finite logits (NaN or infinity): {cause}; {fix}")


class Pipeline:
    """Base of a model family. A family is one file ``pipelines/<model_type>.py`` (found by :mod:`.registry`)
    holding everything vidq knows about it: preprocessing, encoding with importance, the prompt and its positions,
    where the LLM body is, the stand-ins a ``random:`` model needs and the recipe of its tiny test checkpoint.
    Nothing outside that file names the family; callers read the class attributes below instead.
    """

    model_type: ClassVar[str]
    model_class: ClassVar[str]  # name of the transformers class
    video_token: ClassVar[str]
    extra_video_tokens: ClassVar[int] = 0  # tokens the family adds after the video (LLaVA-OneVision's newline)
    # Capability: the rules a family offers for where text after the video resumes (empty: the family has no
    # choice to make) and its default. Callers validate a user's ``--text-after-video`` against these.
    text_after_video_rules: ClassVar[tuple[str, ...]] = ()
    text_after_video: ClassVar[str | None] = None
    # Offline stand-ins of the checkpoint's non-weight files, for ``random:`` models (random_init.py) and the tiny
    # test checkpoints: the tokenizer's special tokens and a chat template reduced to one video and a question.
    special_tokens: ClassVar[tuple[str, ...]] = ()
    stand_in_chat_template: ClassVar[str] = ""

    def __init__(self, model: Any, tokenizer: Any, preprocess: PreprocessConfig, chat_template: str | None,
                 name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess_config = preprocess
        self.chat_template = chat_template
        self.name = name

    # -- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: Path, name: str, config: Any, device: torch.device, dtype: torch.dtype
                        ) -> Pipeline:
        import transformers

        model_cls = getattr(transformers, cls.model_class)
        kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
        if device.type == "cuda":
            kwargs["device_map"] = "auto" if device.index is None else {"": device.index}
        check_weights(path)
        try:
            net = model_cls.from_pretrained(path, config=config, **kwargs).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load {name!r}: {_one_line(exc)}") from None
        tokenizer = load_tokenizer(path, name)
        if device.type != "cuda":
            net.to(device)
        preprocess = checkpoint_preprocess(path, name)
        template = read_text(path, "chat_template.jinja")
        if template is None and (legacy := read_json(path, "chat_template.json")):
            template = legacy.get("chat_template")
        return cls(net, tokenizer, preprocess, template, name)

    # -- the family's offline stand-ins and its tiny checkpoint ---------------------------------------------------
    @classmethod
    def stand_in_preprocessor(cls, config: Any) -> dict[str, Any]:
        """The video preprocessor config the real checkpoints of this family ship (for a ``random:`` model)."""
        raise NotImplementedError

    @classmethod
    def point_special_tokens(cls, raw: dict[str, Any], ids: dict[str, int]) -> None:
        """Set the model config's (``raw``, a config.json dict) family-specific token ids to the stand-in
        tokenizer's ``ids`` (token -> id), in place. The text config's eos/pad ids are set by the caller."""
        raise NotImplementedError

    @classmethod
    def build_tiny(cls, out: Path, seed: int = 0) -> Path:
        """Write a tiny randomly initialised checkpoint of the real class to ``out`` (well under 1 MB, offline,
        a fraction of a second); tests build one per family in a session fixture. Returns ``out``."""
        raise NotImplementedError

    @property
    def language_model(self) -> Any:
        """The LLM's decoder body: ``.layers``, ``.rotary_emb``, ``.norm``, ``.embed_tokens``."""
        return self.model.model.language_model

    def question_embeddings(self, question: str) -> Tensor:
        """The LLM's input embeddings of the question's tokens (no chat template): [M, D] in the model dtype."""
        ids = self.tokenizer(question, add_special_tokens=False)["input_ids"] or [self.tokenizer.pad_token_id]
        with torch.no_grad():
            return self.language_model.embed_tokens(torch.tensor(ids, device=self.device))

    def visual_positions(self, input_ids: Tensor) -> Tensor:
        """Positions [Lv] of the compressed video tokens in ``input_ids [1, L]``, ascending: every video placeholder
        (in one run, or in blocks as Qwen3-VL lays them out), less the ``extra_video_tokens`` the family adds after
        the video (kept by an in-LLM stage, as FlashVID keeps LLaVA's trailing newline)."""
        where = (input_ids[0] == self.tokenizer.convert_tokens_to_ids(self.video_token)).nonzero()[:, 0]
        return where[: max(0, where.numel() - self.extra_video_tokens)]

    def llm_pruning(self, inputs: dict[str, Any], stage: LLMPrune | None, scored_at: int | None = None) -> Any:
        """Context in which the model's prefill of ``inputs`` runs ``stage`` (a null context when None); it yields
        the :class:`~.llm_prune.PruneRun` (or None). ``scored_at``: the position whose attention selects (None:
        the last; see :func:`~.llm_prune.prune_in_llm`)."""
        if stage is None:
            return nullcontext(None)
        from .llm_prune import prune_in_llm

        visual = self.visual_positions(inputs["input_ids"])
        return prune_in_llm(self.language_model, stage, int(inputs["input_ids"].shape[1]), visual,
                            self.extra_video_tokens, scored_at)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    # -- family steps --------------------------------------------------------------------------------------
    @classmethod
    def input_size(cls, cfg: PreprocessConfig, frames: int, height: int, width: int) -> tuple[int, int]:
        """(height, width) the HF processor resizes ``frames`` frames of (height, width) px to, for ``cfg``."""
        raise NotImplementedError

    @classmethod
    def max_input_pixels(cls, cfg: PreprocessConfig) -> int | None:
        """An upper bound on the pixels of one resized frame (None: no bound below the source size)."""
        return None

    @classmethod
    def resizer(cls, cfg: PreprocessConfig, device: torch.device) -> FrameResizer:
        """The input size rule of ``cfg`` as a frame resizer for ``video.decode(..., resize=...)``."""
        return FrameResizer(lambda n, h, w: cls.input_size(cfg, n, h, w), cfg.resample, device,
                            cls.max_input_pixels(cfg))

    def frame_resizer(self) -> FrameResizer:
        """This model's frame resizer (its preprocessor config, on its device)."""
        return self.resizer(self.preprocess_config, self.device)

    def preprocess(self, frames: np.ndarray, timestamps: list[float]) -> Pixels:
        """uint8 frames [T, H, W, 3] -> model pixel values, exactly as the HF processor makes them. Frames
        already at :meth:`input_size` (resized while decoding) are not resized again."""
        raise NotImplementedError

    def encode(self, pixels: Pixels, need: frozenset[str] = frozenset()) -> EncodedVideo:
        """Vision tower (+ projector/pooling or merger); ``need`` may ask for "importance" and "metric"."""
        raise NotImplementedError

    def inputs(self, encoded: EncodedVideo, compressed: Compressed, question: str,
               text_after_video: str | None = None) -> dict[str, Any]:
        """generate() keyword arguments that put exactly the compressed tokens into the prompt.

        ``text_after_video`` picks one of ``text_after_video_rules`` for this call (None: the family default);
        families without rules ignore it. Nothing of the call is kept on the pipeline.
        """
        raise NotImplementedError

    def stock_inputs(self, pixels: Pixels, input_ids: Tensor) -> dict[str, Any]:
        """The stock model's own video keyword arguments for ``input_ids [1, L]`` (the uncompressed prompt of
        :meth:`inputs`): pixel values and whatever the family's ``forward`` needs to place them. The reference
        vidq's uncompressed logits are tested against, bit for bit."""
        raise NotImplementedError

    # -- shared steps ----------------------------------------------------------------------------------------
    def context_limit(self) -> int | None:
        """Most tokens the model takes: the text config's ``max_position_embeddings``, or the tokenizer's
        ``model_max_length`` when that is smaller and set (transformers' "unset" is ~1e30); None when neither."""
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        limit = getattr(text, "max_position_embeddings", None)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 10**8:
            limit = min(limit, tokenizer_limit) if limit else tokenizer_limit
        return int(limit) if limit else None

    def check_prompt_length(self, n_tokens: int, visual: int = 0, new_tokens: int = 0) -> None:
        """Refuse, before prefill, a prompt of ``n_tokens`` (``visual`` of them video) that with ``new_tokens`` to
        generate does not fit :meth:`context_limit`: PromptTooLongError saying the length, the limit and what to
        lower."""
        limit = self.context_limit()
        if limit is None or n_tokens + new_tokens <= limit:
            return
        generated = f" and {new_tokens:,} more to generate" if new_tokens else ""
        if n_tokens <= limit:  # only the answer overflows
            lower = f"lower --max-new-tokens to {limit - n_tokens:,} or fewer, or lower --keep or --frames"
        elif n_tokens - visual + new_tokens < limit:  # fewer visual tokens fix it
            lower = "lower --keep or --frames (or --max-frames)"
        else:
            lower = "shorten the question" + (" or lower --max-new-tokens" if n_tokens - visual < limit else "")
        raise PromptTooLongError(
            f"the prompt is {n_tokens:,} tokens ({visual:,} of them video){generated}, past the {limit:,}-token "
            f"context of {self.name!r}; {lower}"
        )

    def check_question_length(self, question: str, new_tokens: int = 0) -> None:
        """Before any video work: the prompt without its video tokens must fit (a 80,000-token question is refused
        before decoding, not after encoding)."""
        ids = prompt_ids(self.tokenizer, self.chat_template, self.video_token, question, 0, self.name)
        self.check_prompt_length(len(ids), 0, new_tokens)

    def _check_inputs(self, inputs: dict[str, Any], new_tokens: int = 0) -> None:
        ids = inputs["input_ids"]  # [1, L]
        visual = int((ids == self.tokenizer.convert_tokens_to_ids(self.video_token)).sum())
        self.check_prompt_length(int(ids.shape[1]), visual, new_tokens)

    def prompt_text(self, question: str) -> str:
        """The chat prompt with one video placeholder (expanded to the token count by the adapter)."""
        return chat_prompt(self.tokenizer, self.chat_template, question)

    def expand_prompt(self, question: str, count: int) -> Tensor:
        """Token ids [1, L] of the prompt with the video placeholder repeated ``count`` times."""
        ids = prompt_ids(self.tokenizer, self.chat_template, self.video_token, question, count, self.name)
        return torch.tensor([ids], device=self.device)

    def generate(self, inputs: dict[str, Any], options: GenerationOptions, prune: LLMPrune | None = None,
                 cache: Any = None, on_token: Any = None) -> Generation:
        """Run generate(); the streamer marks the first token so prefill and decoding are timed apart.

        ``prune``: an in-LLM pruning stage run during the prefill (:mod:`.llm_prune`). ``cache`` is a transformers
        ``DynamicCache`` already holding the keys and values of the prompt's first tokens (see :mod:`.prefix`): only
        the rest is prefilled, and the cache grows in place (never together with ``prune``, whose prefill must see
        the whole prompt). ``on_token(id)`` is called with each generated token id as it is produced.
        """
        if prune is not None and cache is not None:
            raise ValueError("an in-LLM pruning stage needs the whole prompt's prefill: no reused prefix with it")
        clock = _Clock(self.device, on_token)
        sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if options.temperature > 0:
            sampling = {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p, "top_k": None}
        prompt_len = int(inputs["input_ids"].shape[1])
        self._check_inputs(inputs, options.max_new_tokens)
        synchronize(self.device)
        start = time.perf_counter()
        with self.llm_pruning(inputs, prune) as run:
            out = self.model.generate(
                **inputs,
                max_new_tokens=options.max_new_tokens,
                streamer=clock,
                past_key_values=cache,
                return_dict_in_generate=True,
                output_logits=options.return_logits,
                pad_token_id=self.tokenizer.pad_token_id,
                logits_processor=LogitsProcessorList([_FiniteLogits(self.name, self.dtype)]),
                **sampling,
            )
        synchronize(self.device)
        end = time.perf_counter()
        first = clock.first_token_at or end
        new_ids = out.sequences[0, prompt_len:].tolist()
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        logits = [x.detach() for x in out.logits] if options.return_logits else None
        by_layer = _visual_by_layer(run)
        return Generation(text, new_ids, prompt_len, first - start, end - first, logits, by_layer)

    def append_tokens(self, inputs: dict[str, Any], ids: Sequence[int]) -> dict[str, Any]:
        """``inputs`` with ``ids`` appended after the prompt, placed exactly as generate() would place them.

        ``position_ids`` (Qwen2.5-VL's [4, 1, L]: the sequence index, then M-RoPE t, h, w) grow by
        ``last + 1 + arange`` on every row, as generate() extends them. That is right because every prompt ends in
        text, where t, h and w are equal and advance by one per token. Without ``position_ids`` the model counts
        positions itself (LLaVA-OneVision).
        """
        input_ids = inputs["input_ids"]
        extra = torch.as_tensor(list(ids), dtype=input_ids.dtype, device=input_ids.device).view(1, -1)  # [1, n]
        out = dict(inputs)
        out["input_ids"] = torch.cat([input_ids, extra], dim=1)
        out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
        if (positions := inputs.get("position_ids")) is not None:
            step = torch.arange(1, extra.shape[1] + 1, dtype=positions.dtype, device=positions.device)
            out["position_ids"] = torch.cat([positions, positions[..., -1:] + step], dim=-1)  # [R, 1, L + n]
        return out

    def last_logits(self, inputs: dict[str, Any], count: int = 1, prune: LLMPrune | None = None,
                    scored_at: int | None = None) -> Tensor:
        """Float32 logits [count, vocab] at the last ``count`` positions of one forward pass (no generate, no cache).

        The logits at position i predict token i + 1; only ``count`` rows go through the LM head. ``prune``: an
        in-LLM stage (the last ``count`` positions must be text, which every stage keeps), selecting by the
        attention of position ``scored_at`` (None: the last).
        """
        self._check_inputs(inputs)
        with torch.inference_mode(), self.llm_pruning(inputs, prune, scored_at):
            out = self.model(**inputs, use_cache=False, logits_to_keep=count)
        logits = out.logits[0].float()
        raise_if_not_finite(logits, self.name, self.dtype)
        return logits


def _visual_by_layer(run: PruneRun | None) -> list[int] | None:
    if run is None:
        return None
    if run.keep is None:
        raise RuntimeError("the in-LLM pruning stage never saw the prefill")
    return run.visual_by_layer
