"""The serving-QoS benchmark (issue #3): does the throttle keep a loaded seed inside its latency SLO?

One run, one loopback fleet (scheduler, seed stand-ins serving an open-loop
request load with a CPU decode loop, one agent per seed), fork clients
reading continuously from every seed, and these phases in order:

A. **baseline** — load on, no transfer: the seeds' ITL p99 without forks.
   The ITL SLO is chosen from it (``choose_slo``) unless ``--slo-itl`` is given.
B. **unthrottled** — forks at the agents' cap with the throttle off.
S. **sweep** — fixed per-seed rates, highest first, until one meets the SLO:
   that rate is the **oracle** (the best fixed rate that met it).
C. **throttled** — the adaptive controller (starting at its floor).
D. **spike** — load off (the seeds go idle, the controller goes to cap: idle
   throughput), load back on mid-fork (reaction: seconds until every seed's
   allowed rate is at or under the oracle), load off again (recovery: seconds
   until every seed is allowed >= 0.9 x cap).

Latency is read the way the agent reads it: windows of the seeds' SGLang
``/metrics`` histograms (PromQL-style p99, and the fraction of tokens above
the SLO). Throughput counts bytes landed in the fork clients.

    rfork bench qos --json out/bench-qos.json --plot bench/results/qos.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import httpx

from rfork_api.logs import add_log_arguments, quiet_mooncake_by_default, setup_logging_from_args
from rfork_api.units import UnitError, format_rate, parse_rate, parse_size
from throttle.histogram import CumulativeHistogram, WindowHistogram, fraction_above, observations, pool, quantile
from throttle.histogram import window as histogram_window
from throttle.prom_text import ITL_HISTOGRAM, parse_sglang_scrape
from testbed.decode import ITL_BUCKETS

log = logging.getLogger("rfork.bench.qos")

MB = 1e6

# Targets from issue #3.
TARGETS = {
    "unthrottled_vs_baseline_min": 1.5,
    "throttled_vs_baseline_max": 1.15,
    "throttled_vs_oracle_min": 0.8,
    "idle_vs_cap_min": 0.95,
    "spike_reaction_max_seconds": 3.0,
    "recovery_max_seconds": 20.0,
    "recovery_fraction_of_cap": 0.9,
}


# Bounds 5 % apart from 1 ms to 100 ms (rounded to 0.1 ms), plus SGLang's defaults: wherever the
# baseline p99 lands (4 ms on an H100, 12-20 ms on this 2-core machine), a bound sits within 5 %
# under 1.15x of it, and the controller reads exactly the share of tokens above the SLO. On a real
# seed: sglang.launch_server --enable-metrics --bucket-inter-token-latency <bounds around the SLO>.
FINE_ITL_BUCKETS = tuple(sorted(set(ITL_BUCKETS) | {round(0.001 * 1.05 ** i, 4) for i in range(95)}))


@dataclass(frozen=True)
class QosBenchOptions:
    seeds: int = 2
    size_bytes: int = 256 * 2**20
    chunk_size: int = 8 * 2**20
    load_rps: float = 8.0
    cap: float = 100 * MB
    """Per-seed link cap (bytes/s): the agents' --rate-cap."""
    slo_itl_seconds: float | None = None
    """None: chosen from the baseline (see choose_slo)."""
    slo_budget: float = 0.01
    fork_streams: int = 2
    """Concurrent fork loops: one fork's tail overlaps the next one's start, so demand never stops."""
    warmup_seconds: float = 8.0
    ab_rounds: int = 3
    ab_block_seconds: float = 6.0
    """Baseline and unthrottled are measured in ``ab_rounds`` alternating blocks of this length."""
    sweep_fractions: tuple[float, ...] = (0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.12, 0.08)
    """Fixed per-seed rates tried, as fractions of the cap, highest first: the oracle is the first that
    meets the SLO, so the best fixed rate lies between it and the level above (a 10 %-of-cap grid)."""
    sweep_seconds: float = 10.0
    drain_seconds: float = 4.0
    """No transfer before each sweep point and each A block after a B block, so neither inherits the
    queue a heavier rate before it built (arrivals are open-loop)."""
    throttled_seconds: float = 60.0
    throttled_measure_seconds: float = 45.0
    """The throttled figures cover the last this-many seconds of phase C (the controller starts at its floor)."""
    idle_seconds: float = 10.0
    spike_seconds: float = 15.0
    recovery_timeout_seconds: float = 25.0
    settle_seconds: float = 2.0
    itl_buckets: tuple[float, ...] | None = FINE_ITL_BUCKETS
    """The seeds' ITL histogram bounds (SGLang's ``--bucket-inter-token-latency``); None: SGLang's defaults,
    which step 5 ms around a 15-25 ms baseline, so no bound sits near 1.15x its p99."""
    pin_seeds: bool = True
    """Pin each seed stand-in to its own CPU (as if on its own host): on a 2-core machine two seeds
    otherwise share both cores, and each seed's controller sees the other seed's transfer too."""
    decode_layers: int | None = 2
    """Layer passes per decode step on every seed (None: each seed calibrates at start, which differs
    between seeds on a busy machine)."""
    log_dir: str | None = None
    device: str = "cpu"
    """Where the seeds hold their weights and decode, and the fork clients land bytes (cpu, cuda, cuda:N)."""


# --------------------------------------------------------------------------- SLO choice


def choose_slo(baseline: WindowHistogram, budget: float, max_ratio: float = 1.15,
               max_base_share: float = 0.75) -> tuple[float, str]:
    """The ITL SLO for this testbed, from the no-transfer baseline window.

    A threshold must be a bucket bound (the controller reads the fraction of
    tokens above it) and must leave the transfer some of the budget: the seed
    alone may put at most ``max_base_share`` x budget of its tokens above it
    (else any transfer at all breaks the SLO and the oracle is zero). 0.75
    keeps the SLO within 1.15x the baseline p99 in most runs; with 0.6 the
    throttled p99 met the SLO more often but the SLO itself landed at
    1.18-1.25x the baseline (docs/benchmarks.md, runs 10-12). Among
    those, take the largest bound <= ``max_ratio`` x the baseline p99, so that
    meeting the SLO means p99 <= 1.15 x baseline; if there is none (coarse
    buckets, a heavy baseline tail), the smallest one, and say so.

        >>> w = WindowHistogram((0.025, 0.03, 0.035, 0.04, math.inf), (9000, 9880, 9940, 9990, 10000))
        >>> choose_slo(w, 0.01)[0]   # p99 ~ 0.0342; 0.035 has 0.6 % above it (<= 0.75 %)
        0.035
    """
    p99 = quantile(baseline, 0.99)
    finite = [b for b in baseline.bounds if math.isfinite(b)]
    roomy = [b for b in finite if fraction_above(baseline, b).fraction <= max_base_share * budget]
    if not roomy:
        raise RuntimeError(f"no ITL bucket bound has <= {max_base_share * budget:.2%} of the seed's tokens above it "
                           f"without a transfer (baseline p99 {p99 * 1000:.1f} ms); lower --load-rps")
    tight = [b for b in roomy if b <= max_ratio * p99]
    t = max(tight) if tight else min(roomy)
    f = fraction_above(baseline, t).fraction
    how = (f"largest ITL bucket bound <= {max_ratio}x the baseline p99 ({p99 * 1000:.1f} ms) where the seed alone "
           f"uses <= {max_base_share:.0%} of the {budget:.0%} budget (it puts {f:.2%} of tokens above "
           f"{t * 1000:g} ms)")
    if not tight:
        how = (f"smallest ITL bucket bound where the seed alone uses <= {max_base_share:.0%} of the {budget:.0%} "
               f"budget ({f:.2%} of tokens above {t * 1000:g} ms): {t / p99:.2f}x the baseline p99 "
               f"({p99 * 1000:.1f} ms), above the {max_ratio}x target; no tighter bound leaves the transfer room")
    return t, how


# --------------------------------------------------------------------------- measurement


@dataclass
class Sample:
    t: float
    phase: str
    rates: list[float | None]
    modes: list[str | None]
    itl_p99: list[float]
    itl_tokens: list[float]
    bytes_landed: int
    #: Share of each seed's tokens this second above the SLO (None until the SLO is chosen).
    itl_fraction_above_slo: list[float | None]
    #: Each agent's last decision, in its own words (why it cut, held or raised).
    reasons: list[str | None]


@dataclass
class PhaseResult:
    name: str
    start: float
    end: float
    bytes: int
    itl: WindowHistogram | None
    per_seed_p99: list[float]
    per_seed: list[WindowHistogram | None] = field(default_factory=list)
    measured_seconds: float | None = None
    """Seconds actually measured (blocks combined); None: end - start."""
    cpu_busy: float = math.nan
    """Share of the host's CPU time that was busy during the phase (NaN where /proc/stat is missing)."""

    @property
    def seconds(self) -> float:
        return self.measured_seconds if self.measured_seconds is not None else self.end - self.start

    @property
    def throughput(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else math.nan

    @property
    def p99(self) -> float:
        return quantile(self.itl, 0.99) if self.itl is not None else math.nan

    def fraction_above(self, threshold: float) -> float:
        return fraction_above(self.itl, threshold).fraction if self.itl is not None else math.nan


class Observer:
    """Scrapes every seed's /metrics and every agent's /v1/throttle; counts landed bytes."""

    def __init__(self, fleet, t0: float) -> None:
        self.fleet = fleet
        self.t0 = t0
        self.http = httpx.Client(timeout=2.0)
        self.bytes_landed = 0
        self._lock = threading.Lock()
        self.samples: list[Sample] = []
        self.rate_trace: list[tuple[float, list[float | None]]] = []
        self.phase = "warmup"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: list[CumulativeHistogram | None] = [None] * len(fleet.seeds)
        #: The ITL SLO once chosen; per-second samples then record the share of tokens above it.
        self.slo: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_landed += n

    def landed(self) -> int:
        with self._lock:
            return self.bytes_landed

    def itl(self) -> list[CumulativeHistogram]:
        out = []
        for seed in self.fleet.seeds:
            body = self.http.get(f"{seed.url}/metrics").text
            out.append(parse_sglang_scrape(body, taken_at=self.now()).histograms[ITL_HISTOGRAM])
        return out

    def throttles(self) -> list[dict]:
        return [self.http.get(f"{s.agent_url}/v1/throttle").json() for s in self.fleet.seeds]

    def put_throttle(self, **body) -> None:
        for seed in self.fleet.seeds:
            r = self.http.put(f"{seed.agent_url}/v1/throttle", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"PUT {seed.agent_url}/v1/throttle {body}: {r.status_code} {r.text}")

    def set_load(self, rps: float) -> None:
        for seed in self.fleet.seeds:
            self.http.post(f"{seed.url}/testbed/load", json={"rps": rps}).raise_for_status()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="qos-observer")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        # Allowed rates every 0.25 s (spike reaction is timed from them); seed histograms every 1 s.
        next_sample = self.now()
        http = httpx.Client(timeout=2.0)
        while not self._stop.is_set():
            now = self.now()
            try:
                rates = [http.get(f"{s.agent_url}/v1/throttle").json() for s in self.fleet.seeds]
                self.rate_trace.append((now, [r["allowed_rate_bytes_per_second"] for r in rates]))
                if now >= next_sample:
                    next_sample += 1.0
                    cums = []
                    for seed in self.fleet.seeds:
                        body = http.get(f"{seed.url}/metrics").text
                        cums.append(parse_sglang_scrape(body, taken_at=now).histograms.get(ITL_HISTOGRAM))
                    p99s, tokens, above = [], [], []
                    for i, cum in enumerate(cums):
                        prev, self._last[i] = self._last[i], cum
                        w = histogram_window(prev, cum) if prev is not None and cum is not None else None
                        ok = isinstance(w, WindowHistogram)
                        p99s.append(quantile(w, 0.99) if ok else math.nan)
                        tokens.append(observations(w) if ok else 0.0)
                        f = fraction_above(w, self.slo).fraction if ok and self.slo and observations(w) else None
                        above.append(f)
                    self.samples.append(Sample(
                        round(now, 2), self.phase, [r["allowed_rate_bytes_per_second"] for r in rates],
                        [r["controller_mode"] for r in rates], p99s, tokens, self.landed(), above,
                        [r.get("reason") for r in rates]))
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                log.debug("observer: %s", exc)
            self._stop.wait(0.25)
        http.close()

    def measure(self, name: str, seconds: float) -> PhaseResult:
        """Hold the current setting for ``seconds``; the seeds' ITL and landed bytes over exactly that span."""
        start, before, bytes0, cpu0 = self.now(), self.itl(), self.landed(), _cpu_times()
        time.sleep(seconds)
        end, after, bytes1, cpu1 = self.now(), self.itl(), self.landed(), _cpu_times()
        windows = [histogram_window(a, b) for a, b in zip(before, after)]
        good = [w for w in windows if isinstance(w, WindowHistogram)]
        per_seed = [quantile(w, 0.99) if isinstance(w, WindowHistogram) else math.nan for w in windows]
        pooled = pool(good) if good else None
        result = PhaseResult(name, start, end, bytes1 - bytes0, pooled, per_seed,
                             [w if isinstance(w, WindowHistogram) else None for w in windows],
                             cpu_busy=_busy_share(cpu0, cpu1))
        self.report(result)
        return result

    @staticmethod
    def report(result: PhaseResult) -> None:
        per_seed, pooled, name = result.per_seed_p99, result.itl, result.name
        print(f"  {name:28} ITL p99 {result.p99 * 1000:6.1f} ms (per seed "
              f"{', '.join(f'{p * 1000:.1f}' for p in per_seed)}), {observations(pooled) if pooled else 0:.0f} "
              f"tokens; fork {format_rate(result.throughput)}; CPU {result.cpu_busy:.0%} busy", flush=True)


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _busy_share(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float:
    if a is None or b is None or b[1] <= a[1]:
        return math.nan
    return (b[0] - a[0]) / (b[1] - a[1])


def combine(name: str, blocks: list[PhaseResult]) -> PhaseResult:
    """Blocks of one condition measured at different times, as one result (windows pooled, bytes summed)."""
    seeds = max(len(b.per_seed) for b in blocks)
    per_seed = []
    for i in range(seeds):
        ws = [b.per_seed[i] for b in blocks if i < len(b.per_seed) and b.per_seed[i] is not None]
        per_seed.append(pool(ws) if ws else None)
    good = [w for w in per_seed if w is not None]
    return PhaseResult(
        name, blocks[0].start, blocks[-1].end, sum(b.bytes for b in blocks), pool(good) if good else None,
        [quantile(w, 0.99) if w is not None else math.nan for w in per_seed], per_seed,
        measured_seconds=sum(b.seconds for b in blocks),
        cpu_busy=sum(b.cpu_busy * b.seconds for b in blocks) / max(sum(b.seconds for b in blocks), 1e-9),
    )


class ForkDriver:
    """``streams`` fork loops in one thread, forking the same rank over and over until stopped."""

    def __init__(self, fleet, observer: Observer, streams: int, chunk_size: int, device: str = "cpu") -> None:
        import torch

        from rfork_agent.destination import allocate_like
        from rfork_agent.fork import register_tensors
        from rfork_agent.transport import MooncakeTransport
        from testbed.orchestrator import seed_te_info

        self.fleet, self.observer, self.chunk_size = fleet, observer, chunk_size
        self.identity = fleet.identity()
        self.transport = MooncakeTransport(protocol=fleet.spec.protocol, local_ip="127.0.0.1")
        _, manifest = seed_te_info(fleet.seeds[0].url, 0)
        self.destinations = []
        for _ in range(streams):
            tensors, _buffer = allocate_like(manifest, torch, device=device)
            register_tensors(self.transport, tensors)
            self.destinations.append(tensors)
        self.forks_done = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="forks")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    async def _main(self) -> None:
        await asyncio.gather(*(self._loop(t) for t in self.destinations))

    async def _loop(self, tensors) -> None:
        from rfork_agent.fork import ForkClient

        seen: dict[str, int] = {}

        def progress(p) -> None:
            done = seen.get("bytes", 0)
            self.observer.add_bytes(p.bytes_done - done)
            seen["bytes"] = p.bytes_done

        client = ForkClient(self.fleet.scheduler_url, self.transport, progress=progress)
        while not self._stop.is_set():
            seen["bytes"] = 0
            try:
                await client.fork(self.identity, 0, tensors, chunk_size_bytes=self.chunk_size)
                self.forks_done += 1
            except Exception as exc:  # noqa: BLE001 - a fork loop must outlive one failed fork
                if self._stop.is_set():
                    return  # the fleet is stopping under us
                self.errors.append(f"{exc.__class__.__name__}: {exc}")
                log.warning("fork failed: %s", exc)
                await asyncio.sleep(1)


# --------------------------------------------------------------------------- the run


def _wait_rates(observer: Observer, predicate, timeout: float) -> float | None:
    """Seconds until ``predicate(rates)`` holds for the agents' allowed rates (polled every 0.1 s), or None."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        rates = [t["allowed_rate_bytes_per_second"] for t in observer.throttles()]
        if predicate(rates):
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def _first_time(trace: list[tuple[float, list[float | None]]], since: float, predicate) -> float | None:
    return next((t - since for t, rates in trace if t >= since and predicate(rates)), None)


def run_qos_bench(options: QosBenchOptions) -> dict:
    quiet_mooncake_by_default()  # glog chatter on stderr, here and in the fleet's processes
    from testbed.fleet import Fleet, FleetSpec

    spec = FleetSpec(
        seeds=options.seeds, preset=None, size_bytes=options.size_bytes, load_rps=0.0,
        seed_rates=(options.cap,), log_dir=options.log_dir, device=options.device,
        agent_args=("--throttle", "off", "--slo-budget", str(options.slo_budget)), pin_seeds=options.pin_seeds,
        seed_args=(() if options.decode_layers is None else ("--decode-layers", str(options.decode_layers)))
        + (() if options.itl_buckets is None
           else ("--bucket-inter-token-latency", *(f"{b:g}" for b in options.itl_buckets))),
    )
    cap, n = options.cap, options.seeds
    result: dict = {"options": asdict(options), "targets": TARGETS}
    print(f"rfork bench qos: {n} seeds, {options.size_bytes / 2**20:.0f} MiB model, load {options.load_rps:g} "
          f"req/s per seed, cap {format_rate(cap)} per seed", flush=True)
    with Fleet(spec) as fleet:
        observer = Observer(fleet, time.monotonic())
        result["log_dir"] = str(fleet.log_dir)
        driver = ForkDriver(fleet, observer, options.fork_streams, options.chunk_size, options.device)
        observer.start()
        observer.set_load(options.load_rps)
        time.sleep(options.warmup_seconds)

        # A/B, interleaved: the machine is shared, so its background load drifts; alternating short
        # blocks of "no transfer" (fixed rate 0: leases wait) and "throttle off" (the agents pace at
        # the cap) exposes both conditions to the same drift.
        driver.start()
        baseline_blocks, unthrottled_blocks = [], []
        for block in range(options.ab_rounds):
            observer.phase = "baseline"
            observer.put_throttle(mode="fixed", rate_bytes_per_second=0.0)
            # After a B block: let the queue the unthrottled transfer built drain.
            time.sleep(options.settle_seconds if block == 0 else options.drain_seconds)
            baseline_blocks.append(observer.measure(f"A{block + 1} baseline (no transfer)", options.ab_block_seconds))
            observer.phase = "unthrottled"
            observer.put_throttle(mode="off")
            time.sleep(options.settle_seconds)
            unthrottled_blocks.append(observer.measure(f"B{block + 1} unthrottled (throttle off)",
                                                       options.ab_block_seconds))
        baseline = combine("A baseline (no transfer)", baseline_blocks)
        unthrottled = combine("B unthrottled (throttle off)", unthrottled_blocks)
        observer.report(baseline)
        observer.report(unthrottled)
        if baseline.itl is None or observations(baseline.itl) < 1000:
            raise RuntimeError(f"the seeds produced too few tokens for a baseline; logs in {fleet.log_dir}")
        if options.slo_itl_seconds is None:
            slo, slo_how = choose_slo(baseline.itl, options.slo_budget)
        else:
            slo, slo_how = options.slo_itl_seconds, "given by --slo-itl"
        print(f"  SLO: ITL {slo * 1000:g} ms, budget {options.slo_budget:.0%} ({slo_how})", flush=True)
        observer.slo = slo

        # S. sweep fixed rates, highest first, until one meets the SLO. Phase B is its first
        # point: with the throttle off the agents pace at the cap.
        def point(rate: float, r: PhaseResult) -> dict:
            f = r.fraction_above(slo)
            return {"rate_per_seed_bytes_per_second": rate, "throughput_bytes_per_second": r.throughput,
                    "itl_p99_seconds": r.p99, "itl_fraction_above_slo": f, "met_slo": f <= options.slo_budget,
                    "cpu_busy_share": r.cpu_busy}

        sweep = [point(cap, unthrottled)]
        oracle = sweep[0] if sweep[0]["met_slo"] else None
        for fraction in options.sweep_fractions if oracle is None else ():
            rate = fraction * cap
            observer.phase = "sweep"
            # Open-loop arrivals queue up while a heavier rate slows the seed, and that backlog
            # slows the next steps too: pause first, or each point inherits the one above it.
            observer.put_throttle(mode="fixed", rate_bytes_per_second=0.0)
            time.sleep(options.drain_seconds)
            observer.put_throttle(mode="fixed", rate_bytes_per_second=rate)
            time.sleep(options.settle_seconds)
            r = observer.measure(f"S fixed {format_rate(rate)}/seed", options.sweep_seconds)
            sweep.append(point(rate, r))
            if sweep[-1]["met_slo"]:
                oracle = sweep[-1]
                break

        # One more baseline block, next to phase C in time.
        observer.phase = "baseline"
        observer.put_throttle(mode="fixed", rate_bytes_per_second=0.0)
        time.sleep(options.settle_seconds)
        # It is reported beside phase C (the machine's load may have moved since A/B), not pooled into A.
        adjacent = observer.measure("A4 baseline (no transfer)", options.ab_block_seconds)

        # C. adaptive throttle (starts at its floor and climbs).
        observer.phase = "throttled"
        observer.put_throttle(mode="adaptive", slo_itl_seconds=slo)
        ramp = options.throttled_seconds - options.throttled_measure_seconds
        whole_start_bytes, whole_start = observer.landed(), observer.now()
        time.sleep(ramp)
        throttled = observer.measure("C throttled (adaptive)", options.throttled_measure_seconds)
        throttled_whole = (observer.landed() - whole_start_bytes) / (observer.now() - whole_start)

        # D. spike: idle seeds (-> cap), load on mid-fork, load off again.
        observer.phase = "idle"
        observer.set_load(0.0)
        to_cap = _wait_rates(observer, lambda rs: all(r is not None and r >= cap for r in rs), 15.0)
        # Time to the cap is reported on its own; the throughput at it is measured once chunks
        # leased at the old rate have landed.
        time.sleep(options.settle_seconds)
        idle = observer.measure("D idle seeds, fork at cap", options.idle_seconds)
        observer.phase = "spike"
        oracle_rate = oracle["rate_per_seed_bytes_per_second"] if oracle else None
        observer.set_load(options.load_rps)
        load_on = observer.now()
        reaction = _wait_rates(
            observer, lambda rs: all(r is not None and r <= (oracle_rate or 0.0) for r in rs), options.spike_seconds)
        time.sleep(max(options.spike_seconds - (observer.now() - load_on), 0))
        observer.phase = "recovery"
        observer.set_load(0.0)
        load_off = observer.now()
        recovery = _wait_rates(
            observer, lambda rs: all(r is not None and r >= TARGETS["recovery_fraction_of_cap"] * cap for r in rs),
            options.recovery_timeout_seconds)
        time.sleep(2)
        observer.phase = "end"
        # Forks still running fail when the fleet stops under them: expected, not worth a warning.
        logging.getLogger("rfork.fork").setLevel(logging.CRITICAL)
        driver.stop()
        observer.stop()

        result.update({
            "seeds": n,
            "model_bytes": options.size_bytes,
            "load_rps_per_seed": options.load_rps,
            "slo_itl_seconds": slo,
            "slo_budget": options.slo_budget,
            "slo_choice": slo_how,
            # What the SLO was chosen from: the share of the seeds' no-transfer tokens above each bound.
            "baseline_fraction_above_bound": {
                f"{b:g}": fraction_above(baseline.itl, b).fraction
                for b in baseline.itl.bounds if math.isfinite(b) and 0.01 <= b <= 0.2},
            "cap_bytes_per_second": cap,
            "cap_aggregate_bytes_per_second": cap * n,
            "itl_p99_baseline_seconds": baseline.p99,
            "itl_p99_baseline_before_throttled_seconds": adjacent.p99,
            "itl_p99_unthrottled_seconds": unthrottled.p99,
            "itl_p99_throttled_seconds": throttled.p99,
            "itl_fraction_above_slo": {
                "baseline": baseline.fraction_above(slo), "unthrottled": unthrottled.fraction_above(slo),
                "baseline_before_throttled": adjacent.fraction_above(slo), "throttled": throttled.fraction_above(slo),
            },
            # Context for the latency figures: a saturated host delays decode steps whatever the fork does.
            "cpu_busy_share": {
                "baseline": baseline.cpu_busy, "unthrottled": unthrottled.cpu_busy,
                "baseline_before_throttled": adjacent.cpu_busy, "throttled": throttled.cpu_busy, "idle": idle.cpu_busy,
            },
            "itl_p99_per_seed_seconds": {
                "baseline": baseline.per_seed_p99, "unthrottled": unthrottled.per_seed_p99,
                "throttled": throttled.per_seed_p99,
            },
            "throughput_unthrottled_bytes_per_second": unthrottled.throughput,
            "throughput_throttled_bytes_per_second": throttled.throughput,
            "throughput_throttled_whole_phase_bytes_per_second": throttled_whole,
            "throughput_idle_bytes_per_second": idle.throughput,
            "oracle_bytes_per_second": oracle["throughput_bytes_per_second"] if oracle else None,
            "oracle_rate_per_seed_bytes_per_second": oracle_rate,
            "sweep": sweep,
            "seconds_to_cap_when_idle": to_cap,
            "spike_reaction_seconds": reaction,
            # Load on -> every seed below the cap (the controller's first move), from the 0.25 s rate trace.
            "spike_first_drop_seconds": _first_time(
                observer.rate_trace, load_on, lambda rs: all(r is not None and r < cap for r in rs)),
            "recovery_seconds": recovery,
            "forks_completed": driver.forks_done,
            "fork_errors": driver.errors[:5],
            "phases": {
                "load_on_at": load_on, "load_off_at": load_off,
                **{p.name: [round(p.start, 2), round(p.end, 2)] for p in (baseline, unthrottled, throttled, idle)},
            },
            "time_series": [asdict(s) for s in observer.samples],
        })
    result["checks"] = judge(result)
    return result


CONTEXT_CHECKS = ("throttled_p99_vs_adjacent_baseline",)


def judge(r: dict) -> dict:
    """Each target of issue #3: the measured ratio/seconds and whether it is met."""
    base, cap_total = r["itl_p99_baseline_seconds"], r["cap_aggregate_bytes_per_second"]
    oracle = r["oracle_bytes_per_second"]
    checks = {
        "unthrottled_p99_vs_baseline": (r["itl_p99_unthrottled_seconds"] / base, ">= 1.5"),
        "throttled_p99_vs_baseline": (r["itl_p99_throttled_seconds"] / base, "<= 1.15"),
        "throttled_p99_vs_slo": (r["itl_p99_throttled_seconds"] / r["slo_itl_seconds"], "<= 1.0"),
        # Context, not an issue target: the no-transfer block measured just before phase C.
        "throttled_p99_vs_adjacent_baseline": (
            r["itl_p99_throttled_seconds"] / r["itl_p99_baseline_before_throttled_seconds"], "<= 1.15"),
        "throttled_vs_oracle": (r["throughput_throttled_bytes_per_second"] / oracle if oracle else None, ">= 0.8"),
        "idle_vs_cap": (r["throughput_idle_bytes_per_second"] / cap_total, ">= 0.95"),
        "spike_reaction_seconds": (r["spike_reaction_seconds"], "<= 3"),
        "recovery_seconds": (r["recovery_seconds"], "<= 20"),
    }
    out = {}
    for name, (value, target) in checks.items():
        op, bound = target.split()
        met = value is not None and (value >= float(bound) if op == ">=" else value <= float(bound))
        out[name] = {"value": value, "target": target, "met": met, "issue_target": name not in CONTEXT_CHECKS}
    return out


# --------------------------------------------------------------------------- plot


def pooled_share_above_slo(series: list[dict], seed: int, seconds: float) -> list[float | None]:
    """Per sample, the share of ``seed``'s tokens over the SLO in the trailing ``seconds``, token-weighted.

    The controller judges pooled evidence like this (``ControllerConfig.judge_window_seconds``),
    not one second's p99: a second holds ~500 tokens, so 1 % of them is 5 tokens and one
    stalled decode step puts that second's p99 over the SLO.

        >>> s = [{"t": t, "itl_tokens": [100.0], "itl_fraction_above_slo": [f]} for t, f in ((1, 0.0), (2, 0.04))]
        >>> pooled_share_above_slo(s, 0, 4.0)
        [0.0, 0.02]
    """
    out: list[float | None] = []
    for k, sample in enumerate(series):
        over = tokens = 0.0
        for past in reversed(series[: k + 1]):
            if sample["t"] - past["t"] >= seconds - 1e-9:
                break
            f, n = past["itl_fraction_above_slo"][seed], past["itl_tokens"][seed]
            if f is not None and n:
                over, tokens = over + f * n, tokens + n
        out.append(over / tokens if tokens else None)
    return out


def _spans(series: list[dict], key) -> list[tuple[object, float, float]]:
    """(value, start, end) runs of ``key(sample)`` over the series, each ending where the next starts."""
    runs: list[tuple[object, float, float]] = []
    for k, sample in enumerate(series):
        end = series[k + 1]["t"] if k + 1 < len(series) else sample["t"]
        value = key(sample)
        if runs and runs[-1][0] == value and runs[-1][2] == sample["t"]:
            runs[-1] = (value, runs[-1][1], end)
        else:
            runs.append((value, sample["t"], end))
    return runs


def plot(result: dict, path: str, judge_window_seconds: float = 4.0) -> None:
    """Allowed rate per seed (probes marked) over the share of tokens over the SLO against the budget.

    The lower panel shows what the controller acts on: the share of tokens over the SLO,
    pooled over ``judge_window_seconds``, against the budget (plus the throttled phase's
    share over all its tokens, the number the bench checks); 1-second shares are faint.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    series = result["time_series"]
    t = [s["t"] for s in series]
    n = result["seeds"]
    budget = result["slo_budget"]
    colors = [f"C{i}" for i in range(n)]
    fig, (ax_rate, ax_share) = plt.subplots(2, 1, figsize=(13, 7.5), sharex=True)

    # Phases: alternating bands, names in a strip above the top panel where no legend can cover them.
    phases = [(name, a, b) for name, a, b in _spans(series, lambda s: s["phase"])]
    for k, (name, a, b) in enumerate(phases):
        for ax in (ax_rate, ax_share):
            ax.axvspan(a, b, color="0.93" if k % 2 else "white", zorder=0)
        ax_rate.text((a + b) / 2, 1.01 + 0.05 * (k % 3), name, transform=ax_rate.get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=7)

    # Probes: the controller pauses a seed's transfer to measure its no-transfer baseline.
    probes = False
    for i in range(n):
        for mode, a, b in _spans(series, lambda s, i=i: s["modes"][i]):
            if mode == "probe_pause":
                probes = True
                for ax in (ax_rate, ax_share):
                    ax.axvspan(a, b, color=colors[i], alpha=0.25, lw=0, zorder=1)

    for i in range(n):
        ax_rate.step(t, [(s["rates"][i] or 0) / MB for s in series], where="post", color=colors[i],
                     label=f"seed-{i} allowed")
    ax_rate.axhline(result["cap_bytes_per_second"] / MB, color="grey", ls=":", label="cap")
    if result.get("oracle_rate_per_seed_bytes_per_second"):
        ax_rate.axhline(result["oracle_rate_per_seed_bytes_per_second"] / MB, color="green", ls="--",
                        label="oracle (best fixed\nrate meeting the SLO)")
    handles, _ = ax_rate.get_legend_handles_labels()
    if probes:
        handles.append(Patch(color="0.5", alpha=0.35, label="probe: transfer paused\n(no-transfer baseline)"))
    ax_rate.set_ylabel("allowed rate per seed (MB/s)")
    ax_rate.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)

    top = 5 * budget
    for i in range(n):
        second = [s["itl_fraction_above_slo"][i] for s in series]
        ax_share.plot(t, [None if f is None else min(f, top) for f in second], color=colors[i], lw=0.6, alpha=0.35,
                      label=f"seed-{i}, each second")
        pooled = pooled_share_above_slo(series, i, judge_window_seconds)
        ax_share.plot(t, [None if f is None else min(f, top) for f in pooled], color=colors[i], lw=1.6,
                      label=f"seed-{i}, pooled over {judge_window_seconds:g} s\n(what the controller judges)")
    ax_share.axhline(budget, color="red", ls="--", label=f"budget ({budget:.0%} of tokens)")
    throttled = (result.get("itl_fraction_above_slo") or {}).get("throttled")
    window = next((w for name, w in (result.get("phases") or {}).items() if name.startswith("C ")), None)
    if throttled is not None and window:
        ax_share.hlines(throttled, *window, color="black", lw=2.5,
                        label=f"throttled phase, all tokens\n(the bench's check): {throttled:.2%}")
    ax_share.set_ylim(0, top)
    ax_share.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=1))
    ax_share.set_ylabel(f"tokens over the ITL SLO\n(clipped at {top:.0%})")
    ax_share.set_xlabel("seconds")
    ax_share.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)

    fig.suptitle(f"rfork serving-QoS throttle: {n} seeds, load {result['load_rps_per_seed']:g} req/s each, "
                 f"ITL SLO {result['slo_itl_seconds'] * 1000:g} ms, budget {budget:.0%} of tokens")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write the result here")
    p.add_argument("--plot", dest="plot_path", default=None, metavar="PATH.png",
                   help="plot per-seed allowed rate and ITL p99 vs the SLO over time")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--size", default="256MiB", help="model size (default 256MiB)")
    p.add_argument("--chunk-size", default="8MiB", help="chunk size (default 8MiB)")
    p.add_argument("--load-rps", type=float, default=8.0, help="requests/s on each seed (default 8)")
    p.add_argument("--cap", default="100MB/s", help="per-seed link cap (default 100MB/s)")
    p.add_argument("--slo-itl", type=float, default=None, help="ITL SLO in seconds (default: chosen from the baseline)")
    p.add_argument("--slo-budget", type=float, default=0.01)
    p.add_argument("--decode-layers", type=int, default=2,
                   help="layer passes per decode step on every seed (default 2; 0 = calibrate per seed)")
    p.add_argument("--sglang-default-buckets", action="store_true",
                   help="seeds export SGLang's default ITL buckets (5 ms apart near the baseline) instead of "
                        "bounds 5%% apart from 1 to 100 ms; the SLO then lands on a coarser bound")
    p.add_argument("--no-pin-seeds", action="store_true",
                   help="let the seed stand-ins float over all CPUs (default: seed i on CPU i)")
    p.add_argument("--log-dir", default=None)
    add_log_arguments(p, default="warning")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: seeds' weights and decode, "
                                                   "fork clients' destination")


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1 or args.load_rps <= 0 or not 0 < args.slo_budget < 1:
        print("rfork bench qos: error: --seeds >= 1, --load-rps > 0 and 0 < --slo-budget < 1", file=sys.stderr)
        return 2
    try:
        size, chunk, cap = parse_size(args.size), parse_size(args.chunk_size), parse_rate(args.cap)
    except UnitError as exc:
        print(f"rfork bench qos: error: {exc}", file=sys.stderr)
        return 2
    if not cap:
        print(f"rfork bench qos: error: --cap {args.cap!r}: the throttle needs a link rate > 0, e.g. 100MB/s",
              file=sys.stderr)
        return 2
    options = QosBenchOptions(
        seeds=args.seeds, size_bytes=size, chunk_size=chunk,
        load_rps=args.load_rps, cap=cap, slo_itl_seconds=args.slo_itl,
        slo_budget=args.slo_budget, log_dir=args.log_dir, decode_layers=args.decode_layers or None,
        device=getattr(args, "device", "cpu"),
        itl_buckets=None if getattr(args, "sglang_default_buckets", False) else FINE_ITL_BUCKETS,
        pin_seeds=not getattr(args, "no_pin_seeds", False),
    )
    # SIGTERM (a timeout, a CI cancel) must still stop the fleet's processes: make it unwind like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    result = run_qos_bench(options)
    print()
    for name, c in result["checks"].items():
        value = c["value"]
        text = "n/a" if value is None else f"{value:.2f}"
        kind = "target" if c["issue_target"] else "context"
        print(f"{'PASS' if c['met'] else 'MISS'}  {name:36} {text:>8}   [{kind} {c['target']}]")
    oracle = result["oracle_bytes_per_second"]
    print(f"oracle {'none met the SLO' if oracle is None else format_rate(oracle)}, throttled "
          f"{format_rate(result['throughput_throttled_bytes_per_second'])}, unthrottled "
          f"{format_rate(result['throughput_unthrottled_bytes_per_second'])}, idle "
          f"{format_rate(result['throughput_idle_bytes_per_second'])}")
    if args.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as f:
            json.dump(_finite(result), f, indent=2)
        print(f"wrote {args.json_path}")
    if args.plot_path:
        plot(result, args.plot_path)
        print(f"wrote {args.plot_path}")
    return 0 if all(c["met"] for c in result["checks"].values() if c["issue_target"]) else 1


def _finite(x):
    """JSON has no NaN: unknown values become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.qos_bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    setup_logging_from_args(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
