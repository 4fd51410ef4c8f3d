"""Fixtures shared by the real-Prometheus tests: a Prometheus server of our own, on a free port."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from testbed.fleet import HeldPort, wait_http_ready

READY_TIMEOUT_SECONDS = 60


@dataclass
class PrometheusServer:
    """A running Prometheus: its API at ``url``, its config at ``config``, its log at ``log``."""

    process: subprocess.Popen
    url: str
    config: Path
    log: Path
    held_port: HeldPort | None = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 15 s. Safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.held_port is not None:
            self.held_port.close()


def prometheus_binary(name: str = "prometheus") -> str:
    """The path of Prometheus' ``name`` binary (prometheus, promtool); fails the test when it is missing."""
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is missing: run scripts/bootstrap.sh (it installs Debian's prometheus package)")
    return exe


def _start(tmp: Path, config: dict) -> PrometheusServer:
    path = tmp / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log = tmp / "prometheus.log"
    held = HeldPort()
    port = held.port
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [prometheus_binary(), f"--config.file={path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
    server = PrometheusServer(process, f"http://127.0.0.1:{port}", path, log, held)
    failure = wait_http_ready(f"{server.url}/-/ready", process, READY_TIMEOUT_SECONDS)
    if failure is None:
        return server
    server.stop()
    raise AssertionError(f"prometheus {failure}; see {log}")


@pytest.fixture(scope="session")
def promtool() -> str:
    return prometheus_binary("promtool")


@pytest.fixture(scope="session")
def start_prometheus() -> Callable[[Path, dict], PrometheusServer]:
    """Factory: ``start_prometheus(tmp, config)`` writes ``config`` (a prometheus.yml as a dict) to
    tmp/prometheus.yml and returns a ready ``PrometheusServer`` storing under tmp/tsdb. Stop it with
    ``.stop()``; any still running when the session ends are stopped then."""
    prometheus_binary()  # fail before the test builds its testbed
    started: list[PrometheusServer] = []

    def start(tmp: Path, config: dict) -> PrometheusServer:
        server = _start(tmp, config)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
