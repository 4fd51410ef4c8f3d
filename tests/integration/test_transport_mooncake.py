"""MooncakeTransport against a real TransferEngine in another process (TCP on loopback).

The seed side is a small script run as a subprocess: it registers a torch
tensor with a known byte pattern and prints its session id and pointer. The
client side is a MooncakeTransport in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mooncake.engine")

from rfork_agent.transport import (  # noqa: E402
    BatchTooLarge, MooncakeTransport, ReadFailed, ReadStatus, read,
)

pytestmark = [pytest.mark.cpu_only, pytest.mark.timeout(60)]

NBYTES = 8 << 20

SEED_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from rfork_agent.transport import MooncakeTransport
    n = int(sys.argv[1])
    weights = (torch.arange(n, dtype=torch.int64) * 7 % 251).to(torch.uint8)
    t = MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")
    t.register(weights.data_ptr(), n)
    print(json.dumps({"session_id": t.session_id, "ptr": weights.data_ptr(), "nbytes": n}), flush=True)
    sys.stdin.read()   # live until the test closes stdin or kills us
""")


def expected_bytes(n: int):
    return (torch.arange(n, dtype=torch.int64) * 7 % 251).to(torch.uint8)


@contextlib.contextmanager
def running_seed(directory):
    script = directory / "seed.py"
    script.write_text(SEED_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), str(NBYTES)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,   # TE's glog chatter goes to stderr
    )
    try:
        line = process.stdout.readline()
        assert line, "the seed script exited before printing its session"
        info = json.loads(line)
        info["process"] = process
        yield info
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    with running_seed(tmp_path_factory.mktemp("seed")) as info:
        yield info


@pytest.fixture
def doomed_seed(tmp_path):
    """A seed of its own, for the test that kills it."""
    with running_seed(tmp_path) as info:
        yield info


@pytest.fixture(scope="module")
def client():
    return MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")


def test_read_sync_is_byte_exact(seed, client):
    dst = torch.zeros(NBYTES, dtype=torch.uint8)
    client.register(dst.data_ptr(), NBYTES)
    try:
        assert client.read_sync(seed["session_id"], [dst.data_ptr()], [seed["ptr"]], [NBYTES]) == 0
        assert torch.equal(dst, expected_bytes(NBYTES))
    finally:
        client.unregister(dst.data_ptr())


def test_async_read_of_scattered_segments_is_byte_exact(seed, client):
    dst = torch.zeros(NBYTES, dtype=torch.uint8)
    client.register(dst.data_ptr(), NBYTES)
    half, quarter = NBYTES // 2, NBYTES // 4
    # Swap the halves and skip the last quarter: offsets must be honoured on both sides.
    dst_ptrs = [dst.data_ptr(), dst.data_ptr() + half]
    src_ptrs = [seed["ptr"] + half, seed["ptr"]]
    lengths = [quarter, half]
    try:
        asyncio.run(read(client, seed["session_id"], dst_ptrs, src_ptrs, lengths, timeout_s=20))
        want = expected_bytes(NBYTES)
        assert torch.equal(dst[:quarter], want[half:half + quarter])
        assert torch.equal(dst[half:], want[:half])
        assert not dst[quarter:half].any()
    finally:
        client.unregister(dst.data_ptr())


MANY_SEGMENTS = 5000
"""Well above the ~2,050-2,110 segments one TE batch carries over TCP (bench/te_batch_limit.py)."""


def _scattered(dst, seed, count, size=16, stride=48):
    """``count`` segments of ``size`` bytes, ``stride`` apart, read into the same offsets of ``dst``."""
    offsets = [i * stride for i in range(count)]
    return [dst.data_ptr() + o for o in offsets], [seed["ptr"] + o for o in offsets], [size] * count, offsets


def _landed(dst, offsets, size=16):
    want = expected_bytes(NBYTES)
    return all(torch.equal(dst[o:o + size], want[o:o + size]) for o in offsets)


def test_read_of_thousands_of_segments_is_byte_exact(seed, client):
    dst = torch.zeros(NBYTES, dtype=torch.uint8)
    client.register(dst.data_ptr(), NBYTES)
    try:
        dst_ptrs, src_ptrs, lengths, offsets = _scattered(dst, seed, MANY_SEGMENTS)
        asyncio.run(read(client, seed["session_id"], dst_ptrs, src_ptrs, lengths, timeout_s=30))
        assert _landed(dst, offsets)
        dst.zero_()
        assert client.read_sync(seed["session_id"], dst_ptrs, src_ptrs, lengths) == 0
        assert _landed(dst, offsets)
    finally:
        client.unregister(dst.data_ptr())


def test_the_transport_stays_usable_after_a_refused_and_a_failed_batch(seed, client):
    dst = torch.zeros(NBYTES, dtype=torch.uint8)
    client.register(dst.data_ptr(), NBYTES)
    try:
        dst_ptrs, src_ptrs, lengths, offsets = _scattered(dst, seed, MANY_SEGMENTS)
        # An oversized batch is refused before it reaches TE (which would fail it and
        # then refuse reads to this seed until its admitted part drained).
        with pytest.raises(BatchTooLarge):
            client.submit_read(seed["session_id"], dst_ptrs, src_ptrs, lengths)
        asyncio.run(read(client, seed["session_id"], dst_ptrs[:1], src_ptrs[:1], lengths[:1], timeout_s=10))
        assert _landed(dst, offsets[:1])
        # A batch TE fails (its last segment's source is past the seed's registered
        # region) is followed at once by a read that succeeds on the same transport.
        bad = client.max_segments_per_batch
        dst.zero_()
        with pytest.raises(ReadFailed, match="failed the batch"):
            asyncio.run(read(client, seed["session_id"], dst_ptrs[:bad - 1] + [dst.data_ptr()],
                             src_ptrs[:bad - 1] + [seed["ptr"] + NBYTES], lengths[:bad], timeout_s=10))
        asyncio.run(read(client, seed["session_id"], dst_ptrs, src_ptrs, lengths, timeout_s=30))
        assert _landed(dst, offsets)
    finally:
        client.unregister(dst.data_ptr())


def test_read_from_a_killed_seed_fails_quickly(doomed_seed, client):
    seed = doomed_seed
    dst = torch.zeros(4096, dtype=torch.uint8)
    client.register(dst.data_ptr(), 4096)
    try:
        assert client.read_sync(seed["session_id"], [dst.data_ptr()], [seed["ptr"]], [4096]) == 0  # warm session
        seed["process"].send_signal(signal.SIGKILL)
        seed["process"].wait(timeout=10)
        started = time.monotonic()
        with pytest.raises(ReadFailed):
            asyncio.run(read(client, seed["session_id"], [dst.data_ptr()], [seed["ptr"]], [4096], timeout_s=30))
        assert time.monotonic() - started < 10, "a read from a dead seed must fail, not hang"
    finally:
        client.unregister(dst.data_ptr())


def test_unknown_session_fails_at_once(client):
    dst = torch.zeros(4096, dtype=torch.uint8)
    client.register(dst.data_ptr(), 4096)
    try:
        started = time.monotonic()
        with pytest.raises(ReadFailed):
            handle = client.submit_read("127.0.0.1:1", [dst.data_ptr()], [dst.data_ptr()], [4096])
            while client.poll(handle) == ReadStatus.PENDING:  # pragma: no cover - TE refuses at submit today
                time.sleep(0.01)
            raise ReadFailed("failed while polling")
        assert client.read_sync("127.0.0.1:1", [dst.data_ptr()], [dst.data_ptr()], [4096]) == -1
        assert time.monotonic() - started < 10
    finally:
        client.unregister(dst.data_ptr())
