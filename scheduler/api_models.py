"""The scheduler's wire models: those of ``rfork_api.models`` (one definition for both ends),
plus the path parameter FastAPI validates."""

from __future__ import annotations

from typing import Annotated, Iterable, Sequence

from fastapi import Path

from rfork_api.models import (  # noqa: F401 - the scheduler's routes use these names
    NOT_READ,
    SEED_ID_PATTERN,
    Assignment,
    ChunkReport,
    FleetSummary,
    Heartbeat,
    HeartbeatReply,
    JobCreated,
    JobRequest,
    JobStatus,
    LandedMapInfo,
    ModelIdentity,
    PeerOffer,
    Progress,
    RankInfo,
    ReadSpan,
    ReadsSettled,
    ReadsSettledReply,
    RegistrationReply,
    Resume,
    SchedulerHealth,
    SeedList,
    SeedQos,
    SeedRegistration,
    SeedSummary,
    StreamAssignment,
    StreamPlan,
    StreamReport,
    WithdrawReply,
    WorkReply,
    WorkRequest,
)

RegistrationResponse = RegistrationReply
SeedId = Annotated[str, Path(min_length=1, max_length=128, pattern=SEED_ID_PATTERN)]


def validation_message(errors: Sequence[dict], prefix: Iterable[str] = ()) -> str:
    """One line naming the first few problems, e.g. ``body.rank: Input should be a valid integer``."""
    from scheduler.errors import CLIP_CHARS, clip

    def part(p: object) -> str:  # a 100k-character field name must not make a 100k-character message
        text = str(p)
        return text if len(text) <= CLIP_CHARS else clip(text)

    problems = "; ".join(f"{'.'.join(part(p) for p in (*prefix, *e['loc']))}: {e['msg']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"request body is not valid: {problems}{more}"
