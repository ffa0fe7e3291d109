"""Errors the user can act on. Their message is printed as one line by the CLI (no traceback)."""


class VidqError(Exception):
    """Base of every error whose message is meant for the user."""


class VideoError(VidqError):
    """The video cannot be read: missing, not a video, corrupt, no decodable frames, or decoding timed out."""


class ModelError(VidqError):
    """The model cannot be loaded: missing directory, unsupported architecture, or not cached while offline."""
