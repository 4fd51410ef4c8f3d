"""The fork client: pull chunk assignments from the scheduler, lease, read, report.

A fork of one rank is a loop around one scheduler call, ``work``: it reports
the chunks that finished since the last call and receives new assignments. Each
assignment runs as its own task: take a lease from the seed's agent (the agent
paces leases to the seed's allowed byte rate), issue the TransferEngine read,
release the lease. The scheduler decides which seed serves which chunk, so
rebalancing, retries on another seed and endgame duplicates need nothing here
beyond running what it hands out. With nothing to run, the call long-polls
(``wait_seconds``) instead of the client sleeping.

Peers: with a ``PeerOffer`` (``ForkClient.peer_offer``) the job offers every
chunk this client has landed to the other clients forking the same weights,
and its assignments may come from such peers (``source_kind`` "peer": no agent,
no lease, read at once). Other clients may be reading our memory, so before
``fork`` returns or raises, and before ``stop_serving`` returns, the client
withdraws as a source and waits (bounded by ``ForkOptions.withdraw_wait_seconds``)
until the scheduler says no read from it is still on the wire; only then is the
job deleted and the caller free to rewrite or free the memory. ``keep_serving``
leaves the finished job serving: keep it alive with ``serve`` and end it with
``stop_serving``.

Destination memory must already be registered with the transport (SGLang's
loader registers the model's parameters itself; ``register_tensors`` does it
for plain tensors).

    >>> transport = MooncakeTransport(protocol="tcp")
    >>> register_tensors(transport, tensors)
    >>> result = asyncio.run(ForkClient("http://127.0.0.1:8700", transport).fork(identity, 0, tensors))
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping


from metrics.definitions import FAILURE_REASONS, ClientMetrics
from rfork_api import models as m
from rfork_api.models import NOT_READ
from rfork_api.clients import AgentClient, SchedulerClient
from rfork_api.errors import (
    AgentError,
    AgentUnreachable,
    LeaseDenied,
    RforkApiError,
    SchedulerError,
    SchedulerUnreachable,
    SeedUnavailable,
    UnknownJob,
    UnknownLease,
    UnknownModel,
    clip,
)
from rfork_api.auth import bearer_header
from rfork_agent.landed import FollowOptions, LandedMap, NotTheSamePlan, ParentStalled, follow
from rfork_agent.transport import ReadFailed, ReadTimeout, Transport, read
from rfork_api.chunking import InvalidChunkSize, plan_chunks
from rfork_api.landed import Stream, plan_digest
from rfork_api.manifest import InvalidManifest, parse_manifest
from rfork_api.units import UnitError, format_bytes, format_rate, parse_rate

log = logging.getLogger("rfork.fork")

_REPORT_ERROR_CHARS = m.ChunkReport.model_fields["error"].metadata[0].max_length - 32
"""Room for ``clip``'s "…(N chars)" suffix within the report's bound."""


class ForkError(Exception):
    """A fork could not complete. The message says why and what to do."""


class ForkFailed(ForkError):
    """The scheduler gave up on the job (no eligible seed left, for example)."""


@dataclass(frozen=True)
class ForkProgress:
    bytes_done: int
    bytes_total: int
    chunks_done: int
    chunks_total: int
    retried_chunks: int
    bytes_by_seed: Mapping[str, int]
    failed_seeds: Mapping[str, str]


@dataclass
class ForkResult:
    job_id: str
    bytes_total: int
    transfer_seconds: float
    """First read started (after its lease, or at once from a peer) to last chunk landed."""
    bytes_by_seed: dict[str, int]
    retried_chunks: int
    failed_seeds: dict[str, str]
    chunks_total: int
    duplicate_reads: int = 0
    """Chunks that landed more than once (an endgame duplicate read to the end beside the first)."""
    reads_failed: int = 0
    resumed_jobs: int = 0
    """Times the scheduler lost the job (restarted) and the client resumed it."""
    bytes_from_seeds: int = 0
    bytes_from_peers: int = 0
    """Bytes landed from serving seeds and from other clients (the scheduler's count)."""
    serving: bool = False
    """The job still serves its chunks as a peer (``keep_serving``): end it with ``stop_serving``."""


@dataclass(frozen=True)
class Withdrawal:
    """How a peer stopped serving: ``ForkClient.withdrawal`` after ``stop_serving`` (or a fork's end).

        >>> Withdrawal("9d4b", 0.12, 0, "").describe()
        'job 9d4b stopped serving as a peer after 0.12 s; no read from it is on the wire'
    """

    job_id: str
    seconds: float
    """From the first withdraw to the scheduler's confirmation (or giving up)."""
    reads_in_flight: int
    """Reads from us the scheduler still counted when we stopped waiting (0 = confirmed clear)."""
    gave_up: str
    """Why we stopped waiting before the scheduler confirmed ('' when it confirmed)."""

    @property
    def confirmed(self) -> bool:
        return not self.gave_up

    def describe(self) -> str:
        if self.confirmed:
            return (f"job {self.job_id} stopped serving as a peer after {self.seconds:.2f} s; "
                    "no read from it is on the wire")
        return (f"job {self.job_id} stopped serving as a peer without the scheduler's confirmation that no read "
                f"from it is on the wire ({self.gave_up}); gave up after {self.seconds:.1f} s")


@dataclass(frozen=True)
class PeerSettings:
    """What ``--peer-rate``, ``--peer-max-in-flight`` and ``--no-peers`` ask for (``parse_peer_settings``)."""

    serve: bool = True
    """Offer landed chunks to other clients (False: read from seeds and peers, serve nobody)."""
    rate: float | None = None
    """Upload bytes/s the scheduler lets others read from us; None = unlimited."""
    max_in_flight: int = 8
    """Reads from us at once, over every reader."""

    def describe(self) -> str:
        if not self.serve:
            return "not serving as a peer"
        return f"serving as a peer at up to {format_rate(self.rate)}, {self.max_in_flight} reads at once"


def parse_peer_settings(rate: str | None, max_in_flight: int | None = None, no_peers: bool = False,
                        flag: str = "--peer-rate") -> PeerSettings:
    """Peer flags -> ``PeerSettings``; raises ``ValueError`` with a one-line message naming the flag.

    The rate parses exactly like an agent's ``--rate-cap`` (``unlimited`` by
    default); 0 serves nobody, as ``--no-peers`` does.

        >>> parse_peer_settings("50MB/s", 4)
        PeerSettings(serve=True, rate=50000000.0, max_in_flight=4)
    """
    try:
        parsed = parse_rate(rate)
    except UnitError as exc:
        raise ValueError(f"{flag}: {exc}") from None
    limit = PeerSettings.max_in_flight if max_in_flight is None else max_in_flight
    field_limits = m.PeerOffer.model_fields["max_in_flight"].metadata
    low = next(c.ge for c in field_limits if hasattr(c, "ge"))
    high = next(c.le for c in field_limits if hasattr(c, "le"))
    if not low <= limit <= high:
        raise ValueError(f"--peer-max-in-flight must be between {low} and {high} reads, got {limit}")
    return PeerSettings(serve=not no_peers and parsed != 0, rate=parsed, max_in_flight=limit)


@dataclass(frozen=True)
class Cancellation:
    """What a cancelled fork left behind: ``ForkClient.cancellation`` after ``fork`` was cancelled.

    A cancelled fork stops issuing reads, waits for the reads already on the wire
    (TransferEngine cannot abort a read into our memory), releases every lease it
    holds, and cancels its job at the scheduler, then re-raises ``CancelledError``.

        >>> Cancellation("9d4b", True, "", 3, 0, 2**20, 2**26).describe()
        'cancelled job 9d4b at the scheduler and released 3 leases (1.00 MiB of 64.00 MiB had landed)'
    """

    job_id: str | None
    """None: cancelled before the scheduler created a job."""
    job_cancelled: bool
    cancel_error: str
    """Why the job could not be cancelled at the scheduler ('' when it was)."""
    leases_released: int
    leases_unconfirmed: int
    """Releases not confirmed within ``ForkOptions.cleanup_seconds``: their agents expire them."""
    bytes_done: int
    bytes_total: int

    def describe(self) -> str:
        if self.job_id is None:
            return "no fork job had been created yet; nothing to clean up"
        if self.job_cancelled:
            job = f"cancelled job {self.job_id} at the scheduler"
        else:
            job = (f"could not cancel job {self.job_id} at the scheduler ({self.cancel_error}); "
                   "it drops the job once its client timeout passes")
        leases = f"released {self.leases_released} lease{'s' if self.leases_released != 1 else ''}"
        if self.leases_unconfirmed:
            leases += f" ({self.leases_unconfirmed} unconfirmed: their agents expire them after the lease ttl)"
        landed = f"{format_bytes(self.bytes_done)} of {format_bytes(self.bytes_total)} had landed"
        return f"{job} and {leases} ({landed})"


@dataclass(frozen=True)
class ForkOptions:
    """Client knobs. Defaults suit both TCP testbeds and RDMA fleets."""

    max_in_flight: int = 16
    """Assignments running at once, over all seeds (the scheduler picks per seed)."""
    read_timeout_base_seconds: float = 10.0
    read_timeout_min_bandwidth: float = 10e6
    """A read of N bytes in S segments times out after base + N / this (bytes/s) + S x the next."""
    read_timeout_per_segment_seconds: float = 0.005
    """Over TCP each segment is one TransferEngine request (0.1-0.4 ms each measured on a loaded
    loopback), so a read of thousands of tiny tensors is slow by its count, not its bytes."""
    lease_wait_seconds: float = 5.0
    """How long one lease request may wait at the agent before retrying."""
    lease_give_up_seconds: float = 120.0
    """A chunk whose lease keeps being refused this long is reported back."""
    scheduler_give_up_seconds: float = 30.0
    """How long the scheduler may be unreachable before the fork fails."""
    idle_poll_seconds: float = 0.5
    suspect_seconds: float = 0.5
    """After a read from a seed fails, a new read to it first waits this long and then asks the
    seed's agent whether the seed is alive (its probe runs every 250 ms). A read submitted to a
    dead TCP peer can block inside TransferEngine, so we never guess; a transient error costs at
    most this delay."""
    cleanup_seconds: float = 15.0
    """When a fork ends (done, failed or cancelled), how long it waits for its last lease requests,
    lease releases and job cancel to be answered. A lease whose release is not confirmed in time
    expires at its agent after the agent's lease ttl."""
    long_poll_seconds: float = 5.0
    """With nothing running, how long one ``/work`` call may wait at the scheduler for work."""
    withdraw_wait_seconds: float = 40.0
    """A peer that stops serving waits at most this long for the scheduler to confirm that no read
    from it is on the wire (a reader that went away holds its reads for the scheduler's peer read
    deadline, 30 s by default) before it gives up, says so, and lets its memory go."""
    withdraw_poll_seconds: float = 0.05
    keepalive_seconds: float = 2.0
    """While a finished fork serves (``serve``), how often it tells the scheduler it is alive
    (the scheduler drops a silent peer after its client timeout, 30 s by default)."""
    streams: bool = True
    """Follow the streams the scheduler offers a peer (a landed map, one stream per stripe): no
    scheduler decision per chunk. False: every chunk is an assignment."""
    stream_report_seconds: float = 1.0
    """While streams run, how often the chunks they landed are reported (and moves picked up); less
    often when the scheduler asks (``WorkReply.stream_report_seconds``: it paces big scale-outs)."""
    follow: FollowOptions = FollowOptions()


def manifest_of(tensors: Mapping[str, "object"]) -> dict[str, list[int]]:
    """SGLang's manifest format, {name: [ptr, numel, element_size]}, for torch tensors."""
    return {
        name: [int(t.data_ptr()), int(t.numel()), int(t.element_size())] for name, t in tensors.items()
    }


def register_tensors(transport: Transport, tensors: Mapping[str, "object"]) -> None:
    """Register the memory behind the tensors with the transport: each storage once (skips zero-byte tensors).

    Views into one buffer (``fork_cli.allocate_like``) make one registration,
    padding included. TransferEngine's registration cost grows with the number
    of regions already registered (40,000 one-tensor regions took 8 minutes on
    TCP), and with that many regions the handshakes with the seeds then failed
    (connection reset); a model with tens of thousands of tensors needs few regions.
    """
    regions: dict[int, int] = {}
    for tensor in tensors.values():
        if tensor.numel() * tensor.element_size():
            storage = tensor.untyped_storage()
            regions[storage.data_ptr()] = storage.nbytes()
    for ptr, nbytes in regions.items():
        transport.register(ptr, nbytes)


@dataclass(frozen=True)
class _LeaseFailure:
    """Why no lease came for an assignment: the reason and error its chunk report carries."""

    reason: str
    error: str


def _identity(identity: m.ModelIdentity | Mapping[str, object]) -> m.ModelIdentity:
    return identity if isinstance(identity, m.ModelIdentity) else m.ModelIdentity.model_validate(dict(identity))


def _no_progress_yet(job: m.JobCreated) -> m.Progress:
    return m.Progress(bytes_done=0, bytes_total=job.total_bytes, chunks_done=0, chunks_total=job.num_chunks,
                      retried_chunks=0)


def _not_read(assignment_id: str, why: str) -> m.ChunkReport:
    return m.ChunkReport(assignment_id=assignment_id, ok=False, reason=NOT_READ, error=f"not read: {why}")


@dataclass
class _Running:
    assignment: m.Assignment
    task: asyncio.Task
    reading: bool = False
    in_pieces: bool = False
    """The read goes in several pieces (the seed's lease asked for them): it can stop between two."""

    @property
    def stoppable(self) -> bool:
        """Whether cancelling it saves a read: not on the wire yet, or in pieces (``transport.read`` stops
        at the next gap, once the piece on the wire has settled). A whole read on the wire cannot be
        recalled: cancelling it would only lose its report."""
        return not self.reading or self.in_pieces


@dataclass
class _Following:
    """One stream this client follows: its task, the chunks it landed not reported yet."""

    assignment: m.StreamAssignment
    task: asyncio.Task | None = None
    landed: list[int] = field(default_factory=list)
    told_to_end: bool = False
    rate: float | None = None
    """Its share of the parent's upload cap now (the scheduler moves it as the parent's streams change)."""


@dataclass
class _Tally:
    first_lease_at: float | None = None
    last_landed_at: float | None = None
    bytes_by_seed: dict[str, int] = field(default_factory=dict)
    reads_failed: int = 0
    duplicate_reads: int = 0
    landed_chunks: set[int] = field(default_factory=set)
    """Chunk ids whose bytes are in our memory: what a resumed job need not read again."""
    resumed_jobs: int = 0


class ForkClient:
    """Forks one rank's weights through an rfork scheduler."""

    def __init__(
        self,
        scheduler_url: str,
        transport: Transport,
        *,
        options: ForkOptions = ForkOptions(),
        progress: Callable[[ForkProgress], None] | None = None,
        metrics: ClientMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        token: str | None = None,
    ) -> None:
        self.scheduler_url = scheduler_url
        self._headers = bearer_header(token)
        self.transport = transport
        self.options = options
        self._progress = progress
        self._metrics = metrics
        self._clock = clock
        self._suspect_until: dict[str, float] = {}
        self._background: set[asyncio.Task] = set()
        """Lease requests whose caller went away, lease releases, the job cancel: awaited (bounded)
        before ``fork`` returns, so none is cut off when the caller's event loop closes."""
        self._releases_started = self._releases_confirmed = 0
        self._job_cancel_error: str | None = None
        """'' once the scheduler confirmed the job's cancel; else why not."""
        self.job_id: str | None = None
        """The job this client runs (a resumed job has a new id)."""
        self.progress: m.Progress | None = None
        """The scheduler's latest progress report for the job (None before it exists)."""
        self.cancellation: Cancellation | None = None
        """Set when ``fork`` was cancelled: what it cleaned up."""
        self.withdrawal: Withdrawal | None = None
        """Set when a job that served as a peer stopped serving: whether the scheduler confirmed it."""
        self._serving_job: str | None = None
        """The job whose chunks other clients may be reading: withdraw before the memory changes."""
        self._peer: m.PeerOffer | None = None
        self._landed_map: LandedMap | None = None
        """This fork's landed map while it streams (registered memory readers follow): closed once
        no reader is counted (``_stop_serving``)."""
        self._manifest = None
        self._plan = None

    def peer_offer(self, settings: PeerSettings = PeerSettings()) -> m.PeerOffer | None:
        """This client's offer to serve its landed chunks over its transport's session (None: serve nobody)."""
        if not settings.serve:
            return None
        return m.PeerOffer(session_id=self.transport.session_id, upload_rate_bytes_per_second=settings.rate,
                           max_in_flight=settings.max_in_flight)

    async def fork(
        self,
        identity: Mapping[str, object],
        rank: int,
        tensors: Mapping[str, "object"],
        *,
        chunk_size_bytes: int | None = None,
        peer: m.PeerOffer | None = None,
        keep_serving: bool = False,
    ) -> ForkResult:
        """Fork every byte of ``tensors`` (registered destination memory) or raise ForkError.

        ``peer`` (see ``peer_offer``) serves the chunks landed so far to other clients while the fork
        runs. However the fork ends, it first withdraws and waits for reads from us on the wire
        (``withdrawal`` says how that went), except that ``keep_serving`` leaves a successful fork
        serving: then call ``serve`` and, before the memory changes, ``stop_serving``.
        """
        if self._serving_job is not None:
            raise ForkError(f"job {self._serving_job} of this client still serves as a peer; "
                            "call stop_serving() before forking again")
        scheduler = SchedulerClient(self.scheduler_url, headers=self._headers)
        agents: dict[str, AgentClient] = {}
        manifest = manifest_of(tensors)
        self.job_id, self.progress, self.cancellation, self.withdrawal = None, None, None, None
        self._releases_started = self._releases_confirmed = 0
        self._job_cancel_error = None
        self._peer = peer
        try:
            identity = _identity(identity)
            job = await self._create_job(scheduler, identity, rank, manifest, chunk_size_bytes)
            self.job_id = job.job_id
            if peer is not None:
                self._serving_job = self.job_id
            self.progress = _no_progress_yet(job)
            self._open_landed_map(job, manifest)
            log.info(
                "job %s: %d bytes in %d chunks from seeds %s",
                job.job_id, job.total_bytes, job.num_chunks, ", ".join(job.seed_ids),
            )
            self._touch_seed_series(job.seed_ids)

            async def resume(old_job: m.JobCreated, landed: set[int]) -> m.JobCreated:
                return await self._resume(scheduler, identity, rank, manifest, old_job, landed)

            try:
                result = await self._run(scheduler, agents, job, rank, resume)
            except BaseException:
                # Our own reads have settled (_run drained them); reads FROM us may not have.
                await self._stop_serving(scheduler)
                raise
            if keep_serving and self._serving_job is not None:
                result.serving = True
            else:
                await self._stop_serving(scheduler)
            return result
        except asyncio.CancelledError:
            # _run stopped new reads, waited for those on the wire and sent the job's cancel;
            # what is left: the lease releases, late lease answers and that cancel.
            await self._settle_background()
            self.cancellation = self._cancellation()
            log.debug("fork cancelled: %s", self.cancellation.describe())
            raise
        finally:
            await self._settle_background()
            if self._serving_job is None:
                self._close_landed_map()  # nobody is told to read it any more
            for agent in agents.values():
                await agent.aclose()
            await scheduler.aclose()

    def _open_landed_map(self, job: m.JobCreated, manifest: dict) -> None:
        """Register this fork's landed map if the scheduler streams and our chunk plan is its plan."""
        self._close_landed_map()
        if job.streams is None or not self.options.streams or self._peer is None:
            return
        try:
            parsed = parse_manifest(manifest)
            plan = plan_chunks(parsed, job.chunk_size_bytes, minimum=1)
        except (InvalidManifest, InvalidChunkSize) as exc:
            log.warning("job %s: forking without streams: our chunk plan failed (%s)", job.job_id, exc)
            return
        if len(plan) != job.num_chunks or plan_digest(plan).hex() != job.streams.plan_digest:
            log.warning("job %s: forking without streams: our chunk plan (%d chunks) is not the scheduler's "
                        "(%d chunks, or other bytes under the same ids); run the same rfork version on both",
                        job.job_id, len(plan), job.num_chunks)
            return
        self._manifest, self._plan = parsed, plan
        self._landed_map = LandedMap(self.transport, plan, parsed)

    def _close_landed_map(self) -> None:
        if self._landed_map is not None:
            self._landed_map.close()
            self._landed_map = None

    async def _create_job(self, scheduler: SchedulerClient, identity: m.ModelIdentity, rank: int, manifest: dict,
                          chunk_size_bytes: int | None) -> m.JobCreated:
        """POST the job; if we are cancelled meanwhile, the job the scheduler may still create is
        cancelled when its answer comes (else it would wait out the client timeout). No read from
        us can be on the wire yet: we had landed nothing when it was created."""
        request = asyncio.ensure_future(
            scheduler.create_job(m.JobRequest(identity=identity, rank=rank, manifest=manifest,
                                              chunk_size_bytes=chunk_size_bytes, peer=self._peer)))
        try:
            return await asyncio.shield(request)
        except asyncio.CancelledError:
            async def cancel_when_created() -> None:
                try:
                    job = await request
                except Exception:  # noqa: BLE001 - no job was created: nothing to cancel
                    return
                self.job_id = job.job_id
                self.progress = _no_progress_yet(job)
                await self._cancel_job(scheduler, job.job_id)

            self._spawn(cancel_when_created())
            raise

    async def _cancel_job(self, scheduler, job_id: str) -> None:
        try:
            await scheduler.delete_job(job_id)
            self._job_cancel_error = ""
        except UnknownJob:
            self._job_cancel_error = ""  # already gone (finished, or the scheduler restarted)
        except Exception as exc:  # noqa: BLE001 - reported in Cancellation; the scheduler's timeout is the backstop
            self._job_cancel_error = str(exc)
            log.debug("cancel of job %s failed: %s", job_id, exc)

    def _cancellation(self) -> Cancellation:
        error = self._job_cancel_error
        return Cancellation(
            job_id=self.job_id, job_cancelled=error == "",
            cancel_error=f"no answer within {self.options.cleanup_seconds:g} s" if error is None else error,
            leases_released=self._releases_confirmed,
            leases_unconfirmed=self._releases_started - self._releases_confirmed,
            bytes_done=self.progress.bytes_done if self.progress else 0,
            bytes_total=self.progress.bytes_total if self.progress else 0,
        )

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _settle_background(self) -> None:
        """Wait (at most ``cleanup_seconds``) for lease requests, releases and the job cancel."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.cleanup_seconds
        # A settling task may start another (a late lease is then released): loop until none is left.
        while self._background and loop.time() < deadline:
            await asyncio.wait(set(self._background), timeout=deadline - loop.time())
        left = list(self._background)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    async def _resume(self, scheduler: SchedulerClient, identity: m.ModelIdentity, rank: int, manifest: dict,
                      old_job: m.JobCreated, landed: set[int]) -> m.JobCreated:
        """Re-create a job the scheduler lost (it restarted), keeping the chunks that already landed.

        The scheduler keeps no durable state: seeds are re-announced by their
        agents' heartbeats, progress by the client, the only party that knows
        which bytes are in its memory. Right after a restart no seed may be
        registered yet, so 'unknown model' is retried for a while.
        """
        give_up_at = self._clock() + self.options.scheduler_give_up_seconds
        while True:
            try:
                job = await scheduler.create_job(m.JobRequest(
                    identity=identity, rank=rank, manifest=manifest, chunk_size_bytes=old_job.chunk_size_bytes,
                    resume=m.Resume(previous_job_id=old_job.job_id, chunks_done=sorted(landed)),
                    peer=self._peer,
                ))
            except (UnknownModel, SchedulerUnreachable) as exc:
                if self._clock() >= give_up_at:
                    raise ForkError(f"the rfork scheduler at {self.scheduler_url} lost job {old_job.job_id} "
                                    f"and it could not be resumed: {exc}") from exc
                await asyncio.sleep(0.5)
                continue
            log.warning("the scheduler lost job %s (restarted?); resumed as job %s with %d of %d chunks landed",
                        old_job.job_id, job.job_id, len(landed), job.num_chunks)
            return job

    async def _run(self, scheduler: SchedulerClient, agents: dict[str, AgentClient], job: m.JobCreated, rank: int,
                   resume: Callable[[m.JobCreated, set[int]], Awaitable[m.JobCreated]]) -> ForkResult:
        job_id = job.job_id
        tally = _Tally()
        running: dict[str, _Running] = {}
        following: dict[str, _Following] = {}
        reports: list[m.ChunkReport] = []
        stream_reports: list[m.StreamReport] = []
        landed_map = None if self._landed_map is None or self._peer is None else m.LandedMapInfo.of(
            self._landed_map.ref(self._peer.session_id))
        send_map = landed_map
        last_stream_report = self._clock()
        unreachable_since: float | None = None
        response: m.WorkReply | None = None
        done = False
        try:
            while True:
                stream_reports += self._stream_news(following, tally)
                last_stream_report = self._clock()
                try:
                    # Nothing running: the scheduler holds the call until there may be work for us
                    # (a chunk landed somewhere in the swarm, a seed freed a slot), no sleeping here.
                    # While streams run, no long poll: their news goes out every report interval.
                    response = await scheduler.work(job_id, m.WorkRequest(
                        max_assignments=max(self.options.max_in_flight - len(running), 0), reports=reports,
                        wait_seconds=0.0 if running else self._long_poll_seconds(following, response),
                        landed_map=send_map, streams=stream_reports,
                    ))
                    reports, stream_reports, send_map = [], [], None
                    unreachable_since = None
                except UnknownJob:
                    # Reports of assignments from the lost job mean nothing to the new one;
                    # what they landed is in tally.landed_chunks.
                    job = await resume(job, tally.landed_chunks)
                    job_id, reports, stream_reports = job.job_id, [], []
                    await self._stop_following(following)  # the new job's streams come anew
                    following.clear()
                    send_map = landed_map if job.streams is not None else None
                    self.job_id = job_id
                    if self._peer is not None:
                        self._serving_job = job_id
                    self.progress = _no_progress_yet(job)
                    tally.resumed_jobs += 1
                    continue
                except SchedulerUnreachable as exc:
                    # Keep the reports: they go with the next call that gets through.
                    now = self._clock()
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since > self.options.scheduler_give_up_seconds:
                        raise ForkError(
                            f"lost the rfork scheduler at {self.scheduler_url} for "
                            f"{now - unreachable_since:.0f} s: {exc}"
                        ) from exc
                    await asyncio.sleep(0.5)
                    continue

                self._report_progress(response, tally)
                for stream_id in response.end_streams:
                    entry = following.get(stream_id)
                    if entry is None:
                        stream_reports.append(m.StreamReport(stream_id=stream_id, state="ended"))  # never started
                    else:
                        entry.told_to_end = True
                        entry.task.cancel()  # a read on the wire settles first (transport.read)
                for assignment in response.streams:
                    following[assignment.stream_id] = self._start_following(assignment, tally)
                for stream_id, rate in response.stream_rates.items():
                    if stream_id in following:
                        following[stream_id].rate = rate
                if response.state == m.JobState.DONE:
                    done = True
                    break
                if response.state == m.JobState.FAILED:
                    raise ForkFailed(f"fork job {job_id} failed: {response.error}")

                for assignment_id in response.cancel:
                    entry = running.get(assignment_id)
                    # A read already on the wire cannot be recalled; it writes the same bytes the
                    # winning read wrote, so letting it finish is safe. One in pieces stops at a gap.
                    if entry is not None and entry.stoppable:
                        entry.task.cancel()
                for assignment in response.assignments:
                    entry = _Running(assignment, None)  # type: ignore[arg-type]
                    entry.task = asyncio.create_task(self._run_assignment(agents, job_id, rank, entry, tally))
                    running[assignment.assignment_id] = entry
                self._set_in_flight(len(running))

                wait_for = max(response.retry_after_seconds, 0.0)
                if not running and not following:
                    if not response.assignments and not self.options.long_poll_seconds:
                        await asyncio.sleep(wait_for or self.options.idle_poll_seconds)
                    continue  # the next call long-polls
                if following and not running and response.chunks_waiting:
                    continue  # chunks wait for a source: the next call long-polls (up to a report interval)
                if following and not running:
                    # Streams alone: wake when one ends, or to report what they landed. A stream
                    # that finished while others run waits for the next report: a call per stream
                    # would be most of the scheduler's work in a scale-out.
                    report_s = self._report_seconds(response)
                    while not self._stream_call_due(following, last_stream_report, report_s):
                        await asyncio.wait(
                            [f.task for f in following.values() if not f.task.done()],
                            timeout=max(last_stream_report + report_s - self._clock(), 0.001),
                            return_when=asyncio.FIRST_COMPLETED)
                    continue
                done, _ = await asyncio.wait(
                    [e.task for e in running.values()] + [f.task for f in following.values()],
                    # Wake when a chunk finishes (to report it and refill its slot) or
                    # when the scheduler said to ask again.
                    timeout=wait_for or self.options.idle_poll_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                reports.extend(self._collect(running))
        except ForkFailed:
            raise  # the scheduler ended the job itself
        except BaseException:
            # Cancelled (Ctrl-C, SIGTERM, the caller gave up) or failed on our side: the job would
            # hold its assignments until the scheduler's client timeout. Sent before the drain,
            # which waits for reads on the wire: a process about to be killed gets this out first.
            # A peer withdraws instead (no new reads from us); its job is deleted only once the
            # reads from it have settled (fork's _stop_serving), or the scheduler would forget them.
            if self._serving_job is None:
                self._spawn(self._cancel_job(scheduler, job_id))
            else:
                self._spawn(self._withdraw_once(scheduler, job_id))
            raise
        finally:
            # Every assignment still ours ends here. Done, each is reported (below): a read from a
            # peer counts as on the wire until its reader reports it, and one never reported holds
            # the peer's withdraw for the scheduler's --peer-read-deadline. Cancelled or failed, the
            # job has ended (or is deleted) at the scheduler: the settle call says they (and the
            # streams, stopped above) are off the wire.
            unreported = reports + await self._drain(running)
            await self._stop_following(following)
            self._set_in_flight(0)
            if not done:
                streams = {*following, *(r.stream_id for r in stream_reports if r.state != "running")}
                if unreported or streams:
                    self._spawn(self._settle_reads(scheduler, job_id, m.ReadsSettled(
                        assignment_ids=[r.assignment_id for r in unreported], stream_ids=sorted(streams))))

        # Done: every chunk is here, so every stream has ended. Say so, or each parent would count
        # it as a reader until the scheduler's read deadline (a parent's withdraw waits for that).
        stream_reports += self._stream_news(following, tally)
        if stream_reports or unreported:
            try:
                await scheduler.work(job_id, m.WorkRequest(max_assignments=0, streams=stream_reports,
                                                           reports=unreported))
            except RforkApiError as exc:
                log.debug("final reports of job %s not sent: %s", job_id, exc)

        progress = response.progress
        if tally.first_lease_at is None or tally.last_landed_at is None:
            seconds = 0.0  # nothing to read (every tensor was zero bytes)
        else:
            seconds = tally.last_landed_at - tally.first_lease_at
        return ForkResult(
            job_id=job_id,
            bytes_total=progress.bytes_total,
            transfer_seconds=seconds,
            bytes_by_seed=dict(tally.bytes_by_seed),
            retried_chunks=progress.retried_chunks,
            failed_seeds=dict(progress.failed_seeds),
            chunks_total=progress.chunks_total,
            duplicate_reads=tally.duplicate_reads,
            reads_failed=tally.reads_failed,
            resumed_jobs=tally.resumed_jobs,
            bytes_from_seeds=progress.bytes_from_seeds,
            bytes_from_peers=progress.bytes_from_peers,
        )

    def _start_following(self, assignment: m.StreamAssignment, tally: _Tally) -> _Following:
        entry = _Following(assignment, rate=assignment.max_rate_bytes_per_second)
        mine = self._landed_map
        if mine is None or self._plan is None:  # cannot happen: the scheduler streams only jobs that sent a map
            entry.task = asyncio.ensure_future(asyncio.sleep(0))
            entry.told_to_end = True
            return entry
        stream = Stream(assignment.parent_map.ref(), assignment.first_chunk, assignment.end_chunk)
        label = f"peer:{assignment.parent_job_id}"
        sizes = [c.nbytes for c in self._plan]
        started = self._clock()

        def on_landed(chunk_ids: list[int]) -> None:
            now = self._clock()
            tally.first_lease_at = started if tally.first_lease_at is None else min(tally.first_lease_at, started)
            tally.last_landed_at = now if tally.last_landed_at is None else max(tally.last_landed_at, now)
            nbytes = sum(sizes[c] for c in chunk_ids)
            tally.bytes_by_seed[label] = tally.bytes_by_seed.get(label, 0) + nbytes
            tally.landed_chunks.update(chunk_ids)
            entry.landed.extend(chunk_ids)
            if self._metrics:
                self._metrics.bytes_total.labels(seed="peer").inc(nbytes)

        entry.task = asyncio.ensure_future(follow(self.transport, stream, self._plan, self._manifest, mine,
                                                  self.options.follow, on_landed, clock=self._clock,
                                                  rate=lambda: entry.rate))
        return entry

    def _long_poll_seconds(self, following: dict[str, _Following], last: m.WorkReply | None) -> float:
        """How long the next /work call, with nothing running, may wait at the scheduler: its long
        poll; while streams run, no longer than their report interval, and not at all when the last
        reply left nothing for a source (the streams' news is what to wait for, here)."""
        if not following:
            return self.options.long_poll_seconds
        if last is not None and not last.chunks_waiting:
            return 0.0
        return min(self.options.long_poll_seconds, self._report_seconds(last))

    def _report_seconds(self, last: m.WorkReply | None) -> float:
        """How often the streams' news goes out: our own interval, or the scheduler's if it asks for
        less often (it paces a big scale-out's members to what it can serve)."""
        return max(self.options.stream_report_seconds, 0.0 if last is None else last.stream_report_seconds)

    def _stream_call_due(self, following: dict[str, _Following], last_report: float, report_seconds: float) -> bool:
        """Whether the streams have news the scheduler needs now: every stream ended (the fork may be
        done), one failed or stopped as told (it moves one, or a parent waits for it), or the report
        interval passed."""
        tasks = [f.task for f in following.values()]
        if all(t.done() for t in tasks):
            return True
        if any(t.done() and (t.cancelled() or t.exception() is not None) for t in tasks):
            return True
        return self._clock() - last_report >= report_seconds

    def _stream_news(self, following: dict[str, _Following], tally: _Tally) -> list[m.StreamReport]:
        """Reports of what each stream landed since the last call, and of the streams that ended."""
        out = []
        for stream_id, entry in list(following.items()):
            landed, entry.landed = entry.landed, []
            task = entry.task
            if not task.done():
                if landed:
                    out.append(m.StreamReport(stream_id=stream_id, landed=landed))
                continue
            del following[stream_id]
            if task.cancelled() or entry.told_to_end:
                state, reason, error = "ended", None, None
            elif (exc := task.exception()) is None:
                state, reason, error = "done", None, None
                landed = []  # done says every chunk of it landed: the ids would be parsed for nothing
            else:
                state, error = "failed", clip(str(exc), _REPORT_ERROR_CHARS, quote=False)
                reason = ("parent_stalled" if isinstance(exc, ParentStalled) else
                          "not_the_same_plan" if isinstance(exc, NotTheSamePlan) else "parent_lost")
                tally.reads_failed += 1
                log.warning("stream %s from %s failed (%s): %s", stream_id, entry.assignment.parent_job_id,
                            reason, error)
            out.append(m.StreamReport(stream_id=stream_id, landed=landed, state=state, reason=reason, error=error))
        return out

    async def _stop_following(self, following: dict[str, _Following]) -> None:
        """Stop every stream and wait for it: never return while a stream's read may write our memory."""
        for entry in following.values():
            if not entry.task.done():
                entry.told_to_end = True
                entry.task.cancel()
        if following:
            await asyncio.gather(*(f.task for f in following.values()), return_exceptions=True)

    def _collect(self, running: dict[str, _Running]) -> list[m.ChunkReport]:
        reports = []
        for assignment_id in [a for a, e in running.items() if e.task.done()]:
            entry = running.pop(assignment_id)
            if entry.task.cancelled():
                # Cancelled by the scheduler before its read started, or between two of its pieces. Said
                # all the same: a read from a peer counts as on the wire until reported, which holds the
                # peer's withdraw.
                reports.append(_not_read(assignment_id, "the scheduler cancelled it first"))
                continue
            reports.append(entry.task.result())
        return reports

    async def _drain(self, running: dict[str, _Running]) -> list[m.ChunkReport]:
        """Never return while a read may still write into the caller's memory.

        Returns a report of every assignment that was running: its read's own when it went on
        the wire and ended, else a failure that says it was not read.
        """
        for entry in running.values():
            if entry.stoppable:
                entry.task.cancel()
        if running:
            await asyncio.gather(*(e.task for e in running.values()), return_exceptions=True)
        reports = []
        for assignment_id, entry in running.items():
            task = entry.task
            if not task.cancelled() and task.exception() is None:
                reports.append(task.result())
            else:
                reports.append(_not_read(assignment_id, "the fork ended first"))
        running.clear()
        return reports

    async def _run_assignment(self, agents: dict[str, AgentClient], job_id: str, rank: int, entry: _Running,
                              tally: _Tally) -> m.ChunkReport:
        a = entry.assignment
        seed = a.seed_id
        peer = a.source_kind == "peer"
        # One label value for every peer: a label per client would grow without bound.
        label = "peer" if peer else seed
        started = self._clock()

        def report(ok: bool, reason: str | None = None, error: str | None = None) -> m.ChunkReport:
            if not ok:
                tally.reads_failed += 1
                if self._metrics:
                    self._metrics.chunk_failures_total.labels(seed=label, reason=reason).inc()
                log.warning("chunk %s from %s failed (%s): %s", a.chunk_id, seed, reason, error)
            # The report's error field is bounded; a longer message would get the whole /work call refused.
            return m.ChunkReport(assignment_id=a.assignment_id, ok=ok, reason=reason,
                                 error=None if error is None else clip(error, _REPORT_ERROR_CHARS, quote=False),
                                 seconds=max(self._clock() - started, 0.0))

        if peer:
            return await self._read_from_peer(entry, tally, report)
        agent = agents.get(a.agent_url)
        if agent is None:
            agent = agents[a.agent_url] = AgentClient(a.agent_url, headers=self._headers)
        lease = await self._acquire_lease(agent, job_id, rank, a)
        if isinstance(lease, _LeaseFailure):
            return report(False, lease.reason, lease.error)
        lease_id = lease.lease_id
        suspect_until = self._suspect_until.get(a.session_id, 0.0)
        if self._clock() < suspect_until:
            # A read from this session just failed: transient, or the seed died. Submitting
            # to a dead TCP peer can block inside TransferEngine, so wait until the agent's
            # liveness probe has had time to look, and ask it.
            try:
                await asyncio.sleep(max(suspect_until - self._clock(), 0.0))
                alive = await agent.seed_alive()
            except asyncio.CancelledError:
                self._spawn(self._release(agent, lease_id, used=False))  # no read was issued
                raise
            if not alive:
                self._spawn(self._release(agent, lease_id, used=False))
                return report(False, "seed_lost",
                              f"a read from {a.session_id} failed moments ago and its agent sees the seed down")
        try:
            return await self._read(entry, tally, report, label, lease.read_piece_bytes,
                                    lease.read_piece_gap_seconds)
        finally:
            # Release off the critical path; an unreachable agent expires the lease itself.
            self._spawn(self._release(agent, lease_id, used=True))

    async def _read_from_peer(self, entry: _Running, tally: _Tally, report) -> m.ChunkReport:
        """Read from another client: no agent and no lease (the scheduler keeps the peer's budget)."""
        a = entry.assignment
        if self._clock() < self._suspect_until.get(a.session_id, 0.0):
            # A read from this peer just failed: it is probably gone (killed, or it withdrew and freed
            # its memory), and a read submitted to a dead host can block inside TransferEngine. There
            # is no agent to ask; reporting at once lets the scheduler exclude it and read elsewhere.
            return report(False, "read_failed",
                          f"skipped: a read from peer {a.session_id} failed moments ago")
        return await self._read(entry, tally, report, "peer")

    async def _read(self, entry: _Running, tally: _Tally, report, label: str, piece_bytes: int = 0,
                    piece_gap_seconds: float = 0.0) -> m.ChunkReport:
        """One TransferEngine read of the assignment's spans (in pieces where the seed's lease asks for
        them); the report for the scheduler."""
        a = entry.assignment
        seed = a.seed_id
        now = self._clock()
        tally.first_lease_at = now if tally.first_lease_at is None else min(tally.first_lease_at, now)
        reads = a.reads
        # Each piece is a batch of its own, so it counts like a segment, and its gap on top.
        pieces = -(-a.bytes // piece_bytes) if piece_bytes else 0
        timeout = (self.options.read_timeout_base_seconds + a.bytes / self.options.read_timeout_min_bandwidth
                   + (len(reads) + pieces) * self.options.read_timeout_per_segment_seconds
                   + max(pieces - 1, 0) * piece_gap_seconds)
        entry.reading, entry.in_pieces = True, 0 < piece_bytes < a.bytes
        try:
            read_started = self._clock()
            await read(
                self.transport, a.session_id,
                [r.dst_ptr for r in reads], [r.src_ptr for r in reads], [r.length for r in reads],
                timeout_s=timeout, max_batch_bytes=piece_bytes, gap_seconds=piece_gap_seconds,
            )
            landed = self._clock()
            tally.last_landed_at = landed if tally.last_landed_at is None else max(tally.last_landed_at, landed)
            tally.bytes_by_seed[seed] = tally.bytes_by_seed.get(seed, 0) + a.bytes
            chunk_ids = a.chunk_ids or [a.chunk_id]
            tally.duplicate_reads += len(tally.landed_chunks.intersection(chunk_ids))
            tally.landed_chunks.update(chunk_ids)
            if self._landed_map is not None:
                self._landed_map.mark(chunk_ids)  # only now: a child may read them at once
            if self._metrics:
                self._metrics.bytes_total.labels(seed=label).inc(a.bytes)
                self._metrics.chunk_read_seconds.observe(landed - read_started)
            return report(True)
        except ReadTimeout as exc:
            return report(False, "timeout", str(exc))
        except ReadFailed as exc:
            self._suspect_until[a.session_id] = self._clock() + self.options.suspect_seconds
            return report(False, "read_failed", str(exc))
        finally:
            entry.reading = False

    # -- serving as a peer ---------------------------------------------------
    async def serve(self, seconds: float | None = None, stop: asyncio.Event | None = None) -> None:
        """Keep a finished fork (``keep_serving``) serving its chunks for ``seconds`` or until ``stop`` is set.

        Tells the scheduler every ``keepalive_seconds`` that we are alive (a
        ``/work`` call asking for nothing); returns early if the scheduler
        forgot the job. Does not withdraw: call ``stop_serving`` after.
        """
        job_id = self._serving_job
        if job_id is None:
            return
        loop = asyncio.get_running_loop()
        until = math.inf if seconds is None else loop.time() + max(seconds, 0.0)
        stop = stop or asyncio.Event()
        async with SchedulerClient(self.scheduler_url, headers=self._headers) as scheduler:
            while not stop.is_set() and loop.time() < until:
                try:
                    await scheduler.work(job_id, m.WorkRequest(max_assignments=0))
                except UnknownJob:
                    log.warning("the scheduler no longer knows job %s (restarted?); it serves no more", job_id)
                    return
                except SchedulerError as exc:
                    log.debug("keepalive of job %s failed: %s", job_id, exc)
                try:
                    await asyncio.wait_for(stop.wait(), min(self.options.keepalive_seconds, until - loop.time()))
                except asyncio.TimeoutError:
                    pass

    async def stop_serving(self) -> Withdrawal | None:
        """Withdraw as a peer, wait until no read from us is on the wire (bounded), delete the job.

        Call before the memory the fork landed in is freed or rewritten. Returns
        (and sets ``withdrawal``) how it went; None if nothing was serving.
        """
        if self._serving_job is None:
            return None
        async with SchedulerClient(self.scheduler_url, headers=self._headers) as scheduler:
            await self._stop_serving(scheduler)
        return self.withdrawal

    async def _settle_reads(self, scheduler, job_id: str, body: m.ReadsSettled) -> None:
        """Tell the scheduler these reads and streams of an ended fork are off the wire: each would
        otherwise hold its peer's (parent's) withdraw until the scheduler's --peer-read-deadline."""
        try:
            await scheduler.settle_reads(job_id, body)
        except RforkApiError as exc:
            log.debug("settling the reads of job %s failed: %s", job_id, exc)

    async def _withdraw_once(self, scheduler, job_id: str) -> None:
        try:
            await scheduler.withdraw(job_id)
        except RforkApiError as exc:
            log.debug("withdraw of job %s failed: %s", job_id, exc)

    async def _stop_serving(self, scheduler) -> None:
        """Withdraw, wait for reads from us to settle, then delete the job; a no-op for a non-peer."""
        job_id = self._serving_job
        if job_id is None:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.options.withdraw_wait_seconds
        in_flight, gave_up = 0, ""
        while True:
            try:
                in_flight = (await scheduler.withdraw(job_id)).reads_in_flight
                if in_flight == 0:
                    break
                why = f"{in_flight} read{'s' if in_flight != 1 else ''} from it still counted"
            except UnknownJob:
                in_flight = 0  # forgotten (a restarted scheduler): nobody is told to read from us
                break
            except RforkApiError as exc:
                why = f"the scheduler did not answer the withdraw: {exc}"
            if loop.time() >= deadline:
                gave_up = why
                break
            await asyncio.sleep(self.options.withdraw_poll_seconds)
        self._serving_job = None
        self._close_landed_map()  # no stream from us is counted (or we gave up waiting, as for chunk reads)
        self.withdrawal = Withdrawal(job_id, loop.time() - started, in_flight, gave_up)
        if gave_up:
            log.warning("%s", self.withdrawal.describe())
        else:
            log.debug("%s", self.withdrawal.describe())
        await self._cancel_job(scheduler, job_id)

    async def _acquire_lease(self, agent: AgentClient, job_id: str, rank: int,
                             a: m.Assignment) -> "m.LeaseGranted | _LeaseFailure":
        give_up_at = self._clock() + self.options.lease_give_up_seconds
        while True:
            try:
                lease = await self._lease_or_release(agent, m.LeaseRequest(
                    job_id=job_id, assignment_id=a.assignment_id, rank=rank, bytes=a.bytes,
                    grant=a.grant or "", wait_seconds=self.options.lease_wait_seconds,
                ))
                return lease
            except LeaseDenied as exc:
                # The seed is busy, not broken: wait our turn unless it takes absurdly long.
                if self._clock() >= give_up_at:
                    return _LeaseFailure("lease_denied", str(exc))
                await asyncio.sleep(min(max(exc.retry_after_seconds, 0.01), 1.0))
            except AgentUnreachable as exc:
                return _LeaseFailure("agent_unreachable", str(exc))
            except SeedUnavailable as exc:
                return _LeaseFailure("seed_lost", str(exc))
            except AgentError as exc:
                return _LeaseFailure("lease_denied", str(exc))

    async def _lease_or_release(self, agent: AgentClient, request: m.LeaseRequest) -> m.LeaseGranted:
        """``agent.acquire_lease``, run to its end even if our caller is cancelled meanwhile.

        The agent may hold a lease request for up to ``lease_wait_seconds`` and does not
        notice that we stopped listening: it grants the lease anyway, and a lease nobody
        releases holds the seed's budget until the agent's lease ttl. So a cancelled caller
        leaves the request running and the lease it brings is released unused.
        """
        pending = self._spawn(agent.acquire_lease(request))
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            async def release_when_granted() -> None:
                try:
                    lease = await pending
                except Exception:  # noqa: BLE001 - refused or unreachable: no lease to give back
                    return
                await self._release(agent, lease.lease_id, used=False)

            self._spawn(release_when_granted())
            raise

    async def _release(self, agent, lease_id: str, used: bool) -> None:
        self._releases_started += 1
        try:
            await agent.release_lease(lease_id, used=used)
        except UnknownLease:
            pass  # expired already: the agent holds nothing
        except Exception as exc:  # noqa: BLE001 - best effort: the lease expires on its own
            log.debug("lease %s release failed: %s", lease_id, exc)
            return
        self._releases_confirmed += 1

    def _report_progress(self, response: m.WorkReply, tally: _Tally) -> None:
        p = self.progress = response.progress
        if self._metrics and p.bytes_total:
            self._metrics.progress_ratio.set(p.bytes_done / p.bytes_total)
        if self._progress:
            self._progress(
                ForkProgress(
                    bytes_done=p.bytes_done, bytes_total=p.bytes_total, chunks_done=p.chunks_done,
                    chunks_total=p.chunks_total, retried_chunks=p.retried_chunks,
                    bytes_by_seed=dict(tally.bytes_by_seed), failed_seeds=dict(p.failed_seeds),
                )
            )

    def _touch_seed_series(self, seed_ids: list[str]) -> None:
        """Zeros, not gaps: a dashboard's "failed reads" panel shows 0 for a fork with no failure.
        Bounded: the job's seeds x the closed reason enum."""
        if self._metrics:
            for seed in seed_ids:
                self._metrics.bytes_total.labels(seed=seed)
                for reason in FAILURE_REASONS:
                    self._metrics.chunk_failures_total.labels(seed=seed, reason=reason)

    def _set_in_flight(self, n: int) -> None:
        if self._metrics:
            self._metrics.chunks_in_flight.set(n)


def single_seed_read(transport: Transport, seed_session: str, seed_manifest: Mapping[str, list[int]],
                     tensors: Mapping[str, "object"]) -> float:
    """SGLang R-Fork's way: ONE batch_transfer_sync_read of every tensor from one seed.

    Used as the fallback when no scheduler answers, and as the baseline the
    benchmarks compare against. Returns the read's wall seconds; raises ForkError.
    """
    dst, src, lengths = [], [], []
    for name, tensor in tensors.items():
        if name not in seed_manifest:
            raise ForkError(f"seed has no tensor {name!r}; it serves a different model")
        ptr, numel, esize = seed_manifest[name]
        if numel != tensor.numel() or esize != tensor.element_size():
            raise ForkError(
                f"tensor {name!r}: local numel={tensor.numel()} element_size={tensor.element_size()}, "
                f"seed numel={numel} element_size={esize}"
            )
        if numel:
            dst.append(tensor.data_ptr()); src.append(ptr); lengths.append(numel * esize)
    started = time.perf_counter()
    if lengths and transport.read_sync(seed_session, dst, src, lengths) != 0:
        raise ForkError(f"single-seed batch read from {seed_session} failed")
    return time.perf_counter() - started
