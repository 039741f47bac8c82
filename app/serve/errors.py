"""Typed JSON errors: every failure the server answers is ``{"error", "error_type"}`` and a status.

| error_type | status | when |
|---|---|---|
| ``validation_error`` | 422 | a field is missing, of the wrong type, or its value is refused |
| ``input_too_long`` | 422 | a response (or a rendered text) does not fit the model's context |
| ``request_too_large`` | 413 | the body is over ``--max-request-bytes`` |
| ``too_many_items`` | 413 | more texts/documents/responses than ``--max-items-per-request`` |
| ``unauthorized`` | 401 | an API key is set and the request lacks it or has another |
| ``model_not_found`` | 404 | the request names a model the server does not serve |
| ``not_found`` / ``not_available`` | 404 | no such endpoint / a dialect that has not landed |
| ``method_not_allowed`` | 405 | e.g. GET on a scoring endpoint |
| ``overloaded`` | 429 | the model's queue is full (with ``Retry-After``) |
| ``model_error`` | 500 | the model failed (a non-finite score, a template that raised) |
| ``internal_error`` | 500 | a bug: logged with its traceback, answered without it |
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An error answered as typed JSON; ``extra`` adds fields (``field``, ``item_index``, ...)."""

    def __init__(self, status: int, error_type: str, message: str, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message
        self.headers = headers or {}
        self.extra = {k: v for k, v in extra.items() if v is not None}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.error_type, self.message, headers=self.headers,
                              **self.extra)


def error_response(status: int, error_type: str, message: str, *,
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The one shape of every error body."""
    extra = {k: v for k, v in extra.items() if v is not None}
    return JSONResponse({"error": message, "error_type": error_type, **extra}, status_code=status,
                        headers=headers)
