"""The landed map: which of a loading instance's chunks are in place, readable by other instances.

The first piece of the stream data path (docs/fleet.md, "Streams"): instead of the
scheduler handing a reader each chunk a peer reported landed, a reader follows its
parent by reading the parent's landed map over TransferEngine, one-sided, like the
chunks themselves, and then reads the chunks the map says are there. The map is then
the parent's report that a chunk landed.

Layout, the same at both ends: ``num_chunks`` bytes in memory the parent registered
with its TransferEngine; byte ``c`` is :data:`LANDED` once every byte of chunk ``c``
is in the parent's memory, :data:`NOT_LANDED` before. A byte per chunk, not a bit: the
parent sets it with one store of its own and a reader can never see half of another
chunk's update. A byte never goes back to :data:`NOT_LANDED`: what landed stays (the
parent serves until it withdraws, and then it stops answering reads altogether).

    >>> ref = LandedMapRef(session_id="10.0.0.7:15933", ptr=0x7f00_0000_1000, num_chunks=8)
    >>> landed_in(bytes([1, 1, 0, 1, 0, 0, 1, 1]), range(2, 7))
    [3, 6]
    >>> Stream(parent=ref, first_chunk=4, end_chunk=8).chunks
    range(4, 8)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

__all__ = ["LANDED", "NOT_LANDED", "LandedMapRef", "Stream", "landed_in"]

LANDED = 1
NOT_LANDED = 0
MAX_CHUNKS = 1 << 24
"""A rank of 16 million chunks (1 TiB in 64 KiB chunks) is a mistake, not a model: refused."""


@dataclass(frozen=True)
class LandedMapRef:
    """Where an instance's landed map lives: its TransferEngine session, the map's address, its length."""

    session_id: str
    ptr: int
    num_chunks: int

    def __post_init__(self) -> None:
        if not self.session_id:
            raise ValueError("a landed map's session_id is empty: give the parent's TransferEngine session "
                             "(host:port)")
        if self.ptr <= 0:
            raise ValueError(f"a landed map's ptr must be a registered address (> 0), got {self.ptr}")
        if not 0 < self.num_chunks <= MAX_CHUNKS:
            raise ValueError(f"a landed map holds 1 to {MAX_CHUNKS} chunks, got {self.num_chunks}")


@dataclass(frozen=True)
class Stream:
    """Read chunks ``[first_chunk, end_chunk)`` from ``parent`` as its landed map shows them landed."""

    parent: LandedMapRef
    first_chunk: int
    end_chunk: int

    def __post_init__(self) -> None:
        if not 0 <= self.first_chunk < self.end_chunk <= self.parent.num_chunks:
            raise ValueError(
                f"stream chunks [{self.first_chunk}, {self.end_chunk}) are not a non-empty range inside the "
                f"parent's {self.parent.num_chunks} chunks")

    @property
    def chunks(self) -> range:
        return range(self.first_chunk, self.end_chunk)


def landed_in(landed_map: bytes | bytearray | memoryview, chunks: Iterable[int]) -> list[int]:
    """The chunks of ``chunks`` that ``landed_map`` (a copy of a map's bytes) shows landed, in order."""
    return [c for c in chunks if landed_map[c] == LANDED]
