"""A real CPU decode loop over the seed's own weights, exporting SGLang's latency metrics.

The QoS controller throttles fork traffic by the serving latency a seed reports
(docs/qos.md), so the stand-in has to serve: requests arrive open-loop
(Poisson at ``rps``) and/or closed-loop (``concurrency`` requests kept in
flight, as a serving benchmark's clients do), optionally in on/off bursts
(``LoadShape``); one scheduler thread runs continuously batched steps whose
matmuls read the very buffers the TransferEngine serves to forking clients, and
the latencies land in histograms named, labelled and bucketed exactly as
SGLang 0.5.23's ``TokenizerMetricsCollector`` / ``SchedulerMetricsCollector``
do. A transfer that steals memory bandwidth or CPU from the seed therefore
shows up in ``sglang:inter_token_latency_seconds`` as it would on a real seed.

    >>> from prometheus_client import CollectorRegistry
    >>> from testbed.presets import get_preset
    >>> from testbed.weights import materialize
    >>> weights = [materialize(get_preset("tiny"), 0, rng_seed=1)]
    >>> loop = DecodeLoop(weights, DecodeConfig(layers_per_step=2), DecodeMetrics(CollectorRegistry(), "tiny"))
    >>> loop.start(); loop.set_load(50.0)      # requests/s, changeable any time
    >>> loop.set_shape(LoadShape(concurrency=64, on_seconds=2, off_seconds=2))  # 64 in flight, bursts
    >>> loop.stop()

Pieces: ``BatchScheduler`` decides each step's batch and records latencies (no
threads, no torch: step it by hand in tests), ``ForwardPass`` does the math,
``DecodeLoop`` owns the two threads (arrivals, steps) and the load knob.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from testbed.weights import RankWeights

log = logging.getLogger("rfork.testbed.decode")

# SGLang 0.5.23 default buckets (srt/observability/metrics_collector.py).
TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
E2E_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600, 1200, 1800, 2400)
ITL_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040,
               0.060, 0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000)

LOGIT_ROWS = 4096
"""Vocab rows scored per sampled token: enough to make sampling cost something,
bounded so a 150k vocab does not dominate the step."""


@dataclass(frozen=True)
class DecodeConfig:
    """How the stand-in serves.

        >>> DecodeConfig(load_rps=20.0, output_tokens=32).max_running_requests
        64
    """

    load_rps: float = 0.0
    """Mean open-loop arrival rate (requests/s); 0 = idle."""
    prompt_tokens: int = 32
    output_tokens: int = 64
    """Tokens each request generates (the first comes from its prefill step)."""
    output_tokens_jitter: float = 0.0
    """Each request generates ``output_tokens`` x a uniform factor in [1 - jitter, 1 + jitter]: real
    outputs differ in length, so a closed loop's requests finish (and new ones prefill) spread out
    instead of in lockstep."""
    load_concurrency: int = 0
    """Closed-loop requests kept in flight from the start (0 = none; see ``LoadShape``)."""
    max_running_requests: int = 64
    max_queued_requests: int = 256
    """Arrivals beyond this many waiting are rejected (counted as aborted), so an
    overload cannot grow the queue without bound."""
    max_prefill_tokens: int = 256
    """Prompt tokens one prefill step may take (SGLang's chunked-prefill budget)."""
    target_step_ms: float = 15.0
    """Calibrate layers per step so an 8-request decode step costs about this."""
    layers_per_step: int | None = None
    """Fix the layer passes per step instead of calibrating (reproducible benchmarks)."""
    stream: bool = True
    """Label requests ``is_streaming="true"``, as chat traffic is."""
    seed: int = 0
    """Seeds arrivals and prompts, so two runs see the same request sequence."""

    def __post_init__(self) -> None:
        _check_rps(self.load_rps)
        LoadShape(rps=self.load_rps, concurrency=self.load_concurrency)  # raises on a bad value
        if not 0 <= self.output_tokens_jitter < 1:
            raise ValueError(f"output_tokens_jitter must be in [0, 1), got {self.output_tokens_jitter}")
        for name in ("prompt_tokens", "output_tokens", "max_running_requests", "max_queued_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_prefill_tokens < self.prompt_tokens:
            raise ValueError(f"max_prefill_tokens={self.max_prefill_tokens} is below prompt_tokens="
                             f"{self.prompt_tokens}; no prompt could ever be prefilled: raise it")
        if self.layers_per_step is not None and self.layers_per_step < 1:
            raise ValueError(f"layers_per_step must be at least 1, got {self.layers_per_step}")


@dataclass(frozen=True)
class LoadShape:
    """What arrives at the seed, changeable at run time (``DecodeLoop.set_shape``).

    ``rps``: open-loop Poisson arrivals per second. ``concurrency``: a closed loop
    that keeps this many requests in flight (queued or running), submitting a new
    one as soon as one finishes, as a serving benchmark's N concurrent clients do:
    every decode step then decodes one token for each of them (continuous
    batching, batch ~ ``concurrency``), whatever the machine's speed. Both may be
    set. With ``on_seconds`` and ``off_seconds`` both > 0 the load is bursty: on
    for ``on_seconds`` (from the moment it is set), then no arrivals for
    ``off_seconds`` (running requests finish), repeating.

        >>> LoadShape(concurrency=64, on_seconds=2, off_seconds=1).phase(2.5)   # off, back on in 0.5 s
        (False, 0.5)
        >>> LoadShape(rps=10).phase(1e6)
        (True, inf)
        >>> LoadShape(concurrency=-1)
        Traceback (most recent call last):
        ...
        ValueError: load concurrency must be a whole number of requests >= 0, got -1
    """

    rps: float = 0.0
    concurrency: int = 0
    on_seconds: float = 0.0
    off_seconds: float = 0.0

    def __post_init__(self) -> None:
        _check_rps(self.rps)
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 0:
            raise ValueError(f"load concurrency must be a whole number of requests >= 0, got {self.concurrency!r}")
        for name in ("on_seconds", "off_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"load {name} must be finite seconds >= 0, got {value!r}")
        if (self.on_seconds > 0) != (self.off_seconds > 0):
            raise ValueError(f"a bursty load needs both on_seconds and off_seconds > 0 (got on {self.on_seconds}, "
                             f"off {self.off_seconds}); give both, or neither for a steady load")

    @property
    def idle(self) -> bool:
        return self.rps == 0 and self.concurrency == 0

    def phase(self, elapsed: float) -> tuple[bool, float]:
        """(is the load on ``elapsed`` seconds after it was set, seconds until that changes)."""
        if self.on_seconds <= 0:
            return True, math.inf
        at = elapsed % (self.on_seconds + self.off_seconds)
        if at < self.on_seconds:
            return True, self.on_seconds - at
        return False, self.on_seconds + self.off_seconds - at

    def target_in_flight(self, elapsed: float) -> int:
        """Closed-loop requests to keep in flight at ``elapsed``: ``concurrency`` while on, else 0."""
        return self.concurrency if self.phase(elapsed)[0] else 0

    def rate(self, elapsed: float) -> float:
        """Open-loop arrival rate at ``elapsed``: ``rps`` while on, else 0."""
        return self.rps if self.phase(elapsed)[0] else 0.0


class DecodeMetrics:
    """SGLang's serving metrics on an explicit registry.

    Histograms and counters carry the tokenizer labels (``model_name``,
    ``engine_type``; plus ``is_streaming`` where SGLang has it); gauges carry the
    scheduler's (``model_name``, ``engine_type``, ``tp_rank``, ``pp_rank``,
    ``moe_ep_rank``), as exported by TP rank 0.

        >>> reg = CollectorRegistry()
        >>> m = DecodeMetrics(reg, "tiny")
        >>> m.observe_itl(0.012, tokens=3)
        >>> reg.get_sample_value("sglang:inter_token_latency_seconds_count",
        ...                      {"model_name": "tiny", "engine_type": "unified"})
        3.0
    """

    def __init__(self, registry: CollectorRegistry, model_name: str, tp_rank: int = 0,
                 itl_buckets: tuple[float, ...] = ITL_BUCKETS) -> None:
        # itl_buckets: SGLang's --bucket-inter-token-latency (its defaults when not given).
        self.labels = {"model_name": model_name, "engine_type": "unified"}
        self.scheduler_labels = {**self.labels, "tp_rank": str(tp_rank), "pp_rank": "0", "moe_ep_rank": "0"}
        names, stream_names, sched_names = list(self.labels), [*self.labels, "is_streaming"], list(self.scheduler_labels)
        self.time_to_first_token = Histogram(
            "sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            stream_names, buckets=TTFT_BUCKETS, registry=registry)
        self.inter_token_latency = Histogram(
            "sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            names, buckets=itl_buckets, registry=registry)
        self.request_time_per_output_token = Histogram(
            "sglang:request_time_per_output_token_seconds",
            "Per-request TPOT in seconds: (finished_time - first_token_time) / (completion_tokens - 1).",
            stream_names, buckets=itl_buckets, registry=registry)
        self.e2e_request_latency = Histogram(
            "sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
            stream_names, buckets=E2E_BUCKETS, registry=registry)
        self.prompt_tokens = Counter("sglang:prompt_tokens_total", "Number of prefill tokens processed.",
                                     stream_names, registry=registry)
        self.generation_tokens = Counter("sglang:generation_tokens_total", "Number of generation tokens processed.",
                                         stream_names, registry=registry)
        self.num_requests = Counter("sglang:num_requests_total", "Number of requests processed.",
                                    stream_names, registry=registry)
        self.num_aborted_requests = Counter("sglang:num_aborted_requests_total", "Number of requests aborted.",
                                            names, registry=registry)
        self.num_running_reqs = Gauge("sglang:num_running_reqs", "The number of running requests.",
                                      sched_names, registry=registry)
        self.num_queue_reqs = Gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.",
                                    sched_names, registry=registry)
        self.gen_throughput = Gauge("sglang:gen_throughput", "The generation throughput (token/s).",
                                    sched_names, registry=registry)
        self.token_usage = Gauge("sglang:token_usage", "The token usage.", sched_names, registry=registry)
        # Create the label sets now so a scrape before the first request already
        # lists every series (a controller tells "no traffic" from "no metrics").
        self.inter_token_latency.labels(**self.labels)
        self.num_aborted_requests.labels(**self.labels)
        for stream in ("true", "false"):
            self.time_to_first_token.labels(**self.labels, is_streaming=stream)
            self.e2e_request_latency.labels(**self.labels, is_streaming=stream)
        self.set_load_gauges(running=0, queued=0, throughput=0.0, token_usage=0.0)

    def _stream(self, stream: bool) -> dict[str, str]:
        return {**self.labels, "is_streaming": "true" if stream else "false"}

    def observe_ttft(self, seconds: float, stream: bool = True) -> None:
        self.time_to_first_token.labels(**self._stream(stream)).observe(seconds)

    def observe_itl(self, interval: float, tokens: int = 1) -> None:
        """SGLang's rule: a chunk of ``tokens`` over ``interval`` counts ``tokens`` times interval/tokens."""
        if tokens <= 0:
            return
        child = self.inter_token_latency.labels(**self.labels)
        for _ in range(tokens):
            child.observe(interval / tokens)

    def observe_finished(self, prompt_tokens: int, completion_tokens: int, e2e: float,
                         time_per_output_token: float | None, stream: bool = True) -> None:
        labels = self._stream(stream)
        self.prompt_tokens.labels(**labels).inc(prompt_tokens)
        self.generation_tokens.labels(**labels).inc(completion_tokens)
        self.num_requests.labels(**labels).inc()
        self.e2e_request_latency.labels(**labels).observe(e2e)
        if time_per_output_token is not None:
            self.request_time_per_output_token.labels(**labels).observe(time_per_output_token)

    def observe_aborted(self) -> None:
        self.num_aborted_requests.labels(**self.labels).inc()

    def set_load_gauges(self, running: int, queued: int, throughput: float, token_usage: float) -> None:
        self.num_running_reqs.labels(**self.scheduler_labels).set(running)
        self.num_queue_reqs.labels(**self.scheduler_labels).set(queued)
        self.gen_throughput.labels(**self.scheduler_labels).set(throughput)
        self.token_usage.labels(**self.scheduler_labels).set(token_usage)


@dataclass
class Request:
    rid: int
    arrival: float
    prompt: list[int]
    max_new_tokens: int
    output: list[int] = field(default_factory=list)
    first_token_time: float | None = None
    last_token_time: float = 0.0

    @property
    def done(self) -> bool:
        return len(self.output) >= self.max_new_tokens


@dataclass
class Batch:
    """One step's work: a prefill of new prompts, or one decode token for every running request."""

    kind: str  # "prefill" | "decode"
    requests: list[Request]

    def token_ids(self) -> tuple[list[int], list[int]]:
        """Input rows, and the row whose output samples each request's next token."""
        if self.kind == "prefill":
            rows: list[int] = []
            last: list[int] = []
            for r in self.requests:
                rows += r.prompt
                last.append(len(rows) - 1)
            return rows, last
        return [r.output[-1] for r in self.requests], list(range(len(self.requests)))


class BatchScheduler:
    """SGLang-style step decisions and latency bookkeeping; no threads, no torch.

    Waiting requests are prefilled first (up to ``max_prefill_tokens`` and
    ``max_running_requests``), as SGLang does without mixed chunks; otherwise
    every running request decodes one token. ``finish_step`` records TTFT for
    prefilled requests and one ITL sample per decoded token (the interval since
    that request's previous token, so prefills stall running requests' ITL just
    as they do on a real server).

        >>> reg = CollectorRegistry(); m = DecodeMetrics(reg, "m")
        >>> s = BatchScheduler(DecodeConfig(output_tokens=2), m)
        >>> s.add(Request(0, arrival=0.0, prompt=[1, 2], max_new_tokens=2))
        True
        >>> b = s.schedule(); b.kind
        'prefill'
        >>> s.finish_step(b, [7], now=0.5); s.finish_step(s.schedule(), [8], now=0.52)
        >>> s.num_running, s.completed
        (0, 1)
    """

    def __init__(self, config: DecodeConfig, metrics: DecodeMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.completed = 0
        self.rejected = 0
        self.generated_tokens = 0
        self.num_prefilling = 0
        """Requests taken off the queue by a prefill step that has not finished: in flight, neither queued nor running."""

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_in_flight(self) -> int:
        """Requests accepted and not finished: queued, being prefilled, or running."""
        return len(self.waiting) + self.num_prefilling + len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, request: Request) -> bool:
        """Queue ``request``; False (and counted as aborted) when the queue is full."""
        if len(self.waiting) >= self.config.max_queued_requests:
            self.rejected += 1
            self.metrics.observe_aborted()
            return False
        self.waiting.append(request)
        return True

    def schedule(self) -> Batch | None:
        admitted: list[Request] = []
        budget = self.config.max_prefill_tokens
        free = self.config.max_running_requests - len(self.running)
        while self.waiting and len(admitted) < free and len(self.waiting[0].prompt) <= budget:
            request = self.waiting.popleft()
            budget -= len(request.prompt)
            admitted.append(request)
        if admitted:
            self.num_prefilling = len(admitted)
            return Batch("prefill", admitted)
        if self.running:
            return Batch("decode", list(self.running))
        return None

    def finish_step(self, batch: Batch, next_tokens: list[int], now: float) -> None:
        stream = self.config.stream
        if batch.kind == "prefill":
            self.num_prefilling = 0
        for request, token in zip(batch.requests, next_tokens):
            request.output.append(token)
            self.generated_tokens += 1
            if batch.kind == "prefill":
                request.first_token_time = now
                self.metrics.observe_ttft(now - request.arrival, stream)
                self.running.append(request)
            else:
                self.metrics.observe_itl(now - request.last_token_time)
            request.last_token_time = now
        finished = [r for r in self.running if r.done]
        if finished:
            self.running = [r for r in self.running if not r.done]
        for r in finished:
            self.completed += 1
            n = len(r.output)
            first = r.first_token_time if r.first_token_time is not None else now
            tpot = (now - first) / (n - 1) if n > 1 else None
            self.metrics.observe_finished(len(r.prompt), n, now - r.arrival, tpot, stream)

    def token_usage(self) -> float:
        """Tokens held by running requests over what the running limit could hold."""
        capacity = self.config.max_running_requests * (self.config.prompt_tokens + self.config.output_tokens)
        return sum(len(r.prompt) + len(r.output) for r in self.running) / capacity


@dataclass
class _DenseMLP:
    gate_up: torch.Tensor
    down: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down)


@dataclass
class _MoEMLP:
    """Top-``k`` routing over per-expert (gate, up, down) weights, one expert at a time."""

    router: torch.Tensor
    experts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    k: int = 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weights, chosen = F.linear(x, self.router).softmax(dim=-1).topk(self.k, dim=-1)
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            gate, up, down = self.experts[e]
            h = x[rows]
            y = F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), down)
            out.index_add_(0, rows, y * weights[rows, slot].unsqueeze(-1))
        return out


def _mlp(tensors: dict[str, torch.Tensor], prefix: str) -> _DenseMLP | _MoEMLP:
    if f"{prefix}.gate_up_proj.weight" in tensors:
        return _DenseMLP(tensors[f"{prefix}.gate_up_proj.weight"], tensors[f"{prefix}.down_proj.weight"])
    router = tensors[f"{prefix}.gate.weight"]
    experts = [tuple(tensors[f"{prefix}.experts.{e}.{m}_proj.weight"] for m in ("gate", "up", "down"))
               for e in range(router.shape[0])]
    return _MoEMLP(router, experts)


@dataclass
class _Layer:
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    mlp: _DenseMLP | _MoEMLP
    input_norm: torch.Tensor
    post_norm: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(_rms_norm(x, self.input_norm), self.qkv, self.qkv_bias)
        # Attention over a KV cache is left out: it reads no weights, and the
        # point is that each step streams the registered weights through the CPU.
        x = x + F.linear(qkv[:, : self.o.shape[1]], self.o)
        return x + self.mlp(_rms_norm(x, self.post_norm))


class ForwardPass:
    """Embedding → some transformer layers → sampled token, over the seed's weights.

    Layer passes walk all ranks' layers round-robin and carry on where the last
    step stopped, so over a few steps every registered byte is read, as a real
    forward reads all of them. The math runs in the weights' dtype, in place on
    the registered buffers.
    """

    def __init__(self, ranks: list[RankWeights], layers_per_step: int = 1) -> None:
        first = ranks[0].tensors
        self.embed = first["model.embed_tokens.weight"]
        head = first.get("lm_head.weight", self.embed)
        self.head = head[: min(LOGIT_ROWS, head.shape[0])]
        self.norm = first["model.norm.weight"]
        num_layers = ranks[0].spec.arch.num_layers
        self.layers = [
            _Layer(
                qkv=w.tensors[f"model.layers.{i}.self_attn.qkv_proj.weight"],
                qkv_bias=w.tensors.get(f"model.layers.{i}.self_attn.qkv_proj.bias"),
                o=w.tensors[f"model.layers.{i}.self_attn.o_proj.weight"],
                mlp=_mlp(w.tensors, f"model.layers.{i}.mlp"),
                input_norm=w.tensors[f"model.layers.{i}.input_layernorm.weight"],
                post_norm=w.tensors[f"model.layers.{i}.post_attention_layernorm.weight"],
            )
            for i in range(num_layers) for w in ranks
        ]
        self.vocab_rows = min(self.embed.shape[0], self.head.shape[0])
        self.layers_per_step = layers_per_step
        self._cursor = 0

    @torch.inference_mode()
    def run(self, token_ids: list[int], sample_rows: list[int]) -> list[int]:
        """Next token for each row in ``sample_rows`` of the batch ``token_ids``."""
        device = self.embed.device  # cpu, or the GPU a seed holds its weights on
        x = self.embed[torch.tensor(token_ids, dtype=torch.long, device=device)]
        for _ in range(self.layers_per_step):
            if self.layers:
                x = self.layers[self._cursor](x)
                self._cursor = (self._cursor + 1) % len(self.layers)
        h = _rms_norm(x[torch.tensor(sample_rows, dtype=torch.long, device=device)], self.norm)
        return F.linear(h, self.head).argmax(dim=-1).remainder(self.vocab_rows).tolist()

    def calibrate(self, target_seconds: float, batch: int = 8, max_layers: int = 512) -> float:
        """Set ``layers_per_step`` so a ``batch``-request decode step costs about ``target_seconds``.

        Returns the measured step cost. Timing takes the median of a few steps:
        startup often shares the CPU with sibling seeds filling their weights.
        """
        tokens = list(range(batch))
        self.layers_per_step = 1
        self.run(tokens, tokens)  # warm up kernels and page in the first layer
        one = statistics.median(_timed(lambda: self.run(tokens, tokens)) for _ in range(5))
        self.layers_per_step = max(1, min(max_layers, round(target_seconds / max(one, 1e-6))))
        return statistics.median(_timed(lambda: self.run(tokens, tokens)) for _ in range(3))


class DecodeLoop:
    """The serving side of the seed stand-in: arrivals, batching, compute, metrics.

    ``set_shape(LoadShape(...))`` (or ``set_load(rps)``) takes effect at once:
    the open-loop arrival process is memoryless, so redrawing the next gap on a
    change (or at a burst's switch) is exact; a closed loop is topped up to its
    target after every step. ``submit()`` injects one request directly.

        >>> loop = DecodeLoop(weights, DecodeConfig(), metrics)   # doctest: +SKIP
        >>> loop.start(); loop.set_load(20); ...; loop.stop()     # doctest: +SKIP
    """

    def __init__(self, ranks: list[RankWeights], config: DecodeConfig, metrics: DecodeMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.forward = ForwardPass(ranks, config.layers_per_step or 1)
        self.scheduler = BatchScheduler(config, metrics)
        self.calibrated_step_seconds: float | None = None
        # (shape, when it was set, version): one attribute, so the step loop reads a consistent pair.
        self._shape_state = (LoadShape(rps=config.load_rps, concurrency=config.load_concurrency), clock(), 0)
        self._rng = random.Random(config.seed)
        self._next_rid = 0
        self._work = threading.Condition()
        self._arrivals = threading.Condition()
        self._stopped = False
        self._threads: list[threading.Thread] = []
        self._steps = 0
        self._step_seconds = 0.0
        self._last_step_seconds = 0.0
        self._window: deque[tuple[float, int]] = deque()
        self._last_reject_log = -math.inf
        self._stall_seconds = 0.0

    # -- control ---------------------------------------------------------
    def start(self) -> None:
        if self.config.layers_per_step is None:
            self.calibrated_step_seconds = self.forward.calibrate(self.config.target_step_ms / 1000)
            log.info("decode: %d layer passes per step, %.1f ms per 8-request step",
                     self.forward.layers_per_step, self.calibrated_step_seconds * 1000)
        for target, name in ((self._step_loop, "decode-steps"), (self._arrival_loop, "decode-arrivals")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        with self._work, self._arrivals:
            self._stopped = True
            self._work.notify_all()
            self._arrivals.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def set_load(self, rps: float) -> None:
        """Open-loop arrivals at ``rps`` requests/s, nothing else (0 stops new arrivals)."""
        _check_rps(rps)
        self.set_shape(LoadShape(rps=float(rps)))

    def set_shape(self, shape: LoadShape) -> None:
        """Replace the load; a bursty shape starts its first on-period now."""
        with self._arrivals:
            self._shape_state = (shape, self.clock(), self._shape_state[2] + 1)
            self._arrivals.notify_all()
        log.info("decode: load set to %s", shape)

    def set_stall(self, seconds: float) -> None:
        """Add ``seconds`` to every step (0 = none): an injected latency spike for tests of the
        throttle, independent of how busy the machine is."""
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and 0 <= seconds <= 10):
            raise ValueError(f"stall must be a number of seconds in [0, 10], got {seconds!r}")
        self._stall_seconds = float(seconds)
        log.info("decode: every step stalls %.1f ms more", seconds * 1000)

    @property
    def stall_seconds(self) -> float:
        return self._stall_seconds

    @property
    def shape(self) -> LoadShape:
        return self._shape_state[0]

    @property
    def load_rps(self) -> float:
        return self._shape_state[0].rps

    def submit(self, arrival: float | None = None) -> bool:
        """Queue one request (prompt and length from the config); False if the queue is full."""
        with self._work:
            accepted = self._submit_locked(self.clock() if arrival is None else arrival)
        if not accepted:
            now = time.monotonic()
            if now - self._last_reject_log > 10:
                self._last_reject_log = now
                log.warning("decode: queue full (%d waiting); rejecting arrivals", self.config.max_queued_requests)
        return accepted

    def _submit_locked(self, arrival: float) -> bool:
        jitter = self.config.output_tokens_jitter
        length = self.config.output_tokens
        if jitter:
            length = max(1, round(length * self._rng.uniform(1 - jitter, 1 + jitter)))
        request = Request(
            rid=self._next_rid, arrival=arrival,
            prompt=[self._rng.randrange(self.forward.vocab_rows) for _ in range(self.config.prompt_tokens)],
            max_new_tokens=length,
        )
        self._next_rid += 1
        accepted = self.scheduler.add(request)
        if accepted:
            self._work.notify()
        return accepted

    def _top_up_locked(self) -> None:
        """Closed loop: submit requests until the target in flight is reached (caller holds ``_work``)."""
        shape, since, _ = self._shape_state
        if not shape.concurrency:
            return
        now = self.clock()
        missing = shape.target_in_flight(now - since) - self.scheduler.num_in_flight
        for _ in range(max(missing, 0)):
            if not self._submit_locked(now):
                break

    def stats(self) -> dict:
        with self._work:
            shape = self._shape_state[0]
            return {
                "load_rps": shape.rps,
                "load": {"rps": shape.rps, "concurrency": shape.concurrency, "on_seconds": shape.on_seconds,
                         "off_seconds": shape.off_seconds},
                "running": self.scheduler.num_running,
                "queued": self.scheduler.num_waiting,
                "in_flight": self.scheduler.num_in_flight,
                "completed": self.scheduler.completed,
                "rejected": self.scheduler.rejected,
                "generated_tokens": self.scheduler.generated_tokens,
                "steps": self._steps,
                "layers_per_step": self.forward.layers_per_step,
                "calibrated_step_ms": None if self.calibrated_step_seconds is None
                else self.calibrated_step_seconds * 1000,
                "mean_step_ms": self._step_seconds / self._steps * 1000 if self._steps else None,
                "last_step_ms": self._last_step_seconds * 1000,
                "stall_ms": self._stall_seconds * 1000,
            }

    # -- threads ---------------------------------------------------------
    def _arrival_loop(self) -> None:
        """Open-loop arrivals, and the closed loop's top-up when a burst switches on or the load changes."""
        rng = random.Random(self.config.seed + 1)
        next_at: float | None = None
        seen_version = -1
        while True:
            with self._arrivals:
                if self._stopped:
                    return
                shape, since, version = self._shape_state
            now = self.clock()
            on, switch_in = shape.phase(now - since)
            if version != seen_version:
                next_at, seen_version = None, version  # a new load: redraw from now
            if on and shape.concurrency:
                with self._work:
                    self._top_up_locked()
            rate = shape.rps if on else 0.0
            if rate <= 0:
                next_at = None
            else:
                if next_at is None:
                    next_at = now + rng.expovariate(rate)
                if next_at <= now:
                    arrival = next_at
                    # Open loop: the schedule advances from the planned time, so a
                    # late wake-up does not thin the arrivals.
                    next_at += rng.expovariate(rate)
                    self.submit(arrival=arrival)
                    continue
                if next_at > now + switch_in:
                    next_at = None  # the burst ends first; memoryless: redraw when it is next on
            wake = min(next_at if next_at is not None else math.inf, now + switch_in)
            with self._arrivals:
                if not self._stopped and self._shape_state[2] == seen_version:
                    self._arrivals.wait(timeout=None if math.isinf(wake) else max(wake - self.clock(), 0.0))

    def _step_loop(self) -> None:
        while True:
            with self._work:
                while not self._stopped and not self.scheduler.has_work():
                    # Idle: wake now and then so gauges show zero throughput.
                    self._publish_gauges()
                    self._work.wait(timeout=0.5)
                if self._stopped:
                    return
                batch = self.scheduler.schedule()
            if batch is None:
                continue
            started = time.perf_counter()
            rows, sample = batch.token_ids()
            next_tokens = self.forward.run(rows, sample)
            if self._stall_seconds:
                time.sleep(self._stall_seconds)
            elapsed = time.perf_counter() - started
            with self._work:
                self.scheduler.finish_step(batch, next_tokens, self.clock())
                # A closed-loop client sends its next request as soon as one finishes.
                self._top_up_locked()
                self._steps += 1
                self._step_seconds += elapsed
                self._last_step_seconds = elapsed
                self._window.append((self.clock(), len(batch.requests)))
                self._publish_gauges()

    def _publish_gauges(self) -> None:
        # Generated tokens over the last second: what SGLang's gen_throughput
        # reports from its decode log interval.
        now = self.clock()
        while self._window and self._window[0][0] < now - 1.0:
            self._window.popleft()
        self.metrics.set_load_gauges(
            running=self.scheduler.num_running, queued=self.scheduler.num_waiting,
            throughput=float(sum(n for _, n in self._window)), token_usage=self.scheduler.token_usage(),
        )


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _check_rps(rps: float) -> None:
    if not isinstance(rps, (int, float)) or math.isnan(rps) or math.isinf(rps) or rps < 0:
        raise ValueError(f"load must be a finite number of requests/s >= 0, got {rps!r}")
