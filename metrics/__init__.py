"""Every Prometheus series rfork exports, defined in one place.

Each service builds its own ``CollectorRegistry`` and passes it in; nothing
touches prometheus_client's global registry, so several services can live in
one test process.

    >>> from prometheus_client import CollectorRegistry
    >>> m = SchedulerMetrics(CollectorRegistry())
    >>> m.seeds_registered.set(3)
"""

from metrics.definitions import (
    AgentMetrics,
    ClientMetrics,
    SchedulerMetrics,
    FAILURE_REASONS,
    JOB_OUTCOMES,
    catalog,
    serve_metrics,
)

__all__ = ["AgentMetrics", "ClientMetrics", "SchedulerMetrics", "FAILURE_REASONS", "JOB_OUTCOMES", "catalog",
           "serve_metrics"]
