"""Metric families per process. Units are in names; counters end in _total.

Label sets are bounded: ``seed`` (registered seeds), ``job`` (active jobs only;
removed when a job ends), ``reason`` (``FAILURE_REASONS``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Why a chunk read failed. Kept closed so the label set stays bounded.
FAILURE_REASONS = ("read_failed", "lease_denied", "agent_unreachable", "timeout", "seed_lost")

_API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_FORK_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.seeds_registered = Gauge(
            "rfork_scheduler_seeds_registered", "Seeds currently in the registry.", registry=registry
        )
        self.seeds_dropped_total = Counter(
            "rfork_scheduler_seeds_dropped_total",
            "Seeds removed because their heartbeats stopped.",
            registry=registry,
        )
        self.jobs_active = Gauge("rfork_scheduler_jobs_active", "Fork jobs running.", registry=registry)
        self.jobs_finished_total = Counter(
            "rfork_scheduler_jobs_finished_total",
            "Fork jobs that ended, by outcome (done, failed, abandoned, cancelled).",
            ["outcome"],
            registry=registry,
        )
        self.job_bytes_total = Gauge(
            "rfork_scheduler_job_bytes", "Bytes a running fork job must move.", ["job"], registry=registry
        )
        self.job_bytes_done = Gauge(
            "rfork_scheduler_job_bytes_done", "Bytes a running fork job has landed.", ["job"], registry=registry
        )
        self.job_progress_ratio = Gauge(
            "rfork_scheduler_job_progress_ratio", "Landed / total bytes of a running job.", ["job"], registry=registry
        )
        self.seed_bytes_assigned_total = Counter(
            "rfork_scheduler_seed_bytes_completed_total",
            "Bytes reported landed, by the seed they were read from.",
            ["seed"],
            registry=registry,
        )
        self.chunk_retries_total = Counter(
            "rfork_scheduler_chunk_retries_total",
            "Chunks handed out again after a failed read, by failure reason.",
            ["reason"],
            registry=registry,
        )
        self.chunk_failures_total = Counter(
            "rfork_scheduler_chunk_failures_total",
            "Failed chunk reads reported by clients, by seed and reason.",
            ["seed", "reason"],
            registry=registry,
        )
        self.assignments_in_flight = Gauge(
            "rfork_scheduler_assignments_in_flight", "Chunk assignments handed out and not yet reported.",
            ["seed"], registry=registry,
        )
        self.seed_allowed_rate = Gauge(
            "rfork_scheduler_seed_allowed_rate_bytes_per_second",
            "Allowed byte rate each seed's agent last reported (NaN = uncapped).",
            ["seed"],
            registry=registry,
        )
        self.fork_duration = Histogram(
            "rfork_scheduler_fork_duration_seconds",
            "Wall time of finished fork jobs, creation to last chunk.",
            buckets=_FORK_BUCKETS,
            registry=registry,
        )
        self.api_latency = Histogram(
            "rfork_scheduler_api_request_duration_seconds",
            "Scheduler HTTP request latency by route template and status class.",
            ["route", "status"],
            buckets=_API_BUCKETS,
            registry=registry,
        )


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rate_cap = Gauge(
            "rfork_agent_rate_cap_bytes_per_second", "Configured link cap for this seed (NaN = uncapped).",
            ["seed"], registry=registry,
        )
        self.allowed_rate = Gauge(
            "rfork_agent_allowed_rate_bytes_per_second",
            "Byte rate the agent lets chunk reads through at now (NaN = uncapped).",
            ["seed"],
            registry=registry,
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
        self.leases_in_flight = Gauge(
            "rfork_agent_leases_in_flight", "Leases granted and not yet released or expired.",
            ["seed"], registry=registry,
        )
        self.lease_wait = Histogram(
            "rfork_agent_lease_wait_seconds", "Time a lease request waited for budget.",
            ["seed"], buckets=_API_BUCKETS, registry=registry,
        )
        self.registered = Gauge(
            "rfork_agent_registered", "1 while the scheduler has this seed registered.", ["seed"], registry=registry
        )
        self.heartbeat_failures_total = Counter(
            "rfork_agent_heartbeat_failures_total", "Heartbeats the scheduler did not accept.",
            ["seed"], registry=registry,
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
