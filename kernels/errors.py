"""The user error of the compression layer: one class, raised for a bad method name, option or input."""

from __future__ import annotations

from flashvid_cli.errors import VidqError  # absolute: the leaf module every layer's user errors derive from


class MethodError(VidqError, ValueError):
    """A bad method name, option or input; the message is meant for the user (a :class:`VidqError`)."""
