"""The one error type routes raise: an HTTP status, a stable code and a message for the client.

Messages name the input and the problem; they never carry a token, image bytes or a traceback.
"""

from __future__ import annotations

from typing import Optional


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: Optional[dict[str, str]] = None
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def body(self, request_id: str) -> dict:
        return {"error": {"code": self.code, "message": self.message}, "request_id": request_id}
