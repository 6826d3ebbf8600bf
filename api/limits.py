"""The request body limit, as pure ASGI middleware, so an oversized body is refused before anything parses it."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import RequestTooLarge, error_body, type_of


class BodyLimit:
    """Refuses a body over `max_bytes` with a JSON 413: at once when Content-Length says so, and otherwise as soon as
    the streamed bytes pass the limit (chunked uploads carry no Content-Length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is over the limit of {self.max_bytes} bytes (MMRAG_API__MAX_REQUEST_BYTES)"
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _refuse(send, message)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes:
                    # An ApiError: the app's error handler turns it into the same JSON 413 wherever it surfaces.
                    raise RequestTooLarge(message)
            return incoming

        async def watched_send(outgoing: Message) -> None:
            nonlocal started
            if outgoing["type"] == "http.response.start":
                started = True
            await send(outgoing)

        try:
            await self.app(scope, limited_receive, watched_send)
        except RequestTooLarge:
            if started:
                raise
            await _refuse(send, message)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, message: str) -> None:
    body = json.dumps(error_body(type_of(RequestTooLarge(message)), message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
