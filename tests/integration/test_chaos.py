"""The fault scenarios a demanding user asks about first, run through `rfork chaos`'s own harness.

Real processes, real TransferEngine over loopback TCP, auth on. The whole
matrix (with timings) is `rfork chaos --json out/chaos.json`; these are the
cases whose logic is newest: scheduler restart with resume, transient read
errors, a dead client's budget coming back, every seed lost.
"""

from __future__ import annotations

import pytest

from testbed.chaos import SCENARIOS, ChaosOptions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MiB = 1 << 20


@pytest.mark.parametrize("name", [
    "scheduler-kill-restart-50pct",
    "transient-read-errors-5pct",
    "client-kill-mid-fork",
    "all-seeds-lost-50pct",
])
def test_scenario_survives_and_loses_nothing(name, tmp_path):
    result = SCENARIOS[name](ChaosOptions(size_bytes=64 * MiB, log_dir=str(tmp_path)))
    assert result.survived, (result.error, result.lost, result.detail)
    assert result.lost == []
