"""The landed map and the stream reader (rfork_api.landed, rfork_agent.landed) over the in-memory transport.

The parent is a coroutine that lands chunks while the child follows it: it writes a
chunk's bytes, then marks it. A child that read a chunk before it was marked would copy
zeros, so byte-exact results also check the order.
"""

from __future__ import annotations

import asyncio
import ctypes
import doctest
import random

import pytest

import rfork_api.landed as wire
from rfork_agent.landed import FollowOptions, LandedMap, ParentLost, ParentStalled, follow
from rfork_agent.transport import InMemoryFabric, InMemoryTransport
from rfork_api.landed import LANDED, LandedMapRef, Stream, landed_in

CHUNK = 4096
CHUNKS = 32
FAST = FollowOptions(poll_min_seconds=0.0005, poll_max_seconds=0.005, read_timeout_seconds=5, stall_seconds=5)


def pattern(chunk_id: int) -> bytes:
    return bytes((chunk_id * 31 + i * 7) % 251 for i in range(CHUNK))


class Instance:
    """A transport, its weights (zeroed) and its landed map."""

    def __init__(self, fabric: InMemoryFabric) -> None:
        self.transport = InMemoryTransport(fabric)
        self.weights = (ctypes.c_uint8 * (CHUNKS * CHUNK))()
        self.base = ctypes.addressof(self.weights)
        self.transport.register(self.base, CHUNKS * CHUNK)
        self.map = LandedMap(self.transport, CHUNKS)

    def land(self, chunk_id: int) -> None:
        ctypes.memmove(self.base + chunk_id * CHUNK, pattern(chunk_id), CHUNK)
        self.map.mark([chunk_id])

    def chunk(self, chunk_id: int) -> bytes:
        return bytes(self.weights[chunk_id * CHUNK:(chunk_id + 1) * CHUNK])

    def reads_from(self, parent: "Instance"):
        def reads_for(chunk_ids):
            return ([self.base + c * CHUNK for c in chunk_ids], [parent.base + c * CHUNK for c in chunk_ids],
                    [CHUNK] * len(chunk_ids))
        return reads_for


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
    order = list(range(CHUNKS))
    random.Random(1).shuffle(order)
    stream = Stream(parent.map.ref(parent.transport.session_id), 4, 28)

    async def scenario() -> int:
        landing = asyncio.create_task(land_slowly(parent, order, 0.001))
        count = await follow(child.transport, stream, child.reads_from(parent), child.map, FAST)
        await landing
        return count

    assert asyncio.run(scenario()) == 24
    for c in range(CHUNKS):
        assert child.map.is_landed(c) == (4 <= c < 28)
        assert child.chunk(c) == (pattern(c) if 4 <= c < 28 else bytes(CHUNK))


def test_chunks_already_landed_here_are_not_read_again(pair) -> None:
    parent, child = pair
    for c in range(CHUNKS):
        parent.land(c)
    child.map.mark([5, 6])  # landed from elsewhere (their bytes are not written here: a re-read would)
    stream = Stream(parent.map.ref(parent.transport.session_id), 4, 8)
    assert asyncio.run(follow(child.transport, stream, child.reads_from(parent), child.map, FAST)) == 2
    assert child.chunk(5) == bytes(CHUNK) and child.chunk(4) == pattern(4) and child.chunk(7) == pattern(7)


def test_a_child_can_follow_a_parent_that_is_itself_following(pair) -> None:
    """A chain seed-side parent -> relay -> leaf: the relay's marks are what the leaf follows."""
    parent, relay = pair
    leaf = Instance(parent.transport.fabric)
    stream_of = lambda src: Stream(src.map.ref(src.transport.session_id), 0, CHUNKS)  # noqa: E731

    async def scenario() -> None:
        landing = asyncio.create_task(land_slowly(parent, list(range(CHUNKS)), 0.001))
        await asyncio.gather(
            follow(relay.transport, stream_of(parent), relay.reads_from(parent), relay.map, FAST),
            follow(leaf.transport, stream_of(relay), leaf.reads_from(relay), leaf.map, FAST))
        await landing

    asyncio.run(scenario())
    assert all(leaf.chunk(c) == pattern(c) for c in range(CHUNKS))


def test_a_parent_that_goes_away_is_reported_lost(pair) -> None:
    parent, child = pair
    for c in range(10):
        parent.land(c)
    stream = Stream(parent.map.ref(parent.transport.session_id), 0, CHUNKS)

    async def scenario() -> None:
        async def die_soon() -> None:
            while not child.map.is_landed(9):  # once the child has what there is, it only polls the map
                await asyncio.sleep(0.001)
            parent.transport.close()  # reads from it now fail, as from a killed process
        killer = asyncio.create_task(die_soon())
        try:
            await follow(child.transport, stream, child.reads_from(parent), child.map, FAST)
        finally:
            await killer

    with pytest.raises(ParentLost, match=r"stream \[0, 32\) from parent inmem:\d+: reading its landed map"):
        asyncio.run(scenario())
    assert all(child.map.is_landed(c) for c in range(10))  # what it read before stays read


def test_a_parent_that_lands_nothing_more_is_reported_stalled(pair) -> None:
    parent, child = pair
    for c in range(3):
        parent.land(c)
    stream = Stream(parent.map.ref(parent.transport.session_id), 0, 8)
    options = FollowOptions(poll_min_seconds=0.001, poll_max_seconds=0.01, stall_seconds=0.1)
    with pytest.raises(ParentStalled, match="landed none of the 5 chunks left of stream \\[0, 8\\) for 0.1 s"):
        asyncio.run(follow(child.transport, stream, child.reads_from(parent), child.map, options))


def test_a_stream_of_another_chunk_plan_is_refused(pair) -> None:
    parent, child = pair
    stream = Stream(LandedMapRef(parent.transport.session_id, parent.map.ptr, CHUNKS + 1), 0, 4)
    with pytest.raises(ValueError, match="33 chunks.*32|32 chunks and the parent's 33"):
        asyncio.run(follow(child.transport, stream, child.reads_from(parent), child.map, FAST))


@pytest.mark.parametrize("build, message", [
    (lambda: LandedMapRef("", 4096, 8), "session_id is empty"),
    (lambda: LandedMapRef("h:1", 0, 8), "registered address"),
    (lambda: LandedMapRef("h:1", 4096, 0), "1 to 16777216 chunks"),
    (lambda: Stream(LandedMapRef("h:1", 4096, 8), 4, 4), r"\[4, 4\) are not a non-empty range"),
    (lambda: Stream(LandedMapRef("h:1", 4096, 8), 2, 9), "inside the parent's 8 chunks"),
    (lambda: Stream(LandedMapRef("h:1", 4096, 8), -1, 3), "not a non-empty range"),
    (lambda: FollowOptions(batch_chunks=0), "batch_chunks must be at least 1"),
    (lambda: FollowOptions(poll_min_seconds=0.1, poll_max_seconds=0.01), "poll_min_seconds <= poll_max_seconds"),
    (lambda: FollowOptions(stall_seconds=0), "must be > 0"),
])
def test_bad_stream_inputs_say_what_is_wrong(build, message) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_a_map_is_registered_while_open_and_unregistered_after() -> None:
    transport = InMemoryTransport(InMemoryFabric())
    with LandedMap(transport, 16) as landed:
        assert transport.regions == {landed.ptr: 16}
        landed.mark([3, 15])
        assert landed_in(landed.snapshot(), range(16)) == [3, 15]
        assert landed.snapshot()[3] == LANDED
    assert transport.regions == {}
    with pytest.raises(ValueError, match="at least one chunk"):
        LandedMap(transport, 0)


def test_doctests() -> None:
    assert doctest.testmod(wire).failed == 0
