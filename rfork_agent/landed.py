"""An instance's landed map (registered memory) and a stream reader that follows a parent's map.

The layout is :mod:`rfork_api.landed`'s. :class:`LandedMap` is this instance's map:
``mark`` a chunk only once every byte of it is in place, because a reader that sees the
byte reads the chunk at once. :func:`follow` reads one :class:`~rfork_api.landed.Stream`:
it reads the parent's map into a registered scratch map, reads the chunks of the stream
the parent has landed and this instance has not (``batch_chunks`` at a time), marks them
in this instance's map (so its own children can read them on), and polls again, backing
off while the parent lands nothing. It returns when every chunk of the stream is marked
here; it raises :class:`ParentLost` when a read from the parent fails (the parent died or
withdrew: ask for another parent) and :class:`ParentStalled` when the parent landed
nothing of the stream for ``stall_seconds``.

Not yet used by ``rfork fork``: the scheduler's side (stream assignments, stripe trees,
re-parenting; docs/fleet.md "Streams") comes next.

    >>> with LandedMap(transport, num_chunks=1348) as mine:
    ...     await follow(transport, Stream(parent_ref, 0, 168), reads_for, mine)
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from rfork_api.landed import LANDED, LandedMapRef, Stream, landed_in
from rfork_agent.transport import ReadFailed, Transport, read

__all__ = ["LandedMap", "StreamError", "ParentLost", "ParentStalled", "FollowOptions", "follow"]

ChunkReads = Callable[[Sequence[int]], tuple[Sequence[int], Sequence[int], Sequence[int]]]
"""(destination pointers, the parent's source pointers, lengths) that copy these chunks from the parent."""


class StreamError(RuntimeError):
    """A stream could not be followed to its end; the message names the parent and the chunks left."""


class ParentLost(StreamError):
    """A read from the parent (its map or its chunks) failed: it died or withdrew. Ask for another parent."""


class ParentStalled(StreamError):
    """The parent landed none of the stream's remaining chunks for ``stall_seconds``."""


class LandedMap:
    """This instance's landed map: ``num_chunks`` bytes, registered with ``transport`` for readers.

    Plain host memory (ctypes), zeroed: every chunk starts not landed. ``close`` (or the
    ``with`` block's end) unregisters it; readers that still read it then fail, as they do
    when the instance is gone.
    """

    def __init__(self, transport: Transport, num_chunks: int) -> None:
        if num_chunks <= 0:
            raise ValueError(f"a landed map needs at least one chunk, got {num_chunks}")
        self._transport = transport
        self._buffer = (ctypes.c_uint8 * num_chunks)()
        self.num_chunks = num_chunks
        self.ptr = ctypes.addressof(self._buffer)
        transport.register(self.ptr, num_chunks)
        self._registered = True

    def mark(self, chunk_ids: Iterable[int]) -> None:
        """Mark these chunks landed. Call only once every byte of each is in place."""
        buffer = self._buffer
        for c in chunk_ids:
            buffer[c] = LANDED

    def is_landed(self, chunk_id: int) -> bool:
        return self._buffer[chunk_id] == LANDED

    def snapshot(self) -> bytes:
        return bytes(self._buffer)

    def ref(self, session_id: str) -> LandedMapRef:
        """Where readers find this map, given this instance's TransferEngine session."""
        return LandedMapRef(session_id=session_id, ptr=self.ptr, num_chunks=self.num_chunks)

    def close(self) -> None:
        if self._registered:
            self._registered = False
            self._transport.unregister(self.ptr)

    def __enter__(self) -> "LandedMap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


async def follow(transport: Transport, stream: Stream, reads_for: ChunkReads, mine: LandedMap,
                 options: FollowOptions = FollowOptions(),
                 clock: Callable[[], float] = time.monotonic) -> int:
    """Read every chunk of ``stream`` not yet landed in ``mine`` from the parent, as the parent lands it.

    Returns how many chunks it read. ``mine`` must have the parent's number of chunks (same
    model, rank and chunk plan); chunks already marked in it (landed from elsewhere) are skipped.
    """
    parent = stream.parent
    if mine.num_chunks != parent.num_chunks:
        raise ValueError(f"this instance's landed map has {mine.num_chunks} chunks and the parent's "
                         f"{parent.num_chunks}: not the same chunk plan")
    left = [c for c in stream.chunks if not mine.is_landed(c)]
    read_count = 0
    poll = options.poll_min_seconds
    last_progress = clock()
    with LandedMap(transport, parent.num_chunks) as theirs:
        while left:
            await _read_from(transport, stream, [theirs.ptr], [parent.ptr], [parent.num_chunks], options,
                             f"its landed map ({len(left)} chunks of the stream left)")
            ready = landed_in(theirs.snapshot(), left)
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
                dst, src, lengths = reads_for(batch)
                await _read_from(transport, stream, dst, src, lengths, options,
                                 f"chunks {batch[0]}..{batch[-1]} ({len(batch)})")
                mine.mark(batch)  # only now: a child of ours may read them the moment they are marked
                read_count += len(batch)
            landed_now = set(ready)
            left = [c for c in left if c not in landed_now]
            last_progress = clock()
            poll = options.poll_min_seconds
    return read_count


async def _read_from(transport: Transport, stream: Stream, dst: Sequence[int], src: Sequence[int],
                     lengths: Sequence[int], options: FollowOptions, what: str) -> None:
    try:
        await read(transport, stream.parent.session_id, dst, src, lengths, timeout_s=options.read_timeout_seconds)
    except ReadFailed as exc:
        raise ParentLost(f"stream [{stream.first_chunk}, {stream.end_chunk}) from parent "
                         f"{stream.parent.session_id}: reading {what} failed: {exc}") from exc
