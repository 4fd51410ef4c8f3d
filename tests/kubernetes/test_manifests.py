"""deploy/kubernetes renders, validates against Kubernetes' and the CRDs' schemas, and hangs together.

Beyond the schemas: selectors select what they should, named ports and volumes exist, the
rfork containers' flags are ones `rfork scheduler` / `rfork agent` accept (parsed and checked by
their own CLI code), the plugin's environment variables are the plugin's, and the
PrometheusRule passes `promtool check rules`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from rfork_agent import agent_cli, sglang_plugin
from scheduler import cli as scheduler_cli
from tests.kubernetes.manifests import (
    KUBERNETES_VERSIONS,
    KUSTOMIZATIONS,
    OVERLAYS,
    custom_resource_schema,
    pod_specs,
    render,
    validate_custom_resource,
)

CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "AnalysisTemplate", "MetricTemplate",
                "LeaderWorkerSet"}


def test_every_kustomization_is_found():
    assert {"base", "monitoring", "gates/argo-rollouts", "gates/flagger", "sglang/deployment",
            "sglang/leaderworkerset", "overlays/deployment", "overlays/leaderworkerset"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates_against_its_schema(kustomization):
    problems = []
    for obj in render(kustomization):
        name = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] in CUSTOM_KINDS:
            problems += [f"{name}: {e}" for e in validate_custom_resource(obj)]
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{name} (Kubernetes {version}): {exc.message} at {list(exc.path)}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{name}: no Kubernetes {version} schema for {obj['apiVersion']} (a typo?)")
    assert problems == []


@pytest.mark.parametrize("obj, needle", [
    ({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "x"},
      "spec": {"selector": {}, "podMetricsEndpoints": [{"port": "http", "interval": "soon"}]}}, "interval"),
    ({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
      "spec": {"selector": {}, "endpoint": [{"port": "http"}]}}, "'endpoint' was unexpected"),
    ({"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "x"},
      "spec": {"metrics": [{"name": "m", "provider": {"prometheus": {"query": "up", "adress": "x"}}}]}},
     "'adress' was unexpected"),
    ({"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "x"},
      "spec": {"metrics": [{"provider": {"prometheus": {"query": "up"}}}]}}, "'name' is a required property"),
    ({"apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate", "metadata": {"name": "x"},
      "spec": {"provider": {"type": "prometheus"}, "querry": "up"}}, "'querry' was unexpected"),
    ({"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": {"name": "x"},
      "spec": {"leaderWorkerTemplate": {"size": 2}}}, "'workerTemplate' is a required property"),
    ({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "x"},
      "spec": {"groups": [{"rules": []}]}}, "'name' is a required property"),
])
def test_the_custom_resource_check_is_real(obj, needle):
    """A broken object of each custom kind fails its vendored schema."""
    errors = validate_custom_resource(obj)
    assert any(needle in e for e in errors), errors


def test_a_vendored_schema_exists_for_every_custom_kind_used():
    used = {(o["apiVersion"], o["kind"]) for k in OVERLAYS + ["gates/argo-rollouts", "gates/flagger"]
            for o in render(k) if o["kind"] in CUSTOM_KINDS}
    assert {kind for _, kind in used} == CUSTOM_KINDS
    assert all(custom_resource_schema(*u) is not None for u in used)


def _labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_ports_and_volumes_hang_together(overlay):
    objects = render(overlay)
    pods = [(where, template) for o in objects for where, template in pod_specs(o)]
    named_ports = {}
    for where, template in pods:
        for c in template["spec"]["containers"]:
            for p in c.get("ports", []):
                named_ports.setdefault(p["name"], set()).add(where)
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    for o in objects:
        if o["kind"] == "Service":
            selected = [w for w, t in pods if _labels_match(o["spec"]["selector"], t["metadata"]["labels"])]
            assert selected, f"Service {o['metadata']['name']} selects no pod template"
        if o["kind"] == "PodMonitor":
            selected = [(w, t) for w, t in pods if _labels_match(o["spec"]["selector"]["matchLabels"],
                                                                  t["metadata"]["labels"])]
            assert selected, "the PodMonitor selects no SGLang pods"
            for endpoint in o["spec"]["podMetricsEndpoints"]:
                for where, template in selected:
                    ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
                    assert endpoint["port"] in ports, f"{where} has no port {endpoint['port']!r} to scrape"
        if o["kind"] == "ServiceMonitor":
            services = [s for s in objects if s["kind"] == "Service"
                        and _labels_match(o["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
            assert services, "the ServiceMonitor selects no Service"
            for s in services:
                assert o["spec"]["jobLabel"] in s["metadata"]["labels"]
                assert {e["port"] for e in o["spec"]["endpoints"]} <= {p["name"] for p in s["spec"]["ports"]}
    for where, template in pods:
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for c in template["spec"]["containers"]:
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}/{c['name']} mounts a volume that does not exist"
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, f"{where}: no ConfigMap {v['configMap']['name']}"


def test_scrape_jobs_are_the_ones_the_alerts_and_gates_select():
    """The alert rules select job=~"rfork-(scheduler|agent|seed)" and the gates job="rfork-seed"."""
    objects = render("monitoring") + render("base")
    jobs = set()
    for o in objects:
        if o["kind"] == "PodMonitor":
            for e in o["spec"]["podMetricsEndpoints"]:
                jobs |= {r["replacement"] for r in e["relabelings"] if r["targetLabel"] == "job"}
        if o["kind"] == "ServiceMonitor":
            service = next(s for s in objects if s["kind"] == "Service" and s["metadata"]["name"] == "rfork-scheduler")
            jobs.add(service["metadata"]["labels"][o["spec"]["jobLabel"]])
    assert jobs == {"rfork-scheduler", "rfork-agent", "rfork-seed"}


def _containers(overlay: str, name: str) -> list[dict]:
    return [c for o in render(overlay) for _, t in pod_specs(o) for c in t["spec"]["containers"] if c["name"] == name]


def _expand(arg: str) -> str:
    """Kubernetes' $(VAR) expansion with example values."""
    values = {"POD_NAME": "sglang-0", "POD_IP": "10.0.0.7", "LWS_LEADER_ADDRESS": "sglang-0.sglang",
              "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "0"}
    return re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], arg)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_agent_sidecar_flags_are_accepted_by_rfork_agent(overlay, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("t" * 64)
    agents = _containers(overlay, "rfork-agent")
    assert agents, f"{overlay}: no rfork-agent sidecar"
    for c in agents:
        assert c["command"] == ["rfork"] and c["args"][0] == "agent"
        args = [_expand(a).replace("/etc/rfork/token/token", str(token)) for a in c["args"][1:]]
        parser = argparse.ArgumentParser()
        agent_cli.add_arguments(parser)
        for env in c.get("env", []):
            if "value" in env:
                monkeypatch.setenv(env["name"], env["value"])
        config = agent_cli.build_config(parser.parse_args(args))
        assert config.throttle == "adaptive" and config.slo_itl_seconds == 0.04
        assert config.host == "0.0.0.0" and config.advertised_url == "http://10.0.0.7:8800"
        assert config.scheduler_url == "http://rfork-scheduler:8700" and config.seed_id == "sglang-0"
        assert config.token == "t" * 64


def test_the_scheduler_flags_are_accepted_by_rfork_scheduler():
    [c] = _containers("base", "scheduler")
    parser = argparse.ArgumentParser()
    scheduler_cli.add_arguments(parser)
    assert c["command"] == ["rfork"] and c["args"][0] == "scheduler"
    args = parser.parse_args(c["args"][1:])
    assert args.host == "0.0.0.0" and args.token_file == "/etc/rfork/token/token"
    [probe_port] = {c["readinessProbe"]["httpGet"]["port"], c["livenessProbe"]["httpGet"]["port"]}
    assert {p["name"]: p["containerPort"] for p in c["ports"]}[probe_port] == args.port
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_sglang_container_is_a_seed_and_a_client(overlay):
    """The plugin's environment on every SGLang process (leaders and workers), launched through
    launch.sh, which adds SGLang's seed flag and, with a serving fleet, the remote-instance load."""
    containers = _containers(overlay, "sglang")
    assert containers
    plugin_env = {sglang_plugin.ENV_SCHEDULER_URL, "RFORK_TOKEN_FILE"}
    for c in containers:
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert plugin_env <= set(env), f"missing {plugin_env - set(env)}"
        assert env[sglang_plugin.ENV_SCHEDULER_URL] == "http://rfork-scheduler:8700"
        assert c["command"] == ["/bin/sh", "/etc/rfork/launch/launch.sh"]
        assert "--enable-metrics" in c["args"]
    launch = next(o for o in render(overlay) if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"] == "rfork-sglang-launch")["data"]["launch.sh"]
    assert "--remote-instance-weight-loader-start-seed-via-transfer-engine" in launch
    assert "--load-format remote_instance --remote-instance-weight-loader-backend transfer_engine" in launch


def test_the_scheduler_is_a_singleton_that_may_be_evicted():
    objects = {o["kind"]: o for o in render("base")}
    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == \
        deployment["spec"]["selector"]["matchLabels"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "token", "secret": {"secretName": "rfork-token", "defaultMode": 0o440}} in volumes


def test_the_prometheus_rule_passes_promtool(tmp_path):
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: run scripts/bootstrap.sh (it installs Debian's prometheus package)")
    [rule] = [o for o in render("monitoring") if o["kind"] == "PrometheusRule"]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    r = subprocess.run([exe, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("break_it, needle", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessProb={}), "'readinessProb' was unexpected"),
    (lambda d: d["spec"].update(replicas="one"), "'one' is not of type"),
])
def test_the_kubernetes_schema_check_is_real(break_it, needle):
    """A misspelt field or a wrong type in a built-in kind fails the strict schema."""
    import copy

    deployment = copy.deepcopy(next(o for o in render("base") if o["kind"] == "Deployment"))
    break_it(deployment)
    with pytest.raises(kubernetes_validate.ValidationError) as info:
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    assert needle in info.value.message
