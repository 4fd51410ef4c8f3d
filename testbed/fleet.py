"""A local fleet on loopback: scheduler, seed stand-ins and one agent per seed,
each a real process, as they run in production.

``Fleet`` is a context manager used by `rfork testbed`, the integration tests
and the benchmarks. Process output goes to log files under ``log_dir`` so a
terminal shows only the progress bar; failures name the log to read.

    >>> with Fleet(FleetSpec(seeds=3, preset="tiny")) as fleet:
    ...     fleet.scheduler_url
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rfork_api import models as wire

log = logging.getLogger("rfork.testbed")


def wait_http_ready(url: str, process: subprocess.Popen, timeout: float) -> str | None:
    """Wait until ``url`` answers 200 while ``process`` (the server behind it) lives.

    Returns None once it answers, else what went wrong ("exited with code N",
    "did not answer URL within T s") for the caller to raise as its own error.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with code {process.returncode}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return f"did not answer {url} within {timeout:.0f} s"


class FleetError(RuntimeError):
    """A fleet process did not start or misbehaved; the message names its log."""


@dataclass(frozen=True)
class FleetSpec:
    seeds: int = 3
    preset: str | None = "tiny"
    size_bytes: int | None = None
    """When set, a model of about this many bytes (layers scaled) instead of ``preset``."""
    dtype: str = "bfloat16"
    tp_size: int = 1
    rng_seed: int = 1234
    seed_rates: tuple[float | None, ...] = ()
    """Per-seed caps in bytes/s (None = uncapped). Shorter than ``seeds``: the last repeats."""
    load_rps: float = 0.0
    protocol: str = "tcp"
    include_zero_byte: bool = False
    heartbeat_timeout_seconds: float = 3.0
    scheduler_args: tuple[str, ...] = ()
    agent_args: tuple[str, ...] = ()
    seed_args: tuple[str, ...] = ()
    """Extra `testbed.seed` flags for every seed, e.g. ("--decode-layers", "2") for a reproducible decode cost."""
    log_dir: str | None = None
    start_timeout_seconds: float = 120.0
    device: str = "cpu"
    """Where every seed stand-in holds its weights and decodes: cpu, cuda or cuda:N."""
    token: str | None = field(default=None, repr=False)
    """Shared bearer token for the scheduler and agents (None = auth off)."""
    pin_seeds: bool = False
    """Pin seed i to CPU i (mod the CPUs this process may use): each seed stands for its own host,
    so one seed's decode and chunk sends do not compete with another seed's for a core (Linux only;
    agents, the scheduler and fork clients still float)."""
    seed_cpus: tuple[int, ...] = ()
    """With ``pin_seeds``: seed i on CPU ``seed_cpus[i % len]`` instead of the i-th CPU this process may
    use, so a caller confined to other CPUs (a benchmark sharing a host) can place its seeds."""
    port_base: int | None = None
    """The scheduler and agents listen on ``port_base``, ``port_base + 1``, ... instead of free ports
    picked one at a time: fleets started side by side on one host then cannot race for a port."""

    def rate_for(self, index: int) -> float | None:
        if not self.seed_rates:
            return None
        return self.seed_rates[min(index, len(self.seed_rates) - 1)]

    def model_args(self) -> list[str]:
        args = ["--dtype", self.dtype, "--tp-size", str(self.tp_size), "--rng-seed", str(self.rng_seed)]
        if self.size_bytes is not None:
            args += ["--size", str(self.size_bytes)]
        else:
            args += ["--preset", self.preset or "tiny"]
        if self.include_zero_byte:
            args += ["--include-zero-byte"]
        return args


@dataclass
class SeedHandle:
    index: int
    seed_id: str
    url: str
    sessions: dict[str, str]
    total_bytes: int
    process: subprocess.Popen
    agent_url: str = ""
    agent_process: subprocess.Popen | None = None
    rate_cap: float | None = None
    killed: bool = False
    agent_killed: bool = False


def free_port() -> int:
    """A port nothing listens on now (its probe socket is closed: another bind may take it; to hand
    a port to a child process, use ``HeldPort``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HeldPort:
    """A free loopback port, held until ``close()`` for a child process to listen on.

    ``free_port()`` closes its probe before the child binds, and on a loaded machine another process
    took the port in between (``make demo`` failed: an agent's bind found its port in use). This
    keeps a socket bound to the port with SO_REUSEADDR, never listening: no other bind gets it, while
    a child's listening socket with SO_REUSEADDR can (uvicorn's, the scheduler's front ends' and
    ``socket.create_server``'s, ``http.server``'s and Go's, Prometheus', all set it).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port: int = self._socket.getsockname()[1]

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> "HeldPort":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class Fleet:
    spec: FleetSpec
    scheduler_url: str = ""
    seeds: list[SeedHandle] = field(default_factory=list)
    scheduler_process: subprocess.Popen | None = None
    log_dir: Path = field(default=None)  # type: ignore[assignment]
    _processes: list[subprocess.Popen] = field(default_factory=list)
    _ports_taken: int = 0
    _held_ports: list[HeldPort] = field(default_factory=list)
    """The ports handed to the scheduler and agents, held until the fleet stops (a restarted process
    gets its port back, and nothing else takes it meanwhile)."""

    def __enter__(self) -> "Fleet":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self.log_dir = Path(self.spec.log_dir or tempfile.mkdtemp(prefix="rfork-testbed-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.spec.token:
            token_file = self.log_dir / "token"
            token_file.write_text(self.spec.token)
            token_file.chmod(0o600)
        # Everything that can start at once does (each process spends a second or more on its
        # imports): the scheduler and the seeds, then every agent (each needs its seed's port).
        self.start_scheduler(wait=False)
        pending = [self._spawn_seed(i) for i in range(self.spec.seeds)]
        self._wait_scheduler()
        for index, process, log_path in pending:
            ready = self._wait_ready_line(process, log_path, f"seed-{index}")
            self.seeds.append(
                SeedHandle(
                    index=index, seed_id=f"seed-{index}", url=f"http://127.0.0.1:{ready['port']}",
                    sessions=ready["sessions"], total_bytes=ready["total_bytes"], process=process,
                    rate_cap=self.spec.rate_for(index),
                )
            )
        for seed in self.seeds:
            self.start_agent(seed, wait=False)
        for seed in self.seeds:
            self._wait_agent(seed)
        self.wait_registered([s.seed_id for s in self.seeds])

    def _port(self) -> int:
        if self.spec.port_base is None:
            held = HeldPort()
            self._held_ports.append(held)
            return held.port
        self._ports_taken += 1
        return self.spec.port_base + self._ports_taken - 1

    def start_scheduler(self, port: int | None = None, wait: bool = True) -> None:
        port = port or (int(self.scheduler_url.rsplit(":", 1)[1]) if self.scheduler_url else self._port())
        self.scheduler_url = f"http://127.0.0.1:{port}"
        cmd = _python_module(
            "rfork_agent.cli", "scheduler", "--host", "127.0.0.1", "--port", str(port),
            "--heartbeat-timeout", str(self.spec.heartbeat_timeout_seconds), *self._token_args(),
            *self.spec.scheduler_args,
        )
        self.scheduler_process = self._spawn(cmd, "scheduler")
        if wait:
            self._wait_scheduler()

    def _wait_scheduler(self) -> None:
        self._wait_http(f"{self.scheduler_url}/health", self.scheduler_process, "scheduler")

    def _spawn_seed(self, index: int):
        cmd = _python_module(
            "testbed.seed", "--host", "127.0.0.1", "--port", "0", "--protocol", self.spec.protocol,
            "--load-rps", str(self.spec.load_rps), "--device", self.spec.device, *self.spec.model_args(),
            *self.spec.seed_args,
        )
        process = self._spawn(cmd, f"seed-{index}", stdout=subprocess.PIPE)
        if self.spec.pin_seeds and hasattr(os, "sched_setaffinity"):
            cpus = list(self.spec.seed_cpus) or sorted(os.sched_getaffinity(0))
            try:
                # Before the seed starts its threads (torch, TransferEngine): they inherit the mask.
                os.sched_setaffinity(process.pid, {cpus[index % len(cpus)]})
            except OSError as exc:  # the seed already exited: its own error is in its log
                log.warning("could not pin seed-%d to CPU %d: %s", index, cpus[index % len(cpus)], exc)
        return index, process, self.log_dir / f"seed-{index}.log"

    def start_agent(self, seed: SeedHandle, wait: bool = True) -> None:
        port = self._port()
        seed.agent_url = f"http://127.0.0.1:{port}"
        rate = "unlimited" if seed.rate_cap is None else repr(float(seed.rate_cap))
        cmd = _python_module(
            "rfork_agent.cli", "agent", "--sglang-url", seed.url, "--scheduler", self.scheduler_url,
            "--seed-id", seed.seed_id, "--host", "127.0.0.1", "--port", str(port), "--rate-cap", rate,
            *self._token_args(), *self.spec.agent_args,
        )
        seed.agent_process = self._spawn(cmd, f"agent-{seed.index}")
        seed.agent_killed = False
        if wait:
            self._wait_agent(seed)

    def _wait_agent(self, seed: SeedHandle) -> None:
        self._wait_http(f"{seed.agent_url}/health", seed.agent_process, f"agent-{seed.index}")

    def stop(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in self._processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        for held in self._held_ports:
            held.close()
        self._held_ports.clear()

    # -- faults ----------------------------------------------------------
    def kill_seed(self, index: int) -> None:
        seed = self.seeds[index]
        seed.process.send_signal(signal.SIGKILL)
        seed.killed = True
        log.info("SIGKILLed %s (pid %d)", seed.seed_id, seed.process.pid)

    def kill_agent(self, index: int) -> None:
        seed = self.seeds[index]
        if seed.agent_process is not None:
            seed.agent_process.send_signal(signal.SIGKILL)
            seed.agent_killed = True

    def kill_scheduler(self) -> None:
        if self.scheduler_process is not None:
            self.scheduler_process.send_signal(signal.SIGKILL)
            self.scheduler_process.wait()

    # -- helpers ---------------------------------------------------------
    def _token_args(self) -> list[str]:
        return ["--token-file", str(self.log_dir / "token")] if self.spec.token else []

    @property
    def headers(self) -> dict[str, str]:
        """What a client of this fleet's scheduler and agents must send."""
        return {"Authorization": f"Bearer {self.spec.token}"} if self.spec.token else {}

    def seeds_listed(self, timeout: float = 5.0) -> list[wire.SeedSummary]:
        """The scheduler's GET /v1/seeds: the live seeds."""
        response = httpx.get(f"{self.scheduler_url}/v1/seeds", timeout=timeout, headers=self.headers)
        response.raise_for_status()
        return wire.SeedList.model_validate_json(response.content).root

    def identity(self) -> wire.ModelIdentity:
        """The identity the agents registered (read back from the scheduler)."""
        return self.seeds_listed()[0].identity

    def wait_registered(self, seed_ids: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        missing = set(seed_ids)
        while time.monotonic() < deadline:
            try:
                missing = set(seed_ids) - {s.seed_id for s in self.seeds_listed(timeout=2)}
                if not missing:
                    return
            except httpx.HTTPError:
                pass
            for seed in self.seeds:
                if seed.agent_process is not None and seed.agent_process.poll() is not None and seed.seed_id in missing:
                    raise FleetError(f"agent for {seed.seed_id} exited; see {self.log_dir / f'agent-{seed.index}.log'}")
            time.sleep(0.2)
        raise FleetError(f"seeds {sorted(missing)} did not register within {timeout:.0f} s; logs in {self.log_dir}")

    def spawn(self, cmd: list[str], name: str, stdout=None, stdin=None) -> subprocess.Popen:
        """Start a process that belongs to the fleet: its stderr goes to ``<log_dir>/<name>.log`` (stdout too
        unless ``stdout`` is given) and ``stop`` ends it with the rest."""
        return self._spawn(cmd, name, stdout=stdout, stdin=stdin)

    def _spawn(self, cmd: list[str], name: str, stdout=None, stdin=None) -> subprocess.Popen:
        log_file = open(self.log_dir / f"{name}.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = subprocess.Popen(
            cmd, stdout=stdout if stdout is not None else log_file, stderr=log_file,
            stdin=stdin if stdin is not None else subprocess.DEVNULL, env=env, start_new_session=True,
        )
        self._processes.append(process)
        return process

    def _wait_ready_line(self, process: subprocess.Popen, log_path: Path, name: str) -> dict:
        """The seed prints one JSON line when ready; anything after goes to its log."""
        result: dict = {}

        def reader() -> None:
            assert process.stdout is not None
            with open(log_path, "ab") as sink:
                for line in process.stdout:
                    if not result:
                        try:
                            event = json.loads(line)
                            if isinstance(event, dict) and event.get("event") == "ready":
                                result.update(event)
                                continue
                        except ValueError:
                            pass
                    sink.write(line)
                    sink.flush()

        threading.Thread(target=reader, daemon=True, name=f"{name}-stdout").start()
        deadline = time.monotonic() + self.spec.start_timeout_seconds
        while not result:
            if process.poll() is not None:
                raise FleetError(f"{name} exited with code {process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise FleetError(f"{name} not ready within {self.spec.start_timeout_seconds:.0f} s; see {log_path}")
            time.sleep(0.05)
        return result

    def _wait_http(self, url: str, process: subprocess.Popen, name: str, timeout: float = 60.0) -> None:
        failure = wait_http_ready(url, process, timeout)
        if failure is not None:
            raise FleetError(f"{name} {failure}; see {self.log_dir / (name + '.log')}")
