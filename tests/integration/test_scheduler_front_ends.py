"""`rfork scheduler --front-ends N`: HTTP in N processes, decisions in one (scheduler/front_ends.py).

Real processes: the scheduler as users start it, its front ends, real HTTP; the
scale-out runs real fork clients over TransferEngine (TCP on loopback).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from bench.scheduler_bench import front_end_pids
from tests.integration.scheduler_fakes import IDENTITY, process_alive, registration
from tests.integration.scheduler_processes import (REQUESTS, TOKEN, cli_error, interrupt_and_check_nothing_is_left,
                                                   metric, start_scheduler, stop_scheduler, wait_for)
from testbed.fleet import Fleet, FleetSpec
from testbed.scale_out import ScaleOutOptions, run_scale_out

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MiB = 1 << 20


def test_front_ends_answer_every_request_as_the_scheduler_itself_does(tmp_path):
    plain, plain_url = start_scheduler(tmp_path, "--max-body-bytes", "16KiB")
    fronted, fronted_url = start_scheduler(tmp_path, "--max-body-bytes", "16KiB", "--front-ends", "2")
    try:
        for method, path, headers, body in REQUESTS:
            want = httpx.request(method, plain_url + path, headers=headers, content=body)
            got = httpx.request(method, fronted_url + path, headers=headers, content=body)
            assert (got.status_code, got.content) == (want.status_code, want.content), (method, path)
            assert got.headers.get("content-type") == want.headers.get("content-type"), (method, path)
        assert metric(fronted_url, "rfork_scheduler_front_ends_running") == 2
        assert metric(plain_url, "rfork_scheduler_front_ends_running") == 0
        # The deciding process times /work and creations itself (the front ends skip the app's middleware).
        exposed = httpx.get(f"{fronted_url}/metrics").text
        assert 'route="POST /v1/jobs/{job_id}/work",status="4xx"' in exposed
        assert 'route="POST /v1/jobs",status="4xx"' in exposed
    finally:
        stop_scheduler(plain)
        stop_scheduler(fronted)


def test_a_moe_sized_manifest_goes_through_the_front_ends(tmp_path):
    # ~3 MB of JSON: the scheduler process decodes it in its worker processes, as without front ends.
    manifest = {f"model.layers.{i // 256}.mlp.experts.{i % 256}.w{i % 3}": [(i + 1) << 21, 1 << 20, 2]
                for i in range(40_000)}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # The test sends no heartbeats, and the job's 3 MB decode took over 5 s (the default timeout) beside a
    # second suite: the seed was dropped before its job could match it.
    process, url = start_scheduler(tmp_path, "--front-ends", "2", "--heartbeat-timeout", "120")
    try:
        registered = httpx.put(f"{url}/v1/seeds/big-seed", json=registration(manifest=manifest), headers=auth,
                               timeout=60)
        assert registered.status_code == 200, registered.text
        job = httpx.post(f"{url}/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": manifest,
                                                 "chunk_size_bytes": 64 << 20}, headers=auth, timeout=60)
        assert job.status_code == 201, job.text
        assert job.json()["seed_ids"] == ["big-seed"] and job.json()["total_bytes"] == 40_000 * (1 << 20) * 2
        work = httpx.post(f"{url}/v1/jobs/{job.json()['job_id']}/work", json={"max_assignments": 4}, headers=auth)
        assert work.status_code == 200 and work.json()["assignments"], work.text
    finally:
        stop_scheduler(process)


def test_a_killed_front_end_is_replaced_and_a_killed_scheduler_leaves_none_behind(tmp_path):
    process, url = start_scheduler(tmp_path, "--front-ends", "2", token=False)
    try:
        first = front_end_pids(process.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        assert wait_for(lambda: len(front_end_pids(process.pid)) == 2 and first[0] not in front_end_pids(process.pid))
        assert wait_for(lambda: metric(url, "rfork_scheduler_front_ends_running") == 2)
        assert metric(url, "rfork_scheduler_front_end_restarts_total") == 1
        assert httpx.get(f"{url}/v1/seeds").status_code == 200
        # The deciding process dies without a word: its front ends must not keep the port.
        front_ends = front_end_pids(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert wait_for(lambda: not any(process_alive(pid) for pid in front_ends)), "front ends outlived the scheduler"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        stop_scheduler(process)


def test_ctrl_c_stops_the_scheduler_and_its_front_ends_cleanly(tmp_path):
    process, url = start_scheduler(tmp_path, "--front-ends", "3", token=False)
    front_ends = front_end_pids(process.pid)
    assert len(front_ends) == 3
    interrupt_and_check_nothing_is_left(process, url, tmp_path, front_ends)


@pytest.mark.parametrize("argv, needle", [
    (["--front-ends", "-1"], "--front-ends must be 0 (serve HTTP here) to 64, got -1"),
    (["--front-ends", "65"], "--front-ends must be 0 (serve HTTP here) to 64, got 65"),
    (["--deciders", "2"], "--deciders 2 needs --front-ends N (N >= 1): the front ends route each request to "
                          "the decider that owns it"),
    (["--front-ends", "1", "--deciders", "0"], "--deciders must be 1 to 64, got 0"),
    (["--front-ends", "1", "--deciders", "65"], "--deciders must be 1 to 64, got 65"),
])
def test_bad_front_end_and_decider_counts_are_one_line_errors(argv, needle):
    assert cli_error(*argv) == (2, [f"rfork scheduler: error: {needle}"])


def test_a_taken_port_is_a_one_line_error(tmp_path):
    process, url = start_scheduler(tmp_path, "--front-ends", "1", token=False)
    try:
        port = url.rsplit(":", 1)[1]
        done = subprocess.run([sys.executable, "-m", "rfork_agent.cli", "scheduler", "--port", port,
                               "--front-ends", "2"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith(f"rfork scheduler: error: cannot listen on 127.0.0.1:{port}: "), done.stderr
        assert "Traceback" not in done.stderr
    finally:
        stop_scheduler(process)


def test_streaming_scale_out_through_front_ends_verifies_every_client(tmp_path):
    spec = FleetSpec(seeds=1, preset=None, size_bytes=12 * MiB, seed_rates=(16e6,), log_dir=str(tmp_path),
                     token=TOKEN, scheduler_args=("--front-ends", "2", "--stream-stripes", "8",
                                                  "--stream-min-members", "1"))
    with Fleet(spec) as fleet:
        result = run_scale_out(fleet, ScaleOutOptions(clients=4, client_rate=16e6, chunk_size=512 * 1024))
    clients = result["clients"]
    assert [c["verified"] for c in clients] == [True] * 4, [c["mismatched_tensors"] for c in clients]
    assert result["streams"]["started"] >= 4 and result["streams"]["failed"] == 0, result["streams"]
    assert all(c["withdraw_confirmed"] for c in clients), clients


def test_the_front_link_bench_measures_each_level_and_refuses_bad_flags():
    done = subprocess.run([sys.executable, "-m", "bench.front_link", "--in-flight", "1,8", "--requests", "40"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(" in flight:")[0].strip() for line in lines] == ["1", "8"], done.stdout
    assert all("us of the deciding process's CPU per request" in line for line in lines)
    for argv, needle in ((["--in-flight", "many"], "--in-flight must be integers"),
                         (["--in-flight", "0"], "must be >= 1")):
        bad = subprocess.run([sys.executable, "-m", "bench.front_link", *argv], capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 2 and needle in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
