"""Fakes for the agent's integration tests: a fake SGLang seed, a recording scheduler, a
uvicorn server on loopback, and small request helpers. The ``fleet`` fixture that
starts them with an agent lives in this folder's conftest.py."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse

MB = 10**6


# --------------------------------------------------------------------------- servers in threads


def _socket() -> socket.socket:
    """A bound loopback socket: its port is ours until the server takes it (no port races)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Served:
    """An ASGI app served by uvicorn in a thread; ``stop()`` runs its shutdown."""

    def __init__(self, app, sock: socket.socket | None = None) -> None:
        self.sock = sock or _socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def wait_until(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --------------------------------------------------------------------------- fake seed


def manifest_for(rank: int) -> dict:
    base = 0x7F0000000000 + rank * 0x10000000
    return {
        "model.embed_tokens.weight": [base, 1024 * 64, 2],
        "model.layers.0.mlp.down_proj.weight": [base + 0x100000, 4096, 2],
        "model.norm.weight": [base + 0x200000, 64, 4],
    }


@dataclass
class FakeSeed:
    deprecated_paths: bool = False
    tp_size: int = 2
    generation: int = 0
    healthy: bool = True
    info_ok: bool = True
    """False: the TE-info endpoints answer 503 while /health still answers (a seed restarting)."""
    info_extra: dict = field(default_factory=dict)
    """Extra fields in the TE-info answers (other bytes, the same sessions and tensors)."""
    info_delay_seconds: float = 0.0
    """How long the TE-info endpoints take to answer (a seed building megabytes of JSON)."""
    health_probes: int = 0
    hits: list = field(default_factory=list)
    server_info_fields: tuple[str, ...] = ("model_path", "tp_size", "dtype")
    """What its /server_info reports (older SGLang builds and stand-ins leave some out)."""

    def session(self, rank: int) -> str:
        return f"127.0.0.1:{16000 + 100 * self.generation + rank}"

    def app(self) -> FastAPI:
        app = FastAPI()
        new_te, old_te = "/remote_instance_transfer_engine_info", "/get_remote_instance_transfer_engine_info"

        def te_info(path: str, rank: int | None):
            self.hits.append(path)
            if (path == new_te) == self.deprecated_paths:
                raise HTTPException(404)
            if not self.info_ok:
                raise HTTPException(503)
            time.sleep(self.info_delay_seconds)  # a sync route: FastAPI runs it on a worker thread
            if rank is None or not 0 <= rank < self.tp_size:
                return JSONResponse({"error": f"no rank {rank}"}, status_code=400)
            return {"rank": rank, "remote_instance_transfer_engine_info": [self.session(rank), manifest_for(rank)],
                    **self.info_extra}

        @app.get(new_te)
        def te_new(rank: int | None = Query(None)):
            return te_info(new_te, rank)

        @app.get(old_te)
        def te_old(rank: int | None = Query(None)):
            return te_info(old_te, rank)

        def server_info(path: str):
            self.hits.append(path)
            if (path == "/server_info") == self.deprecated_paths:
                raise HTTPException(404)
            info = {"model_path": "Qwen/Qwen2.5-0.5B", "tp_size": self.tp_size, "dtype": "bfloat16"}
            return {k: v for k, v in info.items() if k in self.server_info_fields}

        @app.get("/server_info")
        def server_info_new():
            return server_info("/server_info")

        @app.get("/get_server_info")
        def server_info_old():
            return server_info("/get_server_info")

        @app.get("/health")
        def health():
            self.health_probes += 1
            if not self.healthy:
                raise HTTPException(503)
            return {}

        return app


# --------------------------------------------------------------------------- recording scheduler


@dataclass
class RecordingScheduler:
    registrations: list = field(default_factory=list)
    heartbeats: list = field(default_factory=list)
    deletes: list = field(default_factory=list)
    known: set = field(default_factory=set)
    delete_arrived: threading.Event = field(default_factory=threading.Event)
    hold_deletes: threading.Event | None = None
    """When set to an unset Event, each DELETE is answered only once it is set."""

    def forget(self, seed_id: str) -> None:
        self.known.discard(seed_id)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.put("/v1/seeds/{seed_id}")
        def register(seed_id: str, body: dict):
            self.registrations.append((seed_id, body))
            self.known.add(seed_id)
            return {"seed_id": seed_id, "heartbeat_interval_seconds": 1.0, "heartbeat_timeout_seconds": 5.0}

        @app.post("/v1/seeds/{seed_id}/heartbeat")
        def heartbeat(seed_id: str, body: dict):
            if seed_id not in self.known:
                return JSONResponse(status_code=404, content={"detail": {
                    "error": "unknown_seed", "message": f"seed {seed_id!r} is not registered; register it again"}})
            self.heartbeats.append((seed_id, body, time.monotonic()))
            return {}

        @app.delete("/v1/seeds/{seed_id}", status_code=204)
        def delete(seed_id: str):
            self.delete_arrived.set()
            if self.hold_deletes is not None:
                self.hold_deletes.wait(30)
            self.deletes.append(seed_id)
            self.known.discard(seed_id)

        return app


def registered(scheduler: RecordingScheduler, n: int = 1):
    return lambda: len(scheduler.registrations) >= n


def post(url: str, json: dict | None = None, timeout: float = 30) -> httpx.Response:
    return httpx.post(url, json=json, timeout=timeout)


def lease_body(nbytes: int, rank: int = 0, wait: float = 5.0, assignment: str = "a1") -> dict:
    return {"job_id": "j1", "assignment_id": assignment, "rank": rank, "bytes": nbytes, "grant": "",
            "wait_seconds": wait}
