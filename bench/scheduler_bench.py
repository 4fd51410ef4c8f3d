"""`rfork bench scheduler`: how much work one real scheduler process hands out (issue #15 item 3).

It starts ``rfork scheduler`` as users run it (a subprocess on a free loopback
port), registers fake seeds (``PUT /v1/seeds/{id}`` with a manifest of fake
pointers, no TransferEngine) that heartbeat on the schedule the scheduler
asks for, and drives ``N`` concurrent fork jobs from load-generator processes:
each job loops on ``POST /v1/jobs/{id}/work``, reporting every assignment it
got as landed in its next call (a read takes no time), and a job that finishes
is replaced by a new one, so ``N`` jobs are always running. Requests share a
bounded pool of connections (``--connections``), like the fork clients of a
fleet sharing one scheduler.

Measured over a window after every job exists and a warm-up: work requests/s,
assignments/s (a merged assignment is one: one lease, one read, one report)
and chunks/s, p50/p99 latency of ``/work`` and of heartbeats, the scheduler's
CPU (``/proc/<pid>/stat``) and the time it waited for a CPU
(``/proc/<pid>/schedstat``: on a shared machine that is where the rest went),
the load generators' CPU (so a bench that could not generate enough load says
so), and whether any seed was dropped: a dropped seed fails the run.

With two or more CPUs the scheduler is pinned to the first (``taskset``) and
the load generators to the others, so the two never compete for a core.

    rfork bench scheduler --jobs 1,64,1024 --chunks 1300 --duration 20 --json bench/results/scheduler.json

``--scale-out N`` measures a scale-out instead of a steady state: ``N`` members that
offer themselves as peers are created at once and each plays ``rfork fork``'s part
to its end, with streams when the scheduler offers them (``--stream-stripes``, on by
default): it sends its landed map, reports the seeds' assignments it got as landed,
and reports its streams the way the client does (half of each stream's chunks in one
progress call, the rest with the streams' end), until its job is done. The
scheduler's CPU is measured for the whole scale-out, in two phases (creating the jobs;
the /work calls until the last is done), with the calls, streams and assignments it
took: the HTTP-level counterpart of ``rfork simulate --strategy stream``'s accounting.

    rfork bench scheduler --scale-out 128,1024 --json bench/results/scheduler-scale-out.json
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import math
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from bench.keepalive import KeepAliveTransport
from rfork_agent.fork import ForkOptions
from rfork_api import models as m
from rfork_api.errors import RforkApiError, UnknownJob, UnknownLayout, UnknownSeed
from rfork_api.manifest import compact_manifest
from rfork_api.units import UnitError, format_bytes, parse_rate, parse_size
from testbed.fleet import HeldPort, wait_http_ready

DEFAULT_CHUNK_SIZE = 64 * 2**20

# Issue #15's yardstick: a 1024-instance DeepSeek-V3 scale-out needs about 340,000 assignments
# (1,024 jobs of one 85 GB TP8 rank, 1,300 chunks of 64 MiB, merged into ~330 assignments of
# up to 256 MiB each). Its goal: time-to-all within 3 x one fork alone (85 GB at 50 GB/s).
SCALE_OUT_ASSIGNMENTS = 340_000
SCALE_OUT_TARGET_SECONDS = 3 * 85e9 / 50e9

SATURATED_SHARE = 0.85
"""A process that wanted a CPU (ran, or waited in the run queue) this much of the window is saturated."""


class BenchError(RuntimeError):
    """A scenario could not run (a load generator died or stalled): recorded, the others go on."""


class SchedulerStartError(BenchError):
    """``rfork scheduler`` did not start (a bad --scheduler-arg?): every scenario would fail the same way.

    ``log_needed``: whether its log says more than the message (False for a usage error, which the CLI
    reports in the one line the message carries), so the bench keeps its log directory only then."""

    def __init__(self, message: str, log_needed: bool = True) -> None:
        super().__init__(message)
        self.log_needed = log_needed


@dataclass(frozen=True)
class SchedulerBenchOptions:
    jobs: tuple[int, ...] = (1, 64, 1024)
    """Concurrent fork jobs, one scenario (and one fresh scheduler process) each."""
    chunks: int = 1300
    """Chunks per job: the manifest has this many tensors of ``chunk_size`` bytes."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    seeds: int = 4
    seed_rate: float | None = None
    """Each seed's allowed rate in its heartbeats (None: uncapped, so the planner merges chunks)."""
    duration_seconds: float = 10.0
    """Length of the measured window."""
    warmup_seconds: float = 2.0
    """Load runs this long after the last job was created before the window opens."""
    connections: int = 64
    """Connections to the scheduler across all load generators (each job has one request at a time)."""
    clients: int = 0
    """Load-generator processes; 0: one per CPU left after the scheduler's."""
    max_assignments: int = 16
    """``max_assignments`` of each /work call: the fork client's default in-flight limit."""
    pin: bool = True
    """Pin the scheduler to one CPU and the load generators to the others (when there are two or more)."""
    scheduler_args: tuple[str, ...] = ()
    """Extra ``rfork scheduler`` flags (``--max-in-flight-per-seed 8``, ...)."""
    profile_dir: str | None = None
    """Run the scheduler under cProfile and write ``scheduler-<jobs>.prof`` here."""
    scale_out: tuple[int, ...] = ()
    """Scale-outs of this many instances, one scenario each (instead of the steady-state ``jobs``)."""
    ranks: int = 1
    """Ranks per instance (a TP-``ranks`` model): a scale-out of N instances is N x ranks jobs in ``ranks``
    groups, one per rank, all served by the one scheduler (a DeepSeek-V3 TP8 fleet: 8)."""
    request_timeout_seconds: float = 60.0
    member_fork_seconds: float = 2.0
    """A scale-out's member reports its streams' progress as rfork fork would over a fork this long: every
    report interval (its own 1 s, or the scheduler's longer paced one) before its streams end. The bench
    lands every chunk at once, so this sets only how many reports there are: 2 s, one on its own second
    (the 1024-instance DeepSeek-V3 scale-out takes 1.7-2.3 s a member in the simulation)."""
    setup_stall_seconds: float = 120.0
    """Creating the jobs fails the run when a load generator reports no progress for this long
    (every seed dropped: creates answer unknown_model and nothing moves)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.jobs or any(n < 1 for n in self.jobs):
            problems.append(f"--jobs must be positive integers, got {','.join(map(str, self.jobs)) or 'none'}")
        if self.chunks < 1:
            problems.append(f"--chunks must be >= 1, got {self.chunks}")
        if self.chunk_size < 4096 or self.chunk_size % 2:
            problems.append(f"--chunk-size must be an even number of bytes >= 4KiB, got {self.chunk_size}")
        if self.seeds < 1:
            problems.append(f"--seeds must be >= 1, got {self.seeds}")
        if self.seed_rate is not None and not self.seed_rate > 0:
            problems.append(f"--seed-rate must be > 0 (or omitted for uncapped seeds), got {self.seed_rate}")
        if not self.duration_seconds > 0:
            problems.append(f"--duration must be > 0 seconds, got {self.duration_seconds}")
        if not self.warmup_seconds >= 0:
            problems.append(f"--warmup must be >= 0 seconds, got {self.warmup_seconds}")
        if self.connections < 1:
            problems.append(f"--connections must be >= 1, got {self.connections}")
        if self.clients < 0:
            problems.append(f"--clients must be >= 0 (0 = one per spare CPU), got {self.clients}")
        if any(n < 1 for n in self.scale_out):
            problems.append(f"--scale-out must be positive integers, got {','.join(map(str, self.scale_out))}")
        if not 1 <= self.ranks <= 4096:
            problems.append(f"--ranks must be in 1..4096, got {self.ranks}")
        if not 0 < self.member_fork_seconds <= 3600:
            problems.append(f"--member-fork-seconds must be in (0, 3600], got {self.member_fork_seconds}")
        if not 1 <= self.max_assignments <= 1024:
            problems.append(f"--max-assignments must be in 1..1024, got {self.max_assignments}")
        if problems:
            raise ValueError("; ".join(problems))


# --------------------------------------------------------------------------- pure: workload and statistics


def bench_identity(ranks: int) -> m.ModelIdentity:
    return m.ModelIdentity(model="rfork-bench/scheduler", revision="main", dtype="bfloat16", tp_size=ranks)


def bench_manifest(chunks: int, chunk_size: int, base_ptr: int) -> dict[str, list[int]]:
    """``chunks`` bf16 tensors of ``chunk_size`` bytes each at fake addresses: exactly one chunk per tensor.

        >>> bench_manifest(2, 4096, 1 << 40)
        {'layers.0.weight': [1099511627776, 2048, 2], 'layers.1.weight': [1099511631872, 2048, 2]}
    """
    return {f"layers.{i}.weight": [base_ptr + i * chunk_size, chunk_size // 2, 2] for i in range(chunks)}


def latency_summary(samples: list[float]) -> dict:
    """p50/p99/max (seconds) and count of a list of latencies; NaN when there are none.

        >>> latency_summary([0.1, 0.2, 0.3, 0.4])["p50_seconds"]
        0.25
    """
    if not samples:
        return {"count": 0, "p50_seconds": math.nan, "p99_seconds": math.nan, "max_seconds": math.nan}
    ordered = sorted(samples)
    return {"count": len(ordered), "p50_seconds": _quantile(ordered, 0.5), "p99_seconds": _quantile(ordered, 0.99),
            "max_seconds": ordered[-1]}


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def bottleneck(scheduler: tuple[float, float], load_generators: list[tuple[float, float]],
               threshold: float = SATURATED_SHARE) -> str:
    """What limited the throughput, from each process's (CPU share, run-queue wait share) of the window.

    A process that ran or waited for a CPU ``threshold`` of the window is
    saturated: a single-threaded event loop could not have gone faster. If it
    spent more of that time waiting than running, other processes held its CPU
    (a shared machine). The scheduler is named first: if both are saturated,
    more load would not help.

        >>> bottleneck((0.95, 0.02), [(0.4, 0.0)])
        'scheduler'
        >>> bottleneck((0.10, 0.80), [(0.2, 0.1)])
        "the scheduler's CPU, shared with other processes (it waited 80% of the time)"
        >>> bottleneck((0.5, 0.0), [(0.2, 0.0), (0.95, 0.0)])
        'load generator'
        >>> bottleneck((0.07, 0.75), [(0.09, 0.8)])
        "the machine: other processes held the scheduler's and the load generators' CPUs"
        >>> bottleneck((0.5, 0.0), [(0.5, 0.0)])
        'neither (closed-loop latency: raise --connections)'
    """
    cpu, wait = scheduler
    if cpu + wait >= threshold:
        if wait > cpu:
            return f"the scheduler's CPU, shared with other processes (it waited {wait:.0%} of the time)"
        return "scheduler"
    saturated = [(c, w) for c, w in load_generators if c + w >= threshold]
    if saturated:
        if all(w > c for c, w in saturated):
            if wait > cpu:
                return "the machine: other processes held the scheduler's and the load generators' CPUs"
            return "load generator's CPU, shared with other processes"
        return "load generator"
    return "neither (closed-loop latency: raise --connections)"


def capacity(assignments: int, scheduler_cpu_seconds: float,
             scale_out_assignments: int = SCALE_OUT_ASSIGNMENTS,
             target_seconds: float = SCALE_OUT_TARGET_SECONDS) -> dict:
    """What one scheduler process gives per second of one core, and what a scale-out of
    ``scale_out_assignments`` then costs: seconds of one core, and the share of one core
    it needs to keep up with a time-to-all of ``target_seconds``.

        >>> c = capacity(10_000, 2.0, scale_out_assignments=340_000, target_seconds=5.1)
        >>> c["assignments_per_cpu_second"], c["scale_out_cpu_seconds"], round(c["scale_out_cores_needed"], 2)
        (5000.0, 68.0, 13.33)
    """
    per_cpu_second = assignments / scheduler_cpu_seconds if scheduler_cpu_seconds > 0 else math.nan
    cpu_seconds = scale_out_assignments / per_cpu_second if per_cpu_second > 0 else math.inf
    return {"assignments_per_cpu_second": per_cpu_second, "scale_out_assignments": scale_out_assignments,
            "scale_out_cpu_seconds": cpu_seconds, "scale_out_target_seconds": target_seconds,
            "scale_out_cores_needed": cpu_seconds / target_seconds}


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal non-negative integers, largest first.

        >>> split_evenly(10, 3)
        [4, 3, 3]
    """
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# --------------------------------------------------------------------------- /proc readers (Linux)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of every thread of ``pid`` so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def runqueue_wait_seconds(pid: int) -> float:
    """Seconds the threads of ``pid`` were runnable but waiting for a CPU (``schedstat``); 0 if unknown."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that just exited
    return total / 1e9


def front_end_pids(pid: int) -> list[int]:
    """The HTTP front ends (``--front-ends N``) that scheduler ``pid`` runs now; none without."""
    return _children_running(pid, b"scheduler.front_end")  # not the intake's decoding processes


def decider_pids(pid: int) -> list[int]:
    """Deciders 1..K-1 (``--deciders K``) that scheduler ``pid`` runs now, in their order; none without."""
    return _children_running(pid, b"scheduler.decider")


def _children_running(pid: int, module: bytes) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    if module in f.read().split(b"\0"):
                        found.append(child)
            except OSError:
                continue  # exited meanwhile
    return sorted(found)


def front_end_cpu_seconds(pid: int) -> float:
    """CPU seconds of scheduler ``pid``'s front ends so far (0 without)."""
    total = 0.0
    for child in front_end_pids(pid):
        try:
            total += process_cpu_seconds(child)
        except OSError:
            continue
    return total


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@dataclass(frozen=True)
class ProcessSample:
    cpu_seconds: float
    wait_seconds: float

    @staticmethod
    def of(pid: int) -> "ProcessSample":
        return ProcessSample(process_cpu_seconds(pid), runqueue_wait_seconds(pid))


@dataclass(frozen=True)
class SchedulerSample:
    """Every process of a scheduler at one moment: its own (decider 0), the other deciders' CPU, and its
    front ends' CPU in all."""

    scheduler: ProcessSample
    deciders: list[float]
    front_ends: float

    @staticmethod
    def of(pid: int, deciders: list[int]) -> "SchedulerSample":
        return SchedulerSample(ProcessSample.of(pid), [process_cpu_seconds(d) for d in deciders],
                               front_end_cpu_seconds(pid))


# --------------------------------------------------------------------------- the scheduler process


try:
    _LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child (no loader lock there)
except OSError:
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the bench dies (even by SIGKILL), so nothing is left behind."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class SchedulerProcess:
    """``rfork scheduler`` on a free loopback port, optionally pinned to CPUs, logging to ``log_path``."""

    def __init__(self, log_dir: Path, cpus: list[int] | None, extra_args: tuple[str, ...] = (),
                 profile_path: str | None = None) -> None:
        self._held_port = HeldPort()
        self.port = self._held_port.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"scheduler-{self.port}.log"
        command = [sys.executable]
        if profile_path:
            command += ["-m", "cProfile", "-o", profile_path]
        command += ["-m", "rfork_agent.cli", "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                    *extra_args]
        if cpus is not None:
            command = [shutil.which("taskset") or "taskset", "-c", ",".join(map(str, cpus)), *command]
        self.command = command
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1"), preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        return self.process.pid  # taskset execs the command: same pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        failure = wait_http_ready(f"{self.url}/health", self.process, timeout)
        if failure is None:
            return
        if self.process.poll() is not None:
            if self.process.returncode == 2:  # the CLI's usage error: its one line says it all
                raise SchedulerStartError(f"rfork scheduler {failure} before answering: {self.last_log_line()}",
                                          log_needed=False)
            raise SchedulerStartError(f"rfork scheduler {failure} before answering: {self.last_log_line()} "
                                      f"(log: {self.log_path})")
        raise SchedulerStartError(f"rfork scheduler {failure}; see {self.log_path}")

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "empty log"

    def metric(self, name: str) -> float | None:
        """One unlabelled sample from the scheduler's /metrics, or None when unreadable."""
        try:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
        except httpx.HTTPError:
            return None
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    def metric_by_label(self, name: str, label: str) -> dict[str, float]:
        """``{label value: sample}`` of a family with one label, from /metrics; {} when unreadable."""
        try:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
        except httpx.HTTPError:
            return {}
        pattern = rf'^{re.escape(name)}\{{{re.escape(label)}="([^"]*)"\}} (\S+)$'
        return {value: float(sample) for value, sample in re.findall(pattern, text, re.MULTILINE)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful stop; cProfile then writes its file
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self._held_port.close()


# --------------------------------------------------------------------------- load generator (one process)


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    url: str
    jobs: int
    connections: int
    job_request_json: str
    max_assignments: int
    cpus: list[int] | None
    request_timeout_seconds: float


@dataclass
class WorkerResult:
    """What one load generator measured inside the window."""

    work_requests: int = 0
    assignments: int = 0
    chunks: int = 0
    reports: int = 0
    jobs_created: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    """Over the whole run, warm-up included: a failed job is a failed run."""
    work_latencies: list[float] = field(default_factory=list)
    create_latencies: list[float] = field(default_factory=list)
    assignments_by_second: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    """Errors over the whole run (not only the window), by kind."""


def load_worker_main(spec: WorkerSpec, conn) -> None:
    """Entry point of a load-generator process (multiprocessing, spawn)."""
    if spec.cpus is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, spec.cpus)
    try:
        result = asyncio.run(LoadWorker(spec, conn).run())
    except Exception as exc:  # reported to the parent, which says which worker and why
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("result", asdict(result)))


class LoadWorker:
    """``spec.jobs`` fork jobs, each one request at a time, over ``spec.connections`` connections.

    Protocol with the parent over ``conn``: the worker sends ``("ready", jobs)``
    once every job exists; the parent answers ``(t0, t1)`` (``time.monotonic``,
    system-wide on Linux); the worker records what completes inside the window,
    stops at ``t1`` and sends ``("result", WorkerResult)``.
    """

    def __init__(self, spec: WorkerSpec, conn) -> None:
        self.spec = spec
        self.conn = conn
        self.result = WorkerResult()
        self.window: tuple[float, float] | None = None
        self.stopping = asyncio.Event()
        self.created = 0
        self.errors: Counter[str] = Counter()

    async def run(self) -> WorkerResult:
        from rfork_api.clients import SchedulerClient

        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._on_parent_message)
        self.slots = asyncio.Semaphore(self.spec.connections)
        self.request = m.JobRequest.model_validate_json(self.spec.job_request_json)
        self.client = SchedulerClient(self.spec.url, timeout=self.spec.request_timeout_seconds,
                                      transport=KeepAliveTransport(self.spec.url, max_connections=self.spec.connections))
        tasks = [asyncio.create_task(self._job_loop()) for _ in range(self.spec.jobs)]
        try:
            await self.stopping.wait()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            loop.remove_reader(self.conn.fileno())
            for task in tasks:
                task.cancel()
            await self.client.aclose()
        self.result.errors = dict(self.errors)
        return self.result

    def _on_parent_message(self) -> None:
        try:
            t0, t1 = self.conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self.stopping.set()  # the parent is gone: stop
            return
        self.window = (t0, t1)
        asyncio.get_running_loop().call_later(max(t1 - time.monotonic(), 0.0), self.stopping.set)

    def _in_window(self, ended: float) -> bool:
        return self.window is not None and self.window[0] <= ended <= self.window[1]

    async def _job_loop(self) -> None:
        first = True
        while not self.stopping.is_set():
            job_id = await self._create()
            if job_id is None:
                await asyncio.sleep(0.1)
                continue
            if first:
                first = False
                self.created += 1
                if self.created == self.spec.jobs:
                    self.conn.send(("ready", self.created))
                elif self.created % 64 == 0:
                    self.conn.send(("progress", {"created": self.created, "errors": dict(self.errors)}))
            await self._work_until_finished(job_id)

    async def _create(self) -> str | None:
        async with self.slots:
            if self.stopping.is_set():
                return None
            started = time.monotonic()
            try:
                job = await self.client.create_job(self.request)
            except RforkApiError as exc:
                self.errors[f"create: {exc.code}"] += 1
                if self.created < self.spec.jobs and sum(self.errors.values()) % 64 == 1:
                    self.conn.send(("progress", {"created": self.created, "errors": dict(self.errors)}))
                return None
            ended = time.monotonic()
        if self._in_window(ended):
            self.result.jobs_created += 1
            self.result.create_latencies.append(ended - started)
        return job.job_id

    async def _work_until_finished(self, job_id: str) -> None:
        landed: list[m.Assignment] = []
        received_at = time.monotonic()
        while not self.stopping.is_set():
            async with self.slots:
                if self.stopping.is_set():
                    return
                started = time.monotonic()
                # Every assignment of the last reply landed, in the time since it arrived.
                reports = [m.ChunkReport(assignment_id=a.assignment_id, ok=True, seconds=started - received_at)
                           for a in landed]
                body = m.WorkRequest(max_assignments=self.spec.max_assignments, reports=reports)
                try:
                    reply = await self.client.work(job_id, body)
                except UnknownJob:
                    self.errors["work: unknown_job"] += 1
                    return
                except RforkApiError as exc:
                    self.errors[f"work: {exc.code}"] += 1
                    reply = None
                ended = time.monotonic()
            if reply is None:
                await asyncio.sleep(0.1)  # keep the reports: they go with the next call
                continue
            if self._in_window(ended):
                r = self.result
                r.work_requests += 1
                r.reports += len(reports)
                r.assignments += len(reply.assignments)
                r.chunks += sum(len(a.chunk_ids) for a in reply.assignments)
                r.work_latencies.append(ended - started)
                second = int(ended - self.window[0])
                r.assignments_by_second[second] = r.assignments_by_second.get(second, 0) + len(reply.assignments)
            landed, received_at = reply.assignments, ended
            if reply.state != m.JobState.RUNNING:
                if reply.state == m.JobState.DONE and self._in_window(ended):
                    self.result.jobs_completed += 1
                if reply.state == m.JobState.FAILED:  # counted over the whole run, warm-up included
                    self.result.jobs_failed += 1
                    self.errors["job failed: " + (reply.error or "no error given")[:120]] += 1
                return
            if not reply.assignments:
                await asyncio.sleep(reply.retry_after_seconds)


# --------------------------------------------------------------------------- scale-out members (one process)


@dataclass(frozen=True)
class MemberSpec:
    index: int
    url: str
    members: int
    first_member: int
    connections: int
    chunks: int
    chunk_size: int
    max_assignments: int
    cpus: list[int] | None
    request_timeout_seconds: float
    ranks: int = 1
    """Member k forks rank k % ranks (of instance k // ranks)."""
    fork_seconds: float = 2.0
    """``SchedulerBenchOptions.member_fork_seconds``."""


def progress_reports(fork_seconds: float, paced_seconds: float) -> int:
    """Reports a streaming member sends before its streams end, over a fork of ``fork_seconds``, at the
    longer of rfork fork's own interval and the scheduler's ``paced_seconds`` (WorkReply.stream_report_seconds).

        >>> progress_reports(2.0, 0.0), progress_reports(2.32, 0.0), progress_reports(2.0, 4.0)
        (1, 2, 0)
    """
    return max(math.ceil(fork_seconds / max(ForkOptions.stream_report_seconds, paced_seconds)) - 1, 0)


def member_manifest(spec: MemberSpec, member: int) -> dict[str, list[int]]:
    """Member ``member``'s manifest: the bench's layout at memory of its own."""
    return bench_manifest(spec.chunks, spec.chunk_size, (member + 2) << 40)


def member_job_request(spec: MemberSpec, member: int) -> m.JobRequest:
    """Member ``member``'s job request, its manifest by reference (layout digest and pointers) as
    ``SchedulerClient.create_job`` sends it first."""
    digest, pointers = compact_manifest(member_manifest(spec, member))
    return m.JobRequest(identity=bench_identity(spec.ranks), rank=member % spec.ranks,
                        chunk_size_bytes=spec.chunk_size, layout=m.ManifestLayout(digest=digest, pointers=pointers),
                        peer=m.PeerOffer(session_id=f"bench-member-{member}:1"))


@dataclass
class MemberResult:
    """What one load generator's members did (every call counted: a scale-out has no window)."""

    created: int = 0
    done: int = 0
    failed: int = 0
    work_calls: int = 0
    assignments: int = 0
    streams: int = 0
    streams_ended: int = 0
    work_latencies: list[float] = field(default_factory=list)
    create_latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


def member_worker_main(spec: MemberSpec, conn) -> None:
    """Entry point of a scale-out load generator: create its members, say so, wait for 'go', run them."""
    if spec.cpus is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, spec.cpus)
    try:
        result = asyncio.run(_members(spec, conn))
    except Exception as exc:  # reported to the parent, which says which worker, why and where
        where = traceback.extract_tb(exc.__traceback__)[-1]
        conn.send(("error", f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"))
        return
    conn.send(("result", asdict(result)))


async def _members(spec: MemberSpec, conn) -> MemberResult:
    from rfork_api.clients import SchedulerClient

    result, errors = MemberResult(), Counter()
    slots = asyncio.Semaphore(spec.connections)
    client = SchedulerClient(spec.url, timeout=spec.request_timeout_seconds,
                             transport=KeepAliveTransport(spec.url, max_connections=spec.connections))

    async def call(coro_fn, latencies: list[float]):
        async with slots:
            started = time.monotonic()
            out = await coro_fn()
            latencies.append(time.monotonic() - started)
            return out

    async def create(k: int, request: m.JobRequest) -> tuple[m.JobCreated, int] | None:
        member = spec.first_member + k

        async def by_reference_else_whole() -> m.JobCreated:
            # In one connection slot, as one client would: the scale-out's members waiting for the first
            # one's manifest (the scheduler holds them up to 5 s) must not hold every slot it needs.
            try:
                return await client.create_job(request)
            except UnknownLayout:  # the first of a scale-out: the scheduler asks for the manifest whole
                whole = request.model_copy(update={"layout": None, "manifest": member_manifest(spec, member)})
                return await client.create_job(whole, by_reference=False)

        try:
            job = await call(by_reference_else_whole, result.create_latencies)
        except RforkApiError as exc:
            errors[f"create: {exc.code}"] += 1
            return None
        result.created += 1
        return job, member

    async def run_member(job: m.JobCreated, member: int) -> None:
        landed_map = None if job.streams is None else m.LandedMapInfo(
            session_id=f"bench-member-{member}:1", ptr=4096, num_chunks=job.num_chunks, num_tensors=spec.chunks)
        body = m.WorkRequest(max_assignments=spec.max_assignments, landed_map=landed_map)
        following: dict[str, tuple[m.StreamAssignment, int]] = {}  # stream id -> (it, first chunk not reported)
        reported = 0  # progress reports sent
        while True:
            try:
                reply = await call(lambda: client.work(job.job_id, body), result.work_latencies)
            except RforkApiError as exc:
                errors[f"work: {exc.code}"] += 1
                await asyncio.sleep(0.1)
                continue
            result.work_calls += 1
            result.assignments += len(reply.assignments)
            result.streams += len(reply.streams)
            if reply.state != m.JobState.RUNNING:
                if reply.state == m.JobState.DONE:
                    result.done += 1
                else:
                    result.failed += 1
                    errors["job failed: " + (reply.error or "no error given")[:120]] += 1
                return
            streams = [m.StreamReport(stream_id=i, state="ended") for i in reply.end_streams]
            result.streams_ended += len(reply.end_streams)
            for stream_id in reply.end_streams:
                following.pop(stream_id, None)
            following.update({s.stream_id: (s, s.first_chunk) for s in reply.streams})
            # As rfork fork: what the streams landed goes with a report every report interval, and their
            # end (done: no ids) with the last; here at once, as there is no data to wait for.
            planned = progress_reports(spec.fork_seconds, reply.stream_report_seconds)
            for stream_id, (s, first) in list(following.items()):
                if reported >= planned:
                    streams.append(m.StreamReport(stream_id=stream_id, state="done"))
                    del following[stream_id]
                else:
                    end = first + (s.end_chunk - first) // (planned - reported + 1)
                    streams.append(m.StreamReport(stream_id=stream_id, landed=list(range(first, end))))
                    following[stream_id] = (s, end)
            if following:
                reported += 1
            reports = [m.ChunkReport(assignment_id=a.assignment_id, ok=True, seconds=0.01) for a in reply.assignments]
            waiting = not reports and not streams
            body = m.WorkRequest(max_assignments=spec.max_assignments, reports=reports, streams=streams,
                                 wait_seconds=1.0 if waiting else 0.0)

    # The members' requests are built before the parent starts counting (the load's own work, ~1 ms a
    # member), so their creations arrive together, as a scale-out's do.
    requests = [member_job_request(spec, spec.first_member + k) for k in range(spec.members)]
    conn.send(("prepared", len(requests)))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "create"
    made = await asyncio.gather(*(create(k, request) for k, request in enumerate(requests)))
    del requests
    jobs = [j for j in made if j is not None]
    conn.send(("ready", len(jobs)))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "go"
    await asyncio.gather(*(run_member(job, member) for job, member in jobs))
    await client.aclose()
    result.errors = dict(errors)
    return result


async def run_scale_out(options: SchedulerBenchOptions, instances: int, log_dir: Path) -> dict:
    """One fresh scheduler, ``instances`` x ``options.ranks`` peers (one job per rank of each instance)
    forking at once: the scheduler's CPU for the whole scale-out."""
    members = instances * options.ranks
    scheduler_cpus, load_cpus, _ = plan_cpus(options.pin)
    clients = min(options.clients or max(len(load_cpus or []), 1), members)
    profile_path = str(Path(options.profile_dir) / f"scheduler-scale-out-{members}.prof") if options.profile_dir else None
    if profile_path:
        Path(options.profile_dir).mkdir(parents=True, exist_ok=True)
    scheduler = SchedulerProcess(log_dir, scheduler_cpus, options.scheduler_args, profile_path)
    seeds: FakeSeeds | None = None
    workers: list[tuple[multiprocessing.Process, object]] = []
    try:
        scheduler.wait_ready()  # with --deciders, /health answers once every decider does
        deciders = decider_pids(scheduler.pid)
        if load_cpus and hasattr(os, "sched_setaffinity"):
            # Front ends and deciders inherit the scheduler's CPU (taskset). Each decider gets a CPU of its
            # own where there are CPUs to spare (deciding is what is measured), else the load's.
            if len(load_cpus) > len(deciders):
                for child, cpu in zip(deciders, load_cpus):
                    os.sched_setaffinity(child, [cpu])
                load_cpus = load_cpus[len(deciders):]
            else:
                for child in deciders:
                    os.sched_setaffinity(child, load_cpus)
            for child in front_end_pids(scheduler.pid):
                os.sched_setaffinity(child, load_cpus)
        seeds = FakeSeeds(scheduler.url, options)
        await seeds.register()
        context = multiprocessing.get_context("spawn")
        first = 0
        for index, (n, conns) in enumerate(zip(split_evenly(members, clients),
                                               split_evenly(max(options.connections, clients), clients))):
            parent_end, child_end = context.Pipe()
            spec = MemberSpec(index, scheduler.url, n, first, conns, options.chunks, options.chunk_size,
                              options.max_assignments, load_cpus, options.request_timeout_seconds, options.ranks,
                              options.member_fork_seconds)
            first += n
            process = context.Process(target=member_worker_main, args=(spec, child_end), daemon=True,
                                      name=f"rfork-bench-members-{index}")
            process.start()
            child_end.close()
            workers.append((process, parent_end))
        for process, conn in workers:
            await _expect(conn, process, "prepared", options.setup_stall_seconds)
        # The bench's own /metrics reads (the decisions' counters) are not the scale-out's work: each
        # is read outside the counted CPU (one with 1,024 jobs running costs a decider ~40 ms).
        decisions_before = _decision_cpu(scheduler)
        create_started = time.monotonic()
        before = SchedulerSample.of(scheduler.pid, deciders)
        for _, conn in workers:
            conn.send("create")
        created = sum([await _expect(conn, process, "ready", options.setup_stall_seconds)
                       for process, conn in workers])
        create_seconds = time.monotonic() - create_started
        after_create = SchedulerSample.of(scheduler.pid, deciders)
        decisions_after_create = _decision_cpu(scheduler)
        run_from = SchedulerSample.of(scheduler.pid, deciders)
        started = time.monotonic()
        for _, conn in workers:
            conn.send("go")
        results = [MemberResult(**(await _expect(conn, process, "result", options.setup_stall_seconds)))
                   for process, conn in workers]
        run_seconds = time.monotonic() - started
        end = SchedulerSample.of(scheduler.pid, deciders)
        decisions_end = _decision_cpu(scheduler)
        total = lambda name: sum(getattr(r, name) for r in results)  # noqa: E731
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r.errors)
        errors.update({f"heartbeat: {k}": v for k, v in seeds.stats.errors.items()})

        def counted(cpu: Callable[[SchedulerSample], float]) -> float:
            """CPU over the creations and the run, not over the /metrics read between them."""
            return cpu(after_create) - cpu(before) + cpu(end) - cpu(run_from)

        create_cpu = after_create.scheduler.cpu_seconds - before.scheduler.cpu_seconds
        run_cpu = end.scheduler.cpu_seconds - run_from.scheduler.cpu_seconds
        # Decider 0 is the scheduler's own process; with --deciders K the others decide beside it.
        by_decider = [create_cpu + run_cpu] + [counted(lambda sample, i=i: sample.deciders[i])
                                               for i in range(len(deciders))]
        streams_started = scheduler.metric("rfork_scheduler_streams_started_total")
        return {
            "instances": instances,
            "ranks": options.ranks,
            "members": members,
            "created": created,
            "done": total("done"),
            "failed": total("failed"),
            "create_seconds": create_seconds,
            "run_seconds": run_seconds,
            "scheduler_cpu_seconds_create": create_cpu,
            "scheduler_cpu_seconds_run": run_cpu,
            "scheduler_cpu_seconds": create_cpu + run_cpu,
            "scheduler_cpu_ms_per_member": 1000 * (create_cpu + run_cpu) / max(members, 1),
            "scheduler_cpu_ms_per_instance": 1000 * (create_cpu + run_cpu) / max(instances, 1),
            # Every deciding process's CPU (decider 0 = scheduler_cpu_seconds); the busiest one is what
            # keeps up with the scale-out or not.
            "decider_cpu_seconds": by_decider,
            "deciders_cpu_seconds": sum(by_decider),
            "busiest_decider_cpu_seconds": max(by_decider),
            "deciders_cpu_ms_per_member": 1000 * sum(by_decider) / max(members, 1),
            # With --scheduler-arg=--front-ends=N the scheduler's process above only decides; its HTTP
            # runs in the front ends (these, all N together).
            "front_end_cpu_seconds": counted(lambda sample: sample.front_ends),
            # The scheduler's own account of its decisions' CPU (rfork_scheduler_decision_cpu_seconds_total),
            # by call; the process's CPU beyond them is the HTTP protocol around them.
            "decision_cpu_seconds_create": _delta(decisions_after_create, decisions_before),
            "decision_cpu_seconds_run": _delta(decisions_end, decisions_after_create),
            "decision_cpu_ms_per_member": 1000 * sum(_delta(decisions_end, decisions_before).values()) / max(members, 1),
            "work_calls": total("work_calls"),
            "work_calls_per_member": total("work_calls") / max(members, 1),
            "assignments": total("assignments"),
            "streams": total("streams"),
            "streams_started_metric": streams_started,
            "streams_ended": total("streams_ended"),
            "work_latency": latency_summary([x for r in results for x in r.work_latencies]),
            "create_latency": latency_summary([x for r in results for x in r.create_latencies]),
            "seeds_dropped": max(seeds.stats.dropped, int(scheduler.metric("rfork_scheduler_seeds_dropped_total") or 0)),
            "errors": dict(errors),
            "scheduler_runqueue_wait_seconds": end.scheduler.wait_seconds - before.scheduler.wait_seconds,
        }
    finally:
        if seeds is not None:
            await seeds.close()
        for process, conn in workers:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
            conn.close()
        scheduler.stop()


def _decision_cpu(scheduler: SchedulerProcess) -> dict[str, float]:
    return scheduler.metric_by_label("rfork_scheduler_decision_cpu_seconds_total", "call")


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {call: after[call] - before.get(call, 0.0) for call in after}


def print_scale_out(s: dict) -> None:
    ranks = s.get("ranks", 1)
    what = f"{s['members']:<5}" if ranks == 1 else f"{s['instances']} x {ranks} ranks = {s['members']} members"
    deciders = s.get("decider_cpu_seconds") or [s["scheduler_cpu_seconds"]]
    print(f"scale-out of {what} {s['done']} done, {s['failed']} failed: scheduler CPU "
          f"{s['scheduler_cpu_seconds']:.2f} s ({s['scheduler_cpu_seconds_create']:.2f} s creating the jobs, "
          f"{s['scheduler_cpu_seconds_run']:.2f} s answering {s['work_calls']} /work calls = "
          f"{s['work_calls_per_member']:.1f} per member), {s['scheduler_cpu_ms_per_member']:.2f} ms per member "
          f"(decisions {s['decision_cpu_ms_per_member']:.2f})"
          + (f"; {len(deciders)} deciders {s['deciders_cpu_seconds']:.2f} s in all "
             f"({s['deciders_cpu_ms_per_member']:.2f} ms per member), the busiest "
             f"{s['busiest_decider_cpu_seconds']:.2f} s" if len(deciders) > 1 else "")
          + (f", front ends {s['front_end_cpu_seconds']:.2f} s" if s.get("front_end_cpu_seconds") else "") + "; "
          f"{s['streams']} streams, {s['assignments']} assignments; /work p50 {_ms(s['work_latency']['p50_seconds'])} "
          f"ms p99 {_ms(s['work_latency']['p99_seconds'])} ms; wall {s['create_seconds']:.1f} + "
          f"{s['run_seconds']:.1f} s; seeds dropped {s['seeds_dropped']}"
          + (f"; errors: {s['errors']}" if s["errors"] else ""), flush=True)


# --------------------------------------------------------------------------- seeds (in the parent)


@dataclass
class SeedStats:
    latencies: list[float] = field(default_factory=list)
    max_gap_seconds: float = 0.0
    dropped: int = 0
    dropped_in_window: int = 0
    errors: Counter = field(default_factory=Counter)


class FakeSeeds:
    """Seeds with no memory behind them: registered with a manifest, heartbeating on the scheduler's schedule.

    A heartbeat answered ``unknown_seed`` means the scheduler dropped the seed:
    counted, and the seed re-registers as a real agent would.
    """

    def __init__(self, url: str, options: SchedulerBenchOptions) -> None:
        from rfork_api.clients import SchedulerClient

        self.options = options
        self.client = SchedulerClient(url, timeout=options.request_timeout_seconds)
        self.registrations = {
            f"bench-seed-{i}": m.SeedRegistration(
                identity=bench_identity(options.ranks), agent_url=f"http://127.0.0.1:9/bench-seed-{i}",
                rate_cap_bytes_per_second=options.seed_rate,
                ranks=[m.RankInfo(rank=r, session_id=f"127.0.0.1:{17000 + i}",
                                  manifest=bench_manifest(options.chunks, options.chunk_size,
                                                          ((i + 1) << 44) + (r << 38)))
                       for r in range(options.ranks)])
            for i in range(options.seeds)
        }
        self.stats = SeedStats()
        self.window: tuple[float, float] | None = None
        self.interval = 1.0
        self._tasks: list[asyncio.Task] = []

    async def register(self) -> None:
        for seed_id, body in self.registrations.items():
            reply = await self.client.register_seed(seed_id, body)
            self.interval = reply.heartbeat_interval_seconds
        self._tasks = [asyncio.create_task(self._heartbeats(seed_id)) for seed_id in self.registrations]

    async def _heartbeats(self, seed_id: str) -> None:
        body = m.Heartbeat(allowed_rate_bytes_per_second=self.options.seed_rate)
        last_ok = time.monotonic()
        next_at = last_ok
        while True:
            next_at += self.interval
            await asyncio.sleep(max(next_at - time.monotonic(), 0.0))
            started = time.monotonic()
            try:
                await self.client.heartbeat(seed_id, body)
            except UnknownSeed:
                self.stats.dropped += 1
                if self.window is not None and self.window[0] <= time.monotonic() <= self.window[1]:
                    self.stats.dropped_in_window += 1
                try:
                    await self.client.register_seed(seed_id, self.registrations[seed_id])
                except RforkApiError as exc:
                    self.stats.errors[f"re-register: {exc.code}"] += 1
                continue
            except RforkApiError as exc:
                self.stats.errors[exc.code] += 1
                continue
            ended = time.monotonic()
            if self.window is not None and self.window[0] <= ended <= self.window[1]:
                self.stats.latencies.append(ended - started)
                self.stats.max_gap_seconds = max(self.stats.max_gap_seconds, ended - max(last_ok, self.window[0]))
            last_ok = ended
            next_at = max(next_at, ended - self.interval)  # late: the next one goes one interval after

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()


# --------------------------------------------------------------------------- one scenario


def plan_cpus(pin: bool) -> tuple[list[int] | None, list[int] | None, str]:
    """(scheduler CPUs, load-generator CPUs, what was done) on this machine."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin:
        return None, None, "not pinned (--no-pin)"
    if len(cpus) < 2 or not shutil.which("taskset"):
        return None, None, f"not pinned ({len(cpus)} CPU(s){'' if shutil.which('taskset') else ', no taskset'})"
    return cpus[:1], cpus[1:], f"scheduler on CPU {cpus[0]} (taskset), load generators on CPU(s) " \
                               f"{','.join(map(str, cpus[1:]))}"


async def run_scenario(options: SchedulerBenchOptions, jobs: int, log_dir: Path) -> dict:
    """One fresh scheduler, ``jobs`` concurrent jobs, one measured window: the scenario's figures."""
    scheduler_cpus, load_cpus, _ = plan_cpus(options.pin)
    clients = options.clients or max(len(load_cpus or []), 1)
    clients = min(clients, jobs)
    profile_path = str(Path(options.profile_dir) / f"scheduler-{jobs}.prof") if options.profile_dir else None
    if profile_path:
        Path(options.profile_dir).mkdir(parents=True, exist_ok=True)
    scheduler = SchedulerProcess(log_dir, scheduler_cpus, options.scheduler_args, profile_path)
    seeds: FakeSeeds | None = None
    workers: list[tuple[multiprocessing.Process, object]] = []
    try:
        scheduler.wait_ready()
        seeds = FakeSeeds(scheduler.url, options)
        await seeds.register()
        request = m.JobRequest(identity=bench_identity(options.ranks), rank=0, chunk_size_bytes=options.chunk_size,
                               manifest=bench_manifest(options.chunks, options.chunk_size, 1 << 40))
        context = multiprocessing.get_context("spawn")
        for index, (n, conns) in enumerate(zip(split_evenly(jobs, clients),
                                               split_evenly(max(options.connections, clients), clients))):
            parent_end, child_end = context.Pipe()
            spec = WorkerSpec(index, scheduler.url, n, conns, request.model_dump_json(), options.max_assignments,
                              load_cpus, options.request_timeout_seconds)
            process = context.Process(target=load_worker_main, args=(spec, child_end), daemon=True,
                                      name=f"rfork-bench-load-{index}")
            process.start()
            child_end.close()
            workers.append((process, parent_end))

        setup_started = time.monotonic()
        for process, conn in workers:
            await _expect(conn, process, "ready", stall_seconds=options.setup_stall_seconds)
        setup_seconds = time.monotonic() - setup_started
        t0 = time.monotonic() + options.warmup_seconds
        t1 = t0 + options.duration_seconds
        seeds.window = (t0, t1)
        for _, conn in workers:
            conn.send((t0, t1))

        await asyncio.sleep(max(t0 - time.monotonic(), 0.0))
        pids = [scheduler.pid] + [p.pid for p, _ in workers]
        start = {pid: ProcessSample.of(pid) for pid in pids}
        started_at = time.monotonic()
        await asyncio.sleep(max(t1 - time.monotonic(), 0.0))
        end = {pid: ProcessSample.of(pid) for pid in pids}
        window = time.monotonic() - started_at
        rss = rss_bytes(scheduler.pid)

        results = [WorkerResult(**(await _expect(conn, process, "result"))) for process, conn in workers]
        dropped_metric = scheduler.metric("rfork_scheduler_seeds_dropped_total")
        return summarize(options, jobs, clients, window, setup_seconds, start, end, scheduler.pid,
                         [p.pid for p, _ in workers], results, seeds.stats, dropped_metric, rss)
    finally:
        if seeds is not None:
            await seeds.close()
        for process, conn in workers:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
            conn.close()
        scheduler.stop()


async def _expect(conn, process, kind: str, stall_seconds: float = 600.0):
    """The next message of ``kind`` from a load generator, or BenchError saying why it did not come.

    ``progress`` messages on the way (jobs created so far, errors) keep the wait
    alive while the count grows; ``stall_seconds`` without a new job is a stalled
    run (errors alone are not progress).
    """
    loop = asyncio.get_running_loop()
    last_news, news = time.monotonic(), {}
    while True:
        if await loop.run_in_executor(None, conn.poll, 0.2):
            got, payload = conn.recv()
            if got == "progress":
                if payload["created"] > news.get("created", 0):
                    last_news = time.monotonic()
                news = payload
                continue
            if got == "error":
                raise BenchError(f"load generator {process.name} failed: {payload}")
            if got != kind:
                raise BenchError(f"load generator {process.name} sent {got!r}, expected {kind!r}")
            return payload
        if not process.is_alive():
            raise BenchError(f"load generator {process.name} exited (code {process.exitcode}) before '{kind}'")
        if time.monotonic() - last_news > stall_seconds:
            raise BenchError(f"load generator {process.name} sent no '{kind}' and created no job for {stall_seconds:.0f} s"
                             + (f"; last: {news['created']} jobs created, errors {news['errors']}" if news else ""))


def summarize(options: SchedulerBenchOptions, jobs: int, clients: int, window: float, setup_seconds: float,
              start: dict[int, ProcessSample], end: dict[int, ProcessSample], scheduler_pid: int,
              worker_pids: list[int], results: list[WorkerResult], seed_stats: SeedStats,
              dropped_metric: float | None, rss: int) -> dict:
    def share(pid: int, attr: str) -> float:
        return (getattr(end[pid], attr) - getattr(start[pid], attr)) / window

    total = lambda name: sum(getattr(r, name) for r in results)  # noqa: E731
    scheduler_cpu_seconds = end[scheduler_pid].cpu_seconds - start[scheduler_pid].cpu_seconds
    scheduler_use = (share(scheduler_pid, "cpu_seconds"), share(scheduler_pid, "wait_seconds"))
    load_use = [(share(p, "cpu_seconds"), share(p, "wait_seconds")) for p in worker_pids]
    timeline: dict[int, int] = {}
    for r in results:
        for second, n in r.assignments_by_second.items():
            timeline[int(second)] = timeline.get(int(second), 0) + n
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    errors.update({f"heartbeat: {k}": v for k, v in seed_stats.errors.items()})
    seeds_dropped = max(seed_stats.dropped, int(dropped_metric or 0))
    assignments = total("assignments")
    verdict = bottleneck(scheduler_use, load_use)
    return {
        "jobs": jobs,
        "window_seconds": window,
        "setup_seconds": setup_seconds,
        "load_generator_processes": clients,
        "work_requests_per_second": total("work_requests") / window,
        "assignments_per_second": assignments / window,
        "chunks_per_second": total("chunks") / window,
        "chunks_per_assignment": total("chunks") / assignments if assignments else math.nan,
        "assignments": assignments,
        "jobs_created_per_second": total("jobs_created") / window,
        "jobs_completed": total("jobs_completed"),
        "jobs_failed": total("jobs_failed"),
        "work_latency": latency_summary([x for r in results for x in r.work_latencies]),
        "create_latency": latency_summary([x for r in results for x in r.create_latencies]),
        "heartbeat_latency": latency_summary(seed_stats.latencies),
        "heartbeat_max_gap_seconds": seed_stats.max_gap_seconds,
        "seeds_dropped": seeds_dropped,
        "seeds_dropped_in_window": seed_stats.dropped_in_window,
        "errors": dict(errors),
        "scheduler_cpu_seconds": scheduler_cpu_seconds,
        "scheduler_cpu_share": share(scheduler_pid, "cpu_seconds"),
        # Summed over the scheduler's threads (event loop, reaper): it can pass 1.0.
        "scheduler_runqueue_wait_share": share(scheduler_pid, "wait_seconds"),
        "scheduler_rss_bytes": rss,
        "load_generator_cpu_shares": [share(p, "cpu_seconds") for p in worker_pids],
        "load_generator_runqueue_wait_shares": [share(p, "wait_seconds") for p in worker_pids],
        "bottleneck": verdict,
        "bench_is_bottleneck": verdict.startswith("load generator"),
        "assignments_per_second_timeline": [timeline.get(s, 0) for s in range(math.ceil(window))],
        **{k: v for k, v in capacity(assignments, scheduler_cpu_seconds).items()
           if k == "assignments_per_cpu_second"},
    }


# --------------------------------------------------------------------------- the command


def finite(value):
    """``value`` with NaN and infinities as None: strict JSON, readable by any parser.

        >>> finite({"a": [1.0, math.nan], "b": math.inf})
        {'a': [1.0, None], 'b': None}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value



def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def print_scenario(s: dict) -> None:
    w, h = s["work_latency"], s["heartbeat_latency"]
    print(f"jobs={s['jobs']:<5} work {s['work_requests_per_second']:7.0f} req/s  "
          f"assignments {s['assignments_per_second']:7.0f}/s ({s['chunks_per_second']:.0f} chunks/s)  "
          f"/work p50 {_ms(w['p50_seconds'])} ms p99 {_ms(w['p99_seconds'])} ms  "
          f"heartbeat p50 {_ms(h['p50_seconds'])} ms p99 {_ms(h['p99_seconds'])} ms", flush=True)
    loads = ", ".join(f"{x:.0%}" for x in s["load_generator_cpu_shares"])
    print(f"           scheduler CPU {s['scheduler_cpu_share']:.0%} of a core (+{s['scheduler_runqueue_wait_share']:.0%} "
          f"waiting for it), {s['assignments_per_cpu_second']:.0f} assignments per CPU-second, "
          f"RSS {format_bytes(s['scheduler_rss_bytes'])}; load generators CPU {loads}; "
          f"bottleneck: {s['bottleneck']}; seeds dropped: {s['seeds_dropped']}; jobs failed: {s['jobs_failed']}"
          + (f"; errors: {s['errors']}" if s["errors"] else ""), flush=True)


def capacity_lines(report: dict) -> list[str]:
    c = report["capacity"]
    if c is None:
        return []
    return [
        f"capacity: one scheduler process hands out {c['assignments_per_cpu_second']:.0f} assignments per second of "
        f"one core (at {c['measured_at_jobs']} concurrent jobs"
        f"{'' if c['measured_scenario_ok'] else ', a run that dropped seeds or lost jobs'}).",
        f"a 1024-instance DeepSeek-V3 scale-out (~{c['scale_out_assignments']:,} assignments) takes "
        f"{c['scale_out_cpu_seconds']:.0f} s of that core; keeping up with its time-to-all target "
        f"({c['scale_out_target_seconds']:.1f} s = 3 x one 85 GB rank at 50 GB/s) needs "
        f"{c['scale_out_cores_needed']:.1f} cores' worth (issue #15 asks for <= 0.5).",
    ]


def _scenario_ok(s: dict) -> bool:
    return "error" not in s and s["seeds_dropped"] == 0 and s["jobs_failed"] == 0


async def run_all(options: SchedulerBenchOptions) -> dict:
    _, _, pinning = plan_cpus(options.pin)
    log_dir = Path(tempfile.mkdtemp(prefix="rfork-bench-scheduler-"))
    print(f"rfork bench scheduler: {options.seeds} seeds, {options.chunks} chunks of "
          f"{format_bytes(options.chunk_size)} per job, {options.connections} connections, "
          f"{options.duration_seconds:g} s windows; {pinning}; load average {load_average()}", flush=True)
    loadavg_start = load_average()
    try:
        report = await _run_all_logged(options, log_dir, pinning, loadavg_start)
    except SchedulerStartError as exc:
        if not exc.log_needed:
            shutil.rmtree(log_dir, ignore_errors=True)
        raise
    # The scheduler's logs stay where a run failed (the report names them), and only there.
    if report["ok"]:
        shutil.rmtree(log_dir, ignore_errors=True)
    return report


async def _run_all_logged(options: SchedulerBenchOptions, log_dir: Path, pinning: str, loadavg_start) -> dict:
    if options.scale_out:
        return await _run_scale_outs(options, log_dir, pinning, loadavg_start)
    scenarios = []
    for jobs in options.jobs:
        try:
            scenario = await run_scenario(options, jobs, log_dir)
        except SchedulerStartError:
            raise
        except BenchError as exc:
            # Recorded, not raised: the other scenarios' figures still go to the report.
            print(f"jobs={jobs:<5} FAILED: {exc}", flush=True)
            scenarios.append({"jobs": jobs, "error": str(exc), "assignments": 0, "scheduler_cpu_seconds": 0.0,
                              "seeds_dropped": None, "jobs_failed": None})
            continue
        print_scenario(scenario)
        scenarios.append(scenario)
    ok = all(_scenario_ok(s) for s in scenarios)
    # Capacity from the most concurrent scenario that handed out work (one that collapsed says nothing of it).
    working = [s for s in scenarios if s["assignments"] > 0 and s["scheduler_cpu_seconds"] > 0]
    cap = None
    if working:
        largest = max(working, key=lambda s: s["jobs"])
        cap = {**capacity(largest["assignments"], largest["scheduler_cpu_seconds"]),
               "measured_at_jobs": largest["jobs"], "measured_scenario_ok": _scenario_ok(largest)}
    return {
        "bench": "scheduler",
        "ok": ok,
        "options": {**asdict(options), "jobs": list(options.jobs), "scheduler_args": list(options.scheduler_args)},
        "machine": {"cpus": os.cpu_count(), "pinning": pinning, "load_average_start": loadavg_start,
                    "load_average_end": load_average(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "scheduler_logs": None if ok else str(log_dir),
        "scenarios": scenarios,
        "capacity": cap,
    }


async def _run_scale_outs(options: SchedulerBenchOptions, log_dir: Path, pinning: str, loadavg_start) -> dict:
    runs = []
    for instances in options.scale_out:
        members = instances * options.ranks
        try:
            run_ = await run_scale_out(options, instances, log_dir)
        except SchedulerStartError:
            raise
        except BenchError as exc:
            print(f"scale-out of {members:<5} FAILED: {exc}", flush=True)
            runs.append({"members": members, "error": str(exc)})
            continue
        print_scale_out(run_)
        runs.append(run_)
    ok = all("error" not in r and r["failed"] == 0 and r["done"] == r["members"] and r["seeds_dropped"] == 0
             for r in runs)
    return {
        "bench": "scheduler-scale-out",
        "ok": ok,
        "options": {**asdict(options), "jobs": list(options.jobs), "scale_out": list(options.scale_out),
                    "scheduler_args": list(options.scheduler_args)},
        "machine": {"cpus": os.cpu_count(), "pinning": pinning, "load_average_start": loadavg_start,
                    "load_average_end": load_average(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "scheduler_logs": None if ok else str(log_dir),
        "scale_outs": runs,
        "capacity": None,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", default="1,64,1024", help="concurrent jobs per scenario, comma-separated (default 1,64,1024)")
    p.add_argument("--chunks", type=int, default=1300, help="chunks per job (default 1300: one 85 GB rank in 64 MiB)")
    p.add_argument("--chunk-size", default="64MiB", help="chunk size (default 64MiB)")
    p.add_argument("--seeds", type=int, default=4, help="fake seeds (default 4)")
    p.add_argument("--seed-rate", default=None, help="each seed's allowed rate, e.g. 50GB/s (default uncapped)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default 2)")
    p.add_argument("--connections", type=int, default=64, help="connections to the scheduler in all (default 64)")
    p.add_argument("--clients", type=int, default=0,
                   help="load-generator processes (default 0: one per CPU not running the scheduler)")
    p.add_argument("--max-assignments", type=int, default=16, help="max_assignments per /work call (default 16)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the scheduler and the load generators to separate CPUs")
    p.add_argument("--scheduler-arg", action="append", default=[], metavar="ARG",
                   help="extra flag for `rfork scheduler` (repeat; e.g. --scheduler-arg=--max-in-flight-per-seed=8)")
    p.add_argument("--profile", dest="profile_dir", default=None, metavar="DIR",
                   help="run the scheduler under cProfile; write DIR/scheduler-<jobs>.prof")
    p.add_argument("--scale-out", default="", metavar="N[,N]",
                   help="measure scale-outs of N instances forking at once as peers (with streams unless "
                        "--scheduler-arg=--stream-stripes=0), instead of the steady state of --jobs")
    p.add_argument("--ranks", type=int, default=1,
                   help="ranks per instance (a TP-R model, one job and one swarm group per rank; default 1): "
                        "--scale-out 128 --ranks 8 is a DeepSeek-V3 TP8 scale-out of 128 instances, 1024 jobs")
    p.add_argument("--member-fork-seconds", type=float, default=2.0, metavar="S",
                   help="--scale-out: each member reports its streams' progress as rfork fork would over a fork "
                        "of S seconds (every 1 s, or the scheduler's paced interval if longer; default 2)")
    p.add_argument("--json", dest="json_path", default=None, help="write the full report here")


def options_from_args(args: argparse.Namespace) -> SchedulerBenchOptions:
    """Flags -> options; ValueError with a one-line message on bad input."""
    try:
        jobs = tuple(int(x) for x in str(args.jobs).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--jobs must be comma-separated integers like 1,64,1024, got {args.jobs!r}") from None
    try:
        scale_out = tuple(int(x) for x in str(getattr(args, "scale_out", "") or "").split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--scale-out must be comma-separated integers like 128,1024, got {args.scale_out!r}") \
            from None
    try:
        chunk_size = parse_size(args.chunk_size)
        seed_rate = parse_rate(args.seed_rate)
    except UnitError as exc:
        raise ValueError(str(exc)) from None
    return SchedulerBenchOptions(
        jobs=jobs, chunks=args.chunks, chunk_size=chunk_size, seeds=args.seeds, seed_rate=seed_rate,
        duration_seconds=args.duration, warmup_seconds=args.warmup, connections=args.connections,
        clients=args.clients, max_assignments=args.max_assignments, pin=args.pin,
        scheduler_args=tuple(args.scheduler_arg), profile_dir=args.profile_dir, scale_out=scale_out,
        ranks=getattr(args, "ranks", 1), member_fork_seconds=getattr(args, "member_fork_seconds", 2.0))


def run(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"rfork bench scheduler: error: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_all(options))
    except BenchError as exc:
        print(f"rfork bench scheduler: error: {exc}", file=sys.stderr)
        return 1
    for line in capacity_lines(report):
        print(line)
    if not report["ok"]:
        print(f"FAILED: a seed was dropped or a job failed (or did not finish); scheduler logs in "
              f"{report['scheduler_logs']}",
              file=sys.stderr)
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(finite(report), indent=2, allow_nan=False))
        print(f"wrote {path}")
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scheduler_bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
