"""`rfork chaos`: a fault matrix on the local testbed, with figures.

Each scenario starts a fresh fleet (scheduler, 3 seed stand-ins, 3 agents,
auth on), forks a model into this process (or, for the client-kill case, in an
`rfork fork` subprocess; for the peer cases, a scale-out of client processes
that feed each other), injects one fault when a given fraction of the bytes
has landed, and checks the outcome: the fork completed and every byte matches
an independent regeneration of the weights, or it failed fast with the
intended clear error. Nothing is ever allowed to be lost silently: ``lost``
lists any tensor that differs (must be empty) and any budget still held.

    rfork chaos --json out/chaos.json            # the whole matrix
    rfork chaos --only seed-kill --json out.json # scenarios whose name contains 'seed-kill'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import httpx

from rfork_api import models as wire

from rfork_api.logs import add_log_arguments, quiet_mooncake_by_default
from rfork_api.units import UnitError, format_bytes, parse_rate, parse_size

log = logging.getLogger("rfork.chaos")
MiB = 1 << 20


@dataclass(frozen=True)
class ChaosOptions:
    size_bytes: int = 96 * MiB
    chunk_size: int = 4 * MiB
    seed_rate: float = 40e6
    """Each seed's cap in bytes/s: slow enough that faults land mid-fork."""
    seeds: int = 3
    only: tuple[str, ...] = ()
    log_dir: str | None = None
    auth: bool = True


@dataclass
class ScenarioResult:
    name: str
    expected: str
    survived: bool = False
    """The fork completed, or failed fast with the intended clear error."""
    verified: bool | None = None
    """Byte-exact where it completed; None where completing was not the point."""
    seconds: float = 0.0
    lost: list[str] = field(default_factory=list)
    """What was lost: differing tensors, budget still held. Must be empty."""
    detail: dict = field(default_factory=dict)
    error: str | None = None


# --------------------------------------------------------------------------- plumbing


class _Trigger:
    """Runs ``action`` once, in a thread, when ``fraction`` of the bytes has landed; ``inline``: in the
    fork's own progress callback, so the fork asks for nothing more until the fault is in place (a
    fault that must land before the fork could finish: a thread may start late on a loaded machine)."""

    def __init__(self, fraction: float, total: int, action: Callable[[], None], inline: bool = False) -> None:
        self.fraction, self.total, self.action, self.inline = fraction, total, action, inline
        self.fired_at: float | None = None
        self.thread: threading.Thread | None = None

    def check(self, bytes_done: int) -> None:
        if self.fired_at is None and bytes_done >= self.fraction * self.total:
            self.fired_at = time.perf_counter()
            if self.inline:
                self.action()
                return
            self.thread = threading.Thread(target=self.action, daemon=True, name="chaos-fault")
            self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=60)


class _Setup:
    """A fleet plus this process's transport and destination memory for N forks."""

    def __init__(self, options: ChaosOptions, name: str, forks: int = 1, size_bytes: int | None = None,
                 scheduler_args: tuple[str, ...] = (), agent_args: tuple[str, ...] = (),
                 preset: str | None = None) -> None:
        from testbed.fleet import FleetSpec

        self.options = options
        log_dir = os.path.join(options.log_dir, name) if options.log_dir else None
        self.spec = FleetSpec(
            seeds=options.seeds, preset=preset, size_bytes=None if preset else size_bytes or options.size_bytes,
            seed_rates=(options.seed_rate,), log_dir=log_dir, heartbeat_timeout_seconds=3.0,
            token=secrets.token_hex(16) if options.auth else None,
            scheduler_args=scheduler_args, agent_args=agent_args,
        )
        self.forks = forks

    def __enter__(self):
        import torch

        from rfork_agent.fork import register_tensors
        from rfork_agent.destination import allocate_like
        from rfork_agent.transport import MooncakeTransport
        from testbed.fleet import Fleet
        from testbed.orchestrator import seed_te_info

        self.fleet = Fleet(self.spec).__enter__()
        try:
            self.identity = self.fleet.identity()
            self.transport = MooncakeTransport(protocol=self.spec.protocol, local_ip="127.0.0.1")
            _, manifest = seed_te_info(self.fleet.seeds[0].url, 0)
            self.destinations = []
            for _ in range(self.forks):
                tensors, _buffer = allocate_like(manifest, torch)
                register_tensors(self.transport, tensors)
                self.destinations.append(tensors)
            self.total = sum(numel * element_size for _, numel, element_size in manifest.values())
        except BaseException:
            self.fleet.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.fleet.__exit__(*exc)

    def client(self, transport=None, progress=None):
        from prometheus_client import CollectorRegistry

        from metrics.definitions import ClientMetrics
        from rfork_agent.fork import ForkClient

        return ForkClient(self.fleet.scheduler_url, transport or self.transport, progress=progress,
                          metrics=ClientMetrics(CollectorRegistry()), token=self.spec.token)

    def verify(self, tensors) -> list[str]:
        from testbed.orchestrator import verify_rank

        return verify_rank(self.spec, 0, tensors)


def _fork_once(setup: _Setup, trigger: _Trigger | None = None, transport=None):
    """Fork rank 0 into the first destination; returns (ForkResult or None, error or None, seconds)."""
    from rfork_agent.fork import ForkError

    def progress(p) -> None:
        if trigger is not None:
            trigger.check(p.bytes_done)

    client = setup.client(transport=transport, progress=progress)
    started = time.perf_counter()
    try:
        result = asyncio.run(client.fork(setup.identity, 0, setup.destinations[0],
                                         chunk_size_bytes=setup.options.chunk_size))
        return result, None, time.perf_counter() - started
    except ForkError as exc:
        return None, str(exc), time.perf_counter() - started
    finally:
        if trigger is not None:
            trigger.join()


def _completed(res: ScenarioResult, setup: _Setup, result, error: str | None, seconds: float) -> ScenarioResult:
    """Judge a scenario that must complete byte-exact."""
    res.seconds = round(seconds, 3)
    if error is not None:
        res.error = error
        res.lost.append("the fork (it should have completed)")
        return res
    bad = setup.verify(setup.destinations[0])
    res.verified = not bad
    res.lost.extend(f"tensor {name} differs" for name in bad)
    res.survived = res.verified
    res.detail.update(
        bytes=result.bytes_total, retried_chunks=result.retried_chunks, failed_seeds=result.failed_seeds,
        bytes_by_seed=result.bytes_by_seed,
        bytes_read_ratio=round(sum(result.bytes_by_seed.values()) / max(result.bytes_total, 1), 3),
    )
    return res


# --------------------------------------------------------------------------- scenarios


def seed_kill(fraction: float) -> Callable[[ChaosOptions], ScenarioResult]:
    def run(options: ChaosOptions) -> ScenarioResult:
        res = ScenarioResult(f"seed-kill-{int(fraction * 100)}pct", "completes byte-exact; the seed's chunks move")
        with _Setup(options, res.name) as setup:
            trigger = _Trigger(fraction, setup.total, lambda: setup.fleet.kill_seed(1))
            _completed(res, setup, *_fork_once(setup, trigger))
        return res
    return run


def moe_seed_kill(options: ChaosOptions) -> ScenarioResult:
    from testbed.presets import get_preset

    res = ScenarioResult("moe-40k-tensors-seed-kill-50pct",
                         "a rank of 40,848 tiny tensors completes byte-exact; the killed seed's chunks move")
    with _Setup(options, res.name, preset="tiny-moe") as setup:
        trigger = _Trigger(0.5, setup.total, lambda: setup.fleet.kill_seed(1))
        result, error, seconds = _fork_once(setup, trigger)
        _completed(res, setup, result, error, seconds)
        res.detail["tensors"] = len(get_preset("tiny-moe").rank_tensors(0))
        if result is not None:
            res.detail["chunks"] = result.chunks_total
    return res


def agent_kill(options: ChaosOptions) -> ScenarioResult:
    res = ScenarioResult("agent-kill-50pct", "completes byte-exact; the agent's seed is dropped, leases expire")
    with _Setup(options, res.name) as setup:
        trigger = _Trigger(0.5, setup.total, lambda: setup.fleet.kill_agent(1))
        _completed(res, setup, *_fork_once(setup, trigger))
    return res


def scheduler_restart(options: ChaosOptions) -> ScenarioResult:
    res = ScenarioResult("scheduler-kill-restart-50pct",
                         "completes byte-exact without starting over (the client resumes its job)")

    with _Setup(options, res.name) as setup:
        def restart() -> None:
            setup.fleet.kill_scheduler()
            time.sleep(0.5)
            setup.fleet.start_scheduler()  # same port: scheduler_url is kept

        trigger = _Trigger(0.5, setup.total, restart)
        result, error, seconds = _fork_once(setup, trigger)
        _completed(res, setup, result, error, seconds)
        if result is not None:
            res.detail["resumed_jobs"] = result.resumed_jobs
            # Started over would read ~1.5x the bytes; a resume reads each chunk about once.
            if result.resumed_jobs < 1 or res.detail["bytes_read_ratio"] > 1.3:
                res.survived = False
                res.lost.append(f"progress (resumed_jobs={result.resumed_jobs}, "
                                f"read {res.detail['bytes_read_ratio']}x the bytes)")
    return res


def straggler(options: ChaosOptions) -> ScenarioResult:
    res = ScenarioResult("straggler-1pct-25pct", "completes byte-exact; the slowed seed's work moves to the others "
                                                 "(endgame duplicates what it still holds)")
    # Twice the model and an early cut, so most of the fork is still ahead when seed-2 slows down.
    with _Setup(options, res.name, size_bytes=2 * options.size_bytes) as setup:
        seed = setup.fleet.seeds[2]

        def slow_down() -> None:
            httpx.put(f"{seed.agent_url}/v1/throttle", headers=setup.fleet.headers, timeout=5,
                      json={"mode": "fixed", "rate_bytes_per_second": options.seed_rate * 0.01}).raise_for_status()

        trigger = _Trigger(0.25, setup.total, slow_down)
        result, error, seconds = _fork_once(setup, trigger)
        _completed(res, setup, result, error, seconds)
        if result is not None:
            res.detail["straggler_share"] = round(result.bytes_by_seed.get(seed.seed_id, 0) / result.bytes_total, 3)
        # Held hostage would mean waiting for 1% of a seed: chunk / (0.01 x rate) per chunk.
        nominal = setup.total / (options.seed_rate * options.seeds)
        res.detail["nominal_seconds"] = round(nominal, 2)
        if res.survived and res.seconds > 3 * nominal + 5:
            res.survived = False
            res.lost.append(f"time: {res.seconds:.1f} s vs {nominal:.1f} s nominal (held hostage by the straggler)")
    return res


def seeds_lost(count: int) -> Callable[[ChaosOptions], ScenarioResult]:
    def run(options: ChaosOptions) -> ScenarioResult:
        everyone = count >= options.seeds
        name = "all-seeds-lost-50pct" if everyone else f"{count}-of-{options.seeds}-seeds-lost-50pct"
        expected = ("fails fast with a clear error naming each seed; no hang" if everyone
                    else "completes byte-exact from the survivor")
        res = ScenarioResult(name, expected)
        # Every seed lost: the fork must not finish on what it was already reading. Twice the model, so
        # the half left at the kill is more than the seeds' leases can have in flight (a quarter second
        # of each one's cap, 30 MB here), and the kill inline, seeds dead before the fork asks again.
        # (A kill from a thread that started late on a loaded machine let a fork finish 0.2 s on.)
        with _Setup(options, res.name, size_bytes=2 * options.size_bytes if everyone else None) as setup:
            def kill() -> None:
                for i in range(count):
                    setup.fleet.kill_seed(i)
                if everyone:
                    for i in range(count):
                        setup.fleet.seeds[i].process.wait(timeout=30)

            trigger = _Trigger(0.5, setup.total, kill, inline=everyone)
            result, error, seconds = _fork_once(setup, trigger)
            if not everyone:
                _completed(res, setup, result, error, seconds)
                return res
            after_kill = time.perf_counter() - trigger.fired_at if trigger.fired_at else seconds
            res.seconds = round(seconds, 3)
            res.detail["seconds_from_kill_to_error"] = round(after_kill, 2)
            res.error = error
            named = error is not None and all(s.seed_id in error for s in setup.fleet.seeds)
            # Bound: the scheduler's no-seed grace (10 s) plus a heartbeat timeout and slack.
            res.survived = result is None and named and after_kill < 20
            if result is not None:
                res.lost.append("a fork 'completed' after every seed died")
            elif not named:
                res.lost.append("the error does not name every seed")
        return res
    return run


def transient_errors(options: ChaosOptions) -> ScenarioResult:
    from testbed.faults import FlakyTransport

    res = ScenarioResult("transient-read-errors-5pct", "completes byte-exact; every failed chunk retried")
    with _Setup(options, res.name) as setup:
        flaky = FlakyTransport(setup.transport, failure_rate=0.05, seed=11)
        _completed(res, setup, *_fork_once(setup, transport=flaky))
        res.detail["injected_failures"] = flaky.injected
        res.detail["reads_submitted"] = flaky.submitted
        if res.survived and flaky.injected == 0:
            res.lost.append("nothing was injected (too few reads?)")
            res.survived = False
    return res


def concurrent_forks(options: ChaosOptions) -> ScenarioResult:
    from rfork_agent.fork import ForkError

    forks = 8
    res = ScenarioResult(f"{forks}-concurrent-forks", "all complete byte-exact; no seed exceeds its cap")
    size = max(options.size_bytes // 3, 8 * MiB)
    with _Setup(options, res.name, forks=forks, size_bytes=size) as setup:
        sampler = _GrantSampler(setup)
        sampler.start()

        async def all_forks():
            clients = [setup.client() for _ in range(forks)]
            return await asyncio.gather(*(
                c.fork(setup.identity, 0, setup.destinations[i], chunk_size_bytes=options.chunk_size)
                for i, c in enumerate(clients)), return_exceptions=True)

        started = time.perf_counter()
        results = asyncio.run(all_forks())
        res.seconds = round(time.perf_counter() - started, 3)
        sampler.stop()
        errors = [str(r) for r in results if isinstance(r, (ForkError, Exception))]
        res.error = "; ".join(errors) or None
        bad = [f"fork {i}: tensor {n} differs" for i, t in enumerate(setup.destinations)
               if not isinstance(results[i], Exception) for n in setup.verify(t)]
        res.lost.extend(bad + [f"fork failed: {e}" for e in errors])
        res.verified = not bad and not errors
        worst = sampler.worst_ratio()
        res.detail.update(forks=forks, bytes_each=setup.total, samples=len(sampler.samples),
                          max_window_rate_over_cap=round(worst, 3),
                          aggregate_bytes_per_second=round(forks * setup.total / res.seconds))
        res.survived = res.verified and worst <= 1.0
        if worst > 1.0:
            res.lost.append(f"a seed exceeded its cap + burst over some window ({worst:.2f}x)")
    return res


class _GrantSampler:
    """Polls each agent's own rfork_agent_granted_bytes_total; checks rate x window + burst is never exceeded."""

    def __init__(self, setup: _Setup, interval: float = 0.25) -> None:
        self.setup, self.interval = setup, interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="grant-sampler")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        while not self._stop.is_set():
            row: dict[str, float] = {}
            taken = time.perf_counter()
            for seed in self.setup.fleet.seeds:
                try:
                    text = httpx.get(f"{seed.agent_url}/metrics", timeout=2).text
                except httpx.HTTPError:
                    continue
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name == "rfork_agent_granted_bytes_total":
                            row[sample.labels.get("seed", seed.seed_id)] = sample.value
            self.samples.append((taken, row))
            self._stop.wait(self.interval)

    def worst_ratio(self) -> float:
        """Max over sample pairs of granted bytes / (cap x (window + one poll) + burst)."""
        from throttle.token_bucket import default_burst

        worst = 0.0
        cap = self.setup.options.seed_rate
        allowance_burst = default_burst(cap)
        for i, (t1, a) in enumerate(self.samples):
            for t2, b in self.samples[i + 1:]:
                for seed, v in b.items():
                    if seed in a:
                        allowed = cap * (t2 - t1 + self.interval) + allowance_burst
                        worst = max(worst, (v - a[seed]) / allowed)
        return worst


def client_kill(options: ChaosOptions) -> ScenarioResult:
    res = ScenarioResult("client-kill-mid-fork",
                         "the dead client's leases and seed budget are released and its job cleaned up in bounded time")
    lease_ttl, client_timeout = 5.0, 5.0
    # Slower seeds, so the client is surely mid-fork when it dies.
    with _Setup(replace(options, seed_rate=options.seed_rate / 8), res.name, forks=0,
                scheduler_args=("--client-timeout", str(client_timeout)),
                agent_args=("--lease-ttl", str(lease_ttl))) as setup:
        fleet = setup.fleet
        token_file = str(fleet.log_dir / "token") if setup.spec.token else None
        cmd = [sys.executable, "-m", "rfork_agent.cli", "fork", "--scheduler", fleet.scheduler_url,
               "--like-seed", fleet.seeds[0].url, "--chunk-size", str(options.chunk_size), "--no-progress"]
        if token_file:
            cmd += ["--token-file", token_file]
        with open(fleet.log_dir / "client.log", "ab") as sink:
            proc = subprocess.Popen(cmd, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            # Kill once bytes flow: a lease is held only while its read runs (milliseconds), so
            # "leases held" is no sign of progress; the job's own progress ratio is.
            while _scheduler_gauge(fleet, "rfork_scheduler_job_progress_ratio") < 0.1:
                if proc.poll() is not None or time.monotonic() > deadline:
                    res.error = f"the client never got going (exit {proc.poll()}); see {fleet.log_dir}/client.log"
                    return res
                time.sleep(0.05)
            res.detail["killed_at_progress"] = round(_scheduler_gauge(fleet, "rfork_scheduler_job_progress_ratio"), 2)
            if proc.poll() is not None or _scheduler_gauge(fleet, "rfork_scheduler_jobs_active") < 1:
                res.error = "the client finished before it could be killed; use a bigger --size"
                return res
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = time.perf_counter()
            bound = lease_ttl + client_timeout + 5
            while time.perf_counter() - killed < bound:
                held, jobs = _leases_held(fleet), _scheduler_gauge(fleet, "rfork_scheduler_jobs_active")
                if held == 0 and jobs == 0:
                    break
                time.sleep(0.2)
            res.seconds = round(time.perf_counter() - killed, 2)
            held, jobs = _leases_held(fleet), _scheduler_gauge(fleet, "rfork_scheduler_jobs_active")
            res.detail.update(bound_seconds=bound, leases_held=held, jobs_active=jobs,
                              lease_ttl_seconds=lease_ttl, client_timeout_seconds=client_timeout)
            if held:
                res.lost.append(f"{held} leases still held")
            if jobs:
                res.lost.append(f"{jobs} jobs still active")
            res.survived = not held and not jobs
        finally:
            if proc.poll() is None:
                proc.kill()
    return res


def _scale_out(options: ChaosOptions, name: str, clients: int, size_bytes: int | None = None, **faults) -> tuple:
    """A scale-out of ``clients`` processes feeding each other on a fresh fleet, with one fault.

    Returns (the scale-out record, the fleet's seed ids). Clients upload at the seeds' rate.
    """
    from testbed.fleet import Fleet, FleetSpec
    from testbed.scale_out import ScaleOutOptions, run_scale_out

    # A killed client's job is abandoned after 8 s of silence, and its reads from peers stop counting
    # 12 s later (above the clients' 10 s read timeout at these chunk sizes), where the scheduler's
    # defaults (30 s and 30 s) would hold a surviving peer's withdraw 40 s, all of a scenario's time.
    spec = FleetSpec(
        seeds=options.seeds, preset=None, size_bytes=size_bytes or options.size_bytes,
        seed_rates=(options.seed_rate,), heartbeat_timeout_seconds=3.0,
        scheduler_args=("--client-timeout", "8", "--peer-read-deadline", "12"),
        log_dir=os.path.join(options.log_dir, name) if options.log_dir else None,
        token=secrets.token_hex(16) if options.auth else None,
    )
    with Fleet(spec) as fleet:
        record = run_scale_out(fleet, ScaleOutOptions(clients=clients, client_rate=options.seed_rate,
                                                      chunk_size=options.chunk_size, **faults))
        record["log_dir"] = str(fleet.log_dir)
        return record


def _judge_scale_out(res: ScenarioResult, record: dict, victim: int | None = None) -> ScenarioResult:
    """Every client that was not killed finished byte-exact; where a peer was the fault, others had read from it."""
    survivors = [c for c in record["clients"] if not c["killed"]]
    for c in survivors:
        if c["verified"] is not True:
            res.lost.append(f"{c['id']}: " + (f"tensors differ: {', '.join(c['mismatched_tensors'][:3])}"
                                              if c["mismatched_tensors"] else f"did not finish ({c['error']})"))
    res.verified = not res.lost
    res.seconds = round(record["time_to_all_seconds"] or 0.0, 3)
    res.detail.update(
        clients=len(record["clients"]), model_bytes=record["model_bytes"],
        seed_bytes_served_per_model=round(record["seed_bytes_served_per_model"], 3),
        bytes_from_peers=record["bytes_from_peers"], log_dir=record["log_dir"],
        fell_back=[c["id"] for c in record["clients"] if c["fell_back"]],
        killed=[c["id"] for c in record["clients"] if c["killed"]],
    )
    if victim is not None:
        peer_id = f"peer:{record['clients'][victim]['job_id']}"
        readers = [c["id"] for c in survivors
                   if peer_id in (c["bytes_by_source"] or {}) or peer_id in (c["failed_seeds"] or {})]
        res.detail["read_from_the_victim"] = readers
        if not readers:
            res.lost.append(f"nothing tested: no client read from {record['clients'][victim]['id']} "
                            "(use a bigger --size or a slower --seed-rate)")
        victim_record = record["clients"][victim]
        res.detail["victim"] = {k: victim_record[k] for k in ("id", "killed", "killed_at_bytes", "fell_back",
                                                              "verified", "withdraw_confirmed", "withdraw_seconds")}
    res.survived = not res.lost
    return res


def peer_kill(options: ChaosOptions) -> ScenarioResult:
    res = ScenarioResult("peer-kill-mid-fork", "a client SIGKILLed while others read from it: every other client "
                                               "completes byte-exact, its chunks are read elsewhere")
    record = _scale_out(options, res.name, clients=4, kill_client=(0, 0.5))
    return _judge_scale_out(res, record, victim=0)


def peer_fail_fallback(options: ChaosOptions) -> ScenarioResult:
    res = ScenarioResult("peer-fail-fallback-50pct",
                         "a client fails while others read from it, withdraws, waits for their reads, then its "
                         "fallback zeroes and rewrites its memory: everyone, it included, ends byte-exact")
    record = _scale_out(options, res.name, clients=4, fail_client=(0, 0.5))
    _judge_scale_out(res, record, victim=0)
    victim = record["clients"][0]
    if not victim["fell_back"]:
        res.lost.append("the failing client did not fall back")
    elif victim["withdraw_confirmed"] is not True:
        res.lost.append("the failing client rewrote its memory without the scheduler's word that no read "
                        "from it was on the wire")
    res.survived = not res.lost
    return res


def clients_seed_kill(options: ChaosOptions) -> ScenarioResult:
    clients = 8
    res = ScenarioResult(f"{clients}-clients-seed-kill-50pct", "8 clients feeding each other, one seed SIGKILLed "
                                                                "at 50% of all bytes: all complete byte-exact")
    # A third of the model each: 8 client processes at once on a small host.
    record = _scale_out(options, res.name, clients=clients, size_bytes=max(options.size_bytes // 3, 8 * MiB),
                        kill_seed=(1, 0.5))
    _judge_scale_out(res, record)
    if record["kill_seed_at_bytes"] is None:
        res.lost.append("the seed was never killed")
        res.survived = False
    return res


def _leases_held(fleet) -> int:
    held = 0
    for seed in fleet.seeds:
        try:
            response = httpx.get(f"{seed.agent_url}/v1/status", headers=fleet.headers, timeout=2)
            held += wire.AgentStatus.model_validate_json(response.content).in_flight_leases
        except (httpx.HTTPError, ValueError):  # gone (chaos), or not an agent's answer: holds nothing we count
            continue
    return held


def _scheduler_gauge(fleet, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{fleet.scheduler_url}/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


SCENARIOS: dict[str, Callable[[ChaosOptions], ScenarioResult]] = {
    "seed-kill-10pct": seed_kill(0.10),
    "seed-kill-50pct": seed_kill(0.50),
    "seed-kill-90pct": seed_kill(0.90),
    "agent-kill-50pct": agent_kill,
    "scheduler-kill-restart-50pct": scheduler_restart,
    "client-kill-mid-fork": client_kill,
    "straggler-1pct-25pct": straggler,
    "2-of-3-seeds-lost-50pct": seeds_lost(2),
    "all-seeds-lost-50pct": seeds_lost(3),
    "8-concurrent-forks": concurrent_forks,
    "transient-read-errors-5pct": transient_errors,
    "moe-40k-tensors-seed-kill-50pct": moe_seed_kill,
    "peer-kill-mid-fork": peer_kill,
    "peer-fail-fallback-50pct": peer_fail_fallback,
    "8-clients-seed-kill-50pct": clients_seed_kill,
}


def run_chaos(options: ChaosOptions, progress: Callable[[ScenarioResult], None] | None = None) -> list[ScenarioResult]:
    quiet_mooncake_by_default()  # glog chatter on stderr, here and in the fleet's processes
    chosen = [n for n in SCENARIOS if not options.only or any(o in n for o in options.only)]
    out = []
    for name in chosen:
        try:
            result = SCENARIOS[name](options)
        except Exception as exc:  # noqa: BLE001 - a harness failure is a scenario failure, reported as such
            log.exception("scenario %s crashed", name)
            result = ScenarioResult(name, "", error=f"the harness failed: {type(exc).__name__}: {exc}",
                                    lost=["unknown: the scenario did not run to the end"])
        out.append(result)
        if progress:
            progress(result)
    return out


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="96MiB", help="model size per scenario (default 96MiB)")
    p.add_argument("--chunk-size", default="4MiB", help="chunk size (default 4MiB)")
    p.add_argument("--seed-rate", default="40MB/s", help="each seed's cap (default 40MB/s)")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help=f"run scenarios whose name contains TEXT (repeatable); scenarios: {', '.join(SCENARIOS)}")
    p.add_argument("--no-auth", action="store_true", help="run the fleet without a bearer token")
    p.add_argument("--log-dir", default=None, help="keep every process's log here (default: temp dirs)")
    p.add_argument("--json", dest="json_path", default=None, help="write the results here")
    add_log_arguments(p, default="warning")


def main(args: argparse.Namespace) -> int:
    try:
        options = ChaosOptions(size_bytes=parse_size(args.size), chunk_size=parse_size(args.chunk_size),
                               seed_rate=parse_rate(args.seed_rate), only=tuple(args.only),
                               log_dir=args.log_dir, auth=not args.no_auth)
    except UnitError as exc:
        print(f"rfork chaos: error: {exc}", file=sys.stderr)
        return 2
    unknown = [o for o in options.only if not any(o in n for n in SCENARIOS)]
    if unknown:
        print(f"rfork chaos: error: --only {unknown[0]!r} matches no scenario; choose from {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    if options.size_bytes < 8 * MiB or options.chunk_size <= 0 or not options.seed_rate:
        print("rfork chaos: error: --size must be >= 8MiB, --chunk-size > 0 and --seed-rate a rate > 0 "
              "(the scenarios time faults against it), e.g. 40MB/s", file=sys.stderr)
        return 2
    print(f"{'scenario':32} {'survived':8} {'verified':8} {'seconds':>8}  lost / detail", flush=True)

    def row(r: ScenarioResult) -> None:
        verified = "-" if r.verified is None else ("yes" if r.verified else "NO")
        what = "; ".join(r.lost) or "nothing"
        print(f"{r.name:32} {'yes' if r.survived else 'NO':8} {verified:8} {r.seconds:8.2f}  lost: {what}"
              + (f"  [{r.error[:120]}]" if r.error and not r.survived else ""), flush=True)

    results = run_chaos(options, row)
    passed = sum(r.survived for r in results)
    print(f"{passed} passed, {len(results) - passed} failed")
    if args.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as f:
            json.dump({"options": {**asdict(options), "only": list(options.only)},
                       "size": format_bytes(options.size_bytes), "scenarios": [asdict(r) for r in results]},
                      f, indent=2)
        print(f"wrote {args.json_path}")
    return 0 if passed == len(results) else 1
