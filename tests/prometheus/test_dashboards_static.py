"""Dashboards and alert rules query only what rfork exports; conventions of metrics/definitions.py.

No Prometheus needed: every PromQL expression is parsed (tests/prometheus/promql.py)
and each metric and label it names is looked up in ``metrics.definitions.catalog()``
plus the SGLang series a seed exports. A misspelt metric or a label no component
exports fails here, before anyone opens Grafana.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from metrics.definitions import catalog
from tests.prometheus import promql

EXPORTED = promql.exported_series()
PANEL_QUERIES = promql.panel_queries()
RULES = promql.alert_rules()


def test_committed_dashboards_are_what_the_generator_writes():
    import importlib.util
    import sys

    name = "rfork_grafana_generate_dashboards"
    spec = importlib.util.spec_from_file_location(name, promql.REPO / "grafana" / "generate_dashboards.py")
    gen = importlib.util.module_from_spec(spec)
    sys.modules[name] = gen  # dataclasses look their module up there
    try:
        spec.loader.exec_module(gen)
    finally:
        del sys.modules[name]
    rendered = gen.render_all()
    committed = {p.name: p.read_text() for p in promql.DASHBOARD_DIR.glob("*.json")}
    assert committed == rendered, "run: .venv/bin/python grafana/generate_dashboards.py"


@pytest.mark.parametrize("query", PANEL_QUERIES, ids=lambda q: f"{q.dashboard}:{q.panel}:{q.expr[:40]}")
def test_every_panel_query_uses_only_exported_series_and_labels(query):
    assert promql.check_expr(query.expr, EXPORTED, query.legend) == [], query.where()


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_every_alert_rule_uses_only_exported_series_and_labels(rule):
    assert promql.check_expr(rule["expr"], EXPORTED) == []
    templated = " ".join(rule.get("annotations", {}).values())
    carried = set(promql.TARGET_LABELS) | promql.references(rule["expr"]).grouping_labels
    for sel in promql.references(rule["expr"]).selectors:
        carried |= EXPORTED[sel.name]
    for label in re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", templated):
        assert label in carried, f"{rule['alert']} annotation uses $labels.{label}, which its series do not carry"


def test_every_template_variable_lists_an_exported_label():
    for dashboard, variable, metric, label in promql.variable_queries():
        assert metric in EXPORTED, f"{dashboard} ${variable}: {metric} is not exported"
        assert label in EXPORTED[metric] | promql.TARGET_LABELS, f"{dashboard} ${variable}: {metric} has no {label}"


@pytest.mark.parametrize("expr, legend, problem", [
    ("rate(rfork_scheduler_seed_bytes_total[5m])", "", "'rfork_scheduler_seed_bytes_total' is not exported"),
    ('rfork_agent_registered{job_id="x"}', "", "no label 'job_id'"),  # per-job series are the scheduler's
    ("sum by (zone) (rfork_agent_registered)", "", "grouping label 'zone'"),
    ("rfork_agent_registered", "{{pod}}", "legend uses label 'pod'"),
    ("sglang:inter_token_latency_bucket", "", "is not exported"),  # SGLang's name ends in _seconds_bucket
])
def test_the_checker_rejects_unknown_metrics_and_labels(expr, legend, problem):
    problems = promql.check_expr(expr, EXPORTED, legend)
    assert any(problem in p for p in problems), problems


def test_dashboards_have_a_datasource_variable_every_query_uses():
    for name, dash in promql.load_dashboards().items():
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", (name, panel["title"])
        for v in variables.values():
            if v["type"] == "query":
                assert v["datasource"]["uid"] == "${datasource}", (name, v["name"])


@pytest.mark.parametrize("dashboard, variables", [
    ("rfork-fleet.json", {"datasource", "seed"}),
    ("rfork-fork.json", {"datasource", "job_id", "seed", "client"}),
    ("rfork-seed-qos.json", {"datasource", "seed"}),
])
def test_dashboards_have_their_template_variables(dashboard, variables):
    dash = promql.load_dashboards()[dashboard]
    assert {v["name"] for v in dash["templating"]["list"]} == variables
    uids = [d["uid"] for d in promql.load_dashboards().values()]
    assert len(uids) == len(set(uids))


def test_provisioning_files_point_at_this_layout():
    grafana = promql.REPO / "grafana"
    providers = yaml.safe_load((grafana / "dashboards" / "rfork.yaml").read_text())["providers"]
    for provider in providers:
        path = provider["options"]["path"]
        assert path.startswith("/etc/grafana/provisioning/"), path
        local = grafana / path.removeprefix("/etc/grafana/provisioning/")
        assert sorted(p.name for p in local.glob("*.json")) == sorted(promql.load_dashboards()), local
    datasources = yaml.safe_load((grafana / "datasources" / "rfork-prometheus.yaml").read_text())["datasources"]
    assert [d["type"] for d in datasources] == ["prometheus"]
    # Grafana reads provisioning/alerting as Grafana-managed alerts: our Prometheus rules must not live there.
    assert not (grafana / "alerting").exists()


# -- conventions of the definitions ---------------------------------------------------------------

# Gauges that count things carry no unit suffix; everything else names its unit.
_UNITLESS = {"rfork_scheduler_seeds_registered", "rfork_scheduler_jobs_active", "rfork_scheduler_assignments_in_flight",
             "rfork_agent_leases_in_flight", "rfork_agent_registered", "rfork_agent_throttle_mode",
             "rfork_client_chunks_in_flight", "rfork_scheduler_peers_serving", "rfork_scheduler_front_ends_running",
             "rfork_scheduler_deciders_running", "rfork_scheduler_streaming_members"}
_UNIT_SUFFIXES = ("_seconds", "_bytes", "_bytes_per_second", "_ratio", "_total")
# Closed or bounded label sets only; never "job" (Prometheus's own target label).
_BOUNDED_LABELS = {"seed", "job_id", "reason", "outcome", "route", "status", "mode", "action",
                   "kind", "call"}  # kind: seed or peer; call: DECISION_CALLS


@pytest.mark.parametrize("family", catalog(), ids=lambda f: f.name)
def test_every_series_follows_the_naming_and_label_rules(family):
    assert family.name.startswith(f"rfork_{family.process}_")
    if family.type == "counter":
        assert family.name.endswith("_total")
    else:
        assert not family.name.endswith("_total")
        assert family.name in _UNITLESS or family.name.endswith(_UNIT_SUFFIXES), f"{family.name}: no unit in the name"
    assert set(family.labels) <= _BOUNDED_LABELS, family.labels
    assert family.help


def test_the_example_dashboards_json_is_valid_grafana_shape():
    for name, dash in promql.load_dashboards().items():
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in dash["panels"]:
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, (name, panel["title"])
        json.dumps(dash)
