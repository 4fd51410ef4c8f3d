"""A simulated scale-out, from flags or a YAML file, validated with errors that say what to fix.

    >>> Scenario.from_mapping({"model": "deepseek-v3", "instances": 128, "strategy": "swarm"}).instances
    128
    >>> Scenario.from_mapping({"instances": 0})
    Traceback (most recent call last):
    ...
    sim.scenario.ScenarioError: instances must be an integer >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from rfork_api.units import UnitError, parse_rate, parse_size
from sim.presets import PRESETS, SIZED_PREFIX, is_known

STRATEGIES = ("direct", "cascade", "swarm", "stream")
GBps = 1e9


class ScenarioError(ValueError):
    """A scenario field is missing, unknown or out of range; the message names it."""


@dataclass(frozen=True)
class Slowdown:
    seed: str
    at_seconds: float
    duration_seconds: float
    factor: float
    """The seed's egress is multiplied by this (0 < factor <= 1) for the duration."""


@dataclass(frozen=True)
class Faults:
    kill_seeds: int = 0
    kill_peers_fraction: float = 0.0
    window_seconds: float = 2.0
    """Kills happen at uniformly random times in [0, window_seconds)."""

    def none(self) -> "Faults":
        return Faults()


@dataclass(frozen=True)
class Scenario:
    model: str = "deepseek-v3"
    instances: int = 8
    seeds: int = 1
    strategy: str = "swarm"
    chunk_size: int = 64 * 2**20
    seed_egress: float = 50 * GBps
    """Bytes/s a seed's NIC sends (a 400 Gb/s NIC is 50 GB/s)."""
    instance_ingress: float = 50 * GBps
    instance_egress: float = 50 * GBps
    seed_rate_cap: float | None = None
    """A seed agent's rate cap (``rfork agent --rate-cap``): each lease waits on the agent's token
    bucket at this rate, then the read runs at the NIC's ``seed_egress``, as the agent paces
    reads; None = no cap (the NIC's fair share bounds every read)."""
    peer_rate: float | None = None
    """Upload cap each peer offers (``rfork fork --peer-rate``); None = its NIC. The scheduler's
    swarm paces it (its token bucket decides when a peer may be given another read); each read
    then runs at the NIC's ``instance_egress``, as the real client's reads do."""
    peer_max_in_flight: int = 8
    seed_max_in_flight: int = 8
    """Reads from one seed at once across every job (the scheduler's per-seed slots): few reads at
    full rate land first copies sooner than N reads at 1/N each."""
    client_max_in_flight: int = 8
    max_peers_per_decision: int = 8
    """Peers sampled per decision (the swarm's max_peers_per_decision): 8 gave the same time-to-all
    as 16 at 40% less scheduler CPU (32 DeepSeek-V3 instances)."""
    cascade_fanout: int = 1
    """``cascade``: instances one source (a seed, or an instance that finished) copies to at once."""
    stream_stripes: int = 8
    """``stream``: stripes of the chunk plan, one stream each (the scheduler's ``--stream-stripes``)."""
    stream_fanout: int = 8
    """``stream``: children a member relays its home stripe to (``--stream-fanout``)."""
    stream_min_members: int = 16
    """``stream``: members a group needs before it streams (``--stream-min-members``); fewer: a swarm."""
    stream_report_seconds: float = 1.0
    """``stream``: how often a client reports what its streams landed (``ForkOptions.stream_report_seconds``);
    it also reports at once when a stream fails or its last one ends."""
    stream_reports_per_second: float = 256.0
    """``stream``: the scheduler paces its streaming members' reports to about this many a second in all
    (``--stream-reports-per-second``): each waits the longer of its own interval and members / this
    (``scheduler.stream_swarm.paced_report_seconds``); 0 = no pacing."""
    stream_report_max_seconds: float = 10.0
    """``stream``: the longest paced interval (the service's: a third of its 30 s client timeout)."""
    stream_batch_chunks: int = 8
    """``stream``: chunks per read from a parent (``FollowOptions.batch_chunks``)."""
    stream_poll_seconds: float = 10e-6
    """``stream``: one read of a parent's landed map."""
    scheduler_shards: int = 1
    """Scheduler processes the (model, rank) group is split over, instance i to shard i mod this; each
    runs its own swarm (peers only within a shard), all read from the seeds. CPU is per process."""
    """``cascade``: instances one source (a seed, or an instance that finished) copies to at once."""
    max_assignment_bytes: int | None = None
    """The planner's largest merged assignment; None = the links' rate x ``assignment_seconds``
    (at least one chunk, at most 1 GiB): 256 MiB at 50 GB/s, one 16 MiB chunk at 1 GB/s."""
    assignment_seconds: float = 0.005
    """How long one merged read may take at full link rate: bigger reads cost the scheduler fewer
    decisions, smaller ones let peers serve what they landed sooner."""
    merge_seconds: float = 0.0
    """The planner's ``merge_seconds``: merged assignments of about this much link time at the
    rate each job measured (0: ``max_assignment_bytes`` alone)."""
    max_merged_bytes: int = 16 << 30
    """The planner's ``max_merged_bytes``: the largest assignment ``merge_seconds`` sizes."""
    control_latency_seconds: float = 0.001
    """One control-plane round trip: a /work call to the scheduler, or a lease from an agent."""
    read_latency_seconds: float = 20e-6
    idle_poll_seconds: float = 0.05
    seed_qos: str = "constant"
    """``constant``: seeds give their whole NIC; ``serving``: a QoS throttle moves it every second."""
    seed_qos_floor: float = 0.3
    heartbeat_timeout_seconds: float = 3.0
    client_timeout_seconds: float = 5.0
    faults: Faults = field(default_factory=Faults)
    slowdowns: tuple[Slowdown, ...] = ()
    random_seed: int = 1
    max_simulated_seconds: float = 3600.0

    def __post_init__(self) -> None:
        _int(self.instances, "instances", 1)
        _int(self.seeds, "seeds", 1)
        if not isinstance(self.model, str) or not is_known(self.model):
            raise ScenarioError(f"unknown model preset {self.model!r}; choose from {', '.join(PRESETS)}, "
                                f"or {SIZED_PREFIX}SIZE (e.g. {SIZED_PREFIX}256MiB)")
        if self.strategy not in STRATEGIES:
            raise ScenarioError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.seed_qos not in ("constant", "serving"):
            raise ScenarioError(f"seed_qos must be 'constant' or 'serving', got {self.seed_qos!r}")
        _int(self.chunk_size, "chunk_size", 4096)
        for name in ("seed_egress", "instance_ingress", "instance_egress"):
            _positive(getattr(self, name), name)
        for name in ("seed_rate_cap", "peer_rate"):
            if getattr(self, name) is not None:
                _positive(getattr(self, name), name)
        for name in ("peer_max_in_flight", "seed_max_in_flight", "client_max_in_flight", "max_peers_per_decision",
                     "cascade_fanout", "scheduler_shards", "stream_stripes", "stream_fanout", "stream_batch_chunks",
                     "stream_min_members"):
            _int(getattr(self, name), name, 1)
        if self.max_assignment_bytes is not None:
            _int(self.max_assignment_bytes, "max_assignment_bytes", 0)
        _positive(self.assignment_seconds, "assignment_seconds")
        _non_negative(self.merge_seconds, "merge_seconds")
        _positive(self.stream_report_seconds, "stream_report_seconds")
        _non_negative(self.stream_reports_per_second, "stream_reports_per_second")
        _positive(self.stream_report_max_seconds, "stream_report_max_seconds")
        _positive(self.stream_poll_seconds, "stream_poll_seconds")
        _int(self.max_merged_bytes, "max_merged_bytes", 1)
        for name in ("control_latency_seconds", "read_latency_seconds", "heartbeat_timeout_seconds",
                     "client_timeout_seconds"):
            _non_negative(getattr(self, name), name)
        _positive(self.idle_poll_seconds, "idle_poll_seconds")
        _positive(self.max_simulated_seconds, "max_simulated_seconds")
        if not 0 < self.seed_qos_floor <= 1:
            raise ScenarioError(f"seed_qos_floor must be in (0, 1], got {self.seed_qos_floor}")
        f = self.faults
        _int(f.kill_seeds, "faults.kill_seeds", 0)
        if f.kill_seeds >= self.seeds:
            raise ScenarioError(f"faults.kill_seeds ({f.kill_seeds}) must leave at least one of the {self.seeds} "
                                "seeds alive, or nothing could finish")
        if not 0 <= f.kill_peers_fraction < 1:
            raise ScenarioError(f"faults.kill_peers_fraction must be in [0, 1), got {f.kill_peers_fraction}")
        _positive(f.window_seconds, "faults.window_seconds")
        for slow in self.slowdowns:
            if slow.seed not in {f"seed-{i}" for i in range(self.seeds)}:
                raise ScenarioError(f"slowdown names seed {slow.seed!r}; seeds are seed-0..seed-{self.seeds - 1}")
            _non_negative(slow.at_seconds, "slowdowns.at_seconds")
            _positive(slow.duration_seconds, "slowdowns.duration_seconds")
            if not 0 < slow.factor <= 1:
                raise ScenarioError(f"slowdowns.factor must be in (0, 1], got {slow.factor}")

    @property
    def merge_bytes(self) -> int:
        """The planner's ``max_assignment_bytes`` for this scenario."""
        if self.max_assignment_bytes is not None:
            return self.max_assignment_bytes
        rate = min(self.seed_egress, self.instance_ingress)
        return int(min(max(rate * self.assignment_seconds, self.chunk_size), 2**30))

    def replace(self, **changes: Any) -> "Scenario":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["slowdowns"] = [dataclasses.asdict(s) for s in self.slowdowns]
        return out

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> "Scenario":
        """From a YAML/JSON mapping; sizes and rates may be strings (``64MiB``, ``400Gbit/s``)."""
        if not isinstance(raw, Mapping):
            raise ScenarioError(f"a scenario is a mapping of fields, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ScenarioError(f"unknown scenario field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(raw)
        try:
            if "chunk_size" in values:
                values["chunk_size"] = parse_size(values["chunk_size"])
            for name in ("max_assignment_bytes", "max_merged_bytes"):
                if values.get(name) is not None:
                    values[name] = parse_size(values[name])
            for name in ("seed_egress", "instance_ingress", "instance_egress", "seed_rate_cap", "peer_rate"):
                if values.get(name) is not None:
                    values[name] = parse_rate(values[name])
        except UnitError as exc:
            raise ScenarioError(str(exc)) from None
        if "faults" in values:
            values["faults"] = _sub(Faults, values["faults"], "faults")
        if "slowdowns" in values:
            if not isinstance(values["slowdowns"], list):
                raise ScenarioError("slowdowns must be a list of {seed, at_seconds, duration_seconds, factor}")
            values["slowdowns"] = tuple(_sub(Slowdown, s, "slowdowns") for s in values["slowdowns"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ScenarioError(f"a scenario field has the wrong type: {exc}") from None


def _sub(cls, raw: Any, where: str):
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where} must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ScenarioError(f"unknown {where} field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ScenarioError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ScenarioError(f"{name} must be a finite number > 0, got {value!r}")


def _non_negative(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ScenarioError(f"{name} must be a finite number >= 0, got {value!r}")
