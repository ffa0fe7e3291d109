"""Errors the user can act on. Their message is printed as one line by the CLI (no traceback).

The root class lives in ``flashvid_cli.errors`` (imported absolutely, so this module also imports as the
top-level ``pipelines`` package the tests use) and ``kernels.MethodError`` derives from it too.
"""

from flashvid_cli.errors import InputError, VidqError

__all__ = ["InputError", "ModelError", "NonFiniteLogitsError", "PromptTooLongError", "VideoError", "VidqError"]


class VideoError(VidqError):
    """The video cannot be read: missing, not a video, corrupt, no decodable frames, or decoding timed out."""


class ModelError(VidqError):
    """The model cannot be loaded: missing directory, unsupported architecture, or not cached while offline."""


class PromptTooLongError(VidqError):
    """The prompt (visual tokens + text) does not fit in the model's context; the message says what to lower."""


class NonFiniteLogitsError(ModelError):
    """The model produced NaN or infinite logits: corrupt weights or a dtype that overflows."""
