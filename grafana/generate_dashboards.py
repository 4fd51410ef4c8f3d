"""Writes rfork's Grafana dashboards (grafana/dashboards/rfork/*.json) from the tables below.

Dashboards are data: one place lists each panel's title, unit and PromQL, and
this script renders Grafana's JSON so every panel gets the same datasource
variable, layout and defaults. tests/prometheus checks the committed JSON is
what this script writes, that every metric and label it queries is one rfork
(or a seed's SGLang) exports, and that every query returns data from a real
Prometheus scraping a testbed.

    .venv/bin/python grafana/generate_dashboards.py     # rewrite the JSON files
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "dashboards" / "rfork"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | gauge | bargauge
    width: int = 12
    height: int = 8
    description: str = ""


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    query: str  # label_values(metric, label)
    multi: bool = True


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def t(expr: str, legend: str = "") -> Target:
    return Target(expr, legend)


SEED_VAR = Variable("seed", "Seed", "label_values(rfork_agent_allowed_rate_bytes_per_second, seed)")

FLEET = Dashboard(
    uid="rfork-fleet",
    title="rfork / fleet overview",
    description="Seeds, running forks, bytes moved, retries and the scheduler's health.",
    variables=(SEED_VAR,),
    panels=(
        Panel("Seeds registered", (t("rfork_scheduler_seeds_registered"),), kind="stat", width=4, height=4,
              description="Seeds in the scheduler's registry (dropped after missed heartbeats)."),
        Panel("Seeds alive", (t('sum(rfork_agent_registered{seed=~"$seed"})'),), kind="stat", width=4, height=4,
              description="Agents whose seed answers and is registered with the scheduler."),
        Panel("Forks running", (t("rfork_scheduler_jobs_active"),), kind="stat", width=4, height=4),
        Panel("Fork throughput", (t(f'sum(rate(rfork_scheduler_seed_bytes_completed_total{{seed=~"$seed"}}[{RATE}]))'),),
              unit="Bps", kind="stat", width=4, height=4),
        Panel("Chunk reads in flight", (t('sum(rfork_scheduler_assignments_in_flight{seed=~"$seed"})'),),
              kind="stat", width=4, height=4),
        Panel("Chunk retries (1h)", (t("sum(increase(rfork_scheduler_chunk_retries_total[1h]))"),),
              kind="stat", width=4, height=4),
        Panel("Bytes/s landed, by source seed",
              (t(f'sum by (seed) (rate(rfork_scheduler_seed_bytes_completed_total{{seed=~"$seed"}}[{RATE}]))',
                 "{{seed}}"),), unit="Bps"),
        Panel("Allowed rate, granted rate and cap, by seed",
              (t('rfork_agent_allowed_rate_bytes_per_second{seed=~"$seed"}', "{{seed}} allowed"),
               t(f'rate(rfork_agent_granted_bytes_total{{seed=~"$seed"}}[{RATE}])', "{{seed}} granted"),
               t('rfork_agent_rate_cap_bytes_per_second{seed=~"$seed"}', "{{seed}} cap")),
              unit="Bps", description="NaN (a gap) means uncapped."),
        Panel("Running forks: progress",
              (t("rfork_scheduler_job_progress_ratio", "{{job_id}}"),), unit="percentunit", kind="bargauge"),
        Panel("Chunk reads in flight, by seed",
              (t('rfork_scheduler_assignments_in_flight{seed=~"$seed"}', "{{seed}} assigned"),
               t("sum(rfork_client_chunks_in_flight)", "fork clients: leased or reading"))),
        Panel("Chunk retries, by reason",
              (t(f"sum by (reason) (rate(rfork_scheduler_chunk_retries_total[{RATE}]))", "{{reason}}"),),
              unit="ops"),
        Panel("Failed chunk reads, by seed and reason",
              (t(f'sum by (seed, reason) (rate(rfork_scheduler_chunk_failures_total{{seed=~"$seed"}}[{RATE}]))',
                 "{{seed}} {{reason}}"),), unit="ops"),
        Panel("Forks finished, by outcome",
              (t(f"sum by (outcome) (increase(rfork_scheduler_jobs_finished_total[{RATE}]))", "{{outcome}}"),)),
        Panel("Bytes/s landed: from seeds vs from peers (scale-outs)",
              (t(f"sum by (kind) (rate(rfork_scheduler_bytes_landed_total[{RATE}]))", "{{kind}}"),), unit="Bps",
              description="In a scale-out the new instances feed each other: the seeds should carry about one "
                          "model copy. A stream's bytes count when the stream ends."),
        Panel("Peers and streams",
              (t("rfork_scheduler_peers_serving", "peers serving"),
               t(f"sum(rate(rfork_scheduler_streams_started_total[{RATE}]))", "streams started/s"),
               t(f"sum(rate(rfork_scheduler_stream_endgame_moves_total[{RATE}]))", "endgame moves/s"),
               t(f"sum by (reason) (rate(rfork_scheduler_stream_failures_total[{RATE}]))", "stream failures/s {{reason}}")),
              description="Streams: a member follows a parent's landed map for one stripe; a failed one is "
                          "re-parented, and late in a scale-out a slow one moves to a finished member with upload "
                          "to spare (docs/fleet.md, Streams)."),
        Panel("Streaming members and their report interval",
              (t("rfork_scheduler_streaming_members", "members streaming"),
               t("rfork_scheduler_stream_report_interval_seconds", "report interval asked (s)")),
              description="The scheduler paces streaming forks' progress reports to about "
                          "--stream-reports-per-second calls a second in all: each reports at most every "
                          "members / rate seconds (0: its own second). Progress bars of a big scale-out move "
                          "in steps this long (docs/fleet.md, Paced reports)."),
        Panel("Scale-out time-to-all (last hour)",
              tuple(t(f"histogram_quantile({q}, sum by (le) (increase(rfork_scheduler_scale_out_seconds_bucket[1h])))",
                      f"p{round(q * 100)}") for q in (0.5, 0.99)), unit="s"),
        Panel("Fork duration (finished forks, last hour)",
              tuple(t(f"histogram_quantile({q}, sum by (le) (increase(rfork_scheduler_fork_duration_seconds_bucket[1h])))",
                      f"p{round(q * 100)}") for q in (0.5, 0.9, 0.99)), unit="s"),
        Panel("Seed ITL p99 vs SLO",
              (t('rfork_agent_observed_itl_p99_seconds{seed=~"$seed"}', "{{seed}} ITL p99"),
               t('rfork_agent_slo_itl_seconds{seed=~"$seed"}', "{{seed}} SLO")), unit="s"),
        Panel("Seed latency impact (observed ITL p99 / no-transfer baseline)",
              (t('rfork_agent_latency_impact_ratio{seed=~"$seed"}', "{{seed}}"),)),
        Panel("Scheduler API latency p99, by route",
              (t(f"histogram_quantile(0.99, sum by (le, route) "
                 f"(rate(rfork_scheduler_api_request_duration_seconds_bucket[{RATE}])))", "{{route}}"),), unit="s"),
        Panel("Scheduler CPU on decisions, by call (cores)",
              (t(f"sum by (call) (rate(rfork_scheduler_decision_cpu_seconds_total[{RATE}]))", "{{call}}"),),
              description="The scheduler's decisions are one process's work: near 1 core, forks wait for it. "
                          "Its process CPU beyond these is the HTTP protocol (bench/scheduler_bench.py)."),
        Panel("Scheduler processes (--front-ends N, --deciders K)",
              (t("rfork_scheduler_front_ends_running", "front ends running"),
               t(f"increase(rfork_scheduler_front_end_restarts_total[{RATE}])", "front ends restarted"),
               t("rfork_scheduler_deciders_running", "deciders running"),
               t(f"increase(rfork_scheduler_decider_restarts_total[{RATE}])", "deciders restarted")),
              description="0 front ends: the scheduler serves HTTP itself (the default); 1 decider: it decides "
                          "every rank itself (the default). Restarts: processes that exited and were started "
                          "again (alerts RforkSchedulerFrontEndRestarting, RforkSchedulerDeciderRestarted: a "
                          "decider's forks start over)."),
        Panel("Scheduler API requests, by status",
              (t(f"sum by (status) (rate(rfork_scheduler_api_request_duration_seconds_count[{RATE}]))", "{{status}}"),),
              unit="reqps"),
        Panel("Heartbeat failures and dropped seeds",
              (t(f'sum by (seed) (increase(rfork_agent_heartbeat_failures_total{{seed=~"$seed"}}[{RATE}]))',
                 "{{seed}} heartbeat failures"),
               t(f"increase(rfork_scheduler_seeds_dropped_total[{RATE}])", "seeds dropped"))),
        Panel("Scrape targets up",
              (t('up{job=~"rfork-.*"}', "{{job}} {{instance}}"),),
              description="Needs the scrape jobs named rfork-scheduler, rfork-agent, rfork-seed, rfork-client "
                          "(see grafana/prometheus/prometheus.yml)."),
    ),
)

FORK = Dashboard(
    uid="rfork-fork",
    title="rfork / one fork",
    description="One fork job: progress, throughput, ETA, where its bytes come from, and its client's reads.",
    variables=(
        Variable("job_id", "Fork job", "label_values(rfork_scheduler_job_progress_ratio, job_id)", multi=False),
        Variable("client", "Fork client", "label_values(rfork_client_progress_ratio, instance)"),
        SEED_VAR,
    ),
    panels=(
        Panel("Progress", (t('rfork_scheduler_job_progress_ratio{job_id="$job_id"}'),), unit="percentunit",
              kind="gauge", width=6, height=6),
        Panel("Bytes landed / total",
              (t('rfork_scheduler_job_landed_bytes{job_id="$job_id"}', "landed"),
               t('rfork_scheduler_job_size_bytes{job_id="$job_id"}', "total")), unit="bytes", kind="stat", width=6, height=6),
        Panel("ETA", (t(f'(rfork_scheduler_job_size_bytes{{job_id="$job_id"}} - rfork_scheduler_job_landed_bytes{{job_id="$job_id"}})'
                        f' / clamp_min(deriv(rfork_scheduler_job_landed_bytes{{job_id="$job_id"}}[{RATE}]), 1)'),),
              unit="s", kind="stat", width=6, height=6,
              description="Bytes left / current landing rate (a huge value means it is not moving)."),
        Panel("Seconds since bytes last landed",
              (t('time() - rfork_scheduler_job_last_progress_timestamp_seconds{job_id="$job_id"}'),),
              unit="s", kind="stat", width=6, height=6,
              description="The RforkForkStalled alert fires when this stays above 20 s for 40 s."),
        Panel("Landing rate", (t(f'deriv(rfork_scheduler_job_landed_bytes{{job_id="$job_id"}}[{RATE}])', "{{job_id}}"),),
              unit="Bps"),
        Panel("Bytes/s by source seed (all forks, scheduler's view)",
              (t(f'sum by (seed) (rate(rfork_scheduler_seed_bytes_completed_total{{seed=~"$seed"}}[{RATE}]))',
                 "{{seed}}"),), unit="Bps"),
        Panel("Client: bytes/s by seed",
              (t(f'sum by (seed) (rate(rfork_client_bytes_total{{instance=~"$client", seed=~"$seed"}}[{RATE}]))',
                 "{{seed}}"),), unit="Bps"),
        Panel("Client: progress and reads in flight",
              (t('rfork_client_progress_ratio{instance=~"$client"}', "{{instance}} progress"),
               t('rfork_client_chunks_in_flight{instance=~"$client"}', "{{instance}} reads in flight"))),
        Panel("Client: failed reads, by seed and reason",
              (t(f'sum by (seed, reason) (increase(rfork_client_chunk_failures_total{{instance=~"$client"}}[{RATE}]))',
                 "{{seed}} {{reason}}"),)),
        Panel("Client: chunk read time",
              tuple(t(f"histogram_quantile({q}, sum by (le) "
                      f'(rate(rfork_client_chunk_read_duration_seconds_bucket{{instance=~"$client"}}[{RATE}])))',
                      f"p{round(q * 100)}") for q in (0.5, 0.99)), unit="s"),
        Panel("Chunk retries, by reason (all forks)",
              (t(f"sum by (reason) (rate(rfork_scheduler_chunk_retries_total[{RATE}]))", "{{reason}}"),), unit="ops"),
        Panel("Lease wait p99, by seed",
              (t(f"histogram_quantile(0.99, sum by (le, seed) "
                 f'(rate(rfork_agent_lease_wait_seconds_bucket{{seed=~"$seed"}}[{RATE}])))', "{{seed}}"),), unit="s"),
    ),
)

SEED_QOS = Dashboard(
    uid="rfork-seed-qos",
    title="rfork / seed QoS",
    description="One seed: the byte rate its agent allows forks vs its serving latency (ITL, TTFT) vs the SLO.",
    variables=(Variable("seed", "Seed", "label_values(rfork_agent_allowed_rate_bytes_per_second, seed)",
                        multi=False),),
    panels=(
        Panel("Allowed rate vs granted rate vs cap",
              (t('rfork_agent_allowed_rate_bytes_per_second{seed="$seed"}', "allowed"),
               t(f'rate(rfork_agent_granted_bytes_total{{seed="$seed"}}[{RATE}])', "granted"),
               t(f'rate(rfork_agent_read_bytes_total{{seed="$seed"}}[{RATE}])', "read (released leases)"),
               t('rfork_agent_rate_cap_bytes_per_second{seed="$seed"}', "cap")), unit="Bps", width=24),
        Panel("Inter-token latency p99 vs SLO",
              (t('rfork_agent_observed_itl_p99_seconds{seed="$seed"}', "ITL p99"),
               t('rfork_agent_slo_itl_seconds{seed="$seed"}', "SLO")), unit="s"),
        Panel("Time to first token p99 vs SLO",
              (t('rfork_agent_observed_ttft_p99_seconds{seed="$seed"}', "TTFT p99"),
               t('rfork_agent_slo_ttft_seconds{seed="$seed"}', "SLO")), unit="s"),
        Panel("Tokens over the ITL SLO: with the fork, the seed alone, the budget",
              (t('rfork_agent_itl_slo_violation_ratio{seed="$seed"}', "violation ratio"),
               t('rfork_agent_seed_alone_itl_slo_violation_ratio{seed="$seed"}', "seed alone (no chunk reads, 60 s)"),
               t('rfork_agent_itl_slo_violation_budget_ratio{seed="$seed"}', "budget")), unit="percentunit",
              description="The seed alone near or over the budget leaves forks no room: the law holds them at the "
                          "floor (seed_over_slo), and no rate, not even 0, keeps the seed within its SLO."),
        Panel("Latency impact (ITL p99 / no-transfer baseline)",
              (t('rfork_agent_latency_impact_ratio{seed="$seed"}', "impact"),)),
        Panel("Throttle mode", (t('rfork_agent_throttle_mode{seed="$seed"}', "{{mode}}"),),
              description="1 for the current mode."),
        Panel("Throttle decisions, by action",
              (t(f'sum by (action) (increase(rfork_agent_throttle_decisions_total{{seed="$seed"}}[{RATE}]))',
                 "{{action}}"),
               t(f'sum(increase(rfork_agent_idle_watch_wakeups_total{{seed="$seed"}}[{RATE}]))',
                 "made early by the idle watch")),
              description="made early by the idle watch: requests returned to an idle seed at the cap and the "
                          "law decided within a quarter second instead of at the next interval."),
        Panel("Why the rate is where it is (decisions by reason)",
              (t(f'sum by (reason) (increase(rfork_agent_throttle_decisions_total{{seed="$seed"}}[{RATE}]))',
                 "{{reason}}"),),
              description="seed_over_slo: held at the floor because the seed misses its ITL SLO without the "
                          "transfer (the agent logs it once); transfer_latency: the law follows the latency the "
                          "transfer adds; seed_idle: full rate; metrics_stale: the floor."),
        Panel("Seed /metrics scrapes: failures and age",
              (t(f'sum by (reason) (increase(rfork_agent_seed_metrics_scrape_failures_total{{seed="$seed"}}[{RATE}]))',
                 "failures: {{reason}}"),
               t('rfork_agent_seed_metrics_age_seconds{seed="$seed"}', "age of last good scrape (s)"))),
        Panel("Leases, by outcome",
              (t(f'sum by (outcome) (rate(rfork_agent_leases_total{{seed="$seed"}}[{RATE}]))', "{{outcome}}"),
               t('rfork_agent_leases_in_flight{seed="$seed"}', "in flight")), unit="short"),
        Panel("Lease wait p99",
              (t(f'histogram_quantile(0.99, sum by (le) (rate(rfork_agent_lease_wait_seconds_bucket{{seed="$seed"}}[{RATE}])))',
                 "p99"),), unit="s"),
        Panel("Failed chunk reads from this seed, by reason",
              (t(f'sum by (reason) (rate(rfork_scheduler_chunk_failures_total{{seed="$seed"}}[{RATE}]))', "{{reason}}"),),
              unit="ops"),
        Panel("Registered with the scheduler",
              (t('rfork_agent_registered{seed="$seed"}', "registered"),)),
    ),
)

DASHBOARDS = (FLEET, FORK, SEED_QOS)


def _variable_json(v: Variable) -> dict:
    return {
        "name": v.name, "label": v.label, "type": "query", "datasource": DATASOURCE,
        "definition": v.query, "query": {"query": v.query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2, "sort": 1, "multi": v.multi, "includeAll": v.multi,
        **({"allValue": ".*"} if v.multi else {}), "current": {}, "options": [], "hide": 0, "regex": "",
    }


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    body = {
        "id": panel_id, "type": panel.kind, "title": panel.title, "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": target.expr,
             "legendFormat": target.legend or "__auto", "range": True}
            for i, target in enumerate(panel.targets)
        ],
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if panel.kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }
    if panel.description:
        body["description"] = panel.description
    return body


def dashboard_json(d: Dashboard) -> dict:
    panels, x, y, row_height = [], 0, 0, 0
    for i, panel in enumerate(d.panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel_json(panel, i, x, y))
        x, row_height = x + panel.width, max(row_height, panel.height)
    datasource_var = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                      "current": {}, "options": [], "hide": 0, "refresh": 1, "regex": ""}
    return {
        "uid": d.uid, "title": d.title, "description": d.description, "tags": ["rfork"],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "refresh": "10s", "time": {"from": "now-30m", "to": "now"}, "timezone": "browser",
        "annotations": {"list": []}, "links": [],
        "templating": {"list": [datasource_var, *(_variable_json(v) for v in d.variables)]},
        "panels": panels,
    }


def render_all() -> dict[str, str]:
    """File name -> JSON text, as committed."""
    return {f"{d.uid}.json": json.dumps(dashboard_json(d), indent=2) + "\n" for d in DASHBOARDS}


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (OUT_DIR / name).write_text(text)
        print(f"wrote {OUT_DIR / name}")


if __name__ == "__main__":
    main()
