"""`rfork scheduler --front-ends N --deciders K`: the ranks decided in K processes (scheduler/partition.py).

Real processes: the scheduler as users start it, its front ends and deciders, real HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from bench.scheduler_bench import decider_pids, front_end_pids
from testbed.fleet import wait_http_ready
from tests.integration.scheduler_fakes import MANIFEST, process_alive
from tests.integration.scheduler_processes import (REQUESTS, TOKEN, interrupt_and_check_nothing_is_left, metric,
                                                   start_scheduler, stop_scheduler, wait_for)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

AUTH = {"Authorization": f"Bearer {TOKEN}"}
TP4 = {"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 4}


def _manifest(base: int) -> dict:
    return {name: [base + ptr, *rest] for name, (ptr, *rest) in MANIFEST.items()}


def _register(url: str, seed_id: str = "seed-a") -> httpx.Response:
    body = {"identity": TP4, "agent_url": "http://127.0.0.1:9", "rate_cap_bytes_per_second": None,
            "ranks": [{"rank": r, "session_id": f"127.0.0.1:{17000 + r}", "manifest": _manifest(r << 30)}
                      for r in range(4)]}
    return httpx.put(f"{url}/v1/seeds/{seed_id}", json=body, headers=AUTH)


def _create(url: str, rank: int) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", json={"identity": TP4, "rank": rank, "manifest": _manifest((8 + rank) << 30)},
                      headers=AUTH)


def _metric_sum(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", headers=AUTH).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_deciders_answer_every_request_as_one_scheduler_does(tmp_path):
    plain, plain_url = start_scheduler(tmp_path, "--max-body-bytes", "16KiB")
    split, split_url = start_scheduler(tmp_path, "--max-body-bytes", "16KiB", "--front-ends", "2", "--deciders", "3")
    try:
        assert len(decider_pids(split.pid)) == 2
        for method, path, headers, body in REQUESTS:
            want = httpx.request(method, plain_url + path, headers=headers, content=body)
            got = httpx.request(method, split_url + path, headers=headers, content=body)
            assert (got.status_code, got.content) == (want.status_code, want.content), (method, path)
            assert got.headers.get("content-type") == want.headers.get("content-type"), (method, path)
        for path in ("/health", "/v1/fleet"):  # merged from every decider, written as one would
            want, got = httpx.get(plain_url + path, headers=AUTH), httpx.get(split_url + path, headers=AUTH)
            assert (got.status_code, got.content) == (want.status_code, want.content), path
    finally:
        stop_scheduler(plain)
        stop_scheduler(split)


def test_each_ranks_jobs_go_to_its_decider_and_every_decider_knows_every_seed(tmp_path):
    # The test heartbeats once at most: under load its steps outlasted the default 5 s timeout and the
    # seed was dropped mid-test (a deregistration answered 404).
    process, url = start_scheduler(tmp_path, "--front-ends", "2", "--deciders", "2", "--heartbeat-timeout", "120")
    try:
        assert _register(url).status_code == 200
        assert httpx.post(f"{url}/v1/seeds/seed-a/heartbeat", json={}, headers=AUTH).status_code == 200
        jobs = {}
        for rank in range(4):
            created = _create(url, rank)
            assert created.status_code == 201, created.text
            assert created.json()["seed_ids"] == ["seed-a"]  # each decider holds the seed
            jobs[rank] = created.json()["job_id"]
            assert jobs[rank].endswith(f"-{rank % 2}")  # decided where its rank's group is
        for rank, job_id in jobs.items():
            work = httpx.post(f"{url}/v1/jobs/{job_id}/work", json={"max_assignments": 4}, headers=AUTH)
            assert work.status_code == 200 and work.json()["assignments"], work.text
            assert {a["session_id"] for a in work.json()["assignments"]} == {f"127.0.0.1:{17000 + rank}"}
            assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=AUTH).json()["state"] == "running"
        assert [s["seed_id"] for s in httpx.get(f"{url}/v1/seeds", headers=AUTH).json()] == ["seed-a"]
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "seeds": 1, "jobs": 4}
        fleet = httpx.get(f"{url}/v1/fleet", headers=AUTH).json()
        assert [s["seed_id"] for s in fleet["seeds"]] == ["seed-a"] and fleet["forks"]["active"] == 4
        # The metrics: the seed once, the jobs of both deciders, a seed's calls timed once.
        assert metric(url, "rfork_scheduler_seeds_registered") == 1
        assert metric(url, "rfork_scheduler_jobs_active") == 4
        assert _metric_sum(url, "rfork_scheduler_api_request_duration_seconds_count",
                           route="POST /v1/seeds/{seed_id}/heartbeat") == 1
        assert _metric_sum(url, "rfork_scheduler_api_request_duration_seconds_count",
                           route="POST /v1/jobs/{job_id}/work") == 4
        # A job deleted on its decider; a seed deregistered from every decider: no rank can fork now.
        assert httpx.delete(f"{url}/v1/jobs/{jobs[1]}", headers=AUTH).status_code == 204
        assert httpx.get(f"{url}/v1/jobs/{jobs[1]}", headers=AUTH).status_code == 404
        assert httpx.delete(f"{url}/v1/seeds/seed-a", headers=AUTH).status_code == 204
        for rank in range(2):
            refused = _create(url, rank)
            assert refused.status_code == 404 and refused.json()["detail"]["error"] == "unknown_model", refused.text
        assert httpx.delete(f"{url}/v1/seeds/seed-a", headers=AUTH).status_code == 404  # gone from all
    finally:
        stop_scheduler(process)


def test_a_killed_decider_is_replaced_the_other_ranks_jobs_go_on_and_a_killed_scheduler_leaves_nothing(tmp_path):
    # The test heartbeats once at most: under load its steps outlasted the default 5 s timeout and the
    # seed was dropped mid-test (a deregistration answered 404).
    process, url = start_scheduler(tmp_path, "--front-ends", "2", "--deciders", "2", "--heartbeat-timeout", "120")
    try:
        assert _register(url).status_code == 200
        jobs = {rank: _create(url, rank).json()["job_id"] for rank in range(4)}
        first = decider_pids(process.pid)
        assert len(first) == 1 and metric(url, "rfork_scheduler_deciders_running") == 2
        os.kill(first[0], signal.SIGKILL)  # decider 1: ranks 1 and 3
        assert wait_for(lambda: len(decider_pids(process.pid)) == 1 and decider_pids(process.pid) != first, 30)
        assert wait_http_ready(f"{url}/health", process, 30) is None
        assert metric(url, "rfork_scheduler_decider_restarts_total") == 1
        assert metric(url, "rfork_scheduler_front_end_restarts_total") == 0  # they stopped on purpose
        assert metric(url, "rfork_scheduler_deciders_running") == 2
        assert len(front_end_pids(process.pid)) == 2  # started again, linked to the new decider
        for rank in (0, 2):  # decider 0's jobs are untouched
            assert httpx.get(f"{url}/v1/jobs/{jobs[rank]}", headers=AUTH).json()["state"] == "running"
        for rank in (1, 3):  # decider 1's went with it: their forks start over
            assert httpx.get(f"{url}/v1/jobs/{jobs[rank]}", headers=AUTH).status_code == 404
        # The new decider knows no seed: the agent's next heartbeat says so, and the agent registers again.
        beat = httpx.post(f"{url}/v1/seeds/seed-a/heartbeat", json={}, headers=AUTH)
        assert beat.status_code == 404 and beat.json()["detail"]["error"] == "unknown_seed", beat.text
        assert _register(url).status_code == 200
        again = _create(url, 1)
        assert again.status_code == 201 and again.json()["job_id"].endswith("-1"), again.text
        assert httpx.get(f"{url}/v1/jobs/{jobs[0]}", headers=AUTH).json()["state"] == "running"
        # The scheduler killed without a word: its deciders and front ends go too.
        children = decider_pids(process.pid) + front_end_pids(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert wait_for(lambda: not any(process_alive(pid) for pid in children)), "children outlived the scheduler"
        log = (tmp_path / f"scheduler-{url.rsplit(':', 1)[1]}.log").read_text()
        assert "decider 1 (pid" in log and "exited (signal SIGKILL): the jobs of ranks r % 2 == 1 are gone" in log
    finally:
        stop_scheduler(process)


def test_ctrl_c_stops_the_scheduler_its_deciders_and_front_ends_cleanly(tmp_path):
    process, url = start_scheduler(tmp_path, "--front-ends", "2", "--deciders", "2", token=False)
    children = decider_pids(process.pid) + front_end_pids(process.pid)
    assert len(children) == 3
    interrupt_and_check_nothing_is_left(process, url, tmp_path, children)


def test_a_tensor_parallel_scale_out_through_deciders_finishes_every_rank(tmp_path):
    out = tmp_path / "scale-out.json"
    done = subprocess.run([sys.executable, "-m", "rfork_agent.cli", "bench", "scheduler", "--scale-out", "8",
                           "--ranks", "2", "--chunks", "40", "--seeds", "2", "--scheduler-arg=--front-ends=1",
                           "--scheduler-arg=--deciders=2", "--scheduler-arg=--stream-min-members=1",
                           "--json", str(out)], capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    [run] = json.loads(out.read_text())["scale_outs"]
    assert run["created"] == run["done"] == 16 and run["failed"] == 0 and run["seeds_dropped"] == 0, run
    # Both deciding processes measured. Not "each used CPU": here each decides for a few milliseconds, under
    # the 10 ms tick /proc counts CPU in (a loaded run read 0.0 for one); that each decided is the next check.
    assert len(run["decider_cpu_seconds"]) == 2 and all(s >= 0 for s in run["decider_cpu_seconds"]), run
    assert run["streams"] >= 2 * 7, run  # both ranks' groups streamed, each in its own decider (rank r: r % 2)
