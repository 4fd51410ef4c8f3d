"""An instance's landed map (registered memory) and a stream reader that follows a parent's map.

The layout is :mod:`rfork_api.landed`'s: a header, the instance's tensor addresses, and a
byte per chunk. :class:`LandedMap` is this instance's map: ``mark`` a chunk only once every
byte of it is in place, because a reader that sees the byte reads the chunk at once.
:func:`follow` reads one :class:`~rfork_api.landed.Stream`: it reads the parent's header
and tensor addresses once, then its landed bytes, reads the chunks of the stream the parent
has landed and this instance has not (``batch_chunks`` at a time, their reads built from the
chunk plan, which every member of a swarm shares), marks them in this instance's map (so
its own children can read them on), and polls again, backing off while the parent lands
nothing. It returns when every chunk of the stream is marked here; it raises
:class:`ParentLost` when a read from the parent fails (the parent died or withdrew: ask for
another parent), :class:`ParentStalled` when the parent landed nothing of the stream for
``stall_seconds``, and :class:`NotTheSamePlan` when the parent's map is not one of the
same chunk plan.

``rfork fork`` (rfork_agent/fork.py) follows the streams the scheduler hands it
(scheduler/stream_swarm.py; docs/fleet.md "Streams").

    >>> with LandedMap(transport, plan, manifest) as mine:
    ...     await follow(transport, Stream(parent_ref, 0, 168), plan, manifest, mine)
"""

from __future__ import annotations

import asyncio
import ctypes
import struct
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from rfork_api.chunking import Chunk, chunk_reads, read_index
from rfork_api.landed import (HEADER_BYTES, LANDED, LandedMapRef, NotALandedMap, Stream, landed_in, landed_offset,
                              pack_header, parse_header, plan_digest, region_bytes)
from rfork_api.manifest import Manifest
from rfork_agent.transport import ReadFailed, Transport, read

__all__ = ["LandedMap", "StreamError", "ParentLost", "ParentStalled", "NotTheSamePlan", "FollowOptions",
           "FollowResult", "follow"]


class StreamError(RuntimeError):
    """A stream could not be followed to its end; the message names the parent and the chunks left."""


class ParentLost(StreamError):
    """A read from the parent (its map or its chunks) failed: it died or withdrew. Ask for another parent."""


class ParentStalled(StreamError):
    """The parent landed none of the stream's remaining chunks for ``stall_seconds``."""


class NotTheSamePlan(StreamError):
    """The parent's map is not of this instance's chunk plan (another model, rank or chunk size)."""


def _tensor_addresses(manifest: Manifest) -> list[int]:
    index, values = manifest.pointer_table()
    return [values[index[name]] for name in manifest.names]


class _Registered:
    """A zeroed host buffer registered with ``transport`` while open (ctypes: its address is stable)."""

    def __init__(self, transport: Transport, nbytes: int) -> None:
        self._transport = transport
        self.buffer = (ctypes.c_uint8 * nbytes)()
        self.ptr = ctypes.addressof(self.buffer)
        self.nbytes = nbytes
        transport.register(self.ptr, nbytes)
        self._registered = True

    def close(self) -> None:
        if self._registered:
            self._registered = False
            self._transport.unregister(self.ptr)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LandedMap(_Registered):
    """This instance's landed map: header, tensor addresses (``manifest``'s, in its order), a byte per chunk.

    Registered with ``transport`` for readers while open; ``close`` (or the ``with``
    block's end) unregisters it, and readers that still read it then fail, as they do
    when the instance is gone. Every chunk starts not landed.
    """

    def __init__(self, transport: Transport, plan: Sequence[Chunk], manifest: Manifest) -> None:
        if len(plan) == 0 or len(manifest) == 0:
            raise ValueError(f"a landed map needs at least one chunk and one tensor, got {len(plan)} chunks "
                             f"and {len(manifest)} tensors")
        self.num_chunks, self.num_tensors = len(plan), len(manifest)
        self.digest = plan_digest(plan)
        super().__init__(transport, region_bytes(self.num_chunks, self.num_tensors))
        view = memoryview(self.buffer).cast("B")
        view[:HEADER_BYTES] = pack_header(self.num_chunks, self.num_tensors, self.digest)
        struct.pack_into(f"<{self.num_tensors}Q", view, HEADER_BYTES, *_tensor_addresses(manifest))
        self._landed_at = landed_offset(self.num_tensors)

    def mark(self, chunk_ids: Sequence[int]) -> None:
        """Mark these chunks landed. Call only once every byte of each is in place."""
        buffer, at, n = self.buffer, self._landed_at, self.num_chunks
        for c in chunk_ids:
            if not 0 <= c < n:  # a bad id must not land in the header or the tensor addresses
                raise IndexError(f"chunk {c} is not in this map's {n} chunks")
            buffer[at + c] = LANDED

    def is_landed(self, chunk_id: int) -> bool:
        return self.buffer[self._landed_at + chunk_id] == LANDED

    def snapshot(self) -> bytes:
        """The landed bytes, one per chunk."""
        return bytes(memoryview(self.buffer).cast("B")[self._landed_at:])

    def ref(self, session_id: str) -> LandedMapRef:
        """Where readers find this map, given this instance's TransferEngine session."""
        return LandedMapRef(session_id=session_id, ptr=self.ptr, num_chunks=self.num_chunks,
                            num_tensors=self.num_tensors)


@dataclass(frozen=True)
class FollowOptions:
    #: Chunks per read from the parent (one TransferEngine batch of their segments).
    batch_chunks: int = 8
    #: Polls of the parent's map start this far apart after a poll that found something new ...
    poll_min_seconds: float = 0.001
    #: ... and double, up to this, while the parent lands nothing of the stream.
    poll_max_seconds: float = 0.05
    #: A read (of the map or of a batch of chunks) that takes longer has failed.
    read_timeout_seconds: float = 30.0
    #: The parent landing none of the stream's remaining chunks for this long ends the stream.
    stall_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.batch_chunks < 1:
            raise ValueError(f"batch_chunks must be at least 1, got {self.batch_chunks}")
        if not 0 < self.poll_min_seconds <= self.poll_max_seconds:
            raise ValueError(f"need 0 < poll_min_seconds <= poll_max_seconds, got {self.poll_min_seconds} "
                             f"and {self.poll_max_seconds}")
        if self.read_timeout_seconds <= 0 or self.stall_seconds <= 0:
            raise ValueError("read_timeout_seconds and stall_seconds must be > 0")


@dataclass(frozen=True)
class FollowResult:
    """What one followed stream did."""

    chunks_read: int
    bytes_read: int
    #: Reads of the parent's landed bytes (polls), the first included.
    map_reads: int
    seconds: float


async def follow(transport: Transport, stream: Stream, plan: Sequence[Chunk], manifest: Manifest, mine: LandedMap,
                 options: FollowOptions = FollowOptions(), on_landed: Callable[[list[int]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rate: float | None | Callable[[], float | None] = None) -> FollowResult:
    """Read every chunk of ``stream`` not yet landed in ``mine`` from the parent, as the parent lands it.

    ``plan`` is this instance's chunk plan (``rfork_api.chunking.plan_chunks`` of ``manifest``,
    its own tensors, at the swarm's chunk size); ``mine`` its landed map. Chunks already
    marked in ``mine`` (landed from elsewhere) are skipped. ``on_landed`` gets each batch of
    chunk ids once they are read and marked (what the client reports to the scheduler).
    ``rate`` (bytes/s, or a function giving the current one) paces the reads: this stream's share
    of the parent's upload cap (one-sided reads are the reader's to pace; the parent cannot).
    """
    parent = stream.parent
    if not mine.num_chunks == parent.num_chunks == len(plan) or parent.num_tensors != len(manifest):
        raise NotTheSamePlan(
            f"stream from parent {parent.session_id}: its map has {parent.num_chunks} chunks of "
            f"{parent.num_tensors} tensors, this instance {len(plan)} chunks of {len(manifest)} tensors "
            f"(its map: {mine.num_chunks}); a parent must be of the same model, rank and chunk size")
    started = clock()
    left = [c for c in stream.chunks if not mine.is_landed(c)]
    if not left:
        return FollowResult(0, 0, 0, 0.0)
    with _Registered(transport, landed_offset(parent.num_tensors)) as head:
        await _read_from(transport, stream, [head.ptr], [parent.ptr], [head.nbytes], options,
                         "its landed map's header and tensor addresses")
        where = f"stream from parent {parent.session_id} at {parent.ptr:#x}"
        try:
            num_chunks, num_tensors, digest = parse_header(bytes(head.buffer[:HEADER_BYTES]), where)
        except NotALandedMap as exc:
            raise NotTheSamePlan(str(exc)) from None
        if (num_chunks, num_tensors) != (parent.num_chunks, parent.num_tensors):
            raise NotTheSamePlan(f"{where}: its map says {num_chunks} chunks of {num_tensors} tensors, the stream "
                                 f"{parent.num_chunks} of {parent.num_tensors}")
        if digest != mine.digest:
            raise NotTheSamePlan(f"{where}: its chunk plan differs from this instance's (same counts, other "
                                 "tensors, order or chunk size): its chunks would be other bytes here")
        theirs = struct.unpack_from(f"<{parent.num_tensors}Q", head.buffer, HEADER_BYTES)
    # The parent's addresses in a table shaped as this instance's (same tensors, same order: the
    # digest said so), for the planner's own read builder.
    ours = manifest.pointer_table()
    index, values = ours
    their_values = list(values)
    for name, address in zip(manifest.names, theirs):
        their_values[index[name]] = address
    plan_index = read_index(plan)

    read_count = read_bytes = map_reads = 0
    poll = options.poll_min_seconds
    paced_until = clock()
    last_progress = clock()
    landed_ptr = parent.ptr + landed_offset(parent.num_tensors)
    with _Registered(transport, parent.num_chunks) as landed:
        while left:
            left = [c for c in left if not mine.is_landed(c)]  # some may have landed from elsewhere meanwhile
            if not left:
                break
            await _read_from(transport, stream, [landed.ptr], [landed_ptr], [parent.num_chunks], options,
                             f"its landed map ({len(left)} chunks of the stream left)")
            map_reads += 1
            ready = landed_in(bytes(landed.buffer), left)
            if not ready:
                if clock() - last_progress > options.stall_seconds:
                    raise ParentStalled(
                        f"parent {parent.session_id} landed none of the {len(left)} chunks left of stream "
                        f"[{stream.first_chunk}, {stream.end_chunk}) for {options.stall_seconds:g} s")
                await asyncio.sleep(poll)
                poll = min(poll * 2, options.poll_max_seconds)
                continue
            for i in range(0, len(ready), options.batch_chunks):
                batch = ready[i:i + options.batch_chunks]
                dst, src, lengths = zip(*chunk_reads(batch, plan_index, ours, (index, their_values)))
                current = rate() if callable(rate) else rate
                if current:  # at most ``rate`` on average: a batch waits for the time the last one took at it
                    if (wait := paced_until - clock()) > 0:
                        await asyncio.sleep(wait)
                    paced_until = max(paced_until, clock()) + sum(lengths) / current
                await _read_from(transport, stream, dst, src, lengths, options,
                                 f"chunks {batch[0]}..{batch[-1]} ({len(batch)})")
                mine.mark(batch)  # only now: a child of ours may read them the moment they are marked
                read_count += len(batch)
                read_bytes += sum(lengths)
                if on_landed is not None:
                    on_landed(batch)
            landed_now = set(ready)
            left = [c for c in left if c not in landed_now]
            last_progress = clock()
            poll = options.poll_min_seconds
    return FollowResult(read_count, read_bytes, map_reads, clock() - started)


async def _read_from(transport: Transport, stream: Stream, dst: Sequence[int], src: Sequence[int],
                     lengths: Sequence[int], options: FollowOptions, what: str) -> None:
    try:
        await read(transport, stream.parent.session_id, dst, src, lengths, timeout_s=options.read_timeout_seconds)
    except ReadFailed as exc:
        raise ParentLost(f"stream [{stream.first_chunk}, {stream.end_chunk}) from parent "
                         f"{stream.parent.session_id}: reading {what} failed: {exc}") from exc
