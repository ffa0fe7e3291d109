"""The server's errors in OpenAI's shape: ``{"error": {"message", "type", "code"}}`` with an HTTP status."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error the client caused (or a full queue): its HTTP status, OpenAI ``type`` and ``code``, one-line message."""

    def __init__(self, status: int, message: str, code: str, type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code)


def error_body(message: str, type: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": None}}


def bad_request(message: str, code: str = "invalid_request") -> APIError:
    return APIError(400, message, code)


class Cancelled(Exception):
    """A generation stopped because its client disconnected; nobody is left to answer, so it has no status."""


class TimedOut(Exception):
    """A request passed its deadline (``--request-timeout`` or its ``vidq.timeout``), queue time included; the app
    answers 504 ``request_timeout``."""


class Deadline:
    """When a request must be done, on ``time.perf_counter()``'s clock; ``at`` None is no deadline."""

    def __init__(self, at: float | None):
        self.at = at

    def left(self) -> float | None:
        """Seconds left (<= 0 once passed), or None without a deadline."""
        import time

        return None if self.at is None else self.at - time.perf_counter()

    def check(self, where: str) -> None:
        """Raise :class:`TimedOut` naming ``where`` the request was when its deadline has passed."""
        left = self.left()
        if left is not None and left <= 0:
            raise TimedOut(f"the request passed its deadline {where} (--request-timeout, or vidq.timeout)")
