"""The scheduler's exception tree. Each error carries its API code and status.

Messages that echo what a client sent pass it through ``clip``: a name or id
of 100,000 characters must not come back as a message of 100,000 characters.
"""

from __future__ import annotations

import math

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


class SchedulerError(Exception):
    code = "scheduler_error"
    http_status = 400


class UnknownModel(SchedulerError):
    code, http_status = "unknown_model", 404


class UnknownJob(SchedulerError):
    code, http_status = "unknown_job", 404


class UnknownSeed(SchedulerError):
    code, http_status = "unknown_seed", 404


class ManifestMismatch(SchedulerError):
    code, http_status = "manifest_mismatch", 409


class InvalidManifest(SchedulerError):
    code, http_status = "invalid_manifest", 422


class InvalidChunkSize(SchedulerError):
    code, http_status = "invalid_chunk_size", 422


class InvalidResume(SchedulerError):
    code, http_status = "invalid_resume", 422


class InvalidRequest(SchedulerError):
    """A body that is not JSON or not the documented shape (as FastAPI's own validation reports it)."""

    code, http_status = "invalid_request", 422
