"""`python -m bench.qos_bench --law-across-runs` end to end, in miniature: two runs on one fleet, the real
agents left adaptive from run 1's throttled phase on; run 2's watch pauses the real fork clients (their
forks cancelled, no reads) instead of a fixed rate 0, so the agents' law is the one run 1 left. The
mechanics, not the goals (a busy 2-core machine)."""

from __future__ import annotations

import pytest

from tests.integration.quick_qos_bench import quick_qos_bench

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_the_second_run_forks_again_to_the_law_the_first_left(tmp_path):
    _, result = quick_qos_bench(tmp_path, "--law-across-runs", "--watch-seconds", "3")
    first, second = result["runs"]
    assert result["options"]["law_across_runs"] is True and result["options"]["run_oracle_probes"] == 0
    assert (first["law_start"], second["law_start"]) == ("afresh", "kept from the run before")
    assert first["run_oracle"] is None and second["run_oracle"] is None
    series = result["time_series"]
    # Run 1's watch holds the agents at a fixed rate 0 (no law); run 2's leaves them adaptive throughout.
    def watched(run: dict) -> list[dict]:
        start, end = run["phases"][f"A baseline before run {run['run']}"]
        return [s for s in series if start <= s["t"] <= end]

    assert watched(first) and all(s["modes"] == ["fixed"] for s in watched(first)), watched(first)
    watch = watched(second)
    assert len(watch) >= 2 and all(s["modes"][0] not in (None, "fixed", "off") for s in watch), watch
    # The forks were paused: nothing landed in run 2's watch; they moved again after it.
    assert watch[-1]["bytes_landed"] == watch[0]["bytes_landed"]
    assert second["throughput_throttled_whole_phase_bytes_per_second"] > 0
