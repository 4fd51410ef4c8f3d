"""Authentication for rfork's control plane: a shared bearer token and signed lease grants.

Threat model in one paragraph (docs/operating.md, "Security", has the long form): the
scheduler and agent HTTP APIs are the control plane. With a token
configured, every request but ``/health`` and ``/metrics`` needs
``Authorization: Bearer <token>`` (401 otherwise, compared in constant time),
and an agent grants a lease only for a *grant* the scheduler signed for that
exact job, assignment, seed, rank and byte count, within its expiry, once.
So a client cannot use our control plane to read a seed outside a scheduled
fork. TransferEngine itself does NOT authenticate one-sided reads: anyone who
can reach a seed's TE port and knows its addresses can read its memory. That
is a property of RDMA/TE and must be handled by network isolation.

    >>> key = grant_key("s3cret")
    >>> g = sign_grant(key, GrantClaims("job1", "a1", "seed-0", 0, 4096, expires_at=2e9))
    >>> verify_grant(key, g, GrantClaims("job1", "a1", "seed-0", 0, 4096, expires_at=0), now=1e9).assignment_id
    'a1'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass


TOKEN_ENV = "RFORK_TOKEN"
TOKEN_FILE_ENV = "RFORK_TOKEN_FILE"
OPEN_PATHS = frozenset({"/health", "/metrics"})
"""Reachable without the token: liveness checks and Prometheus scrapes (no secrets there)."""


class AuthConfigError(ValueError):
    """The token configuration is unusable (empty file, unreadable path...)."""


class InvalidGrant(Exception):
    """A lease grant is missing, forged, for something else, expired or replayed."""


def load_token(token_file: str | None = None, environ: dict[str, str] | None = None) -> str | None:
    """The shared token: ``token_file`` if given, else $RFORK_TOKEN_FILE, else $RFORK_TOKEN; None = auth off."""
    env = os.environ if environ is None else environ
    path = token_file or env.get(TOKEN_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise AuthConfigError(f"cannot read the token file {path!r}: {exc.strerror}; "
                                  "create it with e.g. `openssl rand -hex 32 > FILE`") from exc
        if not token:
            raise AuthConfigError(f"the token file {path!r} is empty; put a random secret in it "
                                  "(e.g. `openssl rand -hex 32 > FILE`)")
        return token
    token = env.get(TOKEN_ENV, "").strip()
    return token or None


def bearer_header(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# --------------------------------------------------------------------------- lease grants (pure)


@dataclass(frozen=True)
class GrantClaims:
    """What a grant allows: one lease of ``bytes`` on ``seed_id``/``rank`` for one assignment."""

    job_id: str
    assignment_id: str
    seed_id: str
    rank: int
    bytes: int
    expires_at: float
    """Unix time (scheduler and agents are separate hosts: wall clock, not monotonic)."""


def grant_key(token: str) -> bytes:
    """The grant-signing key, derived from the shared token (so one secret configures a fleet)."""
    return hmac.new(token.encode(), b"rfork-lease-grant-v1", hashlib.sha256).digest()


def sign_grant(key: bytes, claims: GrantClaims) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(asdict(claims), sort_keys=True).encode()).rstrip(b"=")
    mac = hmac.new(key, payload, hashlib.sha256).hexdigest()
    return f"{payload.decode()}.{mac}"


def verify_grant(key: bytes, grant: str, expected: GrantClaims, now: float) -> GrantClaims:
    """Check ``grant`` is ours, unexpired and for exactly ``expected`` (its ``expires_at`` is ignored).

    Raises InvalidGrant saying which check failed. Replay (the same assignment
    twice) is the caller's to refuse: it needs memory.
    """
    if not grant:
        raise InvalidGrant("no grant: leases are only granted for assignments the rfork scheduler made")
    payload, _, mac = grant.partition(".")
    good = hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
    if not mac or not hmac.compare_digest(mac, good):
        raise InvalidGrant("the grant's signature is not the scheduler's (forged, or another fleet's token)")
    try:
        raw = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims = GrantClaims(**raw)
    except (ValueError, TypeError) as exc:
        raise InvalidGrant(f"the grant is malformed: {exc}") from exc
    for name in ("job_id", "assignment_id", "seed_id", "rank", "bytes"):
        if getattr(claims, name) != getattr(expected, name):
            raise InvalidGrant(f"the grant is for {name}={getattr(claims, name)!r}, "
                               f"not {getattr(expected, name)!r}")
    if claims.expires_at <= now:
        raise InvalidGrant(f"the grant expired {now - claims.expires_at:.0f} s ago; ask the scheduler for work again")
    return claims
