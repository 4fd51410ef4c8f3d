"""Wire models of the scheduler API (docs/DESIGN.md). Internal state lives elsewhere.

Bodies are size-checked by the manifest parser (at most 1,000,000 tensors);
FastAPI turns type errors here into 422s with the field named.
"""

from __future__ import annotations

from typing import Annotated, Any, Iterable, Literal, Sequence

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

SeedId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


def validation_message(errors: Sequence[dict], prefix: Iterable[str] = ()) -> str:
    """One line naming the first few problems, e.g. ``body.rank: Input should be a valid integer``."""
    from scheduler.errors import CLIP_CHARS, clip

    def part(p: object) -> str:  # a 100k-character field name must not make a 100k-character message
        text = str(p)
        return text if len(text) <= CLIP_CHARS else clip(text)

    problems = "; ".join(f"{'.'.join(part(p) for p in (*prefix, *e['loc']))}: {e['msg']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"request body is not valid: {problems}{more}"


class _Strict(BaseModel):
    # strict: JSON true is not the integer 1 and "5" is not 5; a body that
    # relies on coercion is a client bug we want to hear about as a 422.
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelIdentity(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, protected_namespaces=())
    model: str = Field(min_length=1, max_length=512)
    revision: str = Field(default="main", min_length=1, max_length=256)
    dtype: str = Field(min_length=1, max_length=64)
    tp_size: int = Field(ge=1, le=4096)


class RankInfo(_Strict):
    rank: int = Field(ge=0, le=4095)
    session_id: str = Field(min_length=1, max_length=256)
    manifest: dict[str, Any]


class SeedRegistration(_Strict):
    identity: ModelIdentity
    agent_url: str = Field(min_length=1, max_length=512)
    rate_cap_bytes_per_second: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """None = uncapped; 0 = paused by its operator: registered and visible, planned nothing."""
    ranks: list[RankInfo] = Field(min_length=1, max_length=4096)
    agent_instance_id: str | None = Field(default=None, min_length=1, max_length=128)
    """Unique per agent process (made at its start). A registration with a new one means the
    agent restarted: running jobs that had excluded this seed may use it again. Without it,
    every registration counts as a restart."""


class RegistrationResponse(BaseModel):
    seed_id: str
    heartbeat_interval_seconds: float
    heartbeat_timeout_seconds: float


class SeedQos(_Strict):
    """The seed's serving QoS as its agent sees it (None: not known; the agent sends null for NaN)."""

    throttle: Literal["adaptive", "fixed", "off"]
    slo_itl_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    observed_itl_p99_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    latency_impact_ratio: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class Heartbeat(_Strict):
    allowed_rate_bytes_per_second: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    available_bytes: float = Field(default=0.0, allow_inf_nan=False)
    in_flight_leases: int = Field(default=0, ge=0)
    qos: SeedQos | None = None
    """Absent from agents older than GET /v1/fleet (their SLO state shows as unknown)."""


class Resume(_Strict):
    """A client re-creating its job after the scheduler lost it (restart): what already landed."""

    previous_job_id: str = Field(min_length=1, max_length=64)
    chunks_done: list[int] = Field(default_factory=list, max_length=10_000_000)


class JobRequest(_Strict):
    identity: ModelIdentity
    rank: int = Field(ge=0, le=4095)
    manifest: dict[str, Any]
    chunk_size_bytes: int | None = None
    resume: Resume | None = None


class JobCreated(BaseModel):
    job_id: str
    total_bytes: int
    num_chunks: int
    chunk_size_bytes: int
    seed_ids: list[str]


class ChunkReport(_Strict):
    assignment_id: str = Field(min_length=1, max_length=64)
    ok: bool
    error: str | None = Field(default=None, max_length=4096)
    reason: str | None = Field(default=None, max_length=64)
    seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class WorkRequest(_Strict):
    max_assignments: int = Field(default=8, ge=0, le=1024)
    reports: list[ChunkReport] = Field(default_factory=list, max_length=100_000)
