"""The seed stand-in: an SGLang R-Fork seed without SGLang or a GPU.

Per TP rank it creates a Mooncake TransferEngine, materializes that rank's
weights (testbed.weights) into one buffer and registers it, then serves the
HTTP surface an rfork agent and SGLang's own R-Fork client read from a seed:

- ``GET /remote_instance_transfer_engine_info?rank=N`` (and the deprecated
  ``/get_remote_instance_transfer_engine_info``): ``{"rank": N,
  "remote_instance_transfer_engine_info": [session_id, {name: [ptr, numel, element_size]}]}``;
  400 when the rank is missing, negative or not served, as SGLang answers;
- ``GET /server_info`` (and ``/get_server_info``), ``GET /health``, ``GET /metrics``
  (SGLang's metric names, from a real decode loop: testbed.decode);
- testbed controls: ``POST /testbed/load {"rps": 20}`` (open-loop arrivals; or
  ``{"concurrency": 64, "on_seconds": 2, "off_seconds": 2}``: a closed loop, in bursts), ``POST /testbed/stall {"seconds": 0.05}``
  (an injected per-step delay: a latency spike on demand), ``GET /testbed/status``,
  ``GET /testbed/digests?rank=N``.

When it is serving it prints one line to stdout and nothing else ever goes there:

    {"event": "ready", "port": 40123, "sessions": {"0": "127.0.0.1:15054"}, "total_bytes": 8003584}

Run it with ``python -m testbed.seed --preset tiny --port 0`` (port 0 picks a free
port: the socket is bound here and handed to uvicorn, so no other process can
take it in between). SIGTERM or SIGINT shuts it down cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from pydantic import BaseModel

from rfork_api.logs import (
    LogLevelError,
    add_log_arguments,
    mooncake_start_quietly,
    setup_logging_from_args,
    uvicorn_options,
)

log = logging.getLogger("rfork.testbed.seed")

SGLANG_VERSION = "0.5.23"
"""The SGLang release whose seed API the stand-in reproduces."""


class LoadBody(BaseModel):
    """Body of ``POST /testbed/load``: the new load (testbed.decode.LoadShape), replacing the old one.

    ``{"rps": 20}``: open-loop arrivals; ``{"concurrency": 64}``: 64 requests kept in
    flight; ``"on_seconds"``/``"off_seconds"``: in bursts.
    """

    model_config = {"extra": "forbid"}  # a misspelt field must not silently leave the seed idle

    rps: float = 0.0
    concurrency: int = 0
    on_seconds: float = 0.0
    off_seconds: float = 0.0


class StallBody(BaseModel):
    """Body of ``POST /testbed/stall``: extra seconds every decode step takes (0 = none)."""

    seconds: float


class SeedError(RuntimeError):
    """The stand-in could not start (TransferEngine, registration, bad flags)."""


@dataclass
class RankState:
    """One TP rank as served: its engine, weights and SGLang weights-info dict."""

    rank: int
    session_id: str
    weights: object  # testbed.weights.RankWeights
    weights_info: dict[str, list[int]]
    engine: object = None  # mooncake.engine.TransferEngine; None in in-process tests


@dataclass
class SeedState:
    """Everything the HTTP app serves; built by ``start_seed`` (or by hand in tests).

        >>> state = SeedState(model_name="tiny", spec=spec, ranks=[...], decode=loop, registry=reg)  # doctest: +SKIP
        >>> app = create_app(state)                                                                  # doctest: +SKIP
    """

    model_name: str
    spec: object  # testbed.presets.ModelSpec
    ranks: list[RankState]
    decode: object  # testbed.decode.DecodeLoop
    registry: object  # prometheus_client.CollectorRegistry
    rng_seed: int = 0
    protocol: str = "tcp"
    host: str = "127.0.0.1"
    port: int = 0
    device: str = "cpu"
    started_at: float = field(default_factory=time.time)
    shutting_down: bool = False

    def rank(self, rank: int | None) -> RankState | None:
        if rank is None or not 0 <= rank < len(self.ranks):
            return None
        return self.ranks[rank]

    def sessions(self) -> dict[str, str]:
        return {str(r.rank): r.session_id for r in self.ranks}

    def server_info(self) -> dict:
        spec = self.spec
        return {
            # The fields rfork reads (DESIGN: "Seed endpoints the agent reads").
            "model_path": self.model_name,
            "served_model_name": self.model_name,
            "tp_size": spec.tp_size,
            "dtype": spec.dtype,
            "revision": "main",
            # Cheap extras in SGLang's spelling.
            "pp_size": 1,
            "dp_size": 1,
            "device": "cuda" if self.device.startswith("cuda") else "cpu",
            "load_format": "auto",
            "host": self.host,
            "port": self.port,
            "remote_instance_weight_loader_start_seed_via_transfer_engine": True,
            "max_running_requests": self.decode.config.max_running_requests,
            "version": SGLANG_VERSION,
            "startup_time": self.started_at,
            "testbed": {
                "preset": spec.name,
                "architecture": spec.describe(),
                "rng_seed": self.rng_seed,
                "protocol": self.protocol,
                "total_bytes": spec.total_bytes,
                "sessions": self.sessions(),
                "include_zero_byte": spec.include_zero_byte,
            },
        }


def create_app(state: SeedState):
    """The seed's FastAPI app over ``state`` (no engine or socket needed to test it)."""
    from fastapi import FastAPI, Query
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from testbed.weights import digests

    app = FastAPI(title="rfork seed stand-in", docs_url=None, redoc_url=None)

    def te_info(rank: int | None):
        if rank is None or rank < 0:
            return JSONResponse({"error": {"message": "Missing or invalid rank parameter"}}, status_code=400)
        served = state.rank(rank)
        if served is None:
            return JSONResponse(
                {"error": {"message": f"Failed to get transfer engine info for rank {rank}"}}, status_code=400)
        return {"rank": rank, "remote_instance_transfer_engine_info": [served.session_id, served.weights_info]}

    @app.get("/remote_instance_transfer_engine_info")
    def remote_instance_transfer_engine_info(rank: int | None = None):
        return te_info(rank)

    @app.get("/get_remote_instance_transfer_engine_info")
    def get_remote_instance_transfer_engine_info(rank: int | None = None):
        """Deprecated in SGLang but still what its R-Fork client calls."""
        return te_info(rank)

    @app.get("/server_info")
    @app.get("/get_server_info")
    def server_info():
        return state.server_info()

    @app.get("/health")
    def health():
        return Response(status_code=503 if state.shutting_down else 200)

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/testbed/load")
    def set_load(body: LoadBody):
        from testbed.decode import LoadShape

        try:
            shape = LoadShape(rps=body.rps, concurrency=body.concurrency, on_seconds=body.on_seconds,
                              off_seconds=body.off_seconds)
        except ValueError as exc:
            return JSONResponse({"detail": {"error": "invalid_load", "message": str(exc)}}, status_code=422)
        state.decode.set_shape(shape)
        return state.decode.stats()["load"]

    @app.post("/testbed/stall")
    def set_stall(body: StallBody):
        try:
            state.decode.set_stall(body.seconds)
        except ValueError as exc:
            return JSONResponse({"detail": {"error": "invalid_stall", "message": str(exc)}}, status_code=422)
        return {"seconds": state.decode.stall_seconds}

    @app.get("/testbed/status")
    def status():
        return {"model": state.model_name, "sessions": state.sessions(), "decode": state.decode.stats()}

    @app.get("/testbed/digests")
    def rank_digests(rank: int = Query(...)):
        # A plain def: FastAPI runs it in a worker thread, so hashing a GiB
        # does not stall the event loop (or /metrics scrapes).
        served = state.rank(rank)
        if served is None:
            return JSONResponse(
                {"detail": {"error": "unknown_rank",
                            "message": f"rank {rank} is not served here; ranks are 0..{len(state.ranks) - 1}"}},
                status_code=404)
        return {"rank": rank, "digests": digests(served.weights.tensors)}

    return app


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="HTTP and TransferEngine address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=30000, help="HTTP port; 0 picks a free one (default 30000)")
    from testbed.presets import ARCHITECTURES, DEFAULT_PRESET

    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"model preset: {', '.join(ARCHITECTURES)} (default {DEFAULT_PRESET}, as `rfork testbed`)")
    p.add_argument("--size", default=None, help="instead of --preset: a Llama-shaped model of about this size, e.g. 600MiB")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--tp-size", type=int, default=1, help="tensor-parallel ranks this process serves (default 1)")
    p.add_argument("--include-zero-byte", action="store_true", help="add a zero-numel tensor, as some models have")
    p.add_argument("--rng-seed", type=int, default=1234, help="weights are a function of this seed (default 1234)")
    p.add_argument("--protocol", default=os.environ.get("MOONCAKE_PROTOCOL", "tcp"),
                   help="TransferEngine protocol: tcp or rdma (default $MOONCAKE_PROTOCOL or tcp)")
    p.add_argument("--device-name", default="", help="RDMA device list for the TransferEngine (default: auto)")
    p.add_argument("--device", default="cpu",
                   help="where the weights live and decode runs: cpu, cuda or cuda:N (default cpu); "
                        "CUDA pointers are registered with the TransferEngine as they are")
    p.add_argument("--model-name", default=None, help="model identity served as model_path (default: the preset name)")
    p.add_argument("--load-rps", type=float, default=0.0, help="request arrivals per second (default 0 = idle)")
    p.add_argument("--load-concurrency", type=int, default=0,
                   help="closed loop: keep this many requests in flight, a new one as each finishes (default 0)")
    p.add_argument("--output-tokens", type=int, default=64, help="tokens each request generates (default 64)")
    p.add_argument("--output-tokens-jitter", type=float, default=0.0,
                   help="each request generates --output-tokens x uniform(1-J, 1+J) tokens (default 0)")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length of each request (default 32)")
    p.add_argument("--max-running-requests", type=int, default=64)
    p.add_argument("--max-queued-requests", type=int, default=256,
                   help="arrivals beyond this many waiting are rejected (default 256)")
    p.add_argument("--decode-step-ms", type=float, default=15.0,
                   help="calibrate each decode step (8 requests) to cost about this (default 15)")
    p.add_argument("--decode-layers", type=int, default=None,
                   help="fix the layer passes per decode step instead of calibrating")
    p.add_argument("--bucket-inter-token-latency", type=float, nargs="+", default=None, metavar="SECONDS",
                   help="ITL histogram bucket bounds, as SGLang's flag of the same name (default: SGLang's; put "
                        "the ITL SLO on a bound so the throttle reads exactly the share of tokens above it)")
    add_log_arguments(p)


def itl_buckets(bounds: list[float] | None) -> tuple[float, ...]:
    """The ITL bucket bounds to export: SGLang's defaults, or the given ones checked like a histogram's.

        >>> itl_buckets([0.02, 0.01, 0.015])
        (0.01, 0.015, 0.02)
        >>> itl_buckets([0.01, -1])
        Traceback (most recent call last):
        ...
        testbed.seed.SeedError: --bucket-inter-token-latency bounds must be finite seconds > 0; got -1
    """
    from testbed.decode import ITL_BUCKETS

    if bounds is None:
        return ITL_BUCKETS
    for b in bounds:
        if not (b > 0 and math.isfinite(b)):
            raise SeedError(f"--bucket-inter-token-latency bounds must be finite seconds > 0; got {b}")
    if len(set(bounds)) != len(bounds):
        raise SeedError(f"--bucket-inter-token-latency has a repeated bound: {sorted(bounds)}")
    return tuple(sorted(bounds))


def start_seed(args: argparse.Namespace) -> SeedState:
    """Materialize, register and start serving work (not HTTP). Raises SeedError."""
    import torch
    from prometheus_client import CollectorRegistry

    from testbed.decode import DecodeConfig, DecodeLoop, DecodeMetrics
    from testbed.presets import PresetError, resolve_spec
    from testbed.weights import manifest, materialize

    # One core's worth of compute per seed: several seeds share a small machine,
    # and a real seed's serving cost should not scale with the host's cores.
    torch.set_num_threads(1)
    try:
        spec = resolve_spec(args.preset, args.size, args.dtype, args.tp_size, args.include_zero_byte)
        config = DecodeConfig(
            load_rps=args.load_rps, prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens,
            output_tokens_jitter=getattr(args, "output_tokens_jitter", 0.0),
            load_concurrency=getattr(args, "load_concurrency", 0),
            max_running_requests=args.max_running_requests, max_queued_requests=args.max_queued_requests,
            max_prefill_tokens=max(256, args.prompt_tokens), target_step_ms=args.decode_step_ms,
            layers_per_step=args.decode_layers, seed=args.rng_seed,
        )
        buckets = itl_buckets(getattr(args, "bucket_inter_token_latency", None))
    except (PresetError, ValueError) as exc:
        raise SeedError(str(exc)) from exc
    from rfork_agent.devices import DeviceError, check_device
    device = getattr(args, "device", "cpu")
    try:
        check_device(device)
    except DeviceError as exc:
        raise SeedError(str(exc)) from exc
    if device.startswith("cuda:"):
        # cuda:N becomes current, so the decode loop's kernels and the
        # TransferEngine's staging copies run on the GPU that holds the weights.
        torch.cuda.set_device(torch.device(device))
    model_name = args.model_name or spec.name
    log.info("seed: %s", spec.describe())
    te_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    ranks = []
    for rank in range(spec.tp_size):
        started = time.perf_counter()
        weights = materialize(spec, rank, args.rng_seed, device=device)
        engine, session_id = _engine(te_host, args.protocol, args.device_name)
        ret = engine.register_memory(weights.ptr, weights.nbytes)
        if ret != 0:
            raise SeedError(f"TransferEngine.register_memory({weights.nbytes} bytes) for rank {rank} "
                            f"returned {ret}; see the Mooncake log above")
        ranks.append(RankState(rank, session_id, weights, manifest(weights), engine))
        log.info("seed: rank %d ready in %.1f s: %d tensors, %d bytes registered, session %s",
                 rank, time.perf_counter() - started, len(weights.tensors), weights.nbytes, session_id)
    registry = CollectorRegistry()
    decode = DecodeLoop([r.weights for r in ranks], config, DecodeMetrics(registry, model_name, itl_buckets=buckets))
    decode.start()
    return SeedState(model_name=model_name, spec=spec, ranks=ranks, decode=decode, registry=registry,
                     rng_seed=args.rng_seed, protocol=args.protocol, host=args.host, device=device)


def _engine(host: str, protocol: str, device_name: str):
    try:
        from mooncake.engine import TransferEngine
    except ImportError as exc:
        raise SeedError("mooncake is not installed: pip install mooncake-transfer-engine "
                        "(or mooncake-transfer-engine-non-cuda on a machine without CUDA)") from exc
    engine = TransferEngine()
    with mooncake_start_quietly():
        ret = engine.initialize(host, "P2PHANDSHAKE", protocol, device_name)
    if ret != 0:
        raise SeedError(f"TransferEngine.initialize({host!r}, 'P2PHANDSHAKE', {protocol!r}) returned {ret}; "
                        "check --host and --protocol (-v shows TransferEngine's own log)")
    return engine, f"{host}:{engine.get_rpc_port()}"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 takes a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SeedError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port (0 = any free)") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(args: argparse.Namespace) -> int:
    from rfork_api.units import UnitError, parse_size

    try:  # before any socket, signal handler or torch import: a typo costs nothing
        if args.size is not None:
            parse_size(args.size)
    except UnitError as exc:
        print(f"testbed.seed: error: --size: {exc}", file=sys.stderr)
        return 2
    try:
        setup_logging_from_args(args)  # again when started by `rfork testbed-seed`: harmless
    except LogLevelError as exc:
        print(f"testbed.seed: error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    stop = threading.Event()
    # Handlers first: a SIGTERM during the (long) weight fill still exits cleanly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    sock = None
    try:
        sock = bind_socket(args.host, args.port)
        state = start_seed(args)
    except SeedError as exc:
        if sock is not None:
            sock.close()
        print(f"testbed.seed: error: {exc}", file=sys.stderr)
        return 2
    state.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(state), lifespan="off", **uvicorn_options()))
    # uvicorn only installs signal handlers on the main thread; ours stay in charge.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                print("testbed.seed: error: the HTTP server stopped during startup; see the log above",
                      file=sys.stderr)
                return 1
            if stop.wait(0.02):
                break
        else:
            ready = {"event": "ready", "port": state.port, "sessions": state.sessions(),
                     "total_bytes": state.spec.total_bytes}
            sys.stdout.write(json.dumps(ready) + "\n")
            sys.stdout.flush()
            log.info("seed: serving on http://%s:%d", args.host, state.port)
        while not stop.wait(0.5):
            if not thread.is_alive():
                log.error("seed: HTTP server exited unexpectedly")
                return 1
        log.info("seed: shutting down")
        return 0
    finally:
        state.shutting_down = True
        server.should_exit = True
        thread.join(timeout=5)
        log.info("seed: http stopped")
        state.decode.stop()
        log.info("seed: decode stopped")
        for r in state.ranks:
            try:
                r.engine.unregister_memory(r.weights.ptr)
            except Exception as exc:  # noqa: BLE001 - best effort on the way out; log and continue
                log.warning("seed: unregister rank %d failed: %s", r.rank, exc)
        sock.close()
        # Each TransferEngine takes about a second to tear down when the
        # interpreter releases it; say so, or the pause looks like a hang.
        log.info("seed: stopped; releasing %d TransferEngine(s)", len(state.ranks))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m testbed.seed", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
