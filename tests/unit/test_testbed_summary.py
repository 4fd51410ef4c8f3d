"""`rfork testbed`'s summary compares like with like (issue #12, item 11).

The demo forks from capped seeds and times SGLang R-Fork's single-seed read
uncapped; it used to print `rfork/baseline = 4.76`, which reads as "rfork is
5x slower". A capped fork is now set against the ideal its caps allow and
against the single-seed read under that seed's cap; the uncapped read is shown
with no ratio to a capped fork.
"""

from __future__ import annotations

import argparse

import pytest

from testbed import orchestrator, seed
from testbed.orchestrator import baseline_at_cap_seconds, summary_lines
from testbed.presets import DEFAULT_PRESET

pytestmark = pytest.mark.cpu_only

MB = 1e6


def _result(caps, *, transfer, baseline=None, baseline_seed="seed-1", killed=(), ideal=None, nbytes=900 * MB):
    seeds = [{"id": f"seed-{i}", "bytes": nbytes / len(caps), "rate_cap_bytes_per_second": cap,
              "killed": i in killed} for i, cap in enumerate(caps)]
    result = {
        "model": "qwen2.5-0.5b", "dtype": "bfloat16", "tp_size": 1, "bytes": nbytes,
        "transfer_seconds": transfer, "aggregate_bytes_per_second": nbytes / transfer,
        "verified": True, "retried_chunks": 0, "seeds": seeds, "log_dir": "/tmp/x",
        "ranks": [{"rank": 0, "bytes": nbytes, "transfer_seconds": transfer}],
    }
    if ideal is not None:
        result["ideal_seconds"] = ideal
    if baseline is not None:
        result["ranks"][0]["baseline_seed"] = baseline_seed
        result["baseline_seconds"] = baseline
        result["ratio_to_baseline"] = transfer / baseline
    return result


def _text(result) -> str:
    return "\n".join(summary_lines(result))


def test_a_capped_fork_gets_no_ratio_to_an_uncapped_baseline():
    # The demo: caps 150/150/60 MB/s, seed-0 killed at 50 %, baseline read from seed-1 uncapped.
    result = _result([150 * MB, 150 * MB, 60 * MB], transfer=3.67, baseline=0.77, killed=(0,), ideal=3.70)
    text = _text(result)
    assert "4.76" not in text  # 3.67 / 0.77: the misleading ratio
    assert "from seed-1), uncapped: 0.77 s (no ratio: the fork ran under caps)" in text
    assert "rfork/ideal = 0.99" in text
    # Under seed-1's cap SGLang's one read needs at least 900 MB / 150 MB/s = 6 s.
    assert "under the same cap (150.0 MB/s): at least 6.00 s (bytes / cap); rfork/baseline = 0.61" in text
    assert baseline_at_cap_seconds(result) == pytest.approx(6.0)


def test_an_uncapped_fork_is_compared_with_the_uncapped_baseline():
    text = _text(_result([None], transfer=0.40, baseline=0.368, baseline_seed="seed-0"))
    assert "uncapped like that seed in the fork: 0.37 s; rfork/baseline = 1.09" in text
    assert "ideal" not in text


def test_a_capped_fork_without_a_kill_is_set_against_the_sum_of_its_caps():
    text = _text(_result([100 * MB, 100 * MB, 25 * MB], transfer=3.8))
    assert "ideal with these caps (bytes / sum of caps): 4.00 s; rfork/ideal = 0.95" in text


@pytest.mark.parametrize("caps, expected", [
    ([None, None], None),                      # baseline seed uncapped: the measured read is the comparison
    ([100 * MB, 50 * MB], 900 * MB / (50 * MB)),  # read from seed-1: its cap, not the fleet's
])
def test_baseline_at_cap_uses_the_cap_of_the_seed_it_read(caps, expected):
    result = _result(caps, transfer=1.0, baseline=0.5)
    assert baseline_at_cap_seconds(result) == (None if expected is None else pytest.approx(expected))


def test_testbed_and_testbed_seed_default_to_the_same_model():
    testbed_parser, seed_parser = argparse.ArgumentParser(), argparse.ArgumentParser()
    orchestrator.add_arguments(testbed_parser)
    seed.add_arguments(seed_parser)
    testbed_options = orchestrator.options_from_args(testbed_parser.parse_args([]))
    assert testbed_options.model == DEFAULT_PRESET
    assert seed_parser.parse_args([]).preset == DEFAULT_PRESET
