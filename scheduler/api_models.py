"""The scheduler's wire models: those of ``rfork_api.models`` (one definition for both ends),
plus the path parameter FastAPI validates."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from rfork_api.models import (  # noqa: F401 - the scheduler's routes use these names
    SEED_ID_PATTERN,
    Assignment,
    ChunkReport,
    Heartbeat,
    HeartbeatReply,
    JobCreated,
    JobRequest,
    JobStatus,
    ModelIdentity,
    PeerOffer,
    Progress,
    RankInfo,
    ReadSpan,
    RegistrationReply,
    Resume,
    SchedulerHealth,
    SeedList,
    SeedRegistration,
    SeedSummary,
    WithdrawReply,
    WorkReply,
    WorkRequest,
)

RegistrationResponse = RegistrationReply
SeedId = Annotated[str, Path(min_length=1, max_length=128, pattern=SEED_ID_PATTERN)]
