"""Scheduler under load: do heartbeats keep flowing while large jobs are created?

Starts a real `rfork scheduler` process, registers seeds serving a MoE-shaped
model with many tensors, heartbeats each seed every second from its own thread
(as agents do) and polls /health, then creates N jobs for that model at once.
Reports each job request's time and status, the slowest heartbeat and /health
answer, and whether the scheduler dropped a seed.

    python -m bench.scheduler_load --jobs 4 --tensors 260000 --json out/scheduler-load.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import httpx

from testbed.fleet import wait_http_ready

IDENTITY = {"model": "moe-load", "revision": "main", "dtype": "bfloat16", "tp_size": 1}


def moe_manifest(tensors: int, base_ptr: int) -> dict[str, list[int]]:
    """``tensors`` expert matrices (3 per expert, 128 experts per layer) of 2 KiB each."""
    out, ptr = {}, base_ptr
    for i in range(tensors):
        layer, rest = divmod(i, 128 * 3)
        expert, matrix = divmod(rest, 3)
        out[f"layers.{layer}.experts.{expert}.w{matrix + 1}"] = [ptr, 1024, 2]
        ptr += 4096
    return out


@dataclass
class LoadResult:
    tensors: int
    jobs: int
    body_bytes: int
    job_seconds: list[float] = field(default_factory=list)
    job_status: list[int] = field(default_factory=list)
    registration_seconds: list[float] = field(default_factory=list)
    heartbeats: int = 0
    heartbeat_failures: list[str] = field(default_factory=list)
    """Heartbeats answered other than 200 (a 404 means the scheduler had dropped the seed)."""
    heartbeat_max_seconds: float = 0.0
    health_max_seconds: float = 0.0
    seeds_dropped: float = 0.0
    seeds_registered_after: int = 0

    def summary(self) -> str:
        jobs = ", ".join(f"{s:.2f}" for s in self.job_seconds)
        return (f"{self.jobs} jobs x {self.tensors} tensors ({self.body_bytes / 1e6:.1f} MB each): "
                f"request seconds [{jobs}], statuses {sorted(set(self.job_status))}; "
                f"heartbeats {self.heartbeats}, slowest {self.heartbeat_max_seconds:.3f} s, "
                f"failed {len(self.heartbeat_failures)}; slowest /health {self.health_max_seconds:.3f} s; "
                f"seeds dropped {self.seeds_dropped:.0f}, still registered {self.seeds_registered_after}")


class _Beats(threading.Thread):
    """One seed's agent: a heartbeat every ``interval`` seconds, timed."""

    def __init__(self, url: str, seed_id: str, interval: float, stop: threading.Event, result: LoadResult,
                 lock: threading.Lock) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{seed_id}")
        self.url, self.seed_id, self.interval, self.stop, self.result, self.lock = url, seed_id, interval, stop, result, lock

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    status = http.post(f"/v1/seeds/{self.seed_id}/heartbeat", json={}).status_code
                except httpx.HTTPError as exc:
                    status = repr(exc)
                took = time.monotonic() - started
                with self.lock:
                    self.result.heartbeats += 1
                    self.result.heartbeat_max_seconds = max(self.result.heartbeat_max_seconds, took)
                    if status != 200:
                        self.result.heartbeat_failures.append(f"{self.seed_id}: {status}")
                self.stop.wait(max(self.interval - took, 0.0))


class _HealthProbe(threading.Thread):
    def __init__(self, url: str, stop: threading.Event, result: LoadResult, lock: threading.Lock) -> None:
        super().__init__(daemon=True, name="health-probe")
        self.url, self.stop, self.result, self.lock = url, stop, result, lock

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                http.get("/health")
                took = time.monotonic() - started
                with self.lock:
                    self.result.health_max_seconds = max(self.result.health_max_seconds, took)
                self.stop.wait(0.1)


def _warm(_: int) -> None:
    return None


def _create_job(url: str, body: bytes) -> tuple[float, int]:
    with httpx.Client(base_url=url, timeout=300) as client:
        started = time.monotonic()
        status = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"}).status_code
        return time.monotonic() - started, status


def measure(url: str, *, jobs: int = 4, tensors: int = 260_000, seeds: int = 2,
            heartbeat_interval: float = 1.0, settle_seconds: float = 2.0) -> LoadResult:
    """Register ``seeds``, keep them heartbeating, create ``jobs`` jobs at once; see the module doc."""
    seed_bodies = {
        f"seed-{i}": json.dumps({
            "identity": IDENTITY, "agent_url": f"http://127.0.0.1:{9000 + i}",
            "ranks": [{"rank": 0, "session_id": f"127.0.0.1:{17000 + i}",
                       "manifest": moe_manifest(tensors, (i + 1) << 40)}]}).encode()
        for i in range(seeds)
    }
    job_body = json.dumps({"identity": IDENTITY, "rank": 0, "manifest": moe_manifest(tensors, 1 << 44)}).encode()
    result, lock, stop = LoadResult(tensors=tensors, jobs=jobs, body_bytes=len(job_body)), threading.Lock(), threading.Event()
    headers = {"content-type": "application/json"}
    beats = []
    with httpx.Client(base_url=url, timeout=120) as http:
        for seed_id, body in seed_bodies.items():
            started = time.monotonic()
            http.put(f"/v1/seeds/{seed_id}", content=body, headers=headers).raise_for_status()
            result.registration_seconds.append(time.monotonic() - started)
            beat = _Beats(url, seed_id, heartbeat_interval, stop, result, lock)
            beat.start()  # heartbeating from its registration on, as an agent does
            beats.append(beat)
        probe = _HealthProbe(url, stop, result, lock)
        probe.start()
        stop.wait(settle_seconds)

        # The job clients run in their own processes: in this one they would compete with the
        # heartbeat threads for the GIL, and the heartbeats measured would be partly the client's.
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_warm, range(jobs)))  # started and imported before the clock runs
            for seconds, status in pool.map(_create_job, [url] * jobs, [job_body] * jobs):
                result.job_seconds.append(seconds)
                result.job_status.append(status)
        stop.wait(settle_seconds)
        stop.set()
        for thread in (*beats, probe):
            thread.join(timeout=60)
        result.seeds_registered_after = len(http.get("/v1/seeds").json())
        for line in http.get("/metrics").text.splitlines():
            if line.startswith("rfork_scheduler_seeds_dropped_total "):
                result.seeds_dropped = float(line.split()[1])
    return result


class SchedulerProcess:
    """`rfork scheduler` in its own process on a free loopback port, logging to ``log_path``."""

    def __init__(self, log_path: str, heartbeat_timeout: float = 3.0, extra_args: tuple[str, ...] = ()) -> None:
        from testbed.fleet import HeldPort

        self._held_port = HeldPort()
        self.url = f"http://127.0.0.1:{self._held_port.port}"
        self.log_path = log_path
        self._args = ["--heartbeat-timeout", str(heartbeat_timeout), *extra_args]

    def __enter__(self) -> "SchedulerProcess":
        port = self.url.rsplit(":", 1)[1]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rfork_agent.cli", "scheduler", "--port", port, *self._args],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        failure = wait_http_ready(f"{self.url}/health", self.process, 60)
        if failure is None:
            return self
        self.__exit__()
        raise RuntimeError(f"the scheduler {failure}; see {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self._held_port.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=4, help="jobs created at once (default 4)")
    p.add_argument("--tensors", type=int, default=260_000, help="tensors per manifest (default 260000)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--heartbeat-timeout", type=float, default=3.0, help="the scheduler's (default 3 s)")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    log_path = os.path.join(tempfile.mkdtemp(prefix="rfork-scheduler-load-"), "scheduler.log")
    with SchedulerProcess(log_path, args.heartbeat_timeout) as scheduler:
        result = measure(scheduler.url, jobs=args.jobs, tensors=args.tensors, seeds=args.seeds)
    print(result.summary())
    print(f"scheduler log: {log_path}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(asdict(result), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
