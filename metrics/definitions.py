"""Metric families per process. Units are in names; counters end in _total.

Label sets are bounded: ``seed`` (registered seeds), ``job_id`` (active jobs
only; removed when a job ends), ``reason`` (``FAILURE_REASONS``), ``outcome``
(``JOB_OUTCOMES``, lease outcomes). The per-job label is ``job_id``, not
``job``: Prometheus attaches its own ``job`` label (the scrape job) to every
series and would rename ours to ``exported_job``.

Gauges whose value already lives in a component's state are ``StateGauge``
definitions: the component registers a collector that reads its state at
scrape time and yields ``StateGauge.family(samples)`` (prometheus_client's
Collector pattern), instead of pushing a gauge from inside every state change.

``catalog()`` lists every family (name, type, labels, help); docs/metrics.md's
table (scripts/generate_metrics_doc.py) and the dashboard checks in
tests/prometheus are built from it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from rfork_api.models import STREAM_FAILURE_REASONS

# Why a chunk read failed. Kept closed so the label set stays bounded.
FAILURE_REASONS = ("read_failed", "lease_denied", "agent_unreachable", "timeout", "seed_lost")
# How a fork job ended (rfork_scheduler_jobs_finished_total's ``outcome``).
JOB_OUTCOMES = ("done", "failed", "abandoned", "cancelled")
DECISION_CALLS = ("create_job", "work", "reap")
"""The scheduler's calls into its state whose CPU ``rfork_scheduler_decision_cpu_seconds_total`` counts."""

_API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_FORK_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True)
class StateGauge:
    """A gauge read from a component's state when Prometheus scrapes, by that component's collector.

    Only the definition lives here (name, help, label names), so ``catalog()``
    and the docs list it like any other family.

        >>> StateGauge("rfork_agent_registered", "1 while registered.", ("seed",)).family([(("seed-0",), 1)])
        GaugeMetricFamily(...)
    """

    name: str
    documentation: str
    labelnames: tuple[str, ...] = ()

    def family(self, samples: Iterable[tuple[tuple[str, ...], float]]) -> GaugeMetricFamily:
        """The exposition of ``samples`` ((label values, value) pairs) under this definition."""
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in samples:
            family.add_metric(labels, value)
        return family


class SchedulerMetrics:
    """The scheduler's families. The ``StateGauge`` ones (counts, and every per-seed and per-job gauge)
    are read from ``SchedulerState`` at scrape time (scheduler/state_metrics.py); the rest count events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.seeds_registered = StateGauge(
            "rfork_scheduler_seeds_registered",
            "Seeds currently in the registry.",
        )
        self.seeds_dropped_total = Counter(
            "rfork_scheduler_seeds_dropped_total",
            "Seeds removed because their heartbeats stopped.",
            registry=registry,
        )
        self.jobs_active = StateGauge(
            "rfork_scheduler_jobs_active",
            "Fork jobs running.",
        )
        self.jobs_finished_total = Counter(
            "rfork_scheduler_jobs_finished_total",
            "Fork jobs that ended, by outcome (done, failed, abandoned, cancelled).",
            ["outcome"],
            registry=registry,
        )
        # Per-job series exist for running jobs only (read from state): job_id stays bounded.
        self.job_bytes_total = StateGauge(
            "rfork_scheduler_job_size_bytes", "Bytes a running fork job must move.", ("job_id",)
        )
        self.job_bytes_done = StateGauge(
            "rfork_scheduler_job_landed_bytes",
            "Bytes a running fork job has landed, as its client last reported (streams: every report interval).",
            ("job_id",)
        )
        self.job_progress_ratio = StateGauge(
            "rfork_scheduler_job_progress_ratio", "Landed / total bytes of a running job.", ("job_id",)
        )
        self.job_last_progress_timestamp = StateGauge(
            "rfork_scheduler_job_last_progress_timestamp_seconds",
            "Unix time a running job's client last reported landed bytes, by a read or a stream (its creation "
            "time until the first report).",
            ("job_id",),
        )
        self.seed_bytes_assigned_total = Counter(
            "rfork_scheduler_seed_bytes_completed_total",
            "Bytes reported landed, by the seed they were read from.",
            ["seed"],
            registry=registry,
        )
        self.bytes_landed_by_kind_total = Counter(
            "rfork_scheduler_bytes_landed_total",
            "Bytes reported landed, by the kind of source they were read from: seed (a serving instance, "
            "behind its agent's throttle) or peer (another client that landed them first).",
            ["kind"],
            registry=registry,
        )
        self.peers_serving = StateGauge(
            "rfork_scheduler_peers_serving",
            "Clients offering their landed chunks to other clients of the same weights (peers), now.",
        )
        self.streaming_members = StateGauge(
            "rfork_scheduler_streaming_members",
            "Forks reading by streams now, about (the streams their parents count, over the stripes).",
        )
        self.stream_report_interval_seconds = StateGauge(
            "rfork_scheduler_stream_report_interval_seconds",
            "How often, at most, each streaming fork is asked to report now: streaming members / "
            "--stream-reports-per-second, at most a third of the client timeout; a fork waits the longer of "
            "this and its own interval (1 s). 0: their own.",
        )
        self.scale_out_seconds = Histogram(
            "rfork_scheduler_scale_out_seconds",
            "Time-to-all of a scale-out: from the first job of a group of concurrent forks of the same weights "
            "and rank to the moment none of them is running any more.",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )
        self.chunk_retries_total = Counter(
            "rfork_scheduler_chunk_retries_total",
            "Chunks handed out again after a failed read, by failure reason.",
            ["reason"],
            registry=registry,
        )
        self.streams_started_total = Counter(
            "rfork_scheduler_streams_started_total",
            "Streams handed to clients: a member follows a parent's landed map for one stripe of the chunks "
            "(one per member and stripe, and one more for each re-parent).",
            registry=registry,
        )
        self.stream_endgame_moves_total = Counter(
            "rfork_scheduler_stream_endgame_moves_total",
            "Streams moved late in a scale-out to a member that has every chunk and upload to spare, from a "
            "parent still loading or more shared (each also counts in rfork_scheduler_streams_started_total).",
            registry=registry,
        )
        self.stream_failures_total = Counter(
            "rfork_scheduler_stream_failures_total",
            "Streams their clients reported failed, by reason (parent_lost, parent_stalled, not_the_same_plan); "
            "each is re-parented.",
            ["reason"],
            registry=registry,
        )
        self.chunk_failures_total = Counter(
            "rfork_scheduler_chunk_failures_total",
            "Failed chunk reads reported by clients, by seed and reason.",
            ["seed", "reason"],
            registry=registry,
        )
        self.assignments_in_flight = StateGauge(
            "rfork_scheduler_assignments_in_flight", "Chunk assignments handed out and not yet reported.",
            ("seed",),
        )
        self.seed_allowed_rate = StateGauge(
            "rfork_scheduler_seed_allowed_rate_bytes_per_second",
            "Allowed byte rate each seed's agent last reported (NaN = uncapped).",
            ("seed",),
        )
        self.fork_duration = Histogram(
            "rfork_scheduler_fork_duration_seconds",
            "Wall time of finished fork jobs, creation to last chunk.",
            buckets=_FORK_BUCKETS,
            registry=registry,
        )
        self.decision_cpu_seconds_total = Counter(
            "rfork_scheduler_decision_cpu_seconds_total",
            "CPU seconds of the scheduler's decisions, by call: creating jobs, answering /work (reports, "
            "streams, the planner), the reaper. The rest of the process's CPU is the HTTP protocol around "
            "them (and Python's own).",
            ["call"],
            registry=registry,
        )
        self.decision_cpu_by_call = {call: self.decision_cpu_seconds_total.labels(call=call) for call in DECISION_CALLS}
        """Call -> its counter (resolved once: the hottest route counts on every request)."""
        self.api_latency = Histogram(
            "rfork_scheduler_api_request_duration_seconds",
            "Scheduler HTTP request latency by route template and status class.",
            ["route", "status"],
            buckets=_API_BUCKETS,
            registry=registry,
        )
        self.front_ends = Gauge(
            "rfork_scheduler_front_ends_running",
            "HTTP front-end processes running (rfork scheduler --front-ends N); 0 when the scheduler serves "
            "HTTP itself.",
            registry=registry,
        )
        self.front_end_restarts_total = Counter(
            "rfork_scheduler_front_end_restarts_total",
            "HTTP front ends the scheduler restarted after one exited on its own (crashed or was killed).",
            registry=registry,
        )
        self.deciders = Gauge(
            "rfork_scheduler_deciders_running",
            "Deciding processes running (rfork scheduler --deciders K), this one included; 1 by default.",
            registry=registry,
        )
        self.decider_restarts_total = Counter(
            "rfork_scheduler_decider_restarts_total",
            "Deciding processes (--deciders) the scheduler restarted after one exited on its own; the jobs "
            "of its ranks were lost with it.",
            registry=registry,
        )
        # Closed label sets start at zero so rate() and dashboards see 0, not "no data".
        for reason in FAILURE_REASONS:
            self.chunk_retries_total.labels(reason=reason)
        for outcome in JOB_OUTCOMES:
            self.jobs_finished_total.labels(outcome=outcome)
        for reason in STREAM_FAILURE_REASONS:
            self.stream_failures_total.labels(reason=reason)


class AgentMetrics:
    """The agent's families. The ``StateGauge`` ones are read from ``AgentState`` at scrape time
    (rfork_agent/agent_state.py: ``AgentStateCollector``); counters and histograms count events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rate_cap = StateGauge(
            "rfork_agent_rate_cap_bytes_per_second",
            "Configured link cap for this seed (NaN = uncapped).",
            ("seed",),
        )
        self.allowed_rate = StateGauge(
            "rfork_agent_allowed_rate_bytes_per_second",
            "Byte rate the agent lets chunk reads through at now (NaN = uncapped).",
            ("seed",),
        )
        self.granted_bytes_total = Counter(
            "rfork_agent_granted_bytes_total", "Bytes granted in leases.", ["seed"], registry=registry
        )
        self.read_bytes_total = Counter(
            "rfork_agent_read_bytes_total", "Bytes clients reported read under released leases.",
            ["seed"], registry=registry,
        )
        self.leases_total = Counter(
            "rfork_agent_leases_total",
            "Lease requests by outcome (granted, denied, expired, released, returned).",
            ["seed", "outcome"],
            registry=registry,
        )
        self.leases_in_flight = StateGauge(
            "rfork_agent_leases_in_flight",
            "Leases granted and not yet released or expired.",
            ("seed",),
        )
        self.read_piece_bytes = StateGauge(
            "rfork_agent_read_piece_bytes",
            "Largest read a lease lets a fork client make of this seed's chunks at once (0 = whole chunks).",
            ("seed",),
        )
        self.lease_wait = Histogram(
            "rfork_agent_lease_wait_seconds", "Time a lease request waited for budget.",
            ["seed"], buckets=_API_BUCKETS, registry=registry,
        )
        self.registered = StateGauge(
            "rfork_agent_registered",
            "1 while the scheduler has this seed registered.",
            ("seed",),
        )
        self.heartbeat_failures_total = Counter(
            "rfork_agent_heartbeat_failures_total", "Heartbeats the scheduler did not accept.",
            ["seed"], registry=registry,
        )
        self.idle_watch_wakeups_total = Counter(
            "rfork_agent_idle_watch_wakeups_total",
            "QoS decisions made early: the idle watch saw requests return to an idle seed the throttle had "
            "given the cap, and the law decided at once instead of at the next interval.",
            ["seed"], registry=registry,
        )
        # Serving QoS (issue #3): what the seed's /metrics say and what the throttle did about it.
        # Label values are closed sets: ``mode`` = throttle.controller.Mode values plus "fixed"/"off",
        # ``action`` = throttle.qos.ACTIONS, ``reason`` = throttle.qos.THROTTLE_REASONS (decisions) or
        # throttle.qos.SCRAPE_FAILURE_REASONS (scrape failures).
        self.observed_itl_p99 = StateGauge(
            "rfork_agent_observed_itl_p99_seconds",
            "Seed inter-token latency p99 over the last report window (5 s), from its /metrics (NaN = no tokens).",
            ("seed",),
        )
        self.observed_ttft_p99 = StateGauge(
            "rfork_agent_observed_ttft_p99_seconds",
            "Seed time-to-first-token p99 over the last report window (NaN = no new requests).",
            ("seed",),
        )
        self.slo_itl = StateGauge(
            "rfork_agent_slo_itl_seconds",
            "Configured inter-token latency SLO threshold (NaN = none).",
            ("seed",),
        )
        self.slo_ttft = StateGauge(
            "rfork_agent_slo_ttft_seconds",
            "Configured time-to-first-token SLO threshold (NaN = none).",
            ("seed",),
        )
        self.itl_slo_violation_ratio = StateGauge(
            "rfork_agent_itl_slo_violation_ratio",
            "Fraction of the seed's tokens with inter-token latency above the SLO in the last report window.",
            ("seed",),
        )
        self.seed_alone_itl_slo_violation_ratio = StateGauge(
            "rfork_agent_seed_alone_itl_slo_violation_ratio",
            "Fraction of the seed's tokens with inter-token latency above the SLO in its intervals without chunk "
            "reads over the last 60 s: the seed alone (NaN until they hold 200 tokens).",
            ("seed",),
        )
        self.itl_slo_violation_budget_ratio = StateGauge(
            "rfork_agent_itl_slo_violation_budget_ratio",
            "Configured share of the seed's tokens allowed above the ITL SLO (NaN = no SLO).",
            ("seed",),
        )
        self.latency_impact_ratio = StateGauge(
            "rfork_agent_latency_impact_ratio",
            "Observed ITL p99 / the seed's no-transfer baseline ITL p99 (NaN = no baseline yet).",
            ("seed",),
        )
        self.throttle_mode = StateGauge(
            "rfork_agent_throttle_mode",
            "1 for the throttle's current mode (the controller's mode when adaptive; fixed; off), else 0.",
            ("seed", "mode"),
        )
        self.throttle_decisions_total = Counter(
            "rfork_agent_throttle_decisions_total",
            "Adaptive throttle decisions by action (cut, raise, hold, floor, cap, probe) and reason, why the rate "
            "is where it is (transfer_latency; seed_over_slo: held at the floor because the seed misses its SLO "
            "without the transfer; seed_idle; metrics_stale).",
            ["seed", "action", "reason"], registry=registry,
        )
        self.seed_metrics_scrape_failures_total = Counter(
            "rfork_agent_seed_metrics_scrape_failures_total",
            "Scrapes of the seed's /metrics that gave nothing usable, by reason (unreachable, http_error, parse_error).",
            ["seed", "reason"], registry=registry,
        )
        self.seed_metrics_age = StateGauge(
            "rfork_agent_seed_metrics_age_seconds",
            "Seconds since the last usable scrape of the seed's /metrics.",
            ("seed",),
        )


class ClientMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.bytes_total = Counter(
            "rfork_client_bytes_total", "Bytes landed, by seed read from.", ["seed"], registry=registry
        )
        self.chunks_in_flight = Gauge(
            "rfork_client_chunks_in_flight", "Chunk reads leased or reading now.", registry=registry
        )
        self.chunk_failures_total = Counter(
            "rfork_client_chunk_failures_total", "Chunk reads that failed, by seed and reason.",
            ["seed", "reason"], registry=registry,
        )
        self.chunk_read_seconds = Histogram(
            "rfork_client_chunk_read_duration_seconds", "TransferEngine read time per chunk.",
            buckets=_API_BUCKETS, registry=registry,
        )
        self.progress_ratio = Gauge("rfork_client_progress_ratio", "Landed / total bytes.", registry=registry)


@dataclass(frozen=True)
class Family:
    """One metric family as Prometheus stores it (``name`` without the sample suffixes)."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    process: str

    def sample_names(self) -> tuple[str, ...]:
        """Names the family's samples carry in PromQL."""
        if self.type == "counter":
            return (self.name,)  # prometheus_client's *_created samples are not queried
        if self.type == "histogram":
            return tuple(f"{self.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        return (self.name,)

    def sample_labels(self, sample_name: str) -> tuple[str, ...]:
        return self.labels + (("le",) if sample_name.endswith("_bucket") else ())


def catalog() -> list[Family]:
    """Every family rfork's own processes export, in definition order."""
    from prometheus_client.metrics import MetricWrapperBase

    families = []
    for process, cls in (("scheduler", SchedulerMetrics), ("agent", AgentMetrics), ("client", ClientMetrics)):
        instance = cls(CollectorRegistry())
        for metric in vars(instance).values():
            if isinstance(metric, MetricWrapperBase):
                name = metric._name + ("_total" if metric._type == "counter" else "")
                families.append(Family(name, metric._type, tuple(metric._labelnames), metric._documentation, process))
            elif isinstance(metric, StateGauge):
                families.append(Family(metric.name, "gauge", metric.labelnames, metric.documentation, process))
    return families


class MetricsServer:
    """A registry served over HTTP from a daemon thread; ``close()`` stops it and frees the port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread

    @property
    def port(self) -> int:
        return self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` at http://host:port/metrics (loopback by default; port 0 = any free one).

    For processes without a web app of their own, e.g. the fork client:

        >>> server = serve_metrics(ClientMetrics(CollectorRegistry()).registry, 0)
        >>> server.port > 0
        True
        >>> server.close()
    """
    return MetricsServer(*start_http_server(port, addr=host, registry=registry))
