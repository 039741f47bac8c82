"""The ASGI gate in front of every route: request id, auth, body size, metrics.

One pure ASGI middleware rather than four ``BaseHTTPMiddleware`` layers: each of those
spawns a task and copies the response per request, which a scoring server at a few
milliseconds per request would pay for on every call. In order:

1. ``X-Request-Id``: the client's, when it is a sane token (1-128 of ``[A-Za-z0-9._:-]``),
   else a fresh one; echoed on every response, errors included.
2. Bearer auth when a key is set (``/health`` stays open for liveness probes): 401 before the
   body is read, so an unauthenticated client cannot make the server buffer anything.
3. Body size: a ``Content-Length`` over the limit is refused unread; a chunked body is
   counted as it arrives and refused when it passes the limit (413, ``Connection: close``).
   A string holding a lone UTF-16 surrogate (``"\\ud800"``) is refused (422): it is not text.
4. Metrics: status and latency per endpoint, labelled by route (unknown paths: ``other``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.serve.errors import error_response
from app.serve.metrics import Metrics
from app.serve.security import bearer_ok

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
OPEN_PATHS = frozenset({"/health"})  # answered without a key


class Gate:
    def __init__(self, app: ASGIApp, *, api_key: str | None, max_request_bytes: int,
                 metrics: Metrics, endpoints: frozenset[str]) -> None:
        self.app, self.api_key, self.limit = app, api_key, max_request_bytes
        self.metrics, self.endpoints = metrics, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id", "")
        rid = rid if _REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        if scope["method"] == "POST" and "json" not in headers.get("content-type", ""):
            _as_json(scope)  # every body here is JSON: `curl -d` without a Content-Type must work too
        path = scope["path"]
        endpoint = path if path in self.endpoints else "other"
        status = [500]

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            refusal = self._refusal(path, headers)
            if refusal is None:
                body = await _read_body(receive, self.limit)
                if body is None:  # the client went away mid-body: nobody to answer
                    status[0] = 499
                    return
                if body is _TOO_LARGE:
                    refusal = _too_large(self.limit)
                else:
                    assert isinstance(body, bytes)
                    refusal = _not_text(body)
                    if refusal is None:
                        await self.app(scope, _replay(body, receive), send_tagged)
                        return
            await refusal(scope, receive, send_tagged)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    def _refusal(self, path: str, headers: dict[str, str]):
        """The response that refuses this request before its body is read, or None."""
        key = self.api_key
        if key is not None and path not in OPEN_PATHS and not bearer_ok(headers.get("authorization"), key):
            what = "no API key was sent" if "authorization" not in headers else "the API key is wrong"
            return error_response(401, "unauthorized", f"{what}: send 'Authorization: Bearer <key>'",
                                  headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return _too_large(self.limit)
        return None


#: a \\uD800-\\uDFFF escape: the only way JSON text can hold a lone surrogate
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _not_text(body: bytes):
    """A 422 for a body whose strings hold a lone UTF-16 surrogate (no tokenizer takes one),
    checked with the engine's own JSON reader, and only when such an escape appears at all."""
    if not _SURROGATE_ESCAPE.search(body):
        return None
    from engine.errors import InputError
    from engine.jsonl import parse_json

    try:
        parse_json(body.decode("utf-8", "replace"))
    except InputError as e:
        return error_response(422, "validation_error", str(e), field=e.field)
    return None


def _as_json(scope: Scope) -> None:
    """Read the body as JSON whatever Content-Type the client sent (none, or curl's form default)."""
    scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
    scope["headers"].append((b"content-type", b"application/json"))


_TOO_LARGE = object()  # what _read_body returns for a body over the limit


def _too_large(limit: int):
    return error_response(413, "request_too_large",
                          f"the request body is over the server's limit of {limit} bytes "
                          "(--max-request-bytes); send fewer or shorter items per request",
                          headers={"Connection": "close"})


async def _read_body(receive: Receive, limit: int) -> bytes | object | None:
    """The whole body, at most ``limit`` bytes; ``_TOO_LARGE`` past it, None on disconnect."""
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            return _TOO_LARGE
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the connection's own events."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
