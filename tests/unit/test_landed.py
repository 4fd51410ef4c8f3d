"""The landed map and the stream reader (rfork_api.landed, rfork_agent.landed) over the in-memory transport.

The parent is a coroutine that lands chunks while the child follows it: it writes a
chunk's bytes, then marks it. A child that read a chunk before it was marked would copy
zeros, so byte-exact results also check the order.
"""

from __future__ import annotations

import asyncio
import time
import ctypes
import doctest
import random
import struct

import pytest

import rfork_api.landed as wire
from rfork_agent.landed import FollowOptions, LandedMap, NotTheSamePlan, ParentLost, ParentStalled, follow
from rfork_agent.transport import InMemoryFabric, InMemoryTransport
from rfork_api.chunking import plan_chunks
from rfork_api.landed import (HEADER_BYTES, LANDED, LandedMapRef, NotALandedMap, Stream, landed_in, landed_offset,
                              parse_header, plan_digest, region_bytes)
from rfork_api.manifest import parse_manifest

CHUNK = 4096
# Tensors of one model: some split over chunks, some coalesced into one, one of exactly a chunk.
SIZES = [10_000, 3_000, 1_000, 500, 20_000, 4_096, 100, 50_000, 7, 30_000]
FAST = FollowOptions(poll_min_seconds=0.0005, poll_max_seconds=0.005, read_timeout_seconds=5, stall_seconds=5)


def pattern(tensor: int, offset: int, length: int) -> bytes:
    return bytes((tensor * 31 + (offset + i) * 7) % 251 for i in range(length))


class Instance:
    """A transport, its weights (zeroed tensors at addresses of its own), its chunk plan and landed map."""

    def __init__(self, fabric: InMemoryFabric, sizes: list[int] = SIZES) -> None:
        self.transport = InMemoryTransport(fabric)
        self.weights = (ctypes.c_uint8 * (sum(sizes) + 64 * len(sizes)))()
        self.base = ctypes.addressof(self.weights)
        self.transport.register(self.base, len(self.weights))
        starts, at = [], 0
        for size in sizes:
            starts.append(at)
            at += size + 64  # gaps: reads must use each tensor's own address
        self.starts = starts
        self.manifest = parse_manifest({f"t{i}": [self.base + starts[i], size, 1] for i, size in enumerate(sizes)})
        self.plan = plan_chunks(self.manifest, CHUNK)
        self.map = LandedMap(self.transport, self.plan, self.manifest)

    def land(self, chunk_id: int) -> None:
        for name, offset, length in self.plan[chunk_id].segments:
            i = int(name[1:])
            ctypes.memmove(self.base + self.starts[i] + offset, pattern(i, offset, length), length)
        self.map.mark([chunk_id])

    def chunk(self, chunk_id: int) -> bytes:
        return b"".join(bytes(self.weights[self.starts[int(n[1:])] + o:self.starts[int(n[1:])] + o + length])
                        for n, o, length in self.plan[chunk_id].segments)

    def expected(self, chunk_id: int) -> bytes:
        return b"".join(pattern(int(n[1:]), o, length) for n, o, length in self.plan[chunk_id].segments)

    def follow(self, parent: "Instance", first: int, end: int, options: FollowOptions = FAST, on_landed=None,
               rate: float | None = None):
        stream = Stream(parent.map.ref(parent.transport.session_id), first, end)
        return follow(self.transport, stream, self.plan, self.manifest, self.map, options, on_landed=on_landed,
                      rate=rate)


@pytest.fixture
def pair():
    fabric = InMemoryFabric()
    return Instance(fabric), Instance(fabric)


async def land_slowly(parent: Instance, order: list[int], seconds_each: float) -> None:
    for c in order:
        parent.land(c)
        await asyncio.sleep(seconds_each)


def test_a_stream_reads_its_chunks_as_the_parent_lands_them_and_marks_them(pair) -> None:
    parent, child = pair
    n = len(parent.plan)
    assert n >= 20 and any(len(c.segments) > 1 for c in parent.plan)  # split and coalesced tensors both
    order = list(range(n))
    random.Random(1).shuffle(order)

    reported: list[int] = []

    async def scenario():
        landing = asyncio.create_task(land_slowly(parent, order, 0.001))
        result = await child.follow(parent, 4, n - 3, on_landed=reported.extend)
        await landing
        return result

    result = asyncio.run(scenario())
    assert result.chunks_read == n - 7 and sorted(reported) == list(range(4, n - 3))  # each reported once
    assert result.bytes_read == sum(parent.plan[c].nbytes for c in range(4, n - 3))
    assert result.map_reads >= 2 and result.seconds > 0
    for c in range(n):
        inside = 4 <= c < n - 3
        assert child.map.is_landed(c) == inside
        assert child.chunk(c) == (child.expected(c) if inside else bytes(len(child.expected(c))))


def test_chunks_already_landed_here_are_not_read_again(pair) -> None:
    parent, child = pair
    for c in range(len(parent.plan)):
        parent.land(c)
    child.map.mark([5, 6])  # landed from elsewhere (their bytes are not written here: a re-read would)
    assert asyncio.run(child.follow(parent, 4, 8)).chunks_read == 2
    assert child.chunk(5) == bytes(len(child.expected(5)))
    assert child.chunk(4) == child.expected(4) and child.chunk(7) == child.expected(7)


def test_a_paced_stream_reads_no_faster_than_its_rate(pair) -> None:
    """The parent's upload cap share: every batch but the first waits for the time the last took at it."""
    parent, child = pair
    for c in range(len(parent.plan)):
        parent.land(c)
    batch = FollowOptions(batch_chunks=1, poll_min_seconds=0.001, poll_max_seconds=0.002)
    nbytes = sum(parent.plan[c].nbytes for c in range(0, 6))
    rate = nbytes / 0.25  # six one-chunk batches in 0.25 s: five waits of ~0.04 s at least
    started = time.monotonic()
    result = asyncio.run(child.follow(parent, 0, 6, options=batch, rate=rate))
    assert result.chunks_read == 6 and all(child.chunk(c) == child.expected(c) for c in range(6))
    # A lower bound only (a loaded machine makes it slower, never faster).
    assert time.monotonic() - started >= (nbytes - parent.plan[5].nbytes) / rate * 0.95


def test_a_child_can_follow_a_parent_that_is_itself_following(pair) -> None:
    """A chain parent -> relay -> leaf: the relay's marks are what the leaf follows."""
    parent, relay = pair
    leaf = Instance(parent.transport.fabric)
    n = len(parent.plan)

    async def scenario() -> None:
        landing = asyncio.create_task(land_slowly(parent, list(range(n)), 0.001))
        await asyncio.gather(relay.follow(parent, 0, n), leaf.follow(relay, 0, n))
        await landing

    asyncio.run(scenario())
    assert all(leaf.chunk(c) == leaf.expected(c) for c in range(n))


def test_a_parent_that_goes_away_is_reported_lost(pair) -> None:
    parent, child = pair
    for c in range(10):
        parent.land(c)
    n = len(parent.plan)

    async def scenario() -> None:
        async def die_soon() -> None:
            while not child.map.is_landed(9):  # once the child has what there is, it only polls the map
                await asyncio.sleep(0.001)
            parent.transport.close()  # reads from it now fail, as from a killed process
        killer = asyncio.create_task(die_soon())
        try:
            await child.follow(parent, 0, n)
        finally:
            await killer

    with pytest.raises(ParentLost, match=rf"stream \[0, {n}\) from parent inmem:\d+: reading its landed map"):
        asyncio.run(scenario())
    assert all(child.map.is_landed(c) for c in range(10))  # what it read before stays read


def test_a_parent_that_lands_nothing_more_is_reported_stalled(pair) -> None:
    parent, child = pair
    for c in range(3):
        parent.land(c)
    options = FollowOptions(poll_min_seconds=0.001, poll_max_seconds=0.01, stall_seconds=0.1)
    with pytest.raises(ParentStalled, match="landed none of the 5 chunks left of stream \\[0, 8\\) for 0.1 s"):
        asyncio.run(child.follow(parent, 0, 8, options))


def test_a_parent_of_another_plan_or_no_map_at_all_is_refused(pair) -> None:
    parent, child = pair
    n, t = len(parent.plan), len(parent.manifest)
    session = parent.transport.session_id
    other_plan = Stream(LandedMapRef(session, parent.map.ptr, n + 1, t), 0, 4)
    with pytest.raises(NotTheSamePlan, match=f"its map has {n + 1} chunks of {t} tensors, this instance {n} chunks"):
        asyncio.run(follow(child.transport, other_plan, child.plan, child.manifest, child.map, FAST))
    not_a_map = Stream(LandedMapRef(session, parent.base, n, t), 0, 4)  # the parent's weights, not its map
    with pytest.raises(NotTheSamePlan, match="no landed map there"):
        asyncio.run(follow(child.transport, not_a_map, child.plan, child.manifest, child.map, FAST))


@pytest.mark.parametrize("build, message", [
    (lambda: LandedMapRef("", 4096, 8, 2), "session_id is empty"),
    (lambda: LandedMapRef("h:1", 0, 8, 2), "registered address"),
    (lambda: LandedMapRef("h:1", 4096, 0, 2), "1 to 16777216 chunks"),
    (lambda: LandedMapRef("h:1", 4096, 8, 0), "1 to 4194304 tensors"),
    (lambda: Stream(LandedMapRef("h:1", 4096, 8, 2), 4, 4), r"\[4, 4\) are not a non-empty range"),
    (lambda: Stream(LandedMapRef("h:1", 4096, 8, 2), 2, 9), "inside the parent's 8 chunks"),
    (lambda: Stream(LandedMapRef("h:1", 4096, 8, 2), -1, 3), "not a non-empty range"),
    (lambda: FollowOptions(batch_chunks=0), "batch_chunks must be at least 1"),
    (lambda: FollowOptions(poll_min_seconds=0.1, poll_max_seconds=0.01), "poll_min_seconds <= poll_max_seconds"),
    (lambda: FollowOptions(stall_seconds=0), "must be > 0"),
])
def test_bad_stream_inputs_say_what_is_wrong(build, message) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_a_map_holds_its_header_and_tensor_addresses_and_is_registered_while_open() -> None:
    transport = InMemoryTransport(InMemoryFabric())
    manifest = parse_manifest({"a": [0x1000, 8192, 2], "b": [0x9000, 4, 4]})
    plan = plan_chunks(manifest, 4096)  # a's 16 KiB in 4 chunks, b in a fifth
    with LandedMap(transport, plan, manifest) as landed:
        assert transport.regions == {landed.ptr: region_bytes(5, 2)}
        raw = bytes(landed.buffer)
        assert parse_header(raw, "test") == (5, 2, plan_digest(plan))
        assert struct.unpack_from("<2Q", raw, HEADER_BYTES) == (0x1000, 0x9000)
        landed.mark([1, 4])
        assert landed_in(landed.snapshot(), range(5)) == [1, 4]
        assert landed.snapshot()[1] == LANDED and raw[landed_offset(2):] == bytes(5)
        for bad in (-1, 5):  # never into the header or the addresses, never past the end
            with pytest.raises(IndexError, match=f"chunk {bad} is not in this map's 5 chunks"):
                landed.mark([bad])
        assert bytes(landed.buffer)[:landed_offset(2)] == raw[:landed_offset(2)]
    assert transport.regions == {}
    with pytest.raises(ValueError, match="at least one chunk and one tensor"):
        LandedMap(transport, [], manifest)


def test_the_plan_digest_tells_plans_apart_that_counts_cannot() -> None:
    one = parse_manifest({"a": [0x1000, 4096, 1], "b": [0x9000, 4096, 1]})
    swapped = parse_manifest({"b": [0x1000, 4096, 1], "a": [0x9000, 4096, 1]})  # same counts, other order
    assert len(plan_chunks(one, 4096)) == len(plan_chunks(swapped, 4096)) == 2
    assert plan_digest(plan_chunks(one, 4096)) != plan_digest(plan_chunks(swapped, 4096))
    assert plan_digest(plan_chunks(one, 4096)) == plan_digest(plan_chunks(parse_manifest(
        {"a": [0x5000, 4096, 1], "b": [0x7000, 4096, 1]}), 4096))  # addresses do not matter


def test_a_parent_whose_plan_differs_is_refused_before_a_byte_is_read(pair) -> None:
    parent, child = pair
    other = Instance(parent.transport.fabric, sizes=SIZES[::-1])  # the same tensors in another order
    assert len(other.plan) == len(child.plan) and len(other.manifest) == len(child.manifest)  # counts alike
    for c in range(len(other.plan)):
        other.land(c)
    stream = Stream(other.map.ref(other.transport.session_id), 0, 2)
    with pytest.raises(NotTheSamePlan, match="chunk plan differs"):
        asyncio.run(follow(child.transport, stream, child.plan, child.manifest, child.map, FAST))
    assert child.chunk(0) == bytes(len(child.expected(0))) and not child.map.is_landed(0)


@pytest.mark.parametrize("data, message", [
    (b"RFLM", "shorter than a landed map's 32-byte header"),
    (b"XXXX" + bytes(28), "no landed map there"),
    (b"RFLM" + struct.pack("<III", 2, 8, 1) + bytes(16), "landed map version 2, this reader knows 1"),
])
def test_a_header_that_is_not_a_map_says_what_was_found(data, message) -> None:
    with pytest.raises(NotALandedMap, match=message):
        parse_header(data, "parent 10.0.0.7:1")


def test_doctests() -> None:
    assert doctest.testmod(wire).failed == 0
