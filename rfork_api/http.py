"""What every rfork HTTP service shares: body size, body parsing, auth, one error shape, /health, /metrics.

``install(app, ...)`` puts all of it on a FastAPI app in one call (the scheduler
and the agent both use it); the pieces are below.

Every error either service answers has the documented shape
``{"detail": {"error": "<code>", "message": "<sentence>"}}``:

- ``BodySizeLimit`` answers ``413 body_too_large`` before a body is buffered
  (a manifest of a real model is a few hundred KiB; FastAPI would buffer a body
  of gigabytes before validating a single field).
- ``JsonBodyRoute`` parses request bodies so that *every* malformed body is a
  JSON decode error FastAPI reports as ``422 invalid_request``: a number of
  more digits than Python converts, nesting deeper than the parser recurses,
  bytes that are not UTF-8. FastAPI's own parse lets those escape as a bare
  ``400 {"detail": "There was an error parsing the body"}``.
- ``install_error_handlers`` gives FastAPI's and Starlette's own errors
  (unknown route 404, 405, validation 422, an unexpected 500) the same shape.
- ``BearerAuth`` answers ``401 unauthorized`` unless the fleet's shared token is sent
  (``/health`` and ``/metrics`` stay open).
- ``clip`` (rfork_api/errors.py) shortens values echoed into messages: a 100k-character name must not
  come back as a 100k-character message.

    >>> app = FastAPI()
    >>> install(app, registry=registry, health=lambda: SchedulerHealth(status="ok", seeds=0, jobs=0),
    ...         health_model=SchedulerHealth, token=None, max_body_bytes=64 << 20)
"""

from __future__ import annotations

import hmac
import inspect
import json
import sys
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from rfork_api.auth import OPEN_PATHS, TOKEN_ENV
from rfork_api.errors import CLIP_CHARS, RforkApiError, clip

DEFAULT_MAX_BODY_BYTES = 64 << 20
"""Largest request body the services accept (a manifest of ~500k tensors)."""

MAX_MESSAGE_CHARS = 1000
"""Longest error message sent: a safety net behind ``clip`` for any message built from input."""

_CODE_BY_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                   405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 413: "body_too_large",
                   415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests",
                   500: "internal_error", 503: "unavailable"}


def service_app(**kwargs) -> FastAPI:
    """``FastAPI(**kwargs)`` for an rfork service: without FastAPI's own OpenTelemetry hooks
    (FastAPI >= 0.165 looks up the tracer, meter and logger providers on every request: a quarter
    of a small request's CPU in the scheduler, measured). rfork's metrics are its Prometheus
    registry; an older FastAPI, which has no such hooks, takes the same call."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        kwargs.setdefault("telemetry", {"tracing": False, "metrics": False, "logs": False})
    return FastAPI(**kwargs)


def error_body(code: str, message: str, **extra) -> dict:
    """The services' error shape, with the message cut to ``MAX_MESSAGE_CHARS``."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = f"{message[:MAX_MESSAGE_CHARS]}…({len(message)} chars)"
    return {"detail": {"error": code, "message": message, **extra}}


def error_response(status: int, code: str, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(code, message, **extra), headers=headers)


def validation_message(exc: RequestValidationError, what: str = "request") -> str:
    """One sentence naming up to five problems, each field path and echoed value clipped."""
    errors = exc.errors()
    undecodable = [e for e in errors if e.get("type") == "json_invalid"]
    if undecodable:
        reason = (undecodable[0].get("ctx") or {}).get("error") or "it does not parse"
        return f"request body is not valid JSON: {reason}; send one JSON object, UTF-8 encoded"
    problems = []
    for e in errors[:5]:
        where = ".".join(p if isinstance(p, str) and len(p) <= CLIP_CHARS else clip(p) for p in map(_loc, e["loc"]))
        problems.append(f"{where}: {e['msg']}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"{what} is not valid: {'; '.join(problems)}{more}"


def _loc(part: object) -> object:
    return str(part) if isinstance(part, int) and not isinstance(part, bool) else part


def error_responses() -> dict:
    """OpenAPI ``responses`` for every error status the services send, all in ``ErrorBody``'s shape:
    pass as ``FastAPI(responses=error_responses())`` so clients and the fuzz tests see the real shape."""
    from rfork_api.models import ErrorBody

    return {status: {"model": ErrorBody, "description": code.replace("_", " ")}
            for status, code in _CODE_BY_STATUS.items()}


def install(app: FastAPI, *, registry, health: Callable[[], Any], health_model: type,
            token: str | None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, what: str = "request") -> None:
    """Body limit, body parsing, auth, every error handler, ``/health`` and ``/metrics`` on ``app``.

    Call before declaring the app's own routes (so they use ``JsonBodyRoute``).
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.responses import Response

    app.router.route_class = JsonBodyRoute  # every malformed body is a 422 in the error shape, not a bare 400
    install_error_handlers(app, what=what)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if token:
        app.add_middleware(BearerAuth, token=token)  # outermost: no body is read for a stranger

    @app.get("/health", response_model=health_model)
    async def _health():
        return health()

    @app.get("/metrics", include_in_schema=False)
    async def _metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def install_error_handlers(app: FastAPI, what: str = "request") -> None:
    """Give FastAPI's and Starlette's own errors the services' shape (see the module docstring)."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail
        if isinstance(detail, dict) and {"error", "message"} <= detail.keys():
            return error_response(exc.status_code, detail["error"], str(detail["message"]), headers=exc.headers)
        code = _CODE_BY_STATUS.get(exc.status_code, f"http_{exc.status_code}")
        message = str(detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {clip(request.url.path)}; the API is at /openapi.json"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {clip(request.url.path)}"
        return error_response(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", validation_message(exc, what))

    @app.exception_handler(RforkApiError)
    async def _api_error(request: Request, exc: RforkApiError):
        extra = {k: v for k, v in exc.detail().items() if k not in ("error", "message")}
        return error_response(exc.status, exc.code, exc.message, **extra)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # Only what nothing else handled reaches here (a bug); domain errors have their own
        # handlers and statuses. Starlette still logs the traceback after this answer.
        return error_response(500, "internal_error",
                              f"{type(exc).__name__} while serving {request.method} {clip(request.url.path)}; "
                              "this is a bug: the service's log has the traceback")


class JsonBodyRequest(Request):
    """A request whose ``json()`` fails only with ``json.JSONDecodeError``, saying why.

    FastAPI turns a JSONDecodeError into a 422 ``json_invalid`` validation
    error, but any other exception from the parse into a bare 400. Python's
    parser raises ValueError for integers of over 4300 digits (a guard against
    quadratic conversion), RecursionError for arrays or objects nested deeper
    than the interpreter's recursion limit, UnicodeDecodeError for bytes that
    are not UTF-8: all three are malformed bodies, so they become decode errors here.
    """

    async def json(self):
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = parse_json_body(body)
        return self._json


def parse_json_body(body: bytes):
    """``json.loads(body)``, raising only ``json.JSONDecodeError`` (its ``msg`` says what was wrong)."""
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise json.JSONDecodeError(f"{exc.msg} at line {exc.lineno} column {exc.colno}", exc.doc, exc.pos) from None
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"byte {exc.start} is not UTF-8", "", 0) from None
    except RecursionError:
        raise json.JSONDecodeError("arrays or objects are nested too deeply (a few hundred levels at most)",
                                   "", 0) from None
    except ValueError as exc:  # int() refusing a number of too many digits
        if "digits" not in str(exc):
            raise
        raise json.JSONDecodeError(f"a number has more than {sys.get_int_max_str_digits()} digits", "", 0) from None


class JsonBodyRoute(APIRoute):
    """An APIRoute whose handlers see ``JsonBodyRequest``: set ``app.router.route_class`` to it."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def parse_with_reasons(request: Request):
            return await handler(JsonBodyRequest(request.scope, request.receive))

        return parse_with_reasons


class PlainRoute(Route):
    """A Starlette route that serves a hot path without FastAPI's per-request dependency solving
    and body handling (a third of a small request's CPU). Add it with ``add_plain_route``, in front
    of the FastAPI route of the same path and method, which keeps documenting it in the OpenAPI
    document; the endpoint validates its body with ``rfork_api.http.validated_body`` (the same
    parser and messages). Sets ``scope["route"]`` like FastAPI's routes, for latency by template."""

    def matches(self, scope):
        match, child_scope = super().matches(scope)
        if match != Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def add_plain_route(app: FastAPI, path: str, endpoint: Callable, methods: list[str]) -> None:
    """Serve ``methods`` on ``path`` by ``endpoint(request) -> Response``, ahead of the app's routes."""
    app.router.routes.insert(0, PlainRoute(path, endpoint, methods=methods))


def validated_body(model: type[BaseModel], request: Request, body: bytes) -> BaseModel:
    """``model`` from a request's JSON body; raises FastAPI's ``RequestValidationError`` as a
    FastAPI route would (no body, a body not declared JSON, the parser of ``JsonBodyRequest``,
    field paths under ``body``), so the installed handler answers it in the same words."""
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if not (content_type == "application/json" or (content_type.startswith("application/")
                                                   and content_type.endswith("+json"))):
        raise RequestValidationError([{
            "type": "model_attributes_type", "loc": ("body",), "input": clip(body),
            "msg": "Input should be a valid dictionary or object to extract fields from"}])
    try:
        # The common case in one pass of pydantic's own parser (the hottest route's bodies: several
        # times faster than json.loads and then validating the objects). Whatever it refuses goes the
        # long way below, so every error reads the same.
        return model.model_validate_json(body)
    except ValidationError:
        pass
    try:
        document = parse_json_body(body)
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}]) from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


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
    payload = json.dumps(error_body(code, message)).encode()
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
