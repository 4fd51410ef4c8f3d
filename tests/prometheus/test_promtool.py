"""promtool: the alert rules load, their unit tests pass, the example scrape config is valid."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.prometheus.promql import ALERT_RULES, REPO

pytestmark = pytest.mark.prometheus


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: run scripts/bootstrap.sh (it installs Debian's prometheus package)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_promtool_check_rules():
    r = promtool("check", "rules", str(ALERT_RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_alert_rules_unit_tests_pass():
    r = promtool("test", "rules", str(ALERT_RULES.with_name("rfork-alerts.test.yml")))
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_prometheus_config_passes_promtool_check_config():
    r = promtool("check", "config", str(REPO / "grafana" / "prometheus" / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_example_config_loads_the_alert_rules_only_beside_them(tmp_path):
    """The example config finds the rules by a relative path; a copy elsewhere loses them.

    Prometheus itself loads no rules from such a copy without a word, so the
    config's comment and docs/metrics.md tell operators to run this check.
    """
    config = REPO / "grafana" / "prometheus" / "prometheus.yml"
    r = promtool("check", "config", str(config))
    assert "1 rule files found" in r.stdout, r.stdout + r.stderr
    copy = tmp_path / "prometheus.yml"
    copy.write_text(config.read_text())
    r = promtool("check", "config", str(copy))
    assert r.returncode != 0 and "rfork-alerts.yml" in r.stdout + r.stderr, r.stdout + r.stderr


def test_promtool_rejects_a_broken_rule(tmp_path):
    """The check is real: a rule with a PromQL error fails it."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum by (seed (up)\n")
    r = promtool("check", "rules", str(bad))
    assert r.returncode != 0
