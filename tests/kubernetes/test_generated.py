"""Generated manifests are fresh, and the gates' YAML runs the very queries `rfork gate` runs."""

from __future__ import annotations

import importlib.util

import yaml

from rfork_agent.gate import FORK_LATENCY_IMPACT, QUERIES, SEED_ITL_P99, WINDOW
from tests.kubernetes.manifests import DEPLOY, REPO

GATES = DEPLOY / "gates"


def _generator():
    spec = importlib.util.spec_from_file_location("rfork_k8s_generate", DEPLOY / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_manifests_are_fresh():
    stale = _generator().stale()
    assert stale == [], f"stale: {stale}; run .venv/bin/python deploy/kubernetes/generate.py and commit"


def test_staleness_is_detected(tmp_path, monkeypatch):
    """The check is real: a generated file that differs from its source is reported."""
    generator = _generator()
    monkeypatch.setattr(generator, "HERE", tmp_path)
    for name in generator.OUTPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((DEPLOY / name).read_text())
    assert generator.stale() == []
    rule = tmp_path / "monitoring" / "prometheusrule.yaml"
    rule.write_text(rule.read_text().replace("rfork_agent_registered == 0", "rfork_agent_registered == 1"))
    assert generator.stale() == ["monitoring/prometheusrule.yaml"]
    assert generator.main(["--check"]) == 1


def test_the_prometheus_rule_is_the_alert_file():
    rule = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    source = yaml.safe_load((REPO / "grafana" / "alerts" / "rfork-alerts.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"]


def test_argo_analysis_template_runs_the_gate_queries():
    template = yaml.safe_load((GATES / "argo-rollouts" / "analysistemplate.yaml").read_text())
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    assert set(metrics) == {q.name for q in QUERIES}
    for query, bound_arg in ((SEED_ITL_P99, "slo-itl"), (FORK_LATENCY_IMPACT, "max-impact")):
        metric = metrics[query.name]
        yaml_query = metric["provider"]["prometheus"]["query"]
        assert yaml_query.replace("{{args.window}}", WINDOW) == query.template
        assert "{{args.%s}}" % bound_arg in metric["successCondition"]
        assert "{{args.%s}}" % bound_arg in metric["failureCondition"]
    args = {a["name"] for a in template["spec"]["args"]}
    assert args == {"prometheus-address", "slo-itl", "max-impact", "window"}


def test_flagger_metric_templates_run_the_gate_queries():
    templates = {d["metadata"]["name"]: d for d in
                 yaml.safe_load_all((GATES / "flagger" / "metrictemplate.yaml").read_text()) if d}
    assert set(templates) == {f"rfork-{q.name}" for q in QUERIES}
    for query in QUERIES:
        yaml_query = templates[f"rfork-{query.name}"]["spec"]["query"]
        assert yaml_query.replace("{{ interval }}", WINDOW) == query.template
