"""bench/qos_bench.py's plot: drawn from a committed result, showing what the controller judges."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from bench import qos_bench

RESULT = Path(__file__).resolve().parents[2] / "bench" / "results" / "qos.json"


def test_pooled_share_weights_seconds_by_their_tokens_over_the_window():
    series = [{"t": float(t), "itl_tokens": [n], "itl_fraction_above_slo": [f]}
              for t, n, f in ((1, 100, 0.0), (2, 300, 0.02), (3, 0, None), (4, 100, 0.1), (5, 100, 0.0))]
    assert qos_bench.pooled_share_above_slo(series, 0, 3.0) == [0.0, pytest.approx(0.015), pytest.approx(0.015),
                                                                pytest.approx(0.04), pytest.approx(0.05)]
    assert doctest.testmod(qos_bench).failed == 0


def test_plot_renders_a_committed_result(tmp_path):
    pytest.importorskip("matplotlib")
    result = json.loads(RESULT.read_text())
    out = tmp_path / "qos.png"
    qos_bench.plot(result, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The run's probes are in its series, so the plot has something to mark.
    assert any(m == "probe_pause" for s in result["time_series"] for m in s["modes"])
