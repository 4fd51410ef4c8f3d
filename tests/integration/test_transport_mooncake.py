"""MooncakeTransport against a real TransferEngine in another process (TCP on loopback).

The seed side is a small script run as a subprocess: it registers a torch
tensor with a known byte pattern and prints its session id and pointer. The
client side is a MooncakeTransport in this process.
"""

from __future__ import annotations

import asyncio
import signal
import textwrap
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mooncake.engine")

from tests.integration.script_process import script_process  # noqa: E402
from rfork_agent.transport import (  # noqa: E402
    BatchTooLarge, MooncakeTransport, ReadFailed, ReadStatus, ReadTimeout, read,
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


def running_seed(directory):
    return script_process(directory, "seed.py", SEED_SCRIPT, str(NBYTES))


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


# -- reads run side by side: a read waiting on the wire blocks neither the loop nor other reads ------

@pytest.fixture
def stalled_seed(tmp_path):
    """A seed of its own, warmed up, then stopped (SIGSTOP): reads from it wait on the wire.

    Resumed by the test, or at the latest after ``resume_after`` seconds by a timer thread,
    so code that blocks the event loop until the read settles fails instead of hanging.
    """
    import threading

    with running_seed(tmp_path) as info:
        process = info["process"]
        resumed = threading.Event()

        def resume():
            if not resumed.is_set():
                resumed.set()
                process.send_signal(signal.SIGCONT)

        def stop():
            # SIGSTOP is asynchronous: return only once the kernel shows every thread stopped, so
            # no read submitted after this can be served by a seed thread still on its way to the stop.
            process.send_signal(signal.SIGSTOP)
            timer.start()
            deadline = time.monotonic() + 5
            while not _stopped(process.pid):
                assert time.monotonic() < deadline, f"seed {process.pid} did not stop within 5 s of SIGSTOP"
                time.sleep(0.005)

        info["resume"], info["resumed"] = resume, resumed
        info["resume_after"] = 20.0
        timer = threading.Timer(info["resume_after"], resume)
        info["stop"] = stop
        try:
            yield info
        finally:
            timer.cancel()
            resume()


def _stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is in the stopped state (T) per /proc."""
    import os

    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as fh:
            states.append(fh.read().rsplit(")", 1)[1].split()[0])
    return all(state == "T" for state in states)


@pytest.fixture
def own_client():
    """A transport of its own: no cached session of a seed that an earlier test of this module
    killed, whose port a later seed may have been given."""
    return MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")


def _warm(client, seed, dst):
    """One small read, so the TE session (its handshake) exists before the seed stops."""
    assert client.read_sync(seed["session_id"], [dst.data_ptr()], [seed["ptr"]], [4096]) == 0
    dst.zero_()


def test_a_read_stalled_on_the_wire_leaves_the_loop_and_reads_from_other_seeds_free(seed, stalled_seed, own_client):
    stalled, client = stalled_seed, own_client
    slow_dst, fast_dst = torch.zeros(NBYTES, dtype=torch.uint8), torch.zeros(NBYTES, dtype=torch.uint8)
    client.register(slow_dst.data_ptr(), NBYTES)
    client.register(fast_dst.data_ptr(), NBYTES)
    try:
        _warm(client, stalled, slow_dst)
        _warm(client, seed, fast_dst)
        stalled["stop"]()

        async def go():
            ticks_while_stalled = 0

            async def heartbeat():  # what leases and keepalives need: the loop's turn now and then
                nonlocal ticks_while_stalled
                while not stalled["resumed"].is_set():
                    await asyncio.sleep(0.01)
                    ticks_while_stalled += not stalled["resumed"].is_set()

            beating = asyncio.create_task(heartbeat())
            slow = asyncio.create_task(read(client, stalled["session_id"], [slow_dst.data_ptr()], [stalled["ptr"]],
                                            [NBYTES], timeout_s=60))
            await asyncio.sleep(0.05)  # the stalled read is submitted and waiting first
            await read(client, seed["session_id"], [fast_dst.data_ptr()], [seed["ptr"]], [NBYTES], timeout_s=60)
            fast_landed_while_stalled = not stalled["resumed"].is_set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while ticks_while_stalled < 5 and loop.time() < deadline:
                await asyncio.sleep(0.01)
            if fast_landed_while_stalled:
                assert not slow.done(), (
                    f"the read from the stopped seed finished while the seed was stopped "
                    f"({'raised ' + repr(slow.exception()) if slow.exception() else 'returned'}; seed stopped: "
                    f"{_stopped(stalled['process'].pid)}; its bytes landed: {torch.equal(slow_dst, expected_bytes(NBYTES))})")
            stalled["resume"]()
            await slow
            await beating
            return fast_landed_while_stalled, ticks_while_stalled

        fast_landed_while_stalled, ticks = asyncio.run(go())
        assert fast_landed_while_stalled, (
            f"the read from the live seed finished only after the stopped seed was resumed "
            f"({stalled['resume_after']:.0f} s later): a read waiting on the wire blocked the event loop")
        assert ticks >= 5, f"the event loop ticked {ticks} times while a read waited on the stopped seed"
        want = expected_bytes(NBYTES)
        assert torch.equal(fast_dst, want) and torch.equal(slow_dst, want)
    finally:
        client.unregister(slow_dst.data_ptr())
        client.unregister(fast_dst.data_ptr())


def test_a_read_timeout_fires_on_time_while_the_batch_waits_and_the_batch_lands_later(stalled_seed, own_client):
    stalled, client = stalled_seed, own_client
    dst = torch.zeros(NBYTES, dtype=torch.uint8)
    client.register(dst.data_ptr(), NBYTES)
    try:
        _warm(client, stalled, dst)
        stalled["stop"]()
        started = time.monotonic()
        with pytest.raises(ReadTimeout, match="did not finish in 0.50 s"):
            asyncio.run(read(client, stalled["session_id"], [dst.data_ptr()], [stalled["ptr"]], [NBYTES],
                             timeout_s=0.5))
            # Only reached when the read returned: say what came back, and from where.
            pytest.fail(f"the read from the stopped seed returned after {time.monotonic() - started:.2f} s; "
                        f"seed stopped: {_stopped(stalled['process'].pid)}, resumed: {stalled['resumed'].is_set()}, "
                        f"its bytes landed: {torch.equal(dst, expected_bytes(NBYTES))}")
        waited = time.monotonic() - started
        assert not stalled["resumed"].is_set(), "the timeout fired only once the seed was resumed"
        print(f"ReadTimeout(0.5 s) raised after {waited:.2f} s")
        # TE cannot cancel the batch: it is still on the wire and lands once the seed runs again
        # (read's memory rule: the caller's memory stays reserved after a timeout).
        stalled["resume"]()
        deadline = time.monotonic() + 30
        want = expected_bytes(NBYTES)
        while not torch.equal(dst, want):
            assert time.monotonic() < deadline, "the timed-out batch never landed"
            time.sleep(0.05)
    finally:
        client.unregister(dst.data_ptr())


def test_many_concurrent_reads_from_two_seeds_are_byte_exact(seed, doomed_seed, client):
    # Up to 16 batches waited on at once on one transport (no lock around TE): every byte lands right.
    pieces = 16
    size = NBYTES // pieces
    dsts = {name: torch.zeros(NBYTES, dtype=torch.uint8) for name in ("a", "b")}
    for dst in dsts.values():
        client.register(dst.data_ptr(), NBYTES)
    try:
        async def go():
            reads = [
                read(client, source["session_id"], [dsts[name].data_ptr() + i * size],
                     [source["ptr"] + i * size], [size], timeout_s=60)
                for i in range(pieces) for name, source in (("a", seed), ("b", doomed_seed))
            ]
            await asyncio.gather(*reads)

        asyncio.run(go())
        want = expected_bytes(NBYTES)
        assert all(torch.equal(dst, want) for dst in dsts.values())
    finally:
        for dst in dsts.values():
            client.unregister(dst.data_ptr())
