"""The pure parts of `rfork bench scheduler`: workload shape, statistics, verdicts and capacity maths."""

from __future__ import annotations

import argparse
import math

import pytest

from bench.scheduler_bench import (
    SchedulerBenchOptions,
    add_arguments,
    bench_manifest,
    bottleneck,
    capacity,
    finite,
    latency_summary,
    options_from_args,
    progress_reports,
    split_evenly,
)
from rfork_api.manifest import parse_manifest
from scheduler.chunking import plan_chunks

MiB = 1 << 20


@pytest.mark.parametrize("chunks, chunk_size", [(1, 4096), (50, 64 * MiB), (1300, 64 * MiB), (7, 6 * MiB)])
def test_manifest_plans_to_exactly_the_asked_number_of_chunks(chunks, chunk_size):
    # Checked with the scheduler's own chunk planner: --chunks N means N chunks per job.
    planned = plan_chunks(parse_manifest(bench_manifest(chunks, chunk_size, 1 << 40)), chunk_size)
    assert len(planned) == chunks
    assert {c.nbytes for c in planned} == {chunk_size}


def test_seed_and_client_manifests_differ_only_in_pointers():
    a, b = bench_manifest(3, 8192, 1 << 40), bench_manifest(3, 8192, 2 << 44)
    assert list(a) == list(b)
    assert all(a[k][1:] == b[k][1:] and a[k][0] != b[k][0] for k in a)


@pytest.mark.parametrize("samples, p50, p99, top", [
    ([0.5], 0.5, 0.5, 0.5),
    ([0.4, 0.1, 0.3, 0.2], 0.25, 0.397, 0.4),
    ([float(i) for i in range(101)], 50.0, 99.0, 100.0),
])
def test_latency_summary(samples, p50, p99, top):
    s = latency_summary(samples)
    assert s["count"] == len(samples)
    assert s["p50_seconds"] == pytest.approx(p50)
    assert s["p99_seconds"] == pytest.approx(p99)
    assert s["max_seconds"] == top


def test_latency_summary_of_nothing_is_nan_not_zero():
    s = latency_summary([])
    assert s["count"] == 0 and math.isnan(s["p50_seconds"]) and math.isnan(s["p99_seconds"])


@pytest.mark.parametrize("scheduler, load, verdict", [
    ((0.95, 0.02), [(0.3, 0.0)], "scheduler"),
    ((0.90, 0.00), [(0.95, 0.0)], "scheduler"),  # both saturated: more load would not help
    ((0.10, 0.80), [(0.2, 0.1)], "the scheduler's CPU, shared with other processes (it waited 80% of the time)"),
    ((0.40, 0.10), [(0.1, 0.0), (0.9, 0.0)], "load generator"),
    ((0.40, 0.10), [(0.1, 0.8)], "load generator's CPU, shared with other processes"),
    ((0.07, 0.75), [(0.09, 0.8)], "the machine: other processes held the scheduler's and the load generators' CPUs"),
    ((0.40, 0.10), [(0.4, 0.1)], "neither (closed-loop latency: raise --connections)"),
])
def test_bottleneck(scheduler, load, verdict):
    assert bottleneck(scheduler, load) == verdict


def test_capacity_scales_the_scale_out_by_measured_cpu():
    c = capacity(20_000, 4.0, scale_out_assignments=340_000, target_seconds=5.1)
    assert c["assignments_per_cpu_second"] == 5000.0
    assert c["scale_out_cpu_seconds"] == pytest.approx(68.0)
    assert c["scale_out_cores_needed"] == pytest.approx(68.0 / 5.1)


def test_capacity_without_cpu_time_is_unknown_not_infinite_speed():
    c = capacity(100, 0.0)
    assert math.isnan(c["assignments_per_cpu_second"]) and math.isinf(c["scale_out_cpu_seconds"])


@pytest.mark.parametrize("total, parts, expected", [(10, 3, [4, 3, 3]), (1, 1, [1]), (2, 4, [1, 1, 0, 0]),
                                                     (1024, 1, [1024])])
def test_split_evenly(total, parts, expected):
    assert split_evenly(total, parts) == expected
    assert sum(split_evenly(total, parts)) == total


def test_finite_makes_strict_json():
    assert finite({"a": [1.0, math.nan], "b": (math.inf, 2), "c": "x"}) == {"a": [1.0, None], "b": [None, 2], "c": "x"}


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_flags_become_options():
    o = options_from_args(_args("--jobs", "1,4", "--chunks", "50", "--duration", "2", "--seed-rate", "50GB/s",
                                "--scheduler-arg=--max-in-flight-per-seed=8"))
    assert o.jobs == (1, 4) and o.chunks == 50 and o.duration_seconds == 2.0
    assert o.seed_rate == 50e9 and o.chunk_size == 64 * MiB
    assert o.scheduler_args == ("--max-in-flight-per-seed=8",)
    assert options_from_args(_args()).jobs == (1, 64, 1024)


@pytest.mark.parametrize("argv, fragment", [
    (["--jobs", "1,x"], "--jobs must be comma-separated integers"),
    (["--jobs", "0"], "--jobs must be positive"),
    (["--chunks", "0"], "--chunks must be >= 1"),
    (["--chunk-size", "12 parsecs"], "cannot read size"),
    (["--chunk-size", "100"], "--chunk-size must be an even number of bytes >= 4KiB"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--seed-rate=-5MB/s"], "rate"),
    (["--duration", "0"], "--duration must be > 0"),
    (["--connections", "0"], "--connections must be >= 1"),
    (["--max-assignments", "0"], "--max-assignments must be in 1..1024"),
    (["--scale-out", "8", "--ranks", "0"], "--ranks must be in 1..4096"),
    (["--scale-out", "8", "--member-fork-seconds", "0"], "--member-fork-seconds must be in (0, 3600]"),
    (["--scale-out", "8", "--member-fork-seconds", "nan"], "--member-fork-seconds must be in (0, 3600]"),
])
def test_bad_flags_say_what_is_wrong(argv, fragment):
    with pytest.raises(ValueError) as info:
        options_from_args(_args(*argv))
    assert fragment in str(info.value)


@pytest.mark.parametrize("fork_seconds, paced, reports", [
    (2.0, 0.0, 1),    # rfork fork's own second: one report, then the streams' end
    (2.32, 0.0, 2),
    (1.0, 0.0, 0),    # over within its first interval: only the end
    (2.0, 4.0, 0),    # paced to every 4 s: only the end
    (9.0, 4.0, 2),
])
def test_a_member_reports_as_often_as_rfork_fork_would(fork_seconds, paced, reports):
    assert progress_reports(fork_seconds, paced) == reports


def test_options_validate_when_built_directly():
    with pytest.raises(ValueError, match="--warmup must be >= 0"):
        SchedulerBenchOptions(warmup_seconds=-1)
