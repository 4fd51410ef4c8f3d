"""Stopping an SGLang process while the plugin forks: the job is cancelled, leases released.

A fresh SGLang client process (tests/sglang/sglang_client.py's case, forked by the
tier's zygote) loads a rank
through SGLang's real hooked loader from capped seeds, and gets SIGINT or
SIGTERM mid-fork. It must not fall back to SGLang's own read: it cancels the
job at the scheduler, releases every lease, logs one line, and dies of the
signal as it would have without rfork.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import asdict

import httpx
import pytest

from testbed.fleet import Fleet, FleetSpec
from tests.sglang.conftest import SGLANG_INSTALLED, client_env, zygote

MiB = 2**20
TOKEN = "sglang-interrupt-token"
# 32 MiB at 2 x 2 MB/s: ~8 s of fork, so the signal lands with leases held and reads landing.
SPEC = FleetSpec(seeds=2, preset=None, size_bytes=32 * MiB, seed_rates=(2e6,), token=TOKEN)
MODEL_FIELDS = ("preset", "size_bytes", "dtype", "tp_size", "include_zero_byte", "rng_seed")


@pytest.fixture(scope="module")
def fleet():
    if not SGLANG_INSTALLED:
        pytest.skip("SGLang is not installed")
    with Fleet(SPEC) as running:
        yield running


def granted_bytes(fleet) -> int:
    return sum(httpx.get(f"{s.agent_url}/v1/status", headers=fleet.headers, timeout=5).json()["granted_bytes"]
               for s in fleet.seeds)


def cancelled_jobs(fleet) -> float:
    text = httpx.get(f"{fleet.scheduler_url}/metrics", timeout=5).text
    return float(re.search(r'^rfork_scheduler_jobs_finished_total\{outcome="cancelled"\} (\S+)$', text, re.M).group(1))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stopping_sglang_mid_fork_cancels_the_job_and_releases_every_lease(fleet, signum):
    identity = fleet.identity()
    env = client_env(RFORK_SCHEDULER_URL=fleet.scheduler_url, RFORK_TOKEN=TOKEN, RFORK_CHUNK_SIZE="1MiB",
                     RFORK_MODEL=identity.model, RFORK_DTYPE=identity.dtype)
    config = {"mode": "load", "seed_url": fleet.seeds[0].url, "rank": 0,
              "fleet": {k: asdict(SPEC)[k] for k in MODEL_FIELDS}}
    cancelled_before = cancelled_jobs(fleet)
    granted_before = granted_bytes(fleet)
    proc = zygote().start(config, env)
    try:
        deadline = time.monotonic() + 150  # SGLang's imports take a while on a loaded machine
        while granted_bytes(fleet) < granted_before + 2 * MiB:
            assert proc.poll() is None, f"the client exited before the fork started:\n{proc.output()[1][-4000:]}"
            assert time.monotonic() < deadline, "the fork never started"
            time.sleep(0.1)
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=90) is not None, "the client did not end within 90 s of the signal"
    finally:
        if proc.poll() is None:
            proc.wait(timeout=0)  # killed
    stdout, stderr = proc.output()

    name = signal.Signals(signum).name
    # It dies of the signal, as SGLang's process would without rfork (an uncaught
    # KeyboardInterrupt ends Python by SIGINT).
    assert proc.returncode == -signum, stderr[-4000:]
    assert "RESULT " not in stdout, "the load must not complete"
    assert "falling back" not in stderr and "single-seed read" not in stderr, "an interrupted load never falls back"
    lines = [line for line in stderr.splitlines() if "rfork: rank 0: interrupted by" in line]
    assert len(lines) == 1, stderr[-4000:]
    assert f"interrupted by {name}" in lines[0] or (signum == signal.SIGINT and "KeyboardInterrupt" in lines[0])
    match = re.search(r"cancelled job (\w+) at the scheduler and released \d+ leases? \(", lines[0])
    assert match, lines[0]

    response = httpx.get(f"{fleet.scheduler_url}/v1/jobs/{match.group(1)}", headers=fleet.headers, timeout=5)
    assert response.status_code == 404, response.text
    assert cancelled_jobs(fleet) == cancelled_before + 1
    for seed in fleet.seeds:
        status = httpx.get(f"{seed.agent_url}/v1/status", headers=fleet.headers, timeout=5).json()
        assert status["in_flight_leases"] == 0, seed.seed_id
