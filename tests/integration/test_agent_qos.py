"""Serving QoS end to end: the agent's scrape job, controller and token bucket against real servers.

* A real fleet (scheduler, seed stand-in with a request load, agent in
  adaptive mode, all separate processes): an injected latency spike on the
  seed cuts the agent's allowed rate; when it ends the rate climbs again, and
  the scheduler hears the new rate.
* An in-process agent against a fake seed whose ``/metrics`` turn to garbage,
  HTTP errors or silence: floor rate, the scrape-failure counter, no crash.
* ``rfork agent`` rejects bad SLO flags with one line and exit status 2.

No timing acceptance here (that is ``rfork bench qos``): every wait is generous.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import threading
import time

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry

from rfork_agent import agent_cli
from rfork_agent.agent import AgentConfig, create_app
from throttle.controller import ControllerConfig, Mode
from tests.integration.agent_fakes import FakeSeed, RecordingScheduler, Served, _socket, wait_until

pytestmark = pytest.mark.timeout(120)

MB = 10**6
CAP = 100 * MB
FLOOR = 0.05 * CAP


# --------------------------------------------------------------------------- real fleet, injected spike


class LeasePump:
    """Keeps an agent's transfer "active": takes and releases 1 MiB leases back to back (no reads)."""

    def __init__(self, agent_url: str) -> None:
        self.agent_url = agent_url
        self.granted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "LeasePump":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                body = {"job_id": "qos-test", "assignment_id": f"a{n}", "rank": 0, "bytes": 2**20,
                        "wait_seconds": 0.5}
                try:
                    r = http.post(f"{self.agent_url}/v1/leases", json=body)
                    if r.status_code == 200:
                        self.granted += 1
                        http.post(f"{self.agent_url}/v1/leases/{r.json()['lease_id']}/release", json={"used": True})
                    else:
                        time.sleep(0.1)
                except httpx.HTTPError:
                    time.sleep(0.1)


def throttle(agent_url: str) -> dict:
    return httpx.get(f"{agent_url}/v1/throttle", timeout=5).json()


def wait_for_rate(agent_url: str, predicate, timeout: float, what: str) -> dict:
    """Poll the agent until ``predicate(allowed_rate)`` holds outside a probe pause."""
    deadline = time.monotonic() + timeout
    last = {}
    while time.monotonic() < deadline:
        last = throttle(agent_url)
        if last["controller_mode"] != "probe_pause" and predicate(last["allowed_rate_bytes_per_second"]):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last throttle state {last}")


def agent_metric(agent_url: str, name: str, missing: float | None = None, **labels) -> float:
    """The sum of the samples of ``name`` that carry ``labels`` (others summed over, as PromQL's sum).

    No such sample fails the test, unless ``missing`` is given (a labelled counter not incremented yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{agent_url}/metrics", timeout=5).text
    values = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
              if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]
    if not values:
        if missing is not None:
            return missing
        raise AssertionError(f"{name}{labels} not exported")
    return sum(values)


@pytest.mark.slow
def test_injected_latency_spike_cuts_the_rate_and_it_recovers():
    from testbed.fleet import Fleet, FleetSpec

    # The stand-in's tiny model decodes in a few ms; a 100 ms SLO leaves room for a busy machine,
    # and a 150 ms stall per step puts every token above it.
    # Also: SGLang's --bucket-inter-token-latency puts the SLO on a bound; the seed is pinned to a CPU.
    # The load is a closed loop (16 requests in flight, as a serving benchmark's clients): with open-loop
    # arrivals (20/s) a CPU starved by other work (two suites side by side) decoded slower than requests
    # arrived, the batch grew to its limit and every step with it, and the seed alone put 89 % of its
    # tokens over 100 ms (ITL p99 0.87 s): the law rightly held the floor, and the test never saw a climb.
    buckets = ("0.01", "0.05", "0.0999", "0.1", "0.2", "1")
    spec = FleetSpec(
        seeds=1, preset="tiny", seed_rates=(CAP,), pin_seeds=True,
        seed_args=("--decode-layers", "1", "--load-concurrency", "16", "--bucket-inter-token-latency", *buckets),
        # A 10 % budget: on a loaded 2-core machine (load average 18) the pinned stand-in alone puts
        # 1-5 % of its tokens over 100 ms, and the A/B law rightly holds the fork near the floor while
        # the seed's own share leaves no room; this test is about the wiring, not that margin.
        agent_args=("--throttle", "adaptive", "--slo-itl", "0.1", "--slo-budget", "0.1"),
    )
    with Fleet(spec) as fleet:
        seed, agent = fleet.seeds[0], fleet.seeds[0].agent_url
        assert throttle(agent)["mode"] == "adaptive"
        assert os.sched_getaffinity(seed.process.pid) == {min(os.sched_getaffinity(0))}
        exported = httpx.get(f"{seed.url}/metrics", timeout=5).text
        assert re.search(r'sglang:inter_token_latency_seconds_bucket\{[^}]*le="0\.0999"', exported)
        with LeasePump(agent):
            # Good latency under load: the controller climbs from its floor.
            climbed = wait_for_rate(agent, lambda r: r >= 0.3 * CAP, 40, "the rate to climb to 30% of the cap")
            httpx.post(f"{seed.url}/testbed/stall", json={"seconds": 0.15}, timeout=5).raise_for_status()
            # The stalled seed decodes ~100 tokens/s (16 requests, a step each 0.15 s), fewer on a starved CPU
            # (80 tokens pooled in 15 s once, beside a plant-model run and three other suites), and the law
            # judges only once it has pooled enough of them: the wait allows for that. How fast a cut comes
            # on a seed of thousands of tokens/s is the bench's spike_cut_seconds, not this test's.
            cut = wait_for_rate(agent, lambda r: r <= 0.5 * climbed["allowed_rate_bytes_per_second"], 45,
                                "a cut after the latency spike")
            # The stall is the seed's own (it slows decode with or without reads), so the law may meet it three
            # ways, each a decision the agent counts: a cut (a transfer-on interval that clearly misses), the
            # floor as "not our fault" (an off window showed the seed misses alone), or the floor for stale
            # metrics (a stalled, loaded seed answered /metrics too late). Which comes first is timing and load:
            # in two CI runs side by side (both seeds pinned to CPU 0) the rate fell with no cut counted.
            decisions = "rfork_agent_throttle_decisions_total"
            ways = {"cut": agent_metric(agent, decisions, 0.0, seed="seed-0", action="cut"),
                    "seed_over_slo": agent_metric(agent, decisions, 0.0, seed="seed-0", reason="seed_over_slo"),
                    "metrics_stale": agent_metric(agent, decisions, 0.0, seed="seed-0", reason="metrics_stale")}
            assert any(n >= 1 for n in ways.values()), f"the rate fell without a counted decision: {ways}; {cut}"
            # The share over the SLO is of the pooled window (seconds of tokens): a cut that came with the
            # first slow tokens saw it at 0.4 % (alone, the window still mostly the fast tokens before the
            # stall); the stall goes on, so the window fills with slow ones.
            wait_until(lambda: agent_metric(agent, "rfork_agent_itl_slo_violation_ratio", seed="seed-0") > 0.01, 20,
                       "the exported share of tokens over the SLO to show the stall")
            assert agent_metric(agent, "rfork_agent_slo_itl_seconds", seed="seed-0") == 0.1
            # The scheduler's planner sizes this seed's depth from the rate in the heartbeats.
            wait_until(lambda: _scheduler_rate(fleet) <= 0.5 * climbed["allowed_rate_bytes_per_second"], 10,
                       "the scheduler to see the lower rate")
            low = wait_for_rate(agent, lambda r: r <= 2 * FLOOR, 20, "the rate to reach the floor's neighbourhood")
            httpx.post(f"{seed.url}/testbed/stall", json={"seconds": 0.0}, timeout=5).raise_for_status()
            wait_for_rate(agent, lambda r: r >= 3 * low["allowed_rate_bytes_per_second"], 40, "recovery")
            assert agent_metric(agent, "rfork_agent_throttle_decisions_total", seed="seed-0", action="raise") >= 1
    assert cut["allowed_rate_bytes_per_second"] < climbed["allowed_rate_bytes_per_second"]


def _scheduler_rate(fleet) -> float:
    seeds = httpx.get(f"{fleet.scheduler_url}/v1/seeds", timeout=5).json()
    listed = seeds if isinstance(seeds, list) else seeds["seeds"]
    return listed[0]["allowed_rate_bytes_per_second"]


# --------------------------------------------------------------------------- bad /metrics


class MetricsSeed(FakeSeed):
    """The fake seed of test_agent.py plus a /metrics whose answer the test chooses."""

    answer: str = "idle"  # idle | busy | garbage | http_error

    def app(self) -> FastAPI:
        app = super().app()

        @app.get("/metrics")
        def metrics():
            if self.answer == "garbage":
                return PlainTextResponse("<html><body>502 Bad Gateway</body></html>\n")
            if self.answer == "http_error":
                return PlainTextResponse("internal error\n", status_code=500)
            running = 4 if self.answer == "busy" else 0
            return PlainTextResponse(f"sglang:num_running_reqs{{model_name=\"m\"}} {running}\n"
                                     "sglang:num_queue_reqs{model_name=\"m\"} 0\n")

        return app


@pytest.fixture
def qos_agent():
    started: list[Served] = []

    def start(seed: MetricsSeed, **overrides):
        seed_server, scheduler_server = Served(seed.app()), Served(RecordingScheduler().app())
        started.extend([seed_server, scheduler_server])
        sock = _socket()
        config = AgentConfig(**{
            "seed_id": "seed-0", "sglang_url": seed_server.url, "scheduler_url": scheduler_server.url,
            "port": sock.getsockname()[1], "rate_cap": CAP, "throttle": "adaptive", "slo_itl_seconds": 0.04,
            "heartbeat_interval": 0.2, "qos_interval_seconds": 0.25, **overrides,
        })
        registry = CollectorRegistry()
        app = create_app(config, registry=registry)
        started.insert(0, Served(app, sock))
        return app.state.agent, registry

    yield start
    for server in started:
        server.stop()


def failures(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("rfork_agent_seed_metrics_scrape_failures_total",
                                     {"seed": "seed-0", "reason": reason})


def test_load_returning_to_an_idle_seed_is_decided_on_before_the_next_tick(qos_agent):
    # Ticks 5 s apart; the idle watch scrapes every 0.1 s while an idle seed has the cap. Requests
    # arriving just after a tick are seen by the watch, which ticks at once: the rate drops seconds
    # before the next regular tick would have seen them (rfork_agent_idle_watch_wakeups_total counts
    # exactly that). 5 s apart, not 3: beside a second suite the watch overran its 0.1 s period
    # (apscheduler skipped runs), and the margin is what lets it still come first.
    seed = MetricsSeed(tp_size=1)
    state, registry = qos_agent(seed, qos_interval_seconds=5.0, qos_idle_watch_seconds=0.1)
    def wakeups() -> float | None:
        return registry.get_sample_value("rfork_agent_idle_watch_wakeups_total", {"seed": "seed-0"})

    # Both, in one condition: the tick sets idle_at_cap and then the rate, in the agent's thread, and
    # this thread can look between the two (it did, beside a second suite: idle at cap, rate 5 MB/s).
    wait_until(lambda: state.qos.idle_at_cap and state.allowed_rate == CAP, 30, "the idle seed to get the cap")
    assert wakeups() == 0
    seed.answer = "busy"
    wait_until(lambda: state.allowed_rate < CAP, 30, "the rate to drop once requests run")
    assert wakeups() == 1, "the regular tick, not the watch, saw the load: the watch did not run"
    assert state.qos.state.mode is not Mode.IDLE_FULL


@pytest.mark.parametrize("interval", [0.1, 0.25, 1.0, 2.0, 3.0, 10.0, 30.0])
def test_the_law_derived_from_any_scrape_interval_is_valid(interval):
    # The law's defaults assume 1 s; a slower scrape stretches its windows instead of failing to start.
    config = AgentConfig(seed_id="s", sglang_url="http://127.0.0.1:1", scheduler_url="http://127.0.0.1:2",
                         rate_cap=CAP, throttle="adaptive", slo_itl_seconds=0.04, qos_interval_seconds=interval)
    law = config.controller_config
    assert law.interval_seconds == interval and law.off_window_seconds >= interval
    if interval <= 1.0:
        assert law == ControllerConfig(cap_bytes_per_second=CAP, interval_seconds=interval,
                                       stale_after_seconds=3.0, pool_max_seconds=5.0)


def test_the_idle_watch_can_be_turned_off_and_rejects_bad_periods():
    base = {"seed_id": "s", "sglang_url": "http://127.0.0.1:1", "scheduler_url": "http://127.0.0.1:2"}
    assert AgentConfig(**base, qos_idle_watch_seconds=0).qos_idle_watch_seconds == 0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="qos_idle_watch_seconds"):
            AgentConfig(**base, qos_idle_watch_seconds=bad)


@pytest.mark.parametrize("answer", ["garbage", "http_error"])
def test_bad_metrics_drop_to_the_floor_and_are_counted(qos_agent, answer, caplog):
    seed = MetricsSeed(tp_size=1)
    state, registry = qos_agent(seed)
    wait_until(lambda: state.allowed_rate == CAP, 10, "an idle seed to get the cap")
    logged_before = len(caplog.records)
    seed.answer = answer
    reason = "parse_error" if answer == "garbage" else answer
    wait_until(lambda: state.allowed_rate == pytest.approx(FLOOR), 10, "the floor after stale metrics")
    assert failures(registry, reason) >= 3
    assert registry.get_sample_value("rfork_agent_throttle_mode", {"seed": "seed-0", "mode": "stale_floor"}) == 1
    assert registry.get_sample_value("rfork_agent_seed_metrics_age_seconds", {"seed": "seed-0"}) >= 3
    assert registry.get_sample_value("rfork_agent_throttle_decisions_total",
                                     {"seed": "seed-0", "action": "floor", "reason": "metrics_stale"}) >= 1
    # Logged once (rate-limited), not every quarter second. A scrape that timed out on a loaded machine is
    # a failure of another reason, logged as such, and the next line of this one is a change of reason
    # again: one more line for each such failure, never one a tick.
    lines = [r.getMessage() for r in caplog.records[logged_before:] if "cannot use the seed's metrics" in r.getMessage()]
    ours = [line for line in lines if f"({reason}:" in line]
    assert 1 <= len(ours) <= 1 + len(lines) - len(ours), lines
    # The metrics come back: the idle seed gets the cap again.
    seed.answer = "idle"
    wait_until(lambda: state.allowed_rate == CAP, 10, "the cap once metrics are readable")


def test_unreachable_metrics_stay_at_the_floor_and_are_counted(qos_agent):
    dead = _socket()  # bound, never listening: connections are refused
    port = dead.getsockname()[1]
    try:
        state, registry = qos_agent(MetricsSeed(tp_size=1), metrics_url=f"http://127.0.0.1:{port}/metrics")
        wait_until(lambda: (failures(registry, "unreachable") or 0) >= 14, 10, "failed scrapes")
        assert state.allowed_rate == pytest.approx(FLOOR)
        assert registry.get_sample_value("rfork_agent_throttle_mode", {"seed": "seed-0", "mode": "stale_floor"}) == 1
        assert failures(registry, "parse_error") == 0 and failures(registry, "http_error") == 0
    finally:
        dead.close()


def test_throttle_can_be_switched_at_run_time(qos_agent):
    state, registry = qos_agent(MetricsSeed(tp_size=1), throttle="off")
    url = f"http://127.0.0.1:{state.config.port}/v1/throttle"
    assert httpx.get(url).json()["mode"] == "off" and state.allowed_rate == CAP
    r = httpx.put(url, json={"mode": "fixed", "rate_bytes_per_second": 30 * MB})
    assert r.status_code == 200 and state.allowed_rate == 30 * MB
    assert registry.get_sample_value("rfork_agent_throttle_mode", {"seed": "seed-0", "mode": "fixed"}) == 1
    assert httpx.put(url, json={"mode": "fixed", "rate_bytes_per_second": 2 * CAP}).status_code == 409
    r = httpx.put(url, json={"mode": "adaptive", "slo_itl_seconds": 0.06})
    assert r.status_code == 200 and r.json()["slo_itl_seconds"] == 0.06 and state.allowed_rate == FLOOR
    assert registry.get_sample_value("rfork_agent_slo_itl_seconds", {"seed": "seed-0"}) == 0.06
    assert httpx.put(url, json={"mode": "sideways"}).status_code == 422
    # The law's tuning, over the agent's start config: a field it does not take is a 422 that says which.
    r = httpx.put(url, json={"mode": "adaptive", "throttle_tuning": "ab_pool_own_share=true"})
    assert r.status_code == 200 and r.json()["throttle_tuning"] == "ab_pool_own_share=true"
    assert state.qos.controller.ab_pool_own_share and state.allowed_rate == FLOOR
    r = httpx.put(url, json={"mode": "adaptive", "throttle_tuning": "ab_pool_own_share=maybe"})
    assert r.status_code == 422 and r.json()["detail"]["error"] == "invalid_tuning"
    assert "ab_pool_own_share='maybe' is not true or false" in r.json()["detail"]["message"]
    assert httpx.get(url).json()["throttle_tuning"] == "ab_pool_own_share=true"


# --------------------------------------------------------------------------- CLI


def _args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agent_cli.add_arguments(parser)
    argv = ["--sglang-url", "http://127.0.0.1:30000", "--scheduler", "http://127.0.0.1:8700"]
    for key, value in overrides.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return parser.parse_args(argv)


@pytest.mark.parametrize("overrides, env, message", [
    ({"slo_itl": "-0.04"}, {}, "--slo-itl must be a number of seconds > 0"),
    ({"slo_itl": "0"}, {}, "--slo-itl must be a number of seconds > 0"),
    ({"slo_itl": "fast"}, {}, "--slo-itl 'fast' is not a number"),
    ({"slo_itl": "0.04", "slo_ttft": "-1"}, {}, "--slo-ttft must be a number of seconds > 0"),
    ({"slo_itl": "0.04", "slo_budget": "1.5"}, {}, "--slo-budget must be a fraction strictly between 0 and 1"),
    ({"slo_itl": "0.04", "slo_budget": "0"}, {}, "--slo-budget must be a fraction strictly between 0 and 1"),
    ({"slo_ttft": "2"}, {}, "--slo-ttft needs --slo-itl"),
    ({"throttle": "sometimes"}, {}, "--throttle 'sometimes' is not one of adaptive, fixed, off"),
    ({"throttle": "adaptive", "slo_itl": "0.04"}, {}, "--throttle adaptive needs --rate-cap"),
    ({"throttle": "adaptive", "rate_cap": "100MB/s"}, {}, "--throttle adaptive needs --slo-itl"),
    ({"throttle": "fixed"}, {}, "--throttle fixed paces at --rate-cap"),
    ({}, {"RFORK_SLO_BUDGET": "2"}, "--slo-budget (from $RFORK_SLO_BUDGET) must be a fraction"),
    ({}, {"RFORK_THROTTLE": "adaptive", "RFORK_SLO_ITL": "0.04"}, "--throttle adaptive needs --rate-cap"),
    ({"throttle_tuning": "md_beta=0.3"}, {}, "--throttle-tuning tunes the adaptive law, which needs --rate-cap"),
    ({"rate_cap": "1GB/s", "throttle_tuning": "md_beta"}, {}, "'md_beta' is not FIELD=VALUE with FIELD one of"),
    ({"rate_cap": "1GB/s", "throttle_tuning": "speed=9"}, {}, "'speed=9' is not FIELD=VALUE"),
    ({"rate_cap": "1GB/s", "throttle_tuning": "interval_seconds=2"}, {}, "is not FIELD=VALUE"),
    ({"rate_cap": "1GB/s", "throttle_tuning": "md_beta=fast"}, {}, "md_beta='fast' is not a number"),
    ({"rate_cap": "1GB/s", "throttle_tuning": "ab_start_graded=maybe"}, {},
     "ab_start_graded='maybe' is not true or false"),
    ({"rate_cap": "1GB/s", "throttle_tuning": "md_beta=2"}, {}, "ControllerConfig.md_beta must be in (0, 1]"),
    ({"rate_cap": "1GB/s", "throttle_tuning": "max_cut=none"}, {}, "ControllerConfig.max_cut must be a number"),
    ({"rate_cap": "1GB/s", "throttle_tuning": "min_observations=2.5"}, {}, "min_observations must be an integer"),
    ({"idle_watch": "soon"}, {}, "--idle-watch 'soon' is not a number of seconds"),
    ({"idle_watch": "-0.5"}, {}, "--idle-watch must be 0 (off) or a number of seconds > 0"),
    ({}, {"RFORK_IDLE_WATCH": "nan"}, "--idle-watch (from $RFORK_IDLE_WATCH) must be 0 (off)"),
    ({"rate_cap": "1GB/s"}, {"RFORK_THROTTLE_TUNING": "max_cut=1"},
     "--throttle-tuning (from $RFORK_THROTTLE_TUNING): ControllerConfig.max_cut must be in (0, 1)"),
])
def test_cli_rejects_bad_slo_flags_with_one_line(overrides, env, message, capsys, monkeypatch):
    for name in agent_cli.QOS_ENV.values():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert agent_cli.main(_args(**overrides)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_slo_from_flags_and_environment(monkeypatch):
    for name in agent_cli.QOS_ENV.values():
        monkeypatch.delenv(name, raising=False)
    config = agent_cli.build_config(_args(rate_cap="2GB/s", throttle="adaptive", slo_itl="0.04", slo_ttft="2",
                                          slo_budget="0.02"))
    assert (config.throttle, config.slo_itl_seconds, config.slo_ttft_seconds, config.slo_budget) == (
        "adaptive", 0.04, 2.0, 0.02)
    assert config.controller_config.cap == 2e9
    monkeypatch.setenv("RFORK_THROTTLE", "adaptive")
    monkeypatch.setenv("RFORK_SLO_ITL", "0.06")
    config = agent_cli.build_config(_args(rate_cap="2GB/s", slo_itl="0.08"))  # a flag wins over its variable
    assert (config.throttle, config.slo_itl_seconds, config.slo_budget) == ("adaptive", 0.08, 0.01)


def test_cli_idle_watch_from_flag_or_environment(monkeypatch):
    for name in agent_cli.QOS_ENV.values():
        monkeypatch.delenv(name, raising=False)
    assert agent_cli.build_config(_args()).qos_idle_watch_seconds == 0.25
    assert agent_cli.build_config(_args(idle_watch="0")).qos_idle_watch_seconds == 0
    monkeypatch.setenv("RFORK_IDLE_WATCH", "0.1")
    assert agent_cli.build_config(_args()).qos_idle_watch_seconds == 0.1
    assert agent_cli.build_config(_args(idle_watch="0.5")).qos_idle_watch_seconds == 0.5


def test_cli_throttle_tuning_overrides_only_the_named_fields(monkeypatch):
    for name in agent_cli.QOS_ENV.values():
        monkeypatch.delenv(name, raising=False)
    config = agent_cli.build_config(_args(rate_cap="2GB/s", throttle="adaptive", slo_itl="0.04",
                                          throttle_tuning="md_beta=0.3, probe_every_seconds=none,idle_intervals=4,max_step_multiplier=2"))
    law = config.controller_config
    assert (law.cap, law.md_beta, law.probe_every_seconds, law.idle_intervals) == (2e9, 0.3, None, 4)
    assert isinstance(law.idle_intervals, int) and law.max_cut == ControllerConfig(cap_bytes_per_second=1).max_cut
    assert law.max_step_multiplier == 2 and isinstance(law.max_step_multiplier, int)
    monkeypatch.setenv("RFORK_THROTTLE_TUNING", "md_beta=0.2")
    assert agent_cli.build_config(_args(rate_cap="2GB/s")).controller_config.md_beta == 0.2
    assert agent_cli.build_config(_args(rate_cap="2GB/s", throttle_tuning="md_beta=0.4")).controller_config.md_beta == 0.4


def test_cli_throttle_tuning_sets_the_ab_law_fields_and_picks_the_law(monkeypatch, capsys):
    for name in agent_cli.QOS_ENV.values():
        monkeypatch.delenv(name, raising=False)
    law = agent_cli.build_config(_args(rate_cap="2GB/s", throttle="adaptive", slo_itl="0.04", throttle_tuning=(
        "off_every_min_seconds=4,off_every_max_seconds=30,confidence_z=2,budget_aim_fraction=0.9,"
        "ab_start_graded=false"))).controller_config
    assert (law.law, law.off_every_min_seconds, law.off_every_max_seconds, law.confidence_z,
            law.budget_aim_fraction, law.ab_start_graded) == ("ab", 4.0, 30.0, 2.0, 0.9, False)
    old = agent_cli.build_config(_args(rate_cap="2GB/s", throttle="adaptive", slo_itl="0.04",
                                       throttle_tuning="law=aimd,md_beta=0.5")).controller_config
    assert (old.law, old.md_beta) == ("aimd", 0.5)
    with pytest.raises(agent_cli._BadFlag, match="law must be one of ab, aimd"):
        agent_cli.build_config(_args(rate_cap="2GB/s", throttle="adaptive", slo_itl="0.04", throttle_tuning="law=pid"))
    with pytest.raises(agent_cli._BadFlag, match="off_every_max_seconds must be >= off_every_min_seconds"):
        agent_cli.build_config(_args(rate_cap="2GB/s", throttle="adaptive", slo_itl="0.04",
                                     throttle_tuning="off_every_min_seconds=10,off_every_max_seconds=5"))


def test_cli_default_is_off_without_environment(monkeypatch):
    for name in agent_cli.QOS_ENV.values():
        monkeypatch.delenv(name, raising=False)
    config = agent_cli.build_config(_args())
    assert config.throttle == "off" and config.slo is None
