"""`rfork bench scheduler` end to end: the real command, a real scheduler process, real HTTP.

A short run (two scenarios, 50 chunks per job, 2 s windows): the report has
every figure the README quotes, work was handed out, heartbeats flowed during
the window and no seed was dropped. The capacity numbers themselves are the
benchmark's business (bench/results/scheduler.json), not this test's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCENARIO_FIELDS = {
    "jobs", "window_seconds", "work_requests_per_second", "assignments_per_second", "chunks_per_second",
    "work_latency", "create_latency", "heartbeat_latency", "heartbeat_max_gap_seconds", "seeds_dropped",
    "seeds_dropped_in_window", "jobs_failed", "errors", "scheduler_cpu_seconds", "scheduler_cpu_share",
    "scheduler_runqueue_wait_share", "scheduler_rss_bytes", "load_generator_cpu_shares", "bottleneck",
    "bench_is_bottleneck", "assignments_per_cpu_second", "assignments_per_second_timeline",
}


def _bench(*argv: str, timeout: float = 240, tmpdir: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **({"TMPDIR": str(tmpdir)} if tmpdir else {}))
    return subprocess.run([sys.executable, "-m", "rfork_agent.cli", "bench", "scheduler", *argv],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_short_run_reports_every_figure_and_drops_no_seed(tmp_path):
    out = tmp_path / "scheduler.json"
    done = _bench("--jobs", "1,4", "--chunks", "50", "--duration", "2", "--warmup", "0.5", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert [s["jobs"] for s in report["scenarios"]] == [1, 4]
    for s in report["scenarios"]:
        assert SCENARIO_FIELDS <= set(s), SCENARIO_FIELDS - set(s)
        assert s["seeds_dropped"] == 0 and s["jobs_failed"] == 0, s
        assert s["work_requests_per_second"] > 0 and s["assignments_per_second"] > 0, s
        # Uncapped seeds: the planner merges chunks, so an assignment carries at least one.
        assert s["chunks_per_second"] >= s["assignments_per_second"]
        assert s["work_latency"]["count"] > 0 and 0 < s["work_latency"]["p50_seconds"] <= s["work_latency"]["p99_seconds"]
        assert s["heartbeat_latency"]["count"] > 0, "no heartbeat completed during the window"
        assert s["scheduler_cpu_seconds"] > 0
        assert len(s["load_generator_cpu_shares"]) >= 1
    capacity = report["capacity"]
    assert capacity["measured_at_jobs"] == 4 and capacity["scale_out_assignments"] == 340_000
    assert capacity["assignments_per_cpu_second"] > 0 and math.isfinite(capacity["scale_out_cpu_seconds"])
    assert "assignments per second of one core" in done.stdout
    assert report["options"]["chunks"] == 50 and report["machine"]["pinning"]


def test_a_tensor_parallel_scale_out_forks_every_rank_of_every_instance_through_one_scheduler(tmp_path):
    out = tmp_path / "scale-out.json"
    done = _bench("--scale-out", "6", "--ranks", "2", "--chunks", "40", "--seeds", "2",
                  "--scheduler-arg=--stream-min-members=1", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    [run] = json.loads(out.read_text())["scale_outs"]
    assert (run["instances"], run["ranks"], run["members"]) == (6, 2, 12)
    assert run["created"] == run["done"] == 12 and run["failed"] == 0 and run["seeds_dropped"] == 0, run
    # Each rank is its own group, one copy of it from the seeds; the rest by streams between members.
    assert run["streams"] >= 2 * 5 and run["assignments"] >= 2
    assert run["scheduler_cpu_ms_per_instance"] == pytest.approx(2 * run["scheduler_cpu_ms_per_member"])
    assert "6 x 2 ranks = 12 members" in done.stdout


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "--jobs must be positive integers"),
    (["--jobs", "1", "--chunk-size", "lots"], "cannot read size"),
    # The scheduler refuses a flag: its own one-line error comes through, not a hang or a traceback.
    (["--jobs", "1", "--scheduler-arg=--chunk-size=3"], "--chunk-size: chunk size 3 is outside"),
])
def test_bad_input_is_a_one_line_error(argv, message, tmp_path):
    done = _bench(*argv, "--duration", "1", timeout=120, tmpdir=tmp_path)
    assert done.returncode in (1, 2)
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    # The error says it all: no scheduler log directory is left behind for it.
    assert list(tmp_path.iterdir()) == []
