"""Every HTTP body that crosses a process boundary in rfork, in both directions.

The scheduler, the agents, the fork client, the SGLang plugin, the testbed and
the benchmarks all import these models; nothing outside ``rfork_api`` builds or
indexes a wire dict. Requests are strict (JSON ``true`` is not ``1``, unknown
fields are refused with a 422) because a body that relies on coercion is a
client bug we want to hear about. Replies ignore unknown fields, so an older
client keeps working against a newer server that added one.

    >>> identity = ModelIdentity(model="Qwen/Qwen2.5-0.5B", dtype="bfloat16", tp_size=1)
    >>> JobRequest(identity=identity, rank=0, manifest={"w": [4096, 1024, 2]}).rank
    0
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, Mapping, get_args

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from rfork_api.units import UnitError, parse_size

SEED_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
SeedIdText = Annotated[str, Field(min_length=1, max_length=128, pattern=SEED_ID_PATTERN)]


class Request(BaseModel):
    """A body a service receives: strict types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


class Reply(BaseModel):
    """A body a service sends: unknown fields ignored by older readers."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())


# --------------------------------------------------------------------------- identity


class ModelIdentity(Request):
    """Which weights a seed serves and a client wants: both must match exactly (with rank and manifest)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, protected_namespaces=())
    model: str = Field(min_length=1, max_length=512)
    revision: str = Field(default="main", min_length=1, max_length=256)
    dtype: str = Field(min_length=1, max_length=64)
    tp_size: int = Field(ge=1, le=4096)

    @classmethod
    def from_server_info(cls, info: Mapping[str, Any], *, model: str | None = None, revision: str | None = None,
                         dtype: str | None = None, tp_size: int | None = None) -> "ModelIdentity":
        """THE identity rule: SGLang's ``/server_info`` (or its resolved server args), overridden by flags.

        Missing or null fields take SGLang's own defaults (revision ``main``,
        dtype ``auto``, tp_size 1), so a seed's agent, the fork CLI and the
        SGLang plugin derive the same identity from the same SGLang flags.
        Raises ``InvalidIdentity`` naming the field and the flag that fixes it.
        """
        from rfork_api.errors import InvalidIdentity

        chosen_model = model or info.get("model_path")
        if not chosen_model:
            raise InvalidIdentity("the seed's server info has no model_path; pass the model name explicitly (--model)")
        raw_tp = tp_size if tp_size else info.get("tp_size")
        try:
            chosen_tp = int(raw_tp) if raw_tp not in (None, "") else 1
        except (TypeError, ValueError):
            raise InvalidIdentity(f"the seed reports tp_size {raw_tp!r}, not an integer; pass --tp-size") from None
        if chosen_tp < 1:
            raise InvalidIdentity(f"tp_size must be >= 1, got {chosen_tp}; pass --tp-size")
        return cls(
            model=str(chosen_model),
            revision=str(revision or info.get("revision") or "main"),
            dtype=str(dtype or info.get("dtype") or "auto"),
            tp_size=chosen_tp,
        )

    def describe(self) -> str:
        return f"{self.model}@{self.revision} {self.dtype} tp={self.tp_size}"


# --------------------------------------------------------------------------- seeds (agent -> scheduler)


class RankInfo(Request):
    """One TP rank a seed serves: its TransferEngine session and ``{name: [ptr, numel, element_size]}``."""

    rank: int = Field(ge=0, le=4095)
    session_id: str = Field(min_length=1, max_length=256)
    manifest: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return sum(int(v[1]) * int(v[2]) for v in self.manifest.values())


class SeedRegistration(Request):
    """``PUT /v1/seeds/{seed_id}``: an agent announces its seed (again after any restart)."""

    identity: ModelIdentity
    agent_url: str = Field(min_length=1, max_length=512)
    rate_cap_bytes_per_second: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """None = uncapped; 0 = paused by its operator: registered and visible, planned nothing."""
    ranks: list[RankInfo] = Field(min_length=1, max_length=4096)
    agent_instance_id: str | None = Field(default=None, min_length=1, max_length=128)
    """Unique per agent process (made at its start). A registration with a new one means the
    agent restarted: running jobs that had excluded this seed may use it again. Without it,
    every registration counts as a restart."""


class RegistrationReply(Reply):
    seed_id: str
    heartbeat_interval_seconds: float
    heartbeat_timeout_seconds: float


class SeedQos(Request):
    """The seed's serving QoS as its agent sees it (None: not known; the agent sends null for NaN)."""

    throttle: Literal["adaptive", "fixed", "off"]
    slo_itl_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    observed_itl_p99_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    latency_impact_ratio: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class Heartbeat(Request):
    """``POST /v1/seeds/{seed_id}/heartbeat``: the agent's current budget for this seed."""

    allowed_rate_bytes_per_second: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    available_bytes: float = Field(default=0.0, allow_inf_nan=False)
    in_flight_leases: int = Field(default=0, ge=0)
    qos: SeedQos | None = None
    """Absent from agents older than GET /v1/fleet (their SLO state shows as unknown)."""


class HeartbeatReply(Reply):
    pass


class SeedSummary(Reply):
    """One entry of ``GET /v1/seeds``."""

    seed_id: str
    identity: ModelIdentity
    agent_url: str
    ranks: list[int]
    rate_cap_bytes_per_second: float | None
    allowed_rate_bytes_per_second: float | None
    in_flight_leases: int
    seconds_since_heartbeat: float


class SeedList(RootModel[list[SeedSummary]]):
    """``GET /v1/seeds``."""


class SchedulerHealth(Reply):
    status: str
    seeds: int
    jobs: int


# --------------------------------------------------------------------------- jobs (client -> scheduler)


class JobState(str, enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Resume(Request):
    """A client re-creating its job after the scheduler lost it (restart): what already landed."""

    previous_job_id: str = Field(min_length=1, max_length=64)
    chunks_done: list[int] = Field(default_factory=list, max_length=10_000_000)


class PeerOffer(Request):
    """A client offers to serve the chunks it has landed to other clients of the same weights.

    ``session_id`` is its TransferEngine session (the job's manifest gives the
    pointers). The scheduler never lets its reads from this peer exceed
    ``max_in_flight`` at once or ``upload_rate_bytes_per_second`` (None: uncapped).
    """

    session_id: str = Field(min_length=1, max_length=256)
    upload_rate_bytes_per_second: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_in_flight: int = Field(default=8, ge=1, le=1024)


class ManifestLayout(Request):
    """A manifest sent by reference: the digest of its layout (names, sizes, order) and this
    client's pointers. The scheduler knows a layout once any job sent a manifest of it whole;
    otherwise it answers ``409 unknown_layout`` and the client sends its manifest whole
    (``rfork_api.manifest.compact_manifest`` makes one; ``SchedulerClient.create_job`` does both)."""

    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    """``rfork_api.manifest.layout_digest`` of the manifest."""
    pointers: str = Field(min_length=1, max_length=12_000_000)
    """Base64 of each tensor's pointer, in the layout's order, as a little-endian 64-bit integer."""


class JobRequest(Request):
    """``POST /v1/jobs``: fork one rank of ``identity`` into the memory ``manifest`` describes.

    The manifest comes whole (``manifest``) or by reference (``layout``), not both: in a
    scale-out every new instance of a model has the same layout, and sending and checking
    every member's whole manifest was most of the scheduler's work per member."""

    identity: ModelIdentity
    rank: int = Field(ge=0, le=4095)
    manifest: dict[str, Any] = Field(default_factory=dict)
    layout: ManifestLayout | None = None
    chunk_size_bytes: int | None = None
    resume: Resume | None = None
    peer: PeerOffer | None = None
    """Serve landed chunks to the other clients of the same identity, rank and manifest."""

    @model_validator(mode="after")
    def _one_manifest(self) -> "JobRequest":
        if self.layout is not None and self.manifest:
            raise ValueError("send the manifest whole (manifest) or by reference (layout), not both")
        return self


class JobCreated(Reply):
    job_id: str
    total_bytes: int
    num_chunks: int
    chunk_size_bytes: int
    seed_ids: list[str]
    streams: StreamPlan | None = None
    """Set when the scheduler streams and the job offered itself as a peer: register a landed map."""


class LandedMapInfo(Request):
    """Where a client's landed map lives (rfork_api/landed.py ``LandedMapRef``, on the wire)."""

    session_id: str = Field(min_length=1, max_length=256)
    ptr: int = Field(gt=0, lt=2**64)
    num_chunks: int = Field(gt=0, le=1 << 24)
    num_tensors: int = Field(gt=0, le=1 << 22)

    def ref(self):
        from rfork_api.landed import LandedMapRef
        return LandedMapRef(self.session_id, self.ptr, self.num_chunks, self.num_tensors)

    @classmethod
    def of(cls, ref) -> "LandedMapInfo":
        return cls(session_id=ref.session_id, ptr=ref.ptr, num_chunks=ref.num_chunks, num_tensors=ref.num_tensors)


class StreamPlan(Reply):
    """In ``JobCreated`` when the scheduler streams: register a landed map of this chunk plan and send it."""

    stripes: int
    plan_digest: str
    """Hex of ``rfork_api.landed.plan_digest`` of the scheduler's chunk plan: a client whose own plan
    differs (another rfork version) must not register a map, and forks without streams."""


class StreamAssignment(Reply):
    """Follow ``parent_map`` and read chunks ``[first_chunk, end_chunk)`` as they land there."""

    stream_id: str
    stripe: int
    first_chunk: int
    end_chunk: int
    parent_job_id: str
    parent_map: LandedMapInfo
    max_rate_bytes_per_second: float | None = None
    """Read it at this rate at most: its share of the parent's upload cap (``PeerOffer``); None: uncapped."""


StreamState = Literal["running", "done", "ended", "failed"]
StreamFailure = Literal["parent_lost", "parent_stalled", "not_the_same_plan"]
STREAM_FAILURE_REASONS: tuple[str, ...] = get_args(StreamFailure)


class StreamReport(Request):
    """A stream's news, sent with the next ``/work`` call: chunks it landed since its last report, and
    whether it is still ``running``, ``done`` (every chunk landed: ``landed`` is ignored, and clients
    leave it empty), ``ended`` (stopped as told by ``end_streams``; no read of it is on the wire any
    more) or ``failed`` (``reason``)."""

    stream_id: str = Field(min_length=1, max_length=64)
    landed: list[int] = Field(default_factory=list, max_length=1 << 24)
    state: StreamState = "running"
    reason: StreamFailure | None = None
    error: str | None = Field(default=None, max_length=4096)


NOT_READ = "not_read"
"""A ``ChunkReport.reason``: the client never read the assignment (the scheduler cancelled it first,
or the fork finished before). Reported all the same: a read from a peer counts as on the wire until
its reader reports it. The scheduler settles it and blames no source."""


class ChunkReport(Request):
    """The outcome of one assignment, sent with the next ``/work`` call (and, once the job is done,
    with a last one for the assignments the client still held)."""

    assignment_id: str = Field(min_length=1, max_length=64)
    ok: bool
    error: str | None = Field(default=None, max_length=4096)
    reason: str | None = Field(default=None, max_length=64)
    seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class WorkRequest(Request):
    """``POST /v1/jobs/{job_id}/work``: report finished assignments, ask for up to N more.

    With ``wait_seconds``, a call that would get no assignment waits (up to that long)
    until one may exist: a chunk landed elsewhere in the swarm, a seed came or freed a slot.
    A finished job that still serves as a peer calls it with ``max_assignments=0`` to stay alive.
    """

    max_assignments: int = Field(default=8, ge=0, le=1024)
    reports: list[ChunkReport] = Field(default_factory=list, max_length=100_000)
    wait_seconds: float = Field(default=0.0, ge=0, le=30, allow_inf_nan=False)
    landed_map: LandedMapInfo | None = None
    """Once, after ``JobCreated.streams``: this client's registered landed map; the job then streams."""
    streams: list[StreamReport] = Field(default_factory=list, max_length=4096)


class ReadSpan(Reply):
    """One TransferEngine segment: copy ``length`` bytes from the seed's ``src_ptr`` to our ``dst_ptr``."""

    dst_ptr: int
    src_ptr: int
    length: int


class Assignment(Reply):
    """Read these chunks from this seed, under a lease from its agent."""

    assignment_id: str
    chunk_id: int
    chunk_ids: list[int]
    seed_id: str
    session_id: str
    agent_url: str
    bytes: int
    attempt: int
    grant: str | None = None
    reads: list[ReadSpan]
    source_kind: Literal["seed", "peer"] = "seed"
    """``peer``: another client (no agent, no lease: read at once); ``seed``: lease from ``agent_url`` first."""


class Progress(Reply):
    bytes_done: int
    bytes_total: int
    chunks_done: int
    chunks_total: int
    retried_chunks: int
    failed_seeds: dict[str, str] = Field(default_factory=dict)
    """Every seed that failed this job, with why (worst state: failed a read, left, excluded)."""
    bytes_by_seed: dict[str, int] = Field(default_factory=dict)
    """Bytes landed per source id: seeds by their id, peers as ``peer:<job id>``."""
    bytes_resumed: int = 0
    bytes_from_seeds: int = 0
    bytes_from_peers: int = 0


class WorkReply(Reply):
    state: JobState
    error: str | None = None
    assignments: list[Assignment] = Field(default_factory=list)
    cancel: list[str] = Field(default_factory=list)
    """Assignments another seed already landed (endgame duplicates): stop them if not yet reading, or at the
    next gap of a read in pieces."""
    streams: list[StreamAssignment] = Field(default_factory=list)
    """Streams to start (each until every chunk of it has landed here)."""
    end_streams: list[str] = Field(default_factory=list)
    """Streams to stop (their parent moved); report each ``ended`` once no read of it is on the wire."""
    stream_rates: dict[str, float] = Field(default_factory=dict)
    """New rates (bytes/s) for running streams: their parents' upload caps, shared anew as streams came or went."""
    retry_after_seconds: float = 0.0
    progress: Progress
    queued: int | None = None
    """1-based place in the fork admission queue (``--max-forks-per-seed``); None when not waiting."""
    chunks_waiting: int = 0
    """Chunks waiting for a source (the planner's queue, streams' chunks not counted): while > 0 a
    client with nothing running asks again (long-polls) rather than waiting for its streams."""
    stream_report_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """While only streams run, report what they landed at most this often: the client waits the longer
    of this and its own interval (a stream that fails, or the last one ending, is told at once). The
    scheduler paces its streaming members so that they report about ``--stream-reports-per-second``
    times a second together; 0: the client's own interval."""


class WithdrawReply(Reply):
    """``POST /v1/jobs/{job_id}/withdraw``: no new reads from this peer; how many may still be on the wire.

    The client keeps its memory unchanged until ``reads_in_flight`` is 0 (call again to poll).
    """

    job_id: str
    reads_in_flight: int


WireIdText = Annotated[str, Field(min_length=1, max_length=64)]
"""An assignment's or a stream's id, as ``ChunkReport`` and ``StreamReport`` take them."""


class ReadsSettled(Request):
    """``POST /v1/jobs/{job_id}/settled``: reads and streams of this job's that are off the wire, none of
    them reported.

    A client whose fork was cancelled or failed deletes its job first (a process about to be killed
    gets that out), then waits for its reads and streams on the wire to end, then says so here: a read
    from a peer (or a stream from a parent) counts against that peer's withdraw until its reader says
    it ended, and the deleted job has no ``/work`` to report it by any more. Answered whether or not
    the job still exists.
    """

    assignment_ids: list[WireIdText] = Field(default_factory=list, max_length=100_000)
    stream_ids: list[WireIdText] = Field(default_factory=list, max_length=4096)

    @model_validator(mode="after")
    def _names_something(self) -> "ReadsSettled":
        if not self.assignment_ids and not self.stream_ids:
            raise ValueError("assignment_ids and stream_ids are both empty: name the reads or streams that ended")
        return self


class ReadsSettledReply(Reply):
    job_id: str
    settled: int
    """Reads from peers this call took off their peers' count. Ids of reads from seeds, of another
    job's reads, or settled already (reported, or past the scheduler's read deadline) count 0."""
    streams_settled: int = 0
    """Streams this call took off their parents' count, likewise."""


class JobStatus(Reply):
    job_id: str
    state: JobState
    error: str | None = None
    progress: Progress


class SeedSlo(Reply):
    state: str
    """``ok``, ``at_risk``, ``violated`` or ``unknown`` (see scheduler/fleet.py ``slo_state``)."""
    throttle: str | None = None
    slo_itl_seconds: float | None = None
    observed_itl_p99_seconds: float | None = None
    latency_impact_ratio: float | None = None


class FleetSeed(Reply):
    seed_id: str
    identity: ModelIdentity
    ranks: list[int]
    allowed_rate_bytes_per_second: float | None = None
    rate_cap_bytes_per_second: float | None = None
    slo: SeedSlo
    active_forks: int
    free_fork_slots: int | None = None


class FleetForks(Reply):
    active: int
    queued: int


class QueuedFork(Reply):
    job_id: str
    position: int
    identity: ModelIdentity
    rank: int
    age_seconds: float


class FleetSummary(Reply):
    """``GET /v1/fleet``: whether the fleet has room for more forks (for deploy controllers)."""

    max_forks_per_seed: int | None = None
    seeds: list[FleetSeed]
    forks: FleetForks
    queued: list[QueuedFork]


# --------------------------------------------------------------------------- leases (client -> agent)


class ThrottleMode(str, enum.Enum):
    """How an agent sets its allowed rate (its ``--throttle`` flag)."""

    ADAPTIVE = "adaptive"
    FIXED = "fixed"
    OFF = "off"


class LeaseRequest(Request):
    """``POST /v1/leases``: permission to read ``bytes`` of ``rank`` from the agent's seed now."""

    job_id: str = Field(min_length=1, max_length=128)
    assignment_id: str = Field(min_length=1, max_length=128)
    rank: int = Field(ge=0, le=4095)
    bytes: int = Field(gt=0, le=2**40)
    grant: str = Field(default="", max_length=4096)
    """The scheduler's signed grant for this assignment; required when the agent has a token."""
    wait_seconds: float = Field(default=5.0, ge=0, le=600, allow_inf_nan=False)


MIN_READ_PIECE_BYTES = 64 * 2**10
"""The smallest read piece: Mooncake's TCP transport stages GPU memory in 64 KiB copies, so a smaller piece
only adds round trips."""
MAX_READ_PIECE_GAP_SECONDS = 1.0


class ReadPieces(Request):
    """``PUT /v1/read-pieces`` (and ``GET``'s answer): how fork clients are to read this seed's chunks, from the
    next lease on. The agent's ``--read-piece`` and ``--read-piece-gap`` at start."""

    read_piece_bytes: int = Field(default=0, ge=0, le=2**40)
    """Read each chunk in pieces of at most this many bytes, one after another (0: in one read); 0 or at
    least ``MIN_READ_PIECE_BYTES``."""
    read_piece_gap_seconds: float = Field(default=0.0, ge=0, le=MAX_READ_PIECE_GAP_SECONDS, allow_inf_nan=False)
    """Wait this long between two pieces; needs pieces."""

    @classmethod
    def from_flags(cls, piece: str, gap_seconds: float, piece_flag: str = "--read-piece",
                   gap_flag: str = "--read-piece-gap") -> "ReadPieces":
        """A command line's piece size (``"1MiB"``, ``"0"``) and gap; ValueError names the flag and the fix.

            >>> ReadPieces.from_flags("1MiB", 0.005).read_piece_bytes
            1048576
            >>> ReadPieces.from_flags("0", 0.01)
            Traceback (most recent call last):
            ...
            ValueError: --read-piece-gap needs --read-piece (e.g. 1MiB): whole reads have no gaps
        """
        try:
            size = parse_size(piece)
        except UnitError as exc:
            raise ValueError(f"{piece_flag}: {exc}") from None
        if 0 < size < MIN_READ_PIECE_BYTES:
            raise ValueError(f"{piece_flag} must be 0 (whole reads) or at least 64KiB, got {piece}")
        if not 0 <= gap_seconds <= MAX_READ_PIECE_GAP_SECONDS:
            raise ValueError(f"{gap_flag} must be 0 to 1 seconds, got {gap_seconds}")
        if gap_seconds and not size:
            raise ValueError(f"{gap_flag} needs {piece_flag} (e.g. 1MiB): whole reads have no gaps")
        return cls(read_piece_bytes=size, read_piece_gap_seconds=gap_seconds)

    @model_validator(mode="after")
    def _pieces_that_can_be_read(self) -> "ReadPieces":
        if 0 < self.read_piece_bytes < MIN_READ_PIECE_BYTES:
            raise ValueError(f"read_piece_bytes must be 0 (whole reads) or at least {MIN_READ_PIECE_BYTES} bytes "
                             f"(64KiB), got {self.read_piece_bytes}")
        if self.read_piece_gap_seconds and not self.read_piece_bytes:
            raise ValueError("read_piece_gap_seconds needs read_piece_bytes: whole reads have no gap to wait")
        return self


def lease_read_pieces(pieces: ReadPieces, nbytes: int, ttl_seconds: float) -> tuple[int, float]:
    """How a lease for ``nbytes`` is to be read: (piece bytes, 0 for one read; gap seconds between pieces).

    The gap shrinks where the lease's gaps would pass half its ttl in all: the read must end well before
    the lease expires, or the agent would stop counting a read that is still on the wire.

        >>> pieces = ReadPieces(read_piece_bytes=2**20, read_piece_gap_seconds=0.005)
        >>> lease_read_pieces(pieces, 8 * 2**20, ttl_seconds=30)
        (1048576, 0.005)
        >>> lease_read_pieces(pieces, 2**20, ttl_seconds=30)            # one piece: no gap to wait
        (1048576, 0.0)
        >>> piece, gap = lease_read_pieces(pieces, 8192 * 2**20, ttl_seconds=30)   # 8,191 gaps: 15 s at most
        >>> round(gap * 8191, 9)
        15.0
    """
    piece = pieces.read_piece_bytes
    if not piece or nbytes <= piece:
        return piece, 0.0
    gaps = -(-nbytes // piece) - 1
    return piece, min(pieces.read_piece_gap_seconds, ttl_seconds / 2 / gaps)


class LeaseGranted(Reply):
    lease_id: str
    ttl_seconds: float
    read_piece_bytes: int = Field(default=0, ge=0)
    """Read the leased bytes in pieces of at most this many bytes, one after another (0: in one read).
    The seed's operator asks for it where one long read stalls the seed's own work (a GPU seed over TCP)."""
    read_piece_gap_seconds: float = Field(default=0.0, ge=0, le=MAX_READ_PIECE_GAP_SECONDS, allow_inf_nan=False)
    """Wait this long between two pieces."""


class ReleaseRequest(Request):
    used: bool = True


class ReleaseReply(Reply):
    lease_id: str
    refunded_bytes: float


class ThrottleRequest(Request):
    """``PUT /v1/throttle``: switch the throttle at run time (operators, benchmarks)."""

    # Not strict: ``mode`` arrives as a JSON string and becomes the enum; numbers may be ints.
    model_config = ConfigDict(extra="forbid", strict=False, protected_namespaces=())
    mode: ThrottleMode
    rate_bytes_per_second: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Fixed mode only: the rate to pace at (default the cap; never above it)."""
    slo_itl_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """A new ITL SLO threshold (default: keep the current one)."""
    throttle_tuning: str | None = Field(default=None, max_length=2000)
    """The control law's tuning from now on, ``FIELD=VALUE,...`` over the agent's start config (its
    ``--throttle-tuning``); ``""`` is the start config itself; default: keep the current one. A change
    starts the adaptive law afresh. A field or value the law does not take is a 422."""


class ThrottleStatus(Reply):
    allowed_rate_bytes_per_second: float | None = None
    mode: ThrottleMode
    controller_mode: str | None = None
    """The mode in force, as the agent's ``rfork_agent_throttle_mode`` gauge labels it: the adaptive law's
    mode as of its last decision, else ``fixed`` or ``off``; a switch shows at once."""
    action: str | None = None
    reason: str | None = None
    throttle_reason: str | None = None
    """Why the rate is where it is: transfer_latency, seed_over_slo, seed_idle, metrics_stale, not_adaptive."""
    baseline_itl_slo_violation_ratio: float | None = None
    slo_itl_seconds: float | None = None
    observed_itl_p99_seconds: float | None = None
    itl_slo_violation_ratio: float | None = None
    latency_impact_ratio: float | None = None
    seed_metrics_age_seconds: float | None = None
    throttle_tuning: str = ""
    """The tuning in force over the agent's start config (``PUT /v1/throttle``'s ``throttle_tuning``; "": none)."""


class ServedRank(Reply):
    rank: int
    session_id: str
    tensors: int
    bytes: int


class AgentStatus(Reply):
    """``GET /v1/status``: everything an operator asks an agent."""

    seed_id: str
    phase: str
    seed_alive: bool
    sglang_url: str
    scheduler_url: str
    agent_url: str
    identity: ModelIdentity | None = None
    ranks: list[ServedRank] = Field(default_factory=list)
    rate_cap_bytes_per_second: float | None = None
    allowed_rate_bytes_per_second: float | None = None
    available_bytes: float | None = None
    in_flight_leases: int
    in_flight_bytes: int
    granted_bytes: int
    throttle: ThrottleStatus


class AgentHealth(Reply):
    status: str
    phase: str
    seed_alive: bool


# --------------------------------------------------------------------------- errors


class ErrorDetail(Reply):
    """What went wrong (``error``, a stable code) and how to fix it (``message``, a sentence)."""

    error: str
    message: str
    retry_after_seconds: float | None = None


class ErrorBody(Reply):
    """Every 4xx/5xx body of every rfork service: ``{"detail": {"error", "message"}}``."""

    detail: ErrorDetail
