"""What rfork's processes print by default: one line per notable event, no library chatter.

Real processes (scheduler, seed stand-in with a real TransferEngine, agent; the
`rfork fork` CLI), their stderr counted. Before the shared set-up
(rfork_api/logs.py) an idle agent wrote ~6 httpx lines a second, the
scheduler two APScheduler "Running job" lines a second, every TransferEngine
its glog start-up (ending in ``E ... Local segment descriptor not found``),
and a fork against a down scheduler ~15 lines before its one error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from testbed.fleet import Fleet, FleetSpec, free_port

pytestmark = pytest.mark.timeout(180)

LIBRARY_CHATTER = ("httpx", "httpcore", "apscheduler", "Running job", "Uvicorn running", "Local segment descriptor",
                   "transfer_engine", "InitGoogleLogging", "HTTP Request")


def lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def wait_for_heartbeats(scheduler_url: str, seed_id: str, count: int, timeout: float = 60.0) -> None:
    """Until the scheduler has taken ``count`` more heartbeats from ``seed_id`` (each resets its silence)."""
    seen, last = 0, None
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as http:
        while seen < count:
            assert time.monotonic() < deadline, f"only {seen} of {count} heartbeats from {seed_id} in {timeout:.0f} s"
            seeds = {s["seed_id"]: s for s in http.get(f"{scheduler_url}/v1/seeds").json()}
            silent = seeds[seed_id]["seconds_since_heartbeat"]
            if last is not None and silent < last:
                seen += 1
            last = silent
            time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    spec = FleetSpec(seeds=1, preset="tiny", log_dir=str(tmp_path_factory.mktemp("logs")))
    with Fleet(spec) as fleet:
        yield fleet


def test_an_idle_fleet_stays_quiet_over_heartbeats(fleet):
    seed = fleet.seeds[0]
    logs = fleet.log_dir
    wait_for_heartbeats(fleet.scheduler_url, seed.seed_id, 2)
    before = {name: lines(logs / f"{name}.log") for name in ("scheduler", "agent-0", "seed-0")}
    wait_for_heartbeats(fleet.scheduler_url, seed.seed_id, 5)
    after = {name: lines(logs / f"{name}.log") for name in before}
    # Five heartbeats (each with liveness probes and a seed refresh) and the scheduler's reaper: not one line.
    assert after == before
    for name, text in after.items():
        chatter = [line for line in text if any(word in line for word in LIBRARY_CHATTER)]
        assert chatter == [], f"{name}.log"
    # What they do say: start-up and registration, one line each.
    assert len(after["agent-0"]) <= 5, after["agent-0"]
    assert any("registered with" in line for line in after["agent-0"])
    assert len(after["scheduler"]) <= 3, after["scheduler"]  # where it serves; each registration
    assert any(f"seed {seed.seed_id} registered" in line for line in after["scheduler"])
    assert len(after["seed-0"]) <= 5, after["seed-0"]


def fork_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RFORK_LOG_LEVEL", "RFORK_LOG_VERBOSE", "MC_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-m", "rfork_agent.cli", "fork", *args], capture_output=True, text=True,
                          timeout=120, env=env, stdin=subprocess.DEVNULL)


def test_a_fork_against_a_down_scheduler_prints_one_line_and_v_brings_the_details_back(fleet):
    down = f"http://127.0.0.1:{free_port()}"
    args = ("--scheduler", down, "--like-seed", fleet.seeds[0].url, "--no-progress")
    quiet = fork_cli(*args)
    assert quiet.returncode == 1
    assert quiet.stderr.splitlines() == [quiet.stderr.strip()], quiet.stderr
    assert quiet.stderr.startswith("rfork fork: error: cannot reach the rfork scheduler at " + down)

    verbose = fork_cli(*args, "-v")
    assert verbose.returncode == 1
    assert "httpx: HTTP Request: GET " + fleet.seeds[0].url in verbose.stderr  # each request, as before
    # No TransferEngine log here: the preflight reports the dead scheduler before TE starts at all.
    assert "Local segment descriptor not found" not in verbose.stderr
    assert "rfork fork: error: cannot reach the rfork scheduler" in verbose.stderr


def test_a_bad_log_level_is_one_line_and_exit_2():
    proc = fork_cli("--scheduler", "http://127.0.0.1:1", "--like-seed", "http://127.0.0.1:1", "--log-level", "loud")
    assert proc.returncode == 2
    assert proc.stderr == "rfork fork: error: --log-level 'loud' is not one of debug, info, warning, error, critical\n"
