"""bench.qos_phase_shares: the law's own split of its seconds, read back from the real controller's reasons."""

from __future__ import annotations

import doctest
import gzip
import json
import math
from pathlib import Path

import pytest

from bench import qos_phase_shares
from bench.qos_phase_shares import law_split_blocks, main, phase_blocks
from bench.qos_stats import ratio_estimate
from throttle.controller import ControllerConfig, Observation, SloConfig, decide, initial_state
from throttle.histogram import WindowHistogram

SLO = SloConfig(itl_threshold_seconds=0.05, violation_budget=0.01)
TOKENS = 12_000.0


def _second(phase: str, rate: float, share: float, reason: str = "", mode: str = "hold") -> dict:
    return {"phase": phase, "rates": [rate], "modes": [mode], "reasons": [reason], "itl_tokens": [TOKENS],
            "itl_fraction_above_slo": [share]}


def _law_phase(read_share: float, no_read_share: float, seconds: int = 90, read_every: int = 2) -> list[dict]:
    """A throttled phase as the bench records it, decided by the real A/B law: a chunk read runs every
    ``read_every`` seconds the transfer is allowed, and those seconds have ``read_share`` over the SLO."""
    config = ControllerConfig(cap_bytes_per_second=100e6)
    state = initial_state(config, now=0.0)
    rate = state.rate_bytes_per_second
    series = []
    for t in range(1, seconds + 1):
        read = rate > 0 and t % read_every == 0
        share = read_share if read else no_read_share
        slow = round(share * TOKENS)
        observation = Observation(WindowHistogram((SLO.itl_threshold_seconds, math.inf), (TOKENS - slow, TOKENS)),
                                  running=64.0, transfer_active=read, span_seconds=1.0)
        decision = decide(state, observation, config, SLO, now=float(t))
        series.append(_second("throttled-1", rate, slow / TOKENS, decision.reason, decision.mode.value))
        state, rate = decision.state, decision.rate_bytes_per_second
    return series


def _share(blocks: list[tuple[float, float]]) -> float:
    return ratio_estimate(blocks)[0]


@pytest.mark.parametrize(("read_share", "no_read_share"), [
    (0.015, 0.005),    # reads in the seed's busy seconds: the law's on pool is the busier
    (0.006, 0.006),    # no difference
    (0.004, 0.009),    # the other way round
])
def test_the_law_split_reads_back_each_pool_from_the_real_controllers_reasons(
        read_share: float, no_read_share: float) -> None:
    split = law_split_blocks({"time_series": _law_phase(read_share, no_read_share)}, 0, low_rate=200e6)
    assert len(split["read"]) >= 20 and len(split["no read"]) >= 20
    # The reasons print shares to 0.01 % of pools of ~10^5-10^6 tokens: a few slow tokens per second.
    assert _share(split["read"]) == pytest.approx(read_share, abs=0.001)
    assert _share(split["no read"]) == pytest.approx(no_read_share, abs=0.001)


def test_seconds_above_the_low_rate_and_seconds_that_fed_both_pools_are_left_out() -> None:
    def sec(rate: float, on: tuple[float, int], off: tuple[float, int]) -> dict:
        reason = f"on {on[0]:.2f}% of {on[1]} at 5e+06 B/s, off {off[0]:.2f}% of {off[1]}, budget 1.00%"
        return _second("throttled-1", rate, 0.0, reason)

    series = [sec(5e6, (1.0, 1000), (0.5, 2000)),
              sec(50e6, (1.0, 2000), (0.5, 2000)),   # read, but above the low rate
              sec(5e6, (1.0, 3000), (0.5, 3000)),    # both pools grew (a forgotten second, or a skipped sample)
              sec(5e6, (1.0, 3000), (0.5, 2500)),    # the off pool shrank: evidence forgotten
              sec(5e6, (1.2, 4000), (0.5, 2500))]
    split = law_split_blocks({"time_series": series}, 0, low_rate=10e6)
    assert split == {"read": [(pytest.approx(18.0), 1000.0)], "no read": [], "off window": []}


def test_a_new_phase_or_a_reason_without_pools_starts_afresh() -> None:
    a = "on 1.00% of 1000 at 5e+06 B/s, off 0.50% of 2000"
    b = "on 1.00% of 2000 at 5e+06 B/s, off 0.50% of 2000"
    series = [_second("throttled-1", 5e6, 0.0, a), _second("throttled-2", 5e6, 0.0, b),
              _second("throttled-2", 5e6, 0.0, "no ITL tokens this interval; holding"),
              _second("throttled-2", 5e6, 0.0, b)]
    assert law_split_blocks({"time_series": series}, 0, low_rate=10e6)["read"] == []


def test_phase_blocks_split_each_run_into_the_watch_its_off_windows_and_the_rest() -> None:
    series = ([_second("baseline-1", 0.0, 0.004)] * 3 + [_second("throttled-1", 5e6, 0.01)] * 4
              + [_second("throttled-1", 0.0, 0.006)] * 2 + [_second("idle-1", 100e6, 0.0)]
              + [_second("baseline-2", 0.0, 0.005)] * 2 + [_second("throttled-2", 100e6, 0.007)] * 5)
    blocks = phase_blocks({"time_series": series}, 0)
    assert sorted(blocks) == [1, 2]
    assert {k: len(v) for k, v in blocks[1].items()} == {"watch": 3, "off windows": 2, "allowed": 4}
    assert {k: len(v) for k, v in blocks[2].items()} == {"watch": 2, "off windows": 0, "allowed": 5}
    assert _share(blocks[1]["watch"]) == pytest.approx(0.004)
    assert _share(blocks[2]["allowed"]) == pytest.approx(0.007)


def test_the_cli_prints_both_tables_for_a_kept_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = [_second("baseline-1", 0.0, 0.005)] * 10 + _law_phase(0.008, 0.008, seconds=40)
    path = tmp_path / "qos.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"slo_itl_seconds": 0.05, "time_series": series}, f)
    assert main([str(path), "--low-rate-mb", "200"]) == 0
    out = capsys.readouterr().out
    assert "(SLO 50 ms)" in out and "| all | 0 |" in out and "The law's own split" in out
    assert "0.50% ± 0.00% of 120000 (10 s)" in out   # the watch


@pytest.mark.parametrize(("write", "args", "message"), [
    (None, [], "No such file"),
    ("[1, 2]", [], "not a `rfork bench qos --json` result"),
    ('{"time_series": [{"phase": "throttled-1"}]}', [], "this tool can read (KeyError: 'rates')"),
    ('{"time_series": []}', [], "this tool can read (KeyError: 'slo_itl_seconds')"),
])
def test_unreadable_results_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     write: str | None, args: list[str], message: str) -> None:
    path = tmp_path / "r.json"
    if write is not None:
        path.write_text(write)
    assert main([str(path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["0", "-3", "nan"])
def test_a_bad_low_rate_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["r.json", "--low-rate-mb", value])
    assert exc.value.code == 2 and "--low-rate-mb must be a positive number" in capsys.readouterr().err


def test_doctests() -> None:
    assert doctest.testmod(qos_phase_shares).failed == 0
