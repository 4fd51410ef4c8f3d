"""The seed stand-in as a real process: SGLang's seed API, real TransferEngine reads, real metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from testbed.presets import get_preset
from testbed.weights import digests, materialize

pytestmark = [pytest.mark.cpu_only, pytest.mark.timeout(90)]

RNG_SEED = 4321
LABELS = 'engine_type="unified",model_name="tiny"'


class SeedProcess:
    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "testbed.seed", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
        )
        self.stderr: list[bytes] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.ready = self._ready_line()
        self.url = f"http://127.0.0.1:{self.ready['port']}"

    def _drain(self) -> None:
        # Mooncake logs a lot to stderr; an undrained pipe would block the seed.
        for line in self.process.stderr:
            self.stderr.append(line)

    def _ready_line(self, timeout: float = 60.0) -> dict:
        found: dict = {}
        reader = threading.Thread(target=lambda: found.update(line=self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        line = found.get("line", b"")
        assert line, f"no ready line; exit={self.process.poll()} stderr tail:\n{b''.join(self.stderr[-30:]).decode()}"
        return json.loads(line)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode


@pytest.fixture(scope="module")
def seed():
    process = SeedProcess("--preset", "tiny", "--tp-size", "2", "--include-zero-byte",
                          "--rng-seed", str(RNG_SEED), "--decode-layers", "4")
    try:
        yield process
    finally:
        assert process.stop() == 0
        assert process.process.stdout.read() == b"", "only the ready line may go to stdout"


def test_ready_line_and_server_info(seed):
    spec = get_preset("tiny", tp_size=2, include_zero_byte=True)
    assert seed.ready["event"] == "ready"
    assert set(seed.ready["sessions"]) == {"0", "1"}
    assert seed.ready["total_bytes"] == spec.total_bytes
    for path in ("/server_info", "/get_server_info"):
        info = httpx.get(seed.url + path).json()
        assert (info["model_path"], info["tp_size"], info["dtype"], info["revision"]) == ("tiny", 2, "bfloat16", "main")
    assert httpx.get(seed.url + "/health").status_code == 200


@pytest.mark.parametrize("path", ["/remote_instance_transfer_engine_info",
                                  "/get_remote_instance_transfer_engine_info"])
def test_transfer_engine_info_has_sglangs_format(seed, path):
    spec = get_preset("tiny", tp_size=2, include_zero_byte=True)
    for rank in (0, 1):
        body = httpx.get(seed.url + path, params={"rank": rank}).json()
        assert set(body) == {"rank", "remote_instance_transfer_engine_info"} and body["rank"] == rank
        session, info = body["remote_instance_transfer_engine_info"]
        assert session == seed.ready["sessions"][str(rank)]
        assert list(info) == [t.name for t in spec.rank_tensors(rank)]
        for t in spec.rank_tensors(rank):
            ptr, numel, esize = info[t.name]
            assert (numel, esize) == (t.numel, 2) and isinstance(ptr, int)
    for params in ({}, {"rank": -1}, {"rank": 2}):
        response = httpx.get(seed.url + path, params=params)
        assert response.status_code == 400 and "error" in response.json()


def test_every_tensor_read_over_transfer_engine_matches_both_digests(seed):
    from mooncake.engine import TransferEngine

    engine = TransferEngine()
    assert engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    spec = get_preset("tiny", tp_size=2, include_zero_byte=True)
    for rank in (0, 1):
        session, info = httpx.get(seed.url + "/remote_instance_transfer_engine_info",
                                  params={"rank": rank}).json()["remote_instance_transfer_engine_info"]
        local = {t.name: torch.empty(t.shape, dtype=torch.bfloat16) for t in spec.rank_tensors(rank)}
        readable = {n: t for n, t in local.items() if t.numel()}
        flat = [t.view(-1) for t in readable.values()]
        for t in flat:
            assert engine.register_memory(t.data_ptr(), t.numel() * t.element_size()) == 0
        result = engine.batch_transfer_sync_read(
            session, [t.data_ptr() for t in readable.values()], [info[n][0] for n in readable],
            [t.numel() * t.element_size() for t in readable.values()],
        )
        assert result == 0
        for t in flat:
            engine.unregister_memory(t.data_ptr())
        served = httpx.get(seed.url + "/testbed/digests", params={"rank": rank}, timeout=30).json()["digests"]
        regenerated = digests(materialize(spec, rank, RNG_SEED).tensors)
        assert digests(local) == served == regenerated
    assert httpx.get(seed.url + "/testbed/digests", params={"rank": 5}).status_code == 404


def _wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    """Poll for a condition (a starved seed on a busy machine decodes late, not never)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.05)


def _itl_count(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    line = next(l for l in text.splitlines() if l.startswith(f"sglang:inter_token_latency_seconds_count{{{LABELS}}}"))
    return float(line.rsplit(" ", 1)[1])


def test_metrics_have_sglang_names_and_load_can_change(seed):
    text = httpx.get(seed.url + "/metrics").text
    for name in ("sglang:inter_token_latency_seconds_bucket", "sglang:time_to_first_token_seconds_bucket",
                 "sglang:e2e_request_latency_seconds_bucket", "sglang:num_running_reqs",
                 "sglang:num_queue_reqs", "sglang:gen_throughput"):
        assert name in text, name
    # SGLang's default ITL buckets, with its labels (exposition sorts label names).
    assert 'sglang:inter_token_latency_seconds_bucket{engine_type="unified",le="0.04",model_name="tiny"}' in text
    assert 'sglang:num_running_reqs{engine_type="unified",model_name="tiny",moe_ep_rank="0",pp_rank="0",tp_rank="0"}' in text
    before = _itl_count(seed.url)
    assert httpx.post(seed.url + "/testbed/load", json={"rps": 25}).json() == {
        "rps": 25.0, "concurrency": 0, "on_seconds": 0.0, "off_seconds": 0.0}
    _wait_until(lambda: _itl_count(seed.url) > before, "the load to produce inter-token latencies")
    assert httpx.post(seed.url + "/testbed/load", json={"rps": 0}).status_code == 200
    assert httpx.post(seed.url + "/testbed/load", json={"rps": -1}).status_code == 422
    # A bursty closed loop: both switch times or neither; a misspelt field is refused, not ignored.
    assert httpx.post(seed.url + "/testbed/load", json={"concurrency": 8, "on_seconds": 1}).status_code == 422
    assert httpx.post(seed.url + "/testbed/load", json={"concurency": 8}).status_code == 422


def test_load_rps_flag_drives_decode_and_itl_grows():
    seed = SeedProcess("--preset", "tiny", "--load-rps", "20", "--output-tokens", "16")
    try:
        first = _itl_count(seed.url)
        _wait_until(lambda: _itl_count(seed.url) > first, "the --load-rps load to produce inter-token latencies")
        decode = lambda: httpx.get(seed.url + "/testbed/status").json()["decode"]  # noqa: E731
        _wait_until(lambda: decode()["completed"] > 0, "a load request to complete")
        status = decode()
        assert status["load_rps"] == 20 and status["rejected"] == 0
        assert 1 <= status["layers_per_step"]
    finally:
        assert seed.stop() == 0


def test_a_closed_loop_keeps_its_requests_in_flight_and_a_burst_ends_them():
    """--load-concurrency N: N requests in flight (decoded together in each step), a new one as each finishes;
    a bursty load stops sending when its on-period ends, so the seed drains to idle."""
    seed = SeedProcess("--preset", "tiny", "--load-concurrency", "12", "--output-tokens", "6",
                       "--output-tokens-jitter", "0.5", "--decode-layers", "1")
    try:
        decode = lambda: httpx.get(seed.url + "/testbed/status").json()["decode"]  # noqa: E731
        # Several generations of requests finished, and every one was replaced at once.
        _wait_until(lambda: decode()["completed"] >= 36, "three generations of the closed loop to finish")
        status = decode()
        assert status["in_flight"] == 12 and status["rejected"] == 0, status
        assert status["load"] == {"rps": 0.0, "concurrency": 12, "on_seconds": 0.0, "off_seconds": 0.0}
        # On for 0.3 s, then off for a minute: the requests in flight finish and none replaces them.
        body = {"concurrency": 12, "on_seconds": 0.3, "off_seconds": 60}
        assert httpx.post(seed.url + "/testbed/load", json=body).json() == {"rps": 0.0, **body}
        _wait_until(lambda: decode()["in_flight"] == 0, "the burst's requests to finish")
        completed = decode()["completed"]
        time.sleep(0.5)
        assert decode()["completed"] == completed and decode()["running"] == 0  # still off: nothing new arrives
    finally:
        assert seed.stop() == 0
