"""One exception tree for every rfork API error, raised by the services and by their clients.

Each class carries its wire ``code`` and HTTP ``status``: a service raises it
and ``rfork_api.http`` answers ``{"detail": {"error": code, "message": ...}}``
with that status; a client that receives the body raises the same class
(``error_from_reply``). So the table of codes below is the only place a code,
its status and its meaning are written.

    RforkApiError
     ├── InvalidRequest            422 invalid_request    the body is malformed (any service)
     ├── BodyTooLarge              413 body_too_large
     ├── Unauthorized              401 unauthorized       missing or wrong bearer token
     ├── SchedulerError            5xx / unexpected       scheduler-side
     │    ├── SchedulerUnreachable        connect/timeout (client only); .url
     │    ├── UnknownModel         404 unknown_model      no live seed serves that identity and rank
     │    ├── UnknownJob           404 unknown_job
     │    ├── UnknownSeed          404 unknown_seed       an agent must re-register
     │    ├── ManifestMismatch     409 manifest_mismatch  names the first differing tensor
     │    ├── InvalidManifest      422 invalid_manifest
     │    ├── InvalidChunkSize     422 invalid_chunk_size
     │    ├── InvalidResume        422 invalid_resume
     │    └── InvalidLandedMap     422 invalid_landed_map not of the job's chunk plan
     ├── AgentError                5xx / unexpected       agent-side
     │    ├── AgentUnreachable            connect/timeout (client only); .url
     │    ├── LeaseDenied          429 over_budget        .retry_after_seconds
     │    ├── GrantRefused         403 invalid_grant
     │    ├── UnknownRank          404 unknown_rank
     │    ├── UnknownLease         404 unknown_lease      released or expired already
     │    ├── SeedUnavailable      503 seed_unavailable   read this chunk elsewhere
     │    └── ThrottleUnavailable  409 throttle_unavailable
     └── SeedInfoUnavailable              the seed's own SGLang HTTP API failed (client only)
          └── SeedRankMissing              it has no TransferEngine info for that rank
    InvalidIdentity (ValueError)          a model identity cannot be derived (local)

Messages are sentences that say what was wrong and how to fix it. Echoed
user input is cut (``clip``) so a 100k-character name cannot make a 100 kB error.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

CLIP_CHARS = 80
"""Longest echoed value (a name, an id, a number) kept whole in an error message."""


def clip(value: object, limit: int = CLIP_CHARS, quote: bool = True) -> str:
    """``repr(value)`` (``str`` with ``quote=False``) for a message, cut to ``limit`` characters plus how long it was.

        >>> clip("w" * 100, limit=10)
        "'wwwwwwwww…(102 chars)"
        >>> clip(-10**5000)
        'an integer of 5001 digits'
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        # repr refuses integers of over 4300 digits; count the digits without converting.
        n = abs(value)
        guess = int((n.bit_length() - 1) * math.log10(2))  # floor(log10 n), or one below it
        return f"an integer of {guess + 1 + (n >= 10 ** (guess + 1))} digits"
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} chars)"


class RforkApiError(Exception):
    """Base of every API error. ``code``/``status`` are the wire's; ``message`` the sentence."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # an unknown code from a newer server
        if status is not None:
            self.status = status  # type: ignore[misc]

    def detail(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}

    @property
    def http_status(self) -> int:
        return self.status


class InvalidRequest(RforkApiError):
    code, status = "invalid_request", 422


class BodyTooLarge(RforkApiError):
    code, status = "body_too_large", 413


class Unauthorized(RforkApiError):
    code, status = "unauthorized", 401


class _Unreachable:
    """Mixin: the service did not answer at all (connect error, timeout)."""

    def __init__(self, url: str, cause: BaseException | str = "", *, what: str, hint: str = "") -> None:
        why = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(cause)
        RforkApiError.__init__(self, f"cannot reach the rfork {what} at {url}: {why or 'no answer'}{hint}",  # type: ignore[arg-type]
                               code="unreachable", status=0)
        self.url = url


# -- scheduler ---------------------------------------------------------------


class SchedulerError(RforkApiError):
    code, status = "scheduler_error", 500


class SchedulerUnreachable(_Unreachable, SchedulerError):
    def __init__(self, url: str, cause: BaseException | str = "") -> None:
        super().__init__(url, cause, what="scheduler", hint=" — is `rfork scheduler` running there?")


class UnknownModel(SchedulerError):
    code, status = "unknown_model", 404


class UnknownJob(SchedulerError):
    code, status = "unknown_job", 404


class UnknownSeed(SchedulerError):
    code, status = "unknown_seed", 404


class ManifestMismatch(SchedulerError):
    code, status = "manifest_mismatch", 409


class UnknownLayout(SchedulerError):
    """A job sent its manifest by layout digest and the scheduler holds no manifest of that layout
    (none was sent whole yet, or it restarted or evicted it): send the manifest whole."""
    code, status = "unknown_layout", 409


class InvalidManifest(SchedulerError):
    code, status = "invalid_manifest", 422


class InvalidChunkSize(SchedulerError):
    code, status = "invalid_chunk_size", 422


class InvalidResume(SchedulerError):
    code, status = "invalid_resume", 422


class InvalidLandedMap(SchedulerError):
    code, status = "invalid_landed_map", 422


# -- agent -------------------------------------------------------------------


class AgentError(RforkApiError):
    code, status = "agent_error", 500


class AgentUnreachable(_Unreachable, AgentError):
    def __init__(self, url: str, cause: BaseException | str = "") -> None:
        super().__init__(url, cause, what="agent")


class LeaseDenied(AgentError):
    """The seed's budget could not cover the bytes within the wait; ask again later."""

    code, status = "over_budget", 429

    def __init__(self, message: str, retry_after_seconds: float = 0.5, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_seconds = retry_after_seconds

    def detail(self) -> dict[str, Any]:
        return {**super().detail(), "retry_after_seconds": self.retry_after_seconds}


class GrantRefused(AgentError):
    code, status = "invalid_grant", 403


class UnknownRank(AgentError):
    code, status = "unknown_rank", 404


class UnknownLease(AgentError):
    code, status = "unknown_lease", 404


class SeedUnavailable(AgentError):
    code, status = "seed_unavailable", 503


class ThrottleUnavailable(AgentError):
    code, status = "throttle_unavailable", 409


# -- the seed's own (SGLang) API, and local errors ---------------------------


class SeedInfoUnavailable(RforkApiError):
    """The seed did not answer, or answered something that is not SGLang's format."""

    code, status = "seed_info_unavailable", 0

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url


class SeedRankMissing(SeedInfoUnavailable):
    """The seed answered but has no TransferEngine info for this rank (HTTP 400)."""


class InvalidIdentity(ValueError):
    """A model identity could not be derived; the message names the flag that fixes it."""


# -- the table ---------------------------------------------------------------

_WIRE_ERRORS: tuple[type[RforkApiError], ...] = (
    InvalidRequest, BodyTooLarge, Unauthorized,
    UnknownModel, UnknownJob, UnknownSeed, ManifestMismatch, UnknownLayout, InvalidManifest, InvalidChunkSize,
    InvalidResume, InvalidLandedMap, LeaseDenied, GrantRefused, UnknownRank, UnknownLease, SeedUnavailable,
    ThrottleUnavailable,
)
BY_CODE: dict[str, type[RforkApiError]] = {cls.code: cls for cls in _WIRE_ERRORS}


def error_from_reply(status: int, detail: dict[str, Any], message: str,
                     fallback: type[RforkApiError]) -> RforkApiError:
    """The exception a client raises for an error reply: by code, else ``fallback`` (per service)."""
    code = str(detail.get("error", ""))
    cls = BY_CODE.get(code)
    if cls is LeaseDenied or (cls is None and status == 429):
        retry = detail.get("retry_after_seconds")
        return LeaseDenied(message, float(retry) if isinstance(retry, (int, float)) else 0.5)
    if cls is None:
        if 400 <= status < 500:
            return InvalidRequest(message, code=code or "invalid_request", status=status)
        return fallback(message, code=code or fallback.code, status=status)
    return cls(message, status=status)
