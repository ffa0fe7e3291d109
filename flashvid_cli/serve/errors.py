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
