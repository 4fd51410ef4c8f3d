"""ASGI guards shared by the scheduler and the agent: request body size limit.

A manifest of a real model is a few hundred KiB; a body of gigabytes is a
mistake or an attack, and FastAPI would buffer all of it before validating a
single field. This middleware answers ``413 body_too_large`` first.

    >>> app = BodySizeLimit(fastapi_app, max_bytes=64 << 20)
"""

from __future__ import annotations

import json

DEFAULT_MAX_BODY_BYTES = 64 << 20
"""Largest request body the services accept (a manifest of ~500k tensors)."""


class BodySizeLimit:
    """Reject request bodies over ``max_bytes`` with a JSON 413 before the app sees them.

    A declared ``Content-Length`` over the limit is refused without reading the
    body; a chunked body is buffered up to the limit and refused once it passes
    it (the app would have buffered it anyway).
    """

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(send, declared)
            return
        if declared is not None:
            await self.app(scope, receive, send)  # the server enforces the declared length
            return

        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._too_large(send, len(body))
                return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send, size: int) -> None:
        await send_json_error(
            send, 413, "body_too_large",
            f"request body is {size} bytes or more; at most {self.max_bytes} bytes are accepted "
            "(raise the service's --max-body-bytes if a real manifest needs more)",
            headers=[(b"connection", b"close")])


async def send_json_error(send, status: int, code: str, message: str, headers=()) -> None:
    """Answer from ASGI middleware with the services' error shape: {"detail": {"error", "message"}}."""
    payload = json.dumps({"detail": {"error": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
