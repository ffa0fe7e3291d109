"""The typed results of the library's stages: the prepared and compressed video, the video prefix, the answer and its
:class:`Report` (video, token counts, timings), and what is said of the loaded model (:class:`ModelInfo`).

Plain dataclasses, built by :class:`~flashvid_cli.videoqa.VideoQA`; ``AskResult.to_dict()`` is what ``--json`` prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kernels import Compressed, Method
    from .pipelines.base import EncodedVideo

@dataclass
class VideoInfo:
    path: str
    decoder: str
    fps: float
    duration_s: float
    total_frames: int
    sampling: str
    frame_indices: list[int]
    timestamps_s: list[float]
    notes: list[str]


@dataclass
class Timings:
    """Seconds per stage, each read after a device synchronisation."""

    decode: float  # includes resizing frames to the model's input size as they arrive (overlapped with decoding)
    preprocess: float
    encode: float
    compress: float
    prefill: float  # prompt assembly and the generate() call up to the first token
    generate: float  # every later token
    total: float
    time_to_first_token: float  # decode start to the first token
    # What this question adds to the work it shares with others about the same video: its compression when the
    # method reads the question, its prompt and its prefill (only its own tokens when the video's prefill is
    # reused), to its first token. For a follow-up question this is its time to first token.
    question_to_first_token: float = 0.0
    # When the video was decoded ahead (while the model loaded, or while the previous video was answered): the
    # decode's own seconds; ``decode`` is then only the wait for it. None when decoded in this call.
    decode_ahead: float | None = None
    # When the video was decoded while the model loaded (:func:`load_and_decode`): from the command's start (``vidq
    # ask``, ``chat``) or the model load's start (the library) to this answer's last token, less the time ``chat``
    # waited for the user's questions (``Chat.waited``). None otherwise.
    wall: float | None = None
    # Decoding sparsity only: scoring the cached visual tokens and building the compact KV cache, once per answer
    # (part of ``generate``). None otherwise.
    decode_build: float | None = None


@dataclass
class TokenCounts:
    visual_before: int
    visual_after: int  # what the LLM sees, newline token included for LLaVA-OneVision
    ratio: float
    prompt: int
    generated: int
    asked: int | None = None  # --tokens K: the visual tokens asked for (visual_after is what was sent)
    visual_by_layer: list[int] | None = None  # in-LLM stage only: visual tokens each decoder layer saw in the prefill
    # decoding sparsity only (SparseVILA): visual KV entries each decoder layer decoded the answer's later tokens over
    decoded_by_layer: list[int] | None = None


@dataclass
class Report:
    model: str
    model_type: str
    device: str
    dtype: str
    method: str
    keep: float
    method_options: dict[str, Any]
    method_stats: dict[str, Any]
    video: VideoInfo
    tokens: TokenCounts
    timings: Timings
    peak_memory_bytes: int  # this process: the CUDA allocator's peak on a GPU, the peak RSS on CPU
    peak_memory_kind: str  # "cuda allocated" or "process RSS"
    text_after_video: str | None = None  # Qwen2.5-VL: the rule used for the positions after the video
    # The decode worker process's own peak RSS (host memory; None when decoded in this process). On CPU the
    # process tree's peak is at most peak_memory_bytes + this (the worker lives only during the decode).
    decode_worker_peak_rss_bytes: int | None = None
    token_search: dict[str, Any] | None = None  # --tokens: {"probes": compressions made, "seconds": their time}
    # What was reused: "encoded" (the vision tower's output from the on-disk cache) and "prefix" (the keys and
    # values of the prompt up to the video's end, from an earlier question or turn): "hit", "miss" (computed now
    # and kept) or "off" (disabled or not possible; ``notes`` says why).
    cache: dict[str, str] = field(default_factory=lambda: {"encoded": "off", "prefix": "off"})
    notes: list[str] = field(default_factory=list)


@dataclass
class AskResult:
    answer: str
    report: Report
    token_ids: list[int] = field(default_factory=list)  # the generated ids, to compare answers token by token

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PrepareTimings:
    """Seconds of the stages before compression, each read after a device synchronisation."""

    decode: float  # the decode, or only the wait for it when ``prepare`` was given the decoded video (then ~0)
    preprocess: float
    encode: float
    decode_ahead: float | None = None  # the decode's own seconds when it was given, decoded ahead


@dataclass
class PreparedVideo:
    """One video decoded, preprocessed and through the vision tower: what every method and question starts from.

    ``encoded`` is self-contained (tensors and plain metadata, no frames and no model weights), so it can be
    stored and reloaded: ``feats [T, N, D]`` in the model dtype on ``encoded.grid``, ``importance [T, N]`` and
    ``metric [T, N, Dk]`` in float32 when ``need`` held "importance" / "metric", else None; ``encoded.meta`` holds
    what the family's prompt needs (Qwen2.5-VL: ``grid_thw [1, 3]`` and seconds per temporal group).
    """

    video: VideoInfo
    encoded: EncodedVideo
    timings: PrepareTimings
    need: frozenset[str]  # the vision-tower inputs computed ("importance", "metric", "similarity")
    visual_tokens: int  # what the LLM would see uncompressed: T * N plus the family's extra tokens
    cache: str = "off"  # "hit" | "miss" | "off": whether ``encoded`` came from the on-disk cache
    decode_worker_peak_rss_bytes: int | None = None  # the decode worker's own peak RSS; None if none decoded it
    cache_note: str | None = None  # why the cache was "off", or where a hit came from
    # time.perf_counter() at the start the report's wall time counts from (the command's, or the model load's) for a
    # video decoded while the model loaded; None otherwise
    started_at: float | None = None
    # prepare(write_cache=False): the encoded-video cache entry still to write, (key, info); VideoStages.write_cache
    # writes it after the answers
    pending_write: Any = field(default=None, repr=False, compare=False)


@dataclass
class CompressedVideo:
    """One method at one keep applied to a :class:`PreparedVideo`."""

    method: Method  # the built method (name, keep, options)
    compressed: Compressed  # tokens [K, D] in the model dtype, index [K], groups, stats
    seconds: float  # the compression, after a device synchronisation
    visual_tokens: int  # what the LLM sees: K plus the family's extra tokens (LLaVA-OneVision's newline)
    question: str | None = None  # the question it was made for, when the method reads the question
    tokens_asked: int | None = None  # --tokens: the visual tokens asked (``method`` is then at the keep found)
    search: dict[str, Any] | None = None  # --tokens: {"probes": trial compressions, "seconds": the search's time}


@dataclass
class VideoPrefix:
    """The prompt's keys and values up to the end of one compressed video, kept for the questions asked about it.

    Made by :meth:`VideoQA.video_prefix`, used by :meth:`VideoQA.answer`: the first question prefills the whole
    prompt and keeps the cache ("miss"); each later one prefills only what follows the shared prefix, its own
    tokens ("hit"), with positions continuing as in a full prompt. ``reason`` says why it is "off" (a method that
    reads the question, a chat template that puts the question before the video, a cache that cannot be cut
    back); then every question prefills in full. One generation at a time (not thread-safe).
    """

    compressed: CompressedVideo
    reason: str | None  # None: reusable
    store: Any = None  # the pipelines.prefix.PromptCache, when reusable


@dataclass(frozen=True)
class ModelInfo:
    """What reports and benchmark environments say about the loaded model."""

    name: str  # --model as given (repo id, directory or random:NAME)
    model_type: str  # the HF model_type of the checkpoint (its family file in pipelines/)
    device: str
    dtype: str  # e.g. "float32"
    extra_video_tokens: int  # tokens the family adds after the video
    llm_params: int  # language-model parameters a token uses, without the input embedding (a lookup, not a matmul)
    llm_layers: int
    llm_hidden: int
