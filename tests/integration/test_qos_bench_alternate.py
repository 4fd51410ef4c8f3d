"""`python -m bench.qos_bench --alternate-tuning` end to end, in miniature: two runs on one fleet, the real
agents retuned at run time (``PUT /v1/throttle`` ``throttle_tuning``) for the second run's throttled phase
and back for the first's, each arm summarized. The mechanics, not the goals (a busy 2-core machine)."""

from __future__ import annotations

import pytest

from tests.integration.quick_qos_bench import quick_qos_bench

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_alternate_runs_run_each_arms_law_on_the_same_fleet(tmp_path):
    stdout, result = quick_qos_bench(tmp_path, "--alternate-tuning", "ab_pool_own_share=true")
    first, second = result["runs"]
    # Each run's throttled phase asked the agents for its arm's law, and every agent said it runs it.
    assert (first["law_arm"], first["throttle_tuning"], first["agents_throttle_tuning"]) == ("a", "", [""])
    assert (second["law_arm"], second["throttle_tuning"]) == ("b", "ab_pool_own_share=true")
    assert second["agents_throttle_tuning"] == ["ab_pool_own_share=true"]
    # One fleet: the same SLO and oracle for both arms.
    assert first["slo_itl_seconds"] == second["slo_itl_seconds"] == result["slo_itl_seconds"]
    assert result["arms"]["a"]["runs"] == [1] and result["arms"]["b"]["runs"] == [2]
    assert set(result["arms"]["b"]["summary"]) == set(result["summary"])
    assert "a: the agents' start config; b: ab_pool_own_share=true" in stdout
