"""`python -m bench.qos_bench --fixed-fraction-of-oracle` end to end, in miniature: every run's throttled phase
holds every real agent at a fixed fraction of the oracle's rate instead of running the law, and no idle, spike
or recovery phase follows; the result names no law's fingerprint, and the reactions are not judged. The
mechanics, not the goals (a busy 2-core machine)."""

from __future__ import annotations

import pytest

from bench.qos_rejudge import rejudge
from tests.integration.quick_qos_bench import quick_qos_bench

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_every_throttled_phase_holds_the_fraction_of_the_oracle_and_times_no_reaction(tmp_path):
    # A loose budget, so the miniature's one probe (the cap) meets it and sets the oracle on a busy machine.
    out, result = quick_qos_bench(tmp_path, "--fixed-fraction-of-oracle", "0.5", "--slo-budget", "0.5")
    assert result["law"] == {"fingerprint": "fixed-0.5-of-oracle", "fixed_fraction_of_oracle": 0.5}
    oracle_rate = result["oracle_rate_per_seed_bytes_per_second"]
    assert oracle_rate == result["cap_bytes_per_second"], result["oracle"]
    series = result["time_series"]
    for run in result["runs"]:
        assert run["law_start"] == "none: a fixed rate"
        assert run["fixed_rate_per_seed_bytes_per_second"] == pytest.approx(0.5 * oracle_rate)
        start, end = run["phases"][f"C throttled (run {run['run']})"]
        held = [s for s in series if start <= s["t"] <= end]
        assert held and all(s["modes"] == ["fixed"] and s["rates"] == [pytest.approx(0.5 * oracle_rate)]
                            for s in held), held
        # No idle, spike or recovery phase: nothing timed, and nothing judged there (not a miss).
        assert not any(name.startswith("D idle") for name in run["phases"])
        assert run["spike_cut_seconds"] is None and run["idle_to_cap_seconds"] is None
        for name in ("spike_cut_seconds", "idle_to_cap_seconds", "spike_reaction_seconds", "recovery_seconds"):
            assert run["checks"][name]["met"] is None, (name, run["checks"][name])
        assert run["checks"]["throttled_share_above_slo"]["met"] is not None
    assert "held at" in out and "(the fixed reference)" in out
    # Judged again from the file, the reactions stay unjudged.
    judged, changed = rejudge(result)
    assert changed == [] and all(c["spike_cut_seconds"]["met"] is None for c in judged)
