"""A real Prometheus scrapes a real testbed while a fork runs; every dashboard query and alert rule is evaluated.

One scenario (module fixture), then assertions on it:

1. A fleet on loopback: scheduler, 3 seed stand-ins under request load (so they
   produce SGLang latency histograms), one agent each (capped at 2 MB/s, QoS in
   ``fixed`` mode with a 2 ms ITL/TTFT SLO the CPU decode loop cannot meet;
   seed-2 switched to ``adaptive`` at run time so the controller decides).
2. A "hung" job: created through the scheduler API by a client that never asks
   for work, so no byte ever lands (the RforkForkStalled fault).
3. Prometheus (Debian's package, installed by scripts/bootstrap.sh) on a free
   loopback port, its own TSDB in a temp dir, scraping everything every second
   with grafana/alerts/rfork-alerts.yml loaded.
4. ``rfork fork --metrics-port`` forks 16 MiB in 1 MiB chunks (~6 s at the caps);
   seed-0 is SIGKILLed at 40% (read failures, retries, seed down, scrape failures).
5. Clients that report every read failed (a retry storm, and failed forks).

Then: every panel target of every dashboard, with its template variables
substituted, returns finite data over the run (Prometheus's query_range);
every template variable has values; every alert rule is loaded and healthy,
every series it reads exists, and the intended alerts are pending or firing;
the finished fork's per-job series are gone from the scheduler and from
Prometheus.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.prometheus import promql
from testbed.fleet import Fleet, FleetSpec, free_port

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

SCRAPE_SECONDS = 1
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval for a 1 s scrape: 4 x scrape interval
MODEL_BYTES = 16 * 2**20
CAP_BYTES_PER_SECOND = 2e6
KILL_AT_FRACTION = 0.4
KILLED_SEED = 0
ADAPTIVE_SEED = 2
STALL_THRESHOLD_SECONDS = 20  # RforkForkStalled's expression: no bytes for > 20 s

# alert -> labels one of its pending/firing instances must carry
EXPECTED_ALERTS = {
    "RforkSeedDown": {"seed": f"seed-{KILLED_SEED}"},
    "RforkComponentDown": {"job": "rfork-seed"},
    "RforkRetryStorm": {},
    "RforkForkFailed": {},
    "RforkForkStalled": {},  # job_id checked against the hung job below
    "RforkAgentSeedMetricsScrapeFailing": {"seed": f"seed-{KILLED_SEED}"},
    "RforkSeedSloViolatedDuringFork": {},
}


@dataclass
class Scenario:
    prom_url: str
    fleet: Fleet
    seed_ids: list[str]
    fork_job_id: str
    hung_job_id: str
    client_instance: str
    started_unix: float
    hung_created_unix: float
    tmp: Path
    timings: dict[str, float] = field(default_factory=dict)

    def query_range(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.prom_url}/api/v1/query_range", timeout=30, params={
            "query": expr, "start": self.started_unix, "end": time.time(), "step": SCRAPE_SECONDS})
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus rejected {expr!r}: {body.get('error')}")
        return body["data"]["result"]

    def query(self, expr: str) -> list[dict]:
        body = httpx.get(f"{self.prom_url}/api/v1/query", params={"query": expr}, timeout=30).json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus rejected {expr!r}: {body.get('error')}")
        return body["data"]["result"]


def _scheduler_samples(fleet: Fleet, name: str) -> list:
    text = httpx.get(f"{fleet.scheduler_url}/metrics", timeout=5).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def _prometheus_config(fleet: Fleet, client_port: int) -> dict:
    def job(name: str, targets: list[str]) -> dict:
        return {"job_name": name, "static_configs": [{"targets": targets}]}

    host = lambda url: url.split("://", 1)[1]  # noqa: E731
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": f"{SCRAPE_SECONDS}s",
                   "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(promql.ALERT_RULES)],
        "scrape_configs": [
            job("rfork-scheduler", [host(fleet.scheduler_url)]),
            job("rfork-agent", [host(s.agent_url) for s in fleet.seeds]),
            job("rfork-seed", [host(s.url) for s in fleet.seeds]),
            job("rfork-client", [f"127.0.0.1:{client_port}"]),
        ],
    }
    return config


def _manifest(fleet: Fleet) -> dict:
    body = httpx.get(f"{fleet.seeds[1].url}/remote_instance_transfer_engine_info", params={"rank": 0}, timeout=5).json()
    return body["remote_instance_transfer_engine_info"][1]


def _create_job(fleet: Fleet, identity: dict, manifest: dict, chunk_size: int) -> str:
    r = httpx.post(f"{fleet.scheduler_url}/v1/jobs", timeout=10, headers=fleet.headers, json={
        "identity": identity, "rank": 0, "manifest": manifest, "chunk_size_bytes": chunk_size})
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def _retry_storm(fleet: Fleet, identity: dict, manifest: dict, retries_wanted: int = 40) -> int:
    """Clients that report every read failed: each failure re-queues its chunk (a retry) until the job fails."""
    def retries() -> float:
        return sum(s.value for s in _scheduler_samples(fleet, "rfork_scheduler_chunk_retries_total"))

    for _ in range(20):
        job_id = _create_job(fleet, identity, manifest, 256 * 1024)
        reports: list[dict] = []
        for _ in range(100):
            body = httpx.post(f"{fleet.scheduler_url}/v1/jobs/{job_id}/work", timeout=10, headers=fleet.headers,
                              json={"max_assignments": 16, "reports": reports}).json()
            if body["state"] != "running":
                break
            reports = [{"assignment_id": a["assignment_id"], "ok": False, "reason": "read_failed",
                        "error": "injected by the metrics test", "seconds": 0.01} for a in body["assignments"]]
            if not reports:
                time.sleep(0.02)
        if retries() >= retries_wanted:
            return int(retries())
    raise AssertionError(f"only {retries()} retries after 20 failing jobs")


def _start_fork(scenario_tmp: Path, fleet: Fleet, client_port: int) -> subprocess.Popen:
    """`rfork fork --metrics-port` in its own process (it imports torch and the transport: seconds)."""
    out = scenario_tmp / "fork.json"
    log = open(scenario_tmp / "fork.log", "ab")
    cmd = [sys.executable, "-m", "rfork_agent.cli", "fork", "--scheduler", fleet.scheduler_url,
           "--like-seed", fleet.seeds[1].url, "--chunk-size", "1MiB", "--metrics-port", str(client_port),
           "--metrics-linger", "1.5", "--no-progress", "--json", str(out), "--log-level", "WARNING"]
    return subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, GLOG_minloglevel="2"))


def _watch_fork(scenario_tmp: Path, fleet: Fleet, process: subprocess.Popen, timings: dict) -> str:
    """SIGKILLs seed-0 once 40% has landed; waits for the fork. Returns its job id."""
    started = time.monotonic()
    killed = False
    try:
        while process.poll() is None:
            if not killed:
                ratios = _scheduler_samples(fleet, "rfork_scheduler_job_progress_ratio")
                if any(s.value >= KILL_AT_FRACTION and s.value < 1 for s in ratios):
                    fleet.kill_seed(KILLED_SEED)
                    killed = True
                    timings["kill_after_watch_start_s"] = time.monotonic() - started
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, f"rfork fork failed; see {scenario_tmp / 'fork.log'}"
    timings["fork_watched_s"] = time.monotonic() - started
    assert killed, "the fork ended before it reached 40%: slow it down (caps) so the fault lands mid-fork"
    return json.loads((scenario_tmp / "fork.json").read_text())["job_id"]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, start_prometheus):
    tmp = tmp_path_factory.mktemp("prometheus")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    spec = FleetSpec(
        seeds=3, preset=None, size_bytes=MODEL_BYTES, seed_rates=(CAP_BYTES_PER_SECOND,), load_rps=3.0,
        heartbeat_timeout_seconds=3.0, log_dir=str(tmp / "fleet"),
        # The hung job must stay running, not be abandoned. A 2 s pipeline keeps several leases
        # queued at each capped agent, so the SIGKILL always finds reads from seed-0 in flight
        # and the client's failed-read series exist.
        scheduler_args=("--client-timeout", "300", "--pipeline-seconds", "2"),
        agent_args=("--throttle", "fixed", "--slo-itl", "0.002", "--slo-ttft", "0.002"),
    )
    with Fleet(spec) as fleet:
        timings["fleet_start_s"] = time.monotonic() - t0
        started_unix = time.time()
        identity, manifest = fleet.identity().model_dump(), _manifest(fleet)
        hung_created_unix = time.time()
        hung_job_id = _create_job(fleet, identity, manifest, 1 << 20)
        client_port = free_port()
        fork = _start_fork(tmp, fleet, client_port)  # its imports overlap Prometheus's start
        prometheus = start_prometheus(tmp, _prometheus_config(fleet, client_port))
        prom_url = prometheus.url
        try:
            r = httpx.put(f"{fleet.seeds[ADAPTIVE_SEED].agent_url}/v1/throttle", json={"mode": "adaptive"},
                          headers=fleet.headers, timeout=5)
            assert r.status_code == 200, r.text
            fork_job_id = _watch_fork(tmp, fleet, fork, timings)
            _retry_storm(fleet, identity, manifest)
            time.sleep(2.5 * SCRAPE_SECONDS)  # the post-fork state is scraped and the rules evaluated
            timings["scenario_s"] = time.monotonic() - t0
            yield Scenario(prom_url, fleet, [s.seed_id for s in fleet.seeds], fork_job_id, hung_job_id,
                           f"127.0.0.1:{client_port}", started_unix, hung_created_unix, tmp, timings)
        finally:
            if fork.poll() is None:
                fork.kill()
                fork.wait()
            prometheus.stop()


def _has_finite_value(result: list[dict]) -> bool:
    return any(math.isfinite(float(v)) for series in result for _, v in series.get("values", []))


def _variable_values(s: Scenario) -> dict[str, list[str]]:
    """Candidate values per template variable: a panel passes if any candidate gives it data."""
    return {"seed": s.seed_ids, "job_id": [s.fork_job_id], "client": [s.client_instance],
            "__rate_interval": [RATE_INTERVAL]}


def test_generated_scrape_config_passes_promtool(scenario, promtool):
    r = subprocess.run([promtool, "check", "config", str(scenario.tmp / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_target_was_scraped(scenario):
    up = scenario.query_range("up")
    jobs = {series["metric"]["job"] for series in up if any(v == "1" for _, v in series["values"])}
    assert jobs == {"rfork-scheduler", "rfork-agent", "rfork-seed", "rfork-client"}


def test_every_dashboard_query_returns_data(scenario):
    candidates = _variable_values(scenario)
    empty = []
    for q in promql.panel_queries():
        used = [name for name in candidates if f"${name}" in q.expr]
        combos = [{}]
        for name in used:
            combos = [{**c, name: value} for c in combos for value in candidates[name]]
        if not any(_has_finite_value(scenario.query_range(promql.substitute(q.expr, combo))) for combo in combos):
            empty.append(f"{q.where()}: {q.expr} (tried {combos})")
    assert empty == [], "panels without data:\n" + "\n".join(empty)


def test_every_template_variable_has_values(scenario):
    wanted = _variable_values(scenario)
    for dashboard, variable, metric, label in promql.variable_queries():
        r = httpx.get(f"{scenario.prom_url}/api/v1/label/{label}/values", timeout=10, params={
            "match[]": metric, "start": scenario.started_unix, "end": time.time()}).json()
        values = set(r["data"])
        assert values & set(wanted[variable]), f"{dashboard} ${variable}: label_values gave {sorted(values)}"


def test_every_alert_rule_is_loaded_healthy_and_reads_existing_series(scenario):
    groups = httpx.get(f"{scenario.prom_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    for rule in promql.alert_rules():
        got = loaded.get(rule["alert"])
        assert got is not None, f"{rule['alert']} not loaded"
        assert got["health"] == "ok" and not got.get("lastError"), (rule["alert"], got.get("lastError"))
        for sel in promql.references(rule["expr"]).selectors:
            assert scenario.query_range(f'count({{__name__="{sel.name}"}})'), \
                f"{rule['alert']} reads {sel.name}, which Prometheus never scraped"


def test_injected_faults_raise_the_intended_alerts(scenario):
    # RforkForkStalled needs the hung job silent for > 30 s; everything else is due already.
    # An alert counts if it was pending or firing at any evaluation since the scenario began
    # (Prometheus's own ALERTS series), not only now: RforkSeedSloViolatedDuringFork reads the
    # grants of the last minute, so it resolves a minute after the fork ends, and on a loaded
    # machine the scenario's later steps took that long (a scenario of 127 s beside a second suite).
    deadline = max(time.time() + 20, scenario.hung_created_unix + STALL_THRESHOLD_SECONDS + 15)
    missing = dict(EXPECTED_ALERTS)
    while time.time() < deadline:
        raised = [series["metric"] for series in scenario.query_range('ALERTS{alertstate=~"pending|firing"}')]
        for name, labels in list(missing.items()):
            if name == "RforkForkStalled":
                labels = {"job_id": scenario.hung_job_id}
            if any(a["alertname"] == name and all(a.get(k) == v for k, v in labels.items()) for a in raised):
                del missing[name]
        if not missing:
            break
        time.sleep(1)
    assert not missing, f"alerts never pending or firing: {sorted(missing)}; raised: " + ", ".join(
        sorted({f"{a['alertname']}({a['alertstate']})" for a in raised}))
    alerts = httpx.get(f"{scenario.prom_url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    stalled = [a for a in alerts if a["labels"]["alertname"] == "RforkForkStalled"]
    assert {a["labels"]["job_id"] for a in stalled} == {scenario.hung_job_id}, "only the hung job is stalled"


def test_finished_fork_series_are_removed(scenario):
    fork, hung = scenario.fork_job_id, scenario.hung_job_id
    text = httpx.get(f"{scenario.fleet.scheduler_url}/metrics", timeout=5).text
    assert f'job_id="{fork}"' not in text
    assert f'job_id="{hung}"' in text  # running jobs keep theirs
    # Prometheus saw the fork's series while it ran, and marks them stale once gone.
    assert scenario.query_range(f'rfork_scheduler_job_progress_ratio{{job_id="{fork}"}}')
    assert scenario.query(f'{{job_id="{fork}"}}') == []
    running = {series["metric"]["job_id"] for series in scenario.query("rfork_scheduler_job_progress_ratio")}
    assert running == {hung}, "only running jobs have per-job series (the failed storm jobs left none)"


def test_report_timings(scenario):
    """Not a check: the phases' durations, for the README and for keeping this suite fast."""
    scenario.timings["total_s"] = time.time() - scenario.started_unix + scenario.timings["fleet_start_s"]
    print("\nreal-Prometheus scenario timings:", json.dumps({k: round(v, 1) for k, v in scenario.timings.items()}))
