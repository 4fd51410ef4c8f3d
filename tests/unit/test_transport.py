"""InMemoryTransport, the read helper, and MooncakeTransport's wrapper over a fake engine."""

from __future__ import annotations

import asyncio
import ctypes
import time

import pytest

from rfork_agent.transport import (
    MAX_SEGMENTS_PER_BATCH, BatchTooLarge, InMemoryFabric, InMemoryTransport, MooncakeTransport, ReadFailed,
    ReadStatus, ReadTimeout, Transport, TransportError, read, split_batches,
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


@pytest.fixture
def many_segments():
    """A seed and a client whose batches hold at most 4 segments, and 10 one-byte segments to read."""
    fabric = InMemoryFabric()
    seed = InMemoryTransport(fabric)
    client = InMemoryTransport(fabric, max_segments_per_batch=4)
    src, src_ptr = _buffer(10, 0)
    src[:] = bytes(range(1, 11))
    dst, dst_ptr = _buffer(10, 0)
    seed.register(src_ptr, 10)
    client.register(dst_ptr, 10)
    # Reversed order: each segment must land at its own offset whichever batch carries it.
    segments = ([dst_ptr + i for i in range(10)], [src_ptr + 9 - i for i in range(10)], [1] * 10)
    return seed, client, src, dst, segments


@pytest.mark.parametrize("max_segments, sizes", [(4, [4, 4, 2]), (5, [5, 5]), (10, [10]), (11, [10]), (1, [1] * 10)])
def test_split_batches_keeps_order_and_bound(max_segments, sizes):
    batches = split_batches(list(range(10)), list(range(100, 110)), list(range(1, 11)), max_segments)
    assert [len(lengths) for _, _, lengths in batches] == sizes
    assert [d for dst, _, _ in batches for d in dst] == list(range(10))
    assert [s for _, src, _ in batches for s in src] == list(range(100, 110))
    assert [n for _, _, lengths in batches for n in lengths] == list(range(1, 11))


@pytest.mark.parametrize("lengths, max_segments, max_bytes, batches", [
    ([3, 6], 4, 0, [[3, 6]]),                        # no byte bound: as before
    ([3, 6], 4, 9, [[3, 6]]),                        # exactly full
    ([3, 6], 4, 4, [[3, 1], [4], [1]]),              # the 6-byte segment cut across three batches
    ([3, 6], 1, 4, [[3], [4], [2]]),                 # the segment bound cuts first, then the byte bound
    ([8], 4, 4, [[4], [4]]),                         # one segment in two pieces
    ([1] * 5, 2, 3, [[1, 1], [1, 1], [1]]),          # the segment bound binds before the byte bound
    ([2, 2, 2], 8, 3, [[2, 1], [1, 2]]),
])
def test_split_batches_cuts_at_a_byte_bound_and_keeps_each_byte_at_its_offset(lengths, max_segments, max_bytes,
                                                                              batches):
    dst = [1000 * (i + 1) for i in range(len(lengths))]
    src = [100_000 * (i + 1) for i in range(len(lengths))]
    cut = split_batches(dst, src, lengths, max_segments, max_bytes)
    assert [list(sizes) for _, _, sizes in cut] == batches
    assert all(len(sizes) <= max_segments and (not max_bytes or sum(sizes) <= max_bytes) for _, _, sizes in cut)
    # Every byte of every segment exactly once, at the same offset on both sides.
    pairs = [(d + k, s + k) for ds, ss, sizes in cut for d, s, n in zip(ds, ss, sizes) for k in range(n)]
    assert pairs == [(d + k, s + k) for d, s, n in zip(dst, src, lengths) for k in range(n)]


@pytest.mark.parametrize("max_segments, max_bytes", [(0, 0), (4, -1)])
def test_split_batches_refuses_bounds_that_make_no_batch(max_segments, max_bytes):
    with pytest.raises(ValueError, match="max_segments must be|max_bytes must be"):
        split_batches([0], [0], [1], max_segments, max_bytes)


def test_read_in_pieces_with_gaps_is_byte_exact_and_waits_between_pieces(many_segments):
    seed, client, src, dst, segments = many_segments
    started = time.monotonic()
    asyncio.run(read(client, seed.session_id, *segments, timeout_s=5, max_batch_bytes=3, gap_seconds=0.02))
    assert bytes(dst) == bytes(reversed(bytes(src)))
    assert client.reads_submitted == 4                                 # 3 + 3 + 3 + 1 bytes (<= 4 segments each)
    assert time.monotonic() - started >= 3 * 0.02                      # three gaps between four pieces


def test_a_gap_that_would_end_past_the_deadline_is_a_timeout_naming_what_landed(many_segments):
    seed, client, _, dst, segments = many_segments
    with pytest.raises(ReadTimeout, match=r"1 of 4 batches landed, 1.000 s apart"):
        asyncio.run(read(client, seed.session_id, *segments, timeout_s=0.5, max_batch_bytes=3, gap_seconds=1.0))
    assert client.reads_submitted == 1 and bytes(dst[3:]) == bytes(7)


def test_a_read_in_pieces_cancelled_in_a_gap_stops_there(many_segments):
    seed, client, _, dst, segments = many_segments

    async def cancel_in_the_first_gap() -> None:
        reading = asyncio.ensure_future(read(client, seed.session_id, *segments, timeout_s=30, max_batch_bytes=3,
                                             gap_seconds=10.0))
        while client.reads_submitted == 0:
            await asyncio.sleep(0.001)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

    asyncio.run(asyncio.wait_for(cancel_in_the_first_gap(), 5))
    assert client.reads_submitted == 1 and bytes(dst[3:]) == bytes(7)


def test_a_task_whose_cancel_was_dropped_submits_no_read(many_segments):
    # What Python 3.11's wait_for does when the awaited batch lands as the cancel comes: the CancelledError
    # is caught, the result returned, and the task's cancel request stays pending (cancelling() > 0).
    seed, client, _, dst, segments = many_segments

    async def dropped_cancel_then_read() -> None:
        asyncio.current_task().cancel()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            pass                                   # dropped, not uncancelled
        await read(client, seed.session_id, *segments, timeout_s=5)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(dropped_cancel_then_read())
    assert client.reads_submitted == 0 and bytes(dst) == bytes(10)


@pytest.mark.parametrize("gap", [-0.1, float("nan"), float("inf")])
def test_read_refuses_a_gap_that_is_not_a_finite_time(many_segments, gap):
    seed, client, _, _, segments = many_segments
    with pytest.raises(ValueError, match="gap_seconds must be"):
        asyncio.run(read(client, seed.session_id, *segments, timeout_s=1, max_batch_bytes=3, gap_seconds=gap))
    assert client.reads_submitted == 0


def test_submit_read_refuses_an_oversized_batch_and_submits_nothing(many_segments):
    seed, client, _, dst, segments = many_segments
    with pytest.raises(BatchTooLarge, match="at most 4 segments, got 10.*nothing was submitted"):
        client.submit_read(seed.session_id, *segments)
    assert client.reads_submitted == 0 and bytes(dst) == bytes(10)


def test_read_splits_into_batches_and_is_byte_exact(many_segments):
    seed, client, src, dst, segments = many_segments
    asyncio.run(read(client, seed.session_id, *segments, timeout_s=5))
    assert bytes(dst) == bytes(reversed(bytes(src)))
    assert client.reads_submitted == 3


def test_read_sync_splits_into_batches_and_is_byte_exact(many_segments):
    seed, client, src, dst, segments = many_segments
    assert client.read_sync(seed.session_id, *segments) == 0
    assert bytes(dst) == bytes(reversed(bytes(src))) and client.reads_submitted == 3


def test_a_failed_batch_names_its_place_stops_the_read_and_the_next_read_works(many_segments):
    seed, client, src, dst, segments = many_segments
    batches_seen = []

    def fail_second_batch(session, lengths):
        batches_seen.append(len(lengths))
        return len(batches_seen) == 2

    client.fail_when = fail_second_batch
    with pytest.raises(ReadFailed, match=r"batch 2 of 3, 4 segments.*failed the batch"):
        asyncio.run(read(client, seed.session_id, *segments, timeout_s=5))
    assert batches_seen == [4, 4], "the batch after a failed one must not be submitted"
    assert bytes(dst[:4]) == bytes(reversed(bytes(src)))[:4] and bytes(dst[4:]) == bytes(6)
    asyncio.run(read(client, seed.session_id, *segments, timeout_s=5))
    assert bytes(dst) == bytes(reversed(bytes(src)))


def test_read_timeout_covers_the_whole_read(many_segments):
    seed, client, _, _, segments = many_segments
    client.pending_polls = 10**9
    with pytest.raises(ReadTimeout, match="batch 1 of 3"):
        asyncio.run(read(client, seed.session_id, *segments, timeout_s=0.05, poll_interval=0.001))


class FakeEngine:
    """Just enough of mooncake.engine.TransferEngine to test the wrapper's mapping."""

    def __init__(self, statuses=(0,), batch_id=7, sync_rc=0):
        self.statuses, self.batch_id, self.sync_rc = list(statuses), batch_id, sync_rc
        self.registered = {}
        self.batches = []

    def get_rpc_port(self):
        return 15000

    def register_memory(self, ptr, n):
        self.registered[ptr] = n
        return 0

    def unregister_memory(self, ptr):
        return 0 if self.registered.pop(ptr, None) else -1

    def batch_transfer_async_read(self, session, dst, src, lengths):
        self.batches.append(len(lengths))
        return self.batch_id

    def get_batch_transfer_status(self, ids):
        return self.statuses.pop(0)

    def batch_transfer_sync_read(self, session, dst, src, lengths):
        self.batches.append(len(lengths))
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


def test_mooncake_refuses_batches_above_its_bound_before_touching_te():
    engine = FakeEngine()
    t = MooncakeTransport(engine=engine)
    n = MAX_SEGMENTS_PER_BATCH + 1
    with pytest.raises(BatchTooLarge, match=f"at most {MAX_SEGMENTS_PER_BATCH} segments"):
        t.submit_read("s", [1] * n, [2] * n, [3] * n)
    assert engine.batches == []


def test_mooncake_sync_read_goes_in_bounded_batches_and_stops_at_a_failure():
    engine = FakeEngine()
    n = 2 * MAX_SEGMENTS_PER_BATCH + 1
    assert MooncakeTransport(engine=engine).read_sync("s", [1] * n, [2] * n, [3] * n) == 0
    assert engine.batches == [MAX_SEGMENTS_PER_BATCH, MAX_SEGMENTS_PER_BATCH, 1]
    engine = FakeEngine(sync_rc=-1)
    assert MooncakeTransport(engine=engine).read_sync("s", [1] * n, [2] * n, [3] * n) == -1
    assert engine.batches == [MAX_SEGMENTS_PER_BATCH]


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


def test_register_tensors_registers_each_storage_once():
    torch = pytest.importorskip("torch")
    from rfork_agent.fork import register_tensors

    # Views into one buffer, as fork_cli.allocate_like lays a rank out (40,000 of
    # them made 40,000 TE registrations: minutes, then failed handshakes).
    buffer = torch.zeros(4096 + 7, dtype=torch.uint8)
    views = {f"t{i}": buffer[i * 64:(i + 1) * 64].view(torch.bfloat16) for i in range(64)}
    views["empty"] = buffer[:0]
    alone = torch.zeros(3, dtype=torch.float32)
    client = InMemoryTransport(InMemoryFabric())
    register_tensors(client, {**views, "alone": alone, "zero": torch.zeros(0)})
    assert client.regions == {buffer.data_ptr(): 4096 + 7, alone.data_ptr(): 12}


# -- a transport whose poll waits, like TE's: read submits and waits on its threads -------------

def _settle_all(client) -> None:
    """Wait until the client's threads have settled every batch (the submits queue the waits)."""
    client.threads.submit.shutdown(wait=True)
    client.threads.wait.shutdown(wait=True)


@pytest.fixture
def waiting_pair():
    """Like ``pair``, with a client whose ``poll`` waits (like TE's) until ``settle`` is set."""
    import threading

    fabric = InMemoryFabric()
    settle = threading.Event()
    seed, client = InMemoryTransport(fabric), InMemoryTransport(fabric, settle_when=settle)
    src, src_ptr = _buffer(64, 7)
    dst, dst_ptr = _buffer(64, 0)
    seed.register(src_ptr, 64)
    client.register(dst_ptr, 64)
    yield seed, client, settle, src, (dst, dst_ptr), src_ptr
    settle.set()  # no thread is left waiting after the test
    _settle_all(client)


async def _until(condition, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_the_loop_runs_while_a_poll_waits(waiting_pair):
    seed, client, settle, src, (dst, dst_ptr), src_ptr = waiting_pair

    async def go():
        reading = asyncio.create_task(read(client, seed.session_id, [dst_ptr], [src_ptr], [64], timeout_s=30))
        await _until(lambda: client.batches_unsettled == 1, "the batch to be submitted")
        # The batch is on the wire and a thread waits inside the transport's poll: the loop goes on.
        for _ in range(20):
            await asyncio.sleep(0.001)
        assert not reading.done() and client.batches_unsettled == 1
        settle.set()
        await reading

    asyncio.run(go())
    assert bytes(dst) == bytes(src)


def test_the_timeout_fires_on_time_while_a_poll_waits_and_the_batch_lands_later(waiting_pair):
    # 2 s, not less: the time before the batch is submitted (a submit thread starting) counts against it,
    # and on a loaded 2-core machine that took the whole of a 0.2 s timeout once (nothing was submitted).
    seed, client, settle, src, (dst, dst_ptr), src_ptr = waiting_pair

    async def go():
        started = time.monotonic()
        with pytest.raises(ReadTimeout, match=r"did not finish in 2.00 s$"):
            await read(client, seed.session_id, [dst_ptr], [src_ptr], [64], timeout_s=2.0)
        return time.monotonic() - started

    took = asyncio.run(go())
    assert 2.0 <= took < 2.0 + 3.0, f"the timeout fired after {took:.2f} s"  # not only once the poll returns
    # TE cannot cancel a batch: after the timeout it is still on the wire, and lands later.
    assert client.batches_unsettled == 1 and bytes(dst) == bytes(64)
    settle.set()
    _settle_all(client)
    assert client.batches_unsettled == 0 and bytes(dst) == bytes(src)


def test_a_cancelled_read_returns_only_once_its_batch_settled(waiting_pair):
    seed, client, settle, src, (dst, dst_ptr), src_ptr = waiting_pair

    async def go():
        reading = asyncio.create_task(read(client, seed.session_id, [dst_ptr], [src_ptr], [64], timeout_s=30))
        await _until(lambda: client.batches_unsettled == 1, "the batch to be submitted")
        reading.cancel()
        await asyncio.sleep(0.05)
        assert not reading.done(), "a cancelled read returned while its batch could still write"
        reading.cancel()  # a second cancel (a second Ctrl-C) does not cut the wait short either
        await asyncio.sleep(0.05)
        assert not reading.done()
        settle.set()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert client.batches_unsettled == 0 and bytes(dst) == bytes(src)

    asyncio.run(go())


def test_a_read_that_times_out_waiting_for_a_submit_thread_is_never_submitted(waiting_pair):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from rfork_agent.transport import ReadThreads

    seed, client, settle, src, (dst, dst_ptr), src_ptr = waiting_pair
    busy = threading.Event()
    client.threads = ReadThreads(submit=ThreadPoolExecutor(max_workers=1), wait=client.threads.wait)
    client.threads.submit.submit(busy.wait)  # the one submit thread is taken (a handshake that hangs)

    async def go():
        with pytest.raises(ReadTimeout, match="waiting for a free submit thread: not submitted"):
            await read(client, seed.session_id, [dst_ptr], [src_ptr], [64], timeout_s=0.1)

    asyncio.run(go())
    busy.set()
    settle.set()
    _settle_all(client)
    assert client.reads_submitted == 0 and client.batches_unsettled == 0 and bytes(dst) == bytes(64)


def test_reads_all_get_on_the_wire_while_one_wait_thread_is_taken(waiting_pair):
    from concurrent.futures import ThreadPoolExecutor

    from rfork_agent.transport import ReadThreads

    seed, client, settle, src, (dst, dst_ptr), src_ptr = waiting_pair
    client.threads = ReadThreads(submit=client.threads.submit, wait=ThreadPoolExecutor(max_workers=1))

    async def go():
        reads = [asyncio.create_task(read(client, seed.session_id, [dst_ptr + i * 8], [src_ptr + i * 8], [8],
                                          timeout_s=30)) for i in range(8)]
        # Every batch is submitted though one thread waits at a time: the wire is never idle.
        await _until(lambda: client.batches_unsettled == 8, "all eight batches to be submitted")
        settle.set()
        await asyncio.gather(*reads)

    asyncio.run(go())
    assert bytes(dst) == bytes(src) and client.batches_unsettled == 0


def test_failures_reach_the_reader_from_the_thread(waiting_pair):
    seed, client, settle, *_ = waiting_pair
    _, _, _, _, (_, dst_ptr), src_ptr = waiting_pair
    settle.set()
    client.fail_when = lambda session, lengths: True
    with pytest.raises(ReadFailed, match="failed the batch"):
        asyncio.run(read(client, seed.session_id, [dst_ptr], [src_ptr], [64], timeout_s=5))
    with pytest.raises(ReadFailed, match="unknown or closed"):
        asyncio.run(read(client, "inmem:nope", [dst_ptr], [src_ptr], [64], timeout_s=5))


# -- WaitThreads: TE's wait spins, so one waiter at a time unless it is stuck --------------------

def test_quick_waits_run_one_at_a_time_in_submit_order():
    import time as clock

    from rfork_agent.transport import WaitThreads

    waits = WaitThreads(max_threads=4, stuck_seconds=5.0)
    order = []
    futures = [waits.submit(lambda i=i: (clock.sleep(0.002), order.append(i))) for i in range(20)]
    for future in futures:
        future.result(timeout=10)
    waits.shutdown()
    assert order == list(range(20)) and waits.most_threads == 1


def test_a_stuck_wait_does_not_hide_the_waits_behind_it():
    import threading

    from rfork_agent.transport import WaitThreads

    waits = WaitThreads(max_threads=2, stuck_seconds=0.05)
    stalled_peer = threading.Event()
    stuck = waits.submit(stalled_peer.wait)
    behind = [waits.submit(lambda i=i: i) for i in range(3)]
    try:
        assert [f.result(timeout=10) for f in behind] == [0, 1, 2], "waits queued behind a stuck one never ran"
        assert not stuck.done() and waits.most_threads == 2
        third = waits.submit(threading.Event().wait, 0.01)  # max_threads reached: it queues, then runs
        assert third.result(timeout=10) is False
    finally:
        stalled_peer.set()
    assert stuck.result(timeout=10) is True
    waits.shutdown()
    assert waits.most_threads == 2


def test_wait_threads_hand_errors_to_the_reader_and_refuse_work_after_shutdown():
    from rfork_agent.transport import WaitThreads

    waits = WaitThreads()

    def boom():
        raise ReadFailed("peer gone")

    with pytest.raises(ReadFailed, match="peer gone"):
        waits.submit(boom).result(timeout=10)
    waits.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        waits.submit(boom)


def test_mooncake_keeps_at_most_four_batches_in_flight_to_one_peer():
    import itertools
    import threading

    from rfork_agent.transport import MAX_BATCHES_PER_PEER

    class Engine(FakeEngine):
        ids = itertools.count(1)

        def batch_transfer_async_read(self, session, dst, src, lengths):
            self.batches.append(session)
            return next(self.ids)

    engine = Engine(statuses=[0] * 10)
    t = MooncakeTransport(engine=engine)
    handles = [t.submit_read("peer-a", [1], [2], [3]) for _ in range(MAX_BATCHES_PER_PEER)]
    t.submit_read("peer-b", [1], [2], [3])  # another peer has slots of its own
    fifth = threading.Thread(target=t.submit_read, args=("peer-a", [1], [2], [3]))
    fifth.start()
    fifth.join(0.2)
    assert fifth.is_alive() and engine.batches.count("peer-a") == MAX_BATCHES_PER_PEER
    assert t.poll(handles[0]) == ReadStatus.DONE  # a batch settles: its slot frees
    fifth.join(10)
    assert not fifth.is_alive() and engine.batches.count("peer-a") == MAX_BATCHES_PER_PEER + 1
