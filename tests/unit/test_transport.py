"""InMemoryTransport, the read helper, and MooncakeTransport's wrapper over a fake engine."""

from __future__ import annotations

import asyncio
import ctypes

import pytest

from rfork_agent.transport import (
    InMemoryFabric, InMemoryTransport, MooncakeTransport, ReadFailed, ReadStatus, ReadTimeout, Transport,
    TransportError, read,
)


def _buffer(n, fill):
    buf = (ctypes.c_ubyte * n)(*([fill] * n))
    return buf, ctypes.addressof(buf)


@pytest.fixture
def pair():
    fabric = InMemoryFabric()
    seed, client = InMemoryTransport(fabric), InMemoryTransport(fabric)
    src, src_ptr = _buffer(64, 7)
    src[10] = 99
    dst, dst_ptr = _buffer(64, 0)
    seed.register(src_ptr, 64)
    client.register(dst_ptr, 64)
    return fabric, seed, client, (src, src_ptr), (dst, dst_ptr)


def test_it_is_a_transport(pair):
    _, seed, client, *_ = pair
    assert isinstance(seed, Transport) and seed.session_id != client.session_id


def test_copy_submit_poll_and_sync(pair):
    _, seed, client, (src, src_ptr), (dst, dst_ptr) = pair
    handle = client.submit_read(seed.session_id, [dst_ptr, dst_ptr + 32], [src_ptr, src_ptr + 32], [32, 32])
    assert client.poll(handle) == ReadStatus.DONE
    assert bytes(dst) == bytes(src)
    dst[:] = bytes(64)
    assert client.read_sync(seed.session_id, [dst_ptr + 8], [src_ptr + 8], [8]) == 0
    assert bytes(dst[8:16]) == bytes(src[8:16]) and bytes(dst[:8]) == bytes(8)


@pytest.mark.parametrize("name, session, src_off, dst_off, length, fail_when", [
    ("source outside the seed's region", "seed", 32, 0, 64, None),
    ("destination not registered here", "seed", 0, 32, 64, None),
    ("injected failure", "seed", 0, 0, 64, lambda session, lengths: sum(lengths) > 16),
    ("seed closed (killed)", "closed", 0, 0, 64, None),
])
def test_failed_reads_write_nothing(pair, name, session, src_off, dst_off, length, fail_when):
    fabric, seed, client, (src, src_ptr), (dst, dst_ptr) = pair
    client.fail_when = fail_when
    if session == "closed":
        seed.close()
    assert client.read_sync(seed.session_id, [dst_ptr + dst_off], [src_ptr + src_off], [length]) == -1, name
    assert bytes(dst) == bytes(64)


def test_unknown_session_fails_at_submit_like_te(pair):
    _, _, client, (_, src_ptr), (_, dst_ptr) = pair
    with pytest.raises(ReadFailed, match="unknown"):
        client.submit_read("inmem:nope", [dst_ptr], [src_ptr], [8])
    assert client.read_sync("inmem:nope", [dst_ptr], [src_ptr], [8]) == -1


def test_mismatched_batch_is_a_value_error(pair):
    _, seed, client, (_, src_ptr), (_, dst_ptr) = pair
    with pytest.raises(ValueError, match="one dst, src and length"):
        client.submit_read(seed.session_id, [dst_ptr], [src_ptr, src_ptr], [8])


@pytest.mark.parametrize("name, pending_polls, fail_when, timeout, error", [
    ("done after a few polls", 3, None, 5.0, None),
    ("failure", 0, lambda s, lengths: True, 5.0, ReadFailed),
    ("pending past the deadline", 10**9, None, 0.02, ReadTimeout),
])
def test_read_helper(pair, name, pending_polls, fail_when, timeout, error):
    _, seed, client, (src, src_ptr), (dst, dst_ptr) = pair
    client.pending_polls, client.fail_when = pending_polls, fail_when

    async def go():
        await read(client, seed.session_id, [dst_ptr], [src_ptr], [64], timeout_s=timeout, poll_interval=0.001)

    if error is None:
        asyncio.run(go())
        assert bytes(dst) == bytes(src), name
    else:
        with pytest.raises(error):
            asyncio.run(go())


class FakeEngine:
    """Just enough of mooncake.engine.TransferEngine to test the wrapper's mapping."""

    def __init__(self, statuses=(0,), batch_id=7, sync_rc=0):
        self.statuses, self.batch_id, self.sync_rc = list(statuses), batch_id, sync_rc
        self.registered = {}

    def get_rpc_port(self):
        return 15000

    def register_memory(self, ptr, n):
        self.registered[ptr] = n
        return 0

    def unregister_memory(self, ptr):
        return 0 if self.registered.pop(ptr, None) else -1

    def batch_transfer_async_read(self, session, dst, src, lengths):
        return self.batch_id

    def get_batch_transfer_status(self, ids):
        return self.statuses.pop(0)

    def batch_transfer_sync_read(self, session, dst, src, lengths):
        return self.sync_rc


@pytest.mark.parametrize("te_status, expected", [(0, ReadStatus.DONE), (1, ReadStatus.PENDING),
                                                 (-1, ReadStatus.FAILED), (-7, ReadStatus.FAILED)])
def test_mooncake_status_mapping(te_status, expected):
    t = MooncakeTransport(engine=FakeEngine(statuses=[te_status]))
    assert t.session_id == "127.0.0.1:15000"
    assert t.poll(t.submit_read("127.0.0.1:1", [1], [2], [3])) == expected


def test_mooncake_batch_id_zero_is_a_failed_start():
    t = MooncakeTransport(engine=FakeEngine(batch_id=0))
    with pytest.raises(ReadFailed, match="unknown or unreachable"):
        t.submit_read("10.0.0.1:1", [1], [2], [3])


@pytest.mark.parametrize("rc, expected", [(0, 0), (-1, -1), (5, -1)])
def test_mooncake_sync_read_normalises_codes(rc, expected):
    assert MooncakeTransport(engine=FakeEngine(sync_rc=rc)).read_sync("s", [1], [2], [3]) == expected


def test_mooncake_unregister_of_unknown_region_raises():
    t = MooncakeTransport(engine=FakeEngine())
    t.register(100, 10)
    t.unregister(100)
    with pytest.raises(TransportError, match="registered"):
        t.unregister(100)


def test_mooncake_bad_protocol_is_explained():
    with pytest.raises(TransportError, match="'tcp' or 'rdma'"):
        MooncakeTransport(protocol="udp")


def test_mooncake_missing_library_is_explained(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("mooncake"):
            raise ImportError("libibverbs.so.1: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(TransportError, match="apt-get install libibverbs1 librdmacm1"):
        MooncakeTransport()
