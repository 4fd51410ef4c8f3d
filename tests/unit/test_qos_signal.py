"""bench.qos_signal: counting against the scale model on synthetic seeds whose effect shape is known."""

from __future__ import annotations

import doctest
import json
import math
import random

import pytest

from bench import qos_signal
from bench.qos_signal import compare, groups, main, predicted_excess, rows

#: Bounds 5 % apart from 1 ms, as the bench's seeds export them.
BOUNDS = [round(0.001 * 1.05 ** i, 6) for i in range(95)]
STEPS, BATCH = 140, 64
MEDIAN, SIGMA = 0.008, 0.4


def _slo() -> float:
    # The bound nearest the off distribution's 99.3rd percentile (the seed alone at ~0.7 %).
    p993 = MEDIAN * math.exp(SIGMA * 2.46)
    return min(BOUNDS, key=lambda b: abs(b - p993))


def _second(rng: random.Random, scale: float, stall_share: float, slo: float, tail: list[float]) -> dict:
    tokens, latency, above = 0.0, 0.0, [0.0] * len(tail)
    for _ in range(STEPS):
        x = MEDIAN * math.exp(rng.gauss(0.0, SIGMA)) * (1.0 + scale)
        if rng.random() < stall_share:
            x = max(x, slo * 1.5)  # a stall: this step only, far over the SLO
        tokens += BATCH
        latency += x * BATCH
        for j, b in enumerate(tail):
            if x > b:
                above[j] += BATCH
    return {"tokens": tokens, "mean": latency / tokens, "above": above}


def _result(scale: float = 0.0, stall_share: float = 0.0, off_seconds: int = 120, on_seconds: int = 60,
            rate: float = 50e6, rng_seed: int = 7) -> dict:
    rng, slo = random.Random(rng_seed), _slo()
    tail = [b for b in BOUNDS if slo / 2 <= b <= slo]
    series = []

    def add(phase: str, r: float, s: dict) -> None:
        series.append({"phase": phase, "rates": [r], "itl_tokens": [s["tokens"]], "itl_mean_seconds": [s["mean"]],
                       "itl_tokens_above": [s["above"]]})

    for _ in range(off_seconds):
        add("baseline-1", 0.0, _second(rng, 0.0, 0.0, slo, tail))
    for _ in range(on_seconds + 2):
        add("oracle", rate, _second(rng, scale, stall_share, slo, tail))
    return {"slo_itl_seconds": slo, "itl_tail_bounds_seconds": tail, "time_series": series}


@pytest.mark.parametrize("scale_value", [0.0, 0.03, 0.08])
def test_where_the_transfer_stretches_every_step_the_scale_model_predicts_the_counted_excess_from_far_fewer_seconds(
        scale_value: float) -> None:
    [c] = rows(_result(scale=scale_value))
    assert c.seconds_on == 60 and c.seconds_off == 120
    assert c.scale == pytest.approx(scale_value, abs=4 * c.scale_se + 1e-9)
    assert abs(c.z) < 3.0, c
    # The mean uses every token: it needs several times fewer seconds to bound the excess.
    if scale_value > 0:
        assert c.seconds_scale * 4 < c.seconds_counting, c


def test_where_the_transfer_stalls_a_few_steps_the_scale_model_falls_short_and_says_so() -> None:
    [c] = rows(_result(stall_share=0.01))
    assert c.excess > 0.007
    assert c.predicted < c.excess / 3
    assert c.z > 3.0, c


@pytest.mark.parametrize("scale_value,expected", [
    (0.0, 0.0),
    (-0.2, 0.0),                       # the transfer does not speed the seed up
    (1.0, 0.2 - 0.01),                 # slo / 2 is the lowest bound: read exactly
    (math.sqrt(2) - 1, math.sqrt(0.2 * 0.01) - 0.01),   # half way in log bound: geometric mean
    (1.5, math.nan),                   # under the lowest bound: not read
])
def test_the_scale_models_excess_interpolates_the_seed_alones_tail_log_linearly(scale_value, expected) -> None:
    got = predicted_excess({0.01: 0.2, 0.02: 0.01}, 0.02, scale_value)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_a_probes_first_seconds_and_seconds_before_the_tail_counts_are_left_out() -> None:
    result = _result(on_seconds=5)
    result["time_series"][0]["itl_tokens_above"] = [None]   # before the SLO was chosen
    off, [on], bounds, slo = groups(result, 0)
    assert off.seconds == 119 and on.seconds == 5 and slo in bounds
    assert compare(off, on, bounds, slo, 0).rate == 50e6


def test_a_plant_whose_load_changes_mid_probe_is_compared_on_the_seconds_before_the_change() -> None:
    light, heavy = _result(on_seconds=28), _result(scale=0.5, on_seconds=28, rng_seed=8)
    # One probe: its first 15 s at the watch phases' load, the rest at a load that stretches every step by half.
    result = dict(light, plant={"changed_load": {"concurrency": 96}, "change_at_fraction": 0.5},
                  options={"oracle_probe_seconds": 30.0})
    result["time_series"] = light["time_series"][:120 + 15] + heavy["time_series"][120 + 15:]
    [c] = rows(result)
    assert c.seconds_on == 13 and abs(c.scale) < 4 * c.scale_se
    [mixed] = rows(dict(result, plant={}))   # a plant without a change: every probe second counts
    assert mixed.seconds_on == 28 and mixed.scale > 0.2


def test_a_result_from_before_the_tail_counts_is_a_one_line_error(tmp_path, capsys) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"slo_itl_seconds": 0.02, "time_series": [{"rates": [0.0]}]}))
    assert main([str(old)]) == 2
    err = capsys.readouterr().err
    assert "no itl_tail_bounds_seconds" in err and err.count("\n") == 1


def test_doctests() -> None:
    assert doctest.testmod(qos_signal).failed == 0
