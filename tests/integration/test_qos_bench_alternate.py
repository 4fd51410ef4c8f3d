"""`python -m bench.qos_bench --alternate-tuning` end to end, in miniature: two runs on one fleet, the real
agents retuned at run time (``PUT /v1/throttle`` ``throttle_tuning``) for the second run's throttled phase
and back for the first's, each arm summarized. The mechanics, not the goals (a busy 2-core machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_alternate_runs_run_each_arms_law_on_the_same_fleet(tmp_path):
    out = tmp_path / "alt.json"
    argv = [sys.executable, "-m", "bench.qos_bench", "--plant", "steady", "--quick", "--runs", "2",
            "--alternate-tuning", "ab_pool_own_share=true", "--seeds", "1", "--concurrency", "8",
            "--oracle-probes", "1", "--oracle-probe-seconds", "2", "--throttled-seconds", "2", "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=220,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]  # 1: a goal missed, expected here
    result = json.loads(out.read_text())
    first, second = result["runs"]
    # Each run's throttled phase asked the agents for its arm's law, and every agent said it runs it.
    assert (first["law_arm"], first["throttle_tuning"], first["agents_throttle_tuning"]) == ("a", "", [""])
    assert (second["law_arm"], second["throttle_tuning"]) == ("b", "ab_pool_own_share=true")
    assert second["agents_throttle_tuning"] == ["ab_pool_own_share=true"]
    # One fleet: the same SLO and oracle for both arms.
    assert first["slo_itl_seconds"] == second["slo_itl_seconds"] == result["slo_itl_seconds"]
    assert result["arms"]["a"]["runs"] == [1] and result["arms"]["b"]["runs"] == [2]
    assert set(result["arms"]["b"]["summary"]) == set(result["summary"])
    assert "a: the agents' start config; b: ab_pool_own_share=true" in done.stdout
