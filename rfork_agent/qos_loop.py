"""The agent's serving-QoS job: ``QosLoop`` scrapes the seed's ``/metrics`` and applies the decision.

Everything it decides lives in ``throttle.qos.QosTracker`` (pure; the control
law is docs/qos.md); this module only fetches, classifies what the fetch
returned, and logs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import httpx

from rfork_agent.agent_state import AgentState, _rate_text
from throttle.prom_text import Scrape
from throttle.qos import ScrapeFailure, classify_body

log = logging.getLogger("rfork.agent")


class QosLoop:
    """The serving-QoS job's I/O: fetch the seed's ``/metrics``, tick the tracker, apply the rate.

    Everything it decides lives in ``throttle.qos.QosTracker`` (pure); this
    class only classifies what the fetch returned (unreachable, HTTP error,
    unparseable) and logs scrape failures at most once a minute per reason.
    One ``tick()`` per ``qos_interval_seconds`` (an APScheduler job), and one ``watch()`` per
    ``qos_idle_watch_seconds`` that scrapes only while the law gives an idle seed the cap, and ticks at
    once when the seed serves again. The two never overlap (one lock), so ticks stay in order.
    """

    def __init__(self, state: AgentState, http: httpx.AsyncClient,
                 on_rate_change: Callable[[], None] | None = None) -> None:
        self.state = state
        self.config = state.config
        self.http = http
        self.on_rate_change = on_rate_change
        self._lock = asyncio.Lock()

    async def scrape(self) -> Scrape | ScrapeFailure:
        url = self.config.seed_metrics_url
        try:
            response = await self.http.get(url, timeout=self.config.metrics_timeout_seconds)
        except httpx.TimeoutException:
            return ScrapeFailure("unreachable", f"GET {url} timed out after {self.config.metrics_timeout_seconds:g} s")
        except httpx.HTTPError as exc:
            return ScrapeFailure("unreachable", f"GET {url} failed: {exc.__class__.__name__}: {exc}")
        if response.status_code != 200:
            return ScrapeFailure("http_error", f"GET {url} answered HTTP {response.status_code}")
        return classify_body(response.text, taken_at=self.state.clock())

    async def tick(self) -> None:
        async with self._lock:
            scrape = await self.scrape() if self.state.qos.scrapes else None
            self._decide(scrape)

    async def watch(self) -> None:
        """Between ticks: while the seed is idle at the cap, scrape it and tick at once if it serves again."""
        if not self.state.qos.idle_at_cap or self._lock.locked():
            return
        async with self._lock:
            scrape = await self.scrape()
            # Re-checked after the await: a tick may have run while this scrape was in flight.
            if isinstance(scrape, Scrape) and self.state.qos.idle_at_cap and self.state.qos.wakes_on(scrape):
                self.state.metrics.idle_watch_wakeups_total.labels(seed=self.config.seed_id).inc()
                self._decide(scrape)

    def _decide(self, scrape: Scrape | ScrapeFailure | None) -> None:
        state, tracker = self.state, self.state.qos
        active, granted = state.take_interval_transfer()
        now = state.clock()
        report = tracker.tick(now, scrape, active, granted_bytes=granted)
        before = state.allowed_rate
        notable = state.apply_qos(report, now)
        seed = self.config.seed_id
        if report.scrape_failure is not None and report.log_failure:
            unlogged = report.unlogged_failures
            log.warning("agent %s: cannot use the seed's metrics (%s: %s); allowed rate now %s%s", seed,
                        report.scrape_failure.reason, report.scrape_failure.message, _rate_text(state.allowed_rate),
                        f" ({unlogged} more failures since the last line)" if unlogged else "")
        elif report.log_recovered:
            log.info("agent %s: the seed's metrics are readable again", seed)
        # One INFO line per notable change of rate. Not per tick (an idle seed decides "cap" every
        # second), not for probes (a pause and a resume every 30 s), and not twice: a new
        # throttle reason already got its line in apply_qos.
        probe_edge = 0 in (before, state.allowed_rate)
        level = logging.INFO if notable and not probe_edge and not report.throttle_reason_changed else logging.DEBUG
        log.log(level, "agent %s: throttle %s -> %s: %s", seed, report.action or report.mode_label,
                _rate_text(state.allowed_rate), report.reason)
        if notable and self.on_rate_change is not None:
            self.on_rate_change()
