"""The root of every error meant for the user: what their files, options or machine caused.

A leaf module with no imports, so every layer can derive from it (``kernels.MethodError``,
``pipelines.errors.VidqError`` and its kin, ``config.ConfigError``) and the CLI catches one class. Anything else
that escapes is a bug, and the CLI says so.
"""


class VidqError(Exception):
    """Base of every error whose message is meant for the user: one line naming the culprit and what to do."""


class InputError(VidqError):
    """A file or path the user gave cannot be used: missing, a directory, unreadable, not UTF-8, not writable."""
