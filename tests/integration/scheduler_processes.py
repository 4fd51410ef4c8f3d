"""Helpers for the tests of `rfork scheduler --front-ends N` (and ``--deciders K``): start the scheduler
as users do, stop it and its process group, wait for a condition, read a metric; and the requests,
good and bad, that a scheduler with front ends must answer exactly as one without."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from testbed.fleet import free_port, wait_http_ready

TOKEN = "front-end-test-token"


def start_scheduler(tmp_path, *args: str, token: bool = True) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RFORK_TOKEN")}
    if token:
        env["RFORK_TOKEN"] = TOKEN
    log = open(tmp_path / f"scheduler-{port}.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "rfork_agent.cli", "scheduler", "--port", str(port), *args],
                               stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    failure = wait_http_ready(f"{url}/health", process, 30)
    assert failure is None, failure
    return process, url


def stop_scheduler(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def interrupt_and_check_nothing_is_left(process: subprocess.Popen, url: str, tmp_path, children: list[int]) -> None:
    """A terminal's Ctrl-C (SIGINT to the whole group): the scheduler exits 0, none of ``children`` is
    left, and its log has no traceback."""
    from tests.integration.scheduler_fakes import process_alive

    os.killpg(process.pid, signal.SIGINT)
    try:
        assert process.wait(timeout=20) == 0
        assert wait_for(lambda: not any(process_alive(pid) for pid in children))
        log = (tmp_path / f"scheduler-{url.rsplit(':', 1)[1]}.log").read_text()
        assert "Traceback" not in log, log
    finally:
        stop_scheduler(process)


def cli_error(*argv: str) -> tuple[int, list[str]]:
    """``rfork scheduler`` refusing its flags: (exit status, stderr's lines)."""
    done = subprocess.run([sys.executable, "-m", "rfork_agent.cli", "scheduler", "--port", str(free_port()), *argv],
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr.strip().splitlines()


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in {url}/metrics")


REQUESTS = [
    # (method, path, headers, body): what a client may send, good and bad
    ("GET", "/health", {}, None),
    ("GET", "/v1/seeds", {"Authorization": f"Bearer {TOKEN}"}, None),
    ("GET", "/v1/seeds", {}, None),  # no token: 401
    ("GET", "/v1/seeds", {"Authorization": "Bearer wrong"}, None),
    ("POST", "/v1/jobs/nope/work", {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
     b'{"max_assignments": 1}'),  # unknown job: 404
    ("POST", "/v1/jobs/nope/work", {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
     b'{"max_assignments": "many"}'),  # 422, the field named
    ("POST", "/v1/jobs/nope/work", {"Authorization": f"Bearer {TOKEN}", "content-type": "text/plain"}, b"{}"),
    ("POST", "/v1/jobs/nope/work", {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
     b"{not json"),
    ("POST", "/v1/jobs", {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
     b'{"identity": 3}'),
    ("POST", "/v1/jobs", {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
     b'{"identity": {"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 1}, "rank": 0, '
     b'"manifest": {"w": [4096, 1024, 2]}}'),  # no seed serves it
    ("POST", "/v1/jobs", {"Authorization": f"Bearer {TOKEN}", "content-type": "text/plain"}, b"{}"),
    ("POST", "/v1/jobs", {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}, b"{not json"),
    ("POST", "/v1/jobs", {}, b"{}"),  # no token: 401
    ("POST", "/v1/jobs", {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
     b"x" * (64 << 10)),  # over --max-body-bytes 16KiB: 413
    ("GET", "/v1/no/such/route", {"Authorization": f"Bearer {TOKEN}"}, None),
    ("DELETE", "/v1/jobs/nope", {"Authorization": f"Bearer {TOKEN}"}, None),
]
