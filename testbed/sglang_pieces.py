"""The seed stand-in with SGLang's real pieces, where SGLang is installed.

A stock SGLang seed answers the agent from three pieces of SGLang's own code;
this module puts those pieces behind the testbed's seed stand-in
(testbed/seed.py) without changing it:

- TE info: each rank's ``{"session_id", "weights_info_dict"}`` is PUT to a
  real ``EngineInfoBootstrapServer`` exactly as SGLang's ModelRunner does, and
  ``/remote_instance_transfer_engine_info`` (and the deprecated
  ``/get_...``) proxy to its ``/get_transfer_engine_info`` the way SGLang's
  HTTP server does (400 when it has nothing for the rank);
- ``/server_info`` (and ``/get_server_info``): SGLang's ``build_server_info``
  over a real ``ServerArgs`` for the served model, plus the stand-in's
  ``testbed`` block;
- ``/metrics``: the decode loop's latencies go through a real
  ``TokenizerMetricsCollector``; the load gauges stay the stand-in's.

Run it like the stand-in, with the same flags (it needs the SGLang test venv,
``make test-sglang`` builds it):

    .venv-sglang/bin/python -m testbed.sglang_pieces --preset tiny --port 0

``SGLangPiecesFleet`` is ``testbed.fleet.Fleet`` with these seeds.

SGLang 0.5.23's config package imports ``torchvision`` at module level, and
every torchvision wheel on PyPI is a CUDA build that fails beside CPU torch;
``allow_sglang_import_without_torchvision`` lets SGLang import on a CPU-only
test machine (never call it in a real deployment).
"""

from __future__ import annotations

import importlib.machinery
import logging
import os
import subprocess
import sys
import time
import types
from typing import Any, Mapping

from rfork_api.clients import blocking_http_client
from testbed.fleet import Fleet, HeldPort

log = logging.getLogger("rfork.testbed.sglang")

SGLANG_TE_INFO_PATHS = ("/remote_instance_transfer_engine_info", "/get_remote_instance_transfer_engine_info")


class SGLangPiecesError(RuntimeError):
    """SGLang's pieces could not be set up here; the message says what to install or fix."""


def sglang_available() -> bool:
    """Whether SGLang is importable (the SGLang test venv), without importing it."""
    import importlib.util

    return importlib.util.find_spec("sglang") is not None


def prepare_cpu_sglang_env() -> None:
    """Environment SGLang's CPU-side pieces want before they are imported.

    ``import sglang`` creates a cache directory (under $HOME unless told) and
    Prometheus' ``_created`` samples are noise for the parsers.
    """
    os.environ.setdefault("SGLANG_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "rfork-sglang-cache"))
    os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    allow_sglang_import_without_torchvision()


def allow_sglang_import_without_torchvision() -> None:
    """Let SGLang import on a CPU-only machine that has no working torchvision.

    Two steps, both needed: transformers must see torchvision as absent (or it
    routes ``AutoProcessor`` through it and fails), while SGLang's modules that
    do ``import torchvision.transforms`` at the top must still import. So
    transformers' availability probe answers "absent" for torchvision and an
    inert ``torchvision`` module (whose attributes raise when used) sits in
    ``sys.modules``. A no-op when a real torchvision imports.
    """
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
        return
    except Exception:  # noqa: BLE001 - absent or a CUDA build that cannot load: both mean "stand in"
        sys.modules.pop("torchvision", None)
    import transformers.utils.import_utils as transformers_imports

    probe = transformers_imports._is_package_available

    def is_package_available(pkg_name: str, return_version: bool = False):
        if pkg_name == "torchvision":
            return (False, "N/A") if return_version else (False, None)
        return probe(pkg_name, return_version)

    transformers_imports._is_package_available = is_package_available

    class TorchvisionUnavailable:
        def __init__(self, *args, **kwargs) -> None:
            raise SGLangPiecesError("torchvision is not installed in this CPU test venv; "
                                    "image preprocessing is unavailable here")

    def inert_module(name: str) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)

        def missing(attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return TorchvisionUnavailable

        module.__getattr__ = missing  # type: ignore[attr-defined]
        sys.modules[name] = module
        return module

    root = inert_module("torchvision")
    root.transforms = inert_module("torchvision.transforms")  # type: ignore[attr-defined]
    root.transforms.functional = inert_module("torchvision.transforms.functional")  # type: ignore[attr-defined]


def module_with_parameters(tensors: Mapping[str, Any], class_name: str = "ForkedModel"):
    """A torch ``nn.Module`` whose ``named_parameters()`` are exactly ``tensors`` (names and order).

    What SGLang's loader walks. The module records calls to
    ``post_load_weights`` in ``post_load_calls``, as SGLang's loaders call it
    after a remote read. ``class_name`` lets a test pose as a draft model.

        >>> m = module_with_parameters({"model.norm.weight": torch.zeros(4)})
        >>> [n for n, _ in m.named_parameters()]
        ['model.norm.weight']
    """
    import torch

    def post_load_weights(self) -> None:
        self.post_load_calls += 1

    cls = type(class_name, (torch.nn.Module,), {"post_load_weights": post_load_weights})
    root = cls()
    root.post_load_calls = 0
    for name, tensor in tensors.items():
        owner = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        owner.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))
    return root


class EngineInfoSource:
    """SGLang's real ``EngineInfoBootstrapServer``, fed and read the way SGLang feeds and reads it.

        >>> info = EngineInfoSource()
        >>> info.register(0, "127.0.0.1:15000", {"w": [140000, 16, 2]})
        >>> info.te_info(0)
        (200, {'rank': 0, 'remote_instance_transfer_engine_info': ['127.0.0.1:15000', {'w': [140000, 16, 2]}]})
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, start_timeout_seconds: float = 20.0) -> None:
        import httpx
        from sglang.srt.entrypoints.engine_info_bootstrap_server import EngineInfoBootstrapServer

        self._held = HeldPort(host) if port is None else None  # ours until SGLang's uvicorn listens on it
        self.host, self.port = host, port or self._held.port
        self.url = f"http://{host}:{self.port}"
        # Not reusing a connection idle long enough for uvicorn to be closing it (rfork_api/clients.py).
        self._http = blocking_http_client(5.0)
        self.server = EngineInfoBootstrapServer(host, self.port)
        # Its constructor returns before uvicorn listens.
        deadline = time.monotonic() + start_timeout_seconds
        while True:
            try:
                if self._http.get(f"{self.url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SGLangPiecesError(f"SGLang's EngineInfoBootstrapServer did not answer {self.url}/health "
                                        f"within {start_timeout_seconds:.0f} s")
            time.sleep(0.05)

    def register(self, rank: int, session_id: str, weights_info: Mapping[str, Any]) -> None:
        """What SGLang's ``RemoteInstanceWeightTransporter._register_to_engine_info_bootstrap`` sends."""
        payload = {"tp_rank": rank,
                   "transfer_engine_info": {"session_id": session_id, "weights_info_dict": dict(weights_info)}}
        response = self._http.put(f"{self.url}/register_transfer_engine_info", json=payload)
        if response.status_code != 200:
            raise SGLangPiecesError(f"EngineInfoBootstrapServer refused rank {rank}: "
                                    f"HTTP {response.status_code} {response.text[:200]}")

    def te_info(self, rank: int | None) -> tuple[int, dict]:
        """(status, body) SGLang's HTTP server answers on ``/remote_instance_transfer_engine_info``."""
        if rank is None or rank < 0:
            return 400, {"error": {"message": "Missing or invalid rank parameter"}}
        try:
            response = self._http.get(f"{self.url}/get_transfer_engine_info", params={"rank": rank})
            if response.status_code == 200:
                return 200, response.json()
        except Exception as exc:  # noqa: BLE001 - SGLang logs and answers 400, so do we
            log.warning("Failed to get transfer engine info for rank %s: %s", rank, exc)
        return 400, {"error": {"message": f"Failed to get transfer engine info for rank {rank}"}}

    def close(self) -> None:
        self.server.close()
        self._http.close()
        if self._held is not None:
            self._held.close()


class SGLangTokenizerMetrics:
    """The decode loop's metrics sink, recording through SGLang's real ``TokenizerMetricsCollector``.

    Same methods as ``testbed.decode.DecodeMetrics``; latencies and request
    counters go to SGLang's collector (the global Prometheus registry, as in
    SGLang), anything else — the load gauges — to the stand-in's own sink.
    """

    def __init__(self, fallback: Any, collector: Any, labels: Mapping[str, str]) -> None:
        self._fallback = fallback
        self.collector = collector
        self.labels = dict(labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)

    def observe_ttft(self, seconds: float, stream: bool = True) -> None:
        self.collector.observe_time_to_first_token(self.labels, seconds, stream=stream)

    def observe_itl(self, interval: float, tokens: int = 1) -> None:
        # SGLang's own call: one streamed chunk of ``tokens`` over ``interval``.
        self.collector.observe_inter_token_latency(self.labels, interval, tokens)

    def observe_finished(self, prompt_tokens: int, completion_tokens: int, e2e: float,
                         time_per_output_token: float | None, stream: bool = True) -> None:
        self.collector.observe_one_finished_request(
            self.labels, prompt_tokens=prompt_tokens, generation_tokens=completion_tokens, cached_tokens=0,
            e2e_latency=e2e, has_grammar=False, is_streaming=stream, time_per_output_token=time_per_output_token)

    def observe_aborted(self) -> None:
        self.collector.observe_one_aborted_request(self.labels)


def route_decode_metrics(decode: Any, sink: SGLangTokenizerMetrics) -> None:
    """Point the decode loop, and every part of it that records, at ``sink``.

    The loop hands its metrics object to the parts it builds (its batch
    scheduler records TTFT/ITL); each holder of the original is repointed.
    """
    original = sink._fallback
    holders = [decode, *(v for v in vars(decode).values() if hasattr(v, "__dict__"))]
    repointed = 0
    for holder in holders:
        if getattr(holder, "metrics", None) is original:
            holder.metrics = sink
            repointed += 1
    if not repointed:
        raise SGLangPiecesError("the decode loop holds no metrics object to reroute; testbed.decode changed")


def tokenizer_metrics(model_name: str):
    """(collector, labels): SGLang's ``TokenizerMetricsCollector`` with the labels its tokenizer manager uses.

    Publishes a CPU ``ServerArgs`` first (the collector reads config from it);
    one collector per process, as in SGLang.
    """
    from sglang.srt.observability.metrics_collector import TokenizerMetricsCollector, tokenizer_metric_labels
    from sglang.srt.runtime_context import publish
    from sglang.srt.server_args import ServerArgs

    # "dummy" resolves without a Hugging Face config; the label carries the real name.
    args = ServerArgs(model_path="dummy", device="cpu", served_model_name=model_name)
    publish(args, role="tokenizer")
    labels = tokenizer_metric_labels()
    return TokenizerMetricsCollector(server_args=args, labels=labels), labels


def sglang_server_info(model_path: str, dtype: str, tp_size: int) -> dict:
    """What SGLang 0.5.23's ``/server_info`` returns for a seed launched with these flags
    (``build_server_info`` over a real ``ServerArgs``; live scheduler fields omitted)."""
    from sglang import __version__
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.utils.common import build_server_info

    from testbed.seed import SGLANG_VERSION

    if __version__ != SGLANG_VERSION:
        log.warning("SGLang %s is installed; the stand-in reproduces %s", __version__, SGLANG_VERSION)
    args = ServerArgs(model_path=model_path, device="cpu", dtype=dtype, tp_size=tp_size,
                      remote_instance_weight_loader_start_seed_via_transfer_engine=True)
    info = build_server_info(args, {})
    info.update({"version": __version__, "frontend": "python", "internal_states": []})
    return info


def create_app(state):
    """The stand-in's app with SGLang's pieces in front: TE info, server info and metrics."""
    import json

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    from testbed import seed

    prepare_cpu_sglang_env()
    engine_info = EngineInfoSource()
    for r in state.ranks:
        engine_info.register(r.rank, r.session_id, r.weights_info)
    collector, labels = tokenizer_metrics(state.model_name)
    route_decode_metrics(state.decode, SGLangTokenizerMetrics(state.decode.metrics, collector, labels))
    server_info = sglang_server_info(state.model_name, state.spec.dtype, state.spec.tp_size)
    # Keep the stand-in's own block: testbed tools read their preset from it.
    server_info["testbed"] = state.server_info()["testbed"]
    server_info_body = json.dumps(server_info, default=str)

    app = FastAPI(title="rfork seed stand-in (SGLang pieces)", docs_url=None, redoc_url=None)

    def te_info(rank: int | None = None):
        status, body = engine_info.te_info(rank)
        return JSONResponse(body, status_code=status)

    for path in SGLANG_TE_INFO_PATHS:
        app.add_api_route(path, te_info, methods=["GET"])

    def server_info_route():
        return Response(server_info_body, media_type="application/json")

    for path in ("/server_info", "/get_server_info"):
        app.add_api_route(path, server_info_route, methods=["GET"])

    class _GaugesOnly:
        # The stand-in's registry still holds its own (empty) latency series;
        # only its gauges are served, beside SGLang's collector.
        def collect(self):
            return [family for family in state.registry.collect() if family.type == "gauge"]

    @app.get("/metrics")
    def metrics():
        body = generate_latest(REGISTRY) + generate_latest(_GaugesOnly())
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # The stand-in's other routes (health, testbed controls) follow; the ones
    # above are matched first.
    base = seed._original_create_app(state) if hasattr(seed, "_original_create_app") else seed.create_app(state)
    app.router.routes.extend(base.router.routes)
    app.state.engine_info = engine_info
    return app


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.sglang_pieces``: ``testbed.seed``'s process with this module's app."""
    from testbed import seed

    prepare_cpu_sglang_env()
    # seed.main builds its app through the module-level create_app; point it
    # here for this process only (testbed/seed.py itself is unchanged).
    seed._original_create_app = seed.create_app
    seed.create_app = create_app
    return seed.main(seed.build_parser().parse_args(argv))


class SGLangPiecesFleet(Fleet):
    """``Fleet`` whose seeds are ``testbed.sglang_pieces`` (run it with the SGLang venv's python)."""

    def _spawn_seed(self, index: int):
        # testbed.fleet's seed command with this module in place of testbed.seed.
        cmd = [sys.executable, "-m", "testbed.sglang_pieces", "--host", "127.0.0.1", "--port", "0",
               "--protocol", self.spec.protocol, "--load-rps", str(self.spec.load_rps), *self.spec.model_args()]
        process = self._spawn(cmd, f"seed-{index}", stdout=subprocess.PIPE)
        return index, process, self.log_dir / f"seed-{index}.log"


if __name__ == "__main__":
    sys.exit(main())
