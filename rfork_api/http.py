"""What every rfork HTTP service shares, installed with one call: ``install(app, ...)``.

- a request body limit (413 ``body_too_large`` before a byte is parsed);
- bearer-token auth (401 ``unauthorized``; ``/health`` and ``/metrics`` stay open);
- one error shape for everything that goes wrong: ``{"detail": {"error", "message"}}``
  (``RforkApiError`` subclasses, request validation, unparseable bodies, unknown routes);
- ``GET /metrics`` from the service's own registry, and ``GET /health`` from a callback.

    >>> app = fastapi.FastAPI()
    >>> install(app, registry=registry, health=lambda: SchedulerHealth(status="ok", seeds=0, jobs=0),
    ...         health_model=SchedulerHealth, token=None, max_body_bytes=64 << 20)
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rfork_api.auth import OPEN_PATHS, TOKEN_ENV
from rfork_api.errors import RforkApiError, clip

DEFAULT_MAX_BODY_BYTES = 64 << 20
"""Largest request body the services accept (a manifest of ~500k tensors)."""

# Generic HTTP statuses that reach us as starlette's HTTPException (routing, body parsing).
_CODE_BY_STATUS = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 422: "invalid_request"}


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": {"error": code, "message": message, **extra}})


def install(app, *, registry, health: Callable[[], Any], health_model: type,
            token: str | None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Add body limit, auth, error handlers, ``/health`` and ``/metrics`` to a FastAPI ``app``."""
    # Imported here: the services that call this have FastAPI and prometheus_client;
    # the clients that import rfork_api need neither.
    from fastapi.exceptions import RequestValidationError
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if token:
        app.add_middleware(BearerAuth, token=token)  # outermost: no body is read for a stranger

    @app.exception_handler(RforkApiError)
    async def _api_error(request: Request, exc: RforkApiError):
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail()})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", f"request is not valid: {describe_validation(exc.errors())}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            # FastAPI's answer when the JSON decoder raised something other than a
            # decode error: a number over Python's digit limit, nesting past the
            # recursion limit. Say which, in our shape.
            message = ("request body could not be parsed as JSON (a number with thousands of digits, or nesting "
                       "thousands of levels deep?); send the documented body")
        return error_response(exc.status_code, _CODE_BY_STATUS.get(exc.status_code, "http_error"), message)

    @app.get("/health", response_model=health_model)
    async def _health():
        return health()

    @app.get("/metrics", include_in_schema=False)
    async def _metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def describe_validation(errors: list[dict]) -> str:
    """Up to five problems as ``field.path: message``, each cut to a readable length."""
    parts = []
    for e in errors[:5]:
        where = ".".join(clip(str(p), 40) for p in e.get("loc", ()))
        parts.append(f"{where}: {clip(str(e.get('msg', '')), 200)}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


# --------------------------------------------------------------------------- ASGI middleware


class BodySizeLimit:
    """Reject request bodies over ``max_bytes`` with a JSON 413 before the app sees them.

    A declared ``Content-Length`` over the limit is refused without reading the
    body; a chunked body is buffered up to the limit and refused once it passes
    it (the app would have buffered it anyway). A real model's manifest is a few
    hundred KiB to tens of MiB; gigabytes are a mistake or an attack.
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


class BearerAuth:
    """ASGI middleware: 401 unless ``Authorization: Bearer <token>`` matches (constant-time).

    ``/health`` and ``/metrics`` stay open. The token is never logged or echoed.
    """

    def __init__(self, app, token: str, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        problem = "no Authorization header" if not given else "the bearer token does not match"
        await send_json_error(
            send, 401, "unauthorized",
            f"{problem}; send 'Authorization: Bearer <token>' with the fleet's shared token "
            f"(--token-file or ${TOKEN_ENV})",
            headers=[(b"www-authenticate", b'Bearer realm="rfork"')])


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
