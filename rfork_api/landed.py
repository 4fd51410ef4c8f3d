"""The landed map: which of a loading instance's chunks are in place, and where its tensors are.

The first piece of the stream data path (docs/fleet.md, "Streams"): instead of the
scheduler handing a reader each chunk a peer reported landed, a reader follows its
parent by reading the parent's landed map over TransferEngine, one-sided, like the
chunks themselves, and then reads the chunks the map says are there. The map is then
the parent's report that a chunk landed. It also carries the parent's tensor
addresses, so the reader builds its reads from the chunk plan (rfork_api/chunking.py,
the same on every member of a swarm) without the scheduler sending any.

Layout, the same at both ends, in memory the parent registered with its TransferEngine
(little-endian)::

    magic b"RFLM" | version u32 | num_chunks u32 | num_tensors u32 | plan digest 16 bytes   (HEADER_BYTES)
    tensor addresses, u64 x num_tensors, in manifest order                               (written once)
    landed bytes, u8 x num_chunks                                                         (LANDED once in place)

The plan digest (:func:`plan_digest`: every chunk's segments, in order) lets a reader
refuse a parent whose chunk ids mean other bytes (another model, tensor order or chunk
size), which counts alone cannot show: following it would copy the wrong bytes.

Byte ``c`` of the landed bytes is :data:`LANDED` once every byte of chunk ``c`` is in
the parent's memory, :data:`NOT_LANDED` before. A byte per chunk, not a bit: the parent
sets it with one store of its own and a reader never sees half of another chunk's update.
A byte never goes back: what landed stays (the parent serves until it withdraws, and then
it stops answering reads altogether).

    >>> header = pack_header(num_chunks=8, num_tensors=3, digest=bytes(16))
    >>> len(header), parse_header(header, where="a test")
    (32, (8, 3, b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00'))
    >>> landed_offset(3), region_bytes(8, 3)
    (56, 64)
    >>> landed_in(bytes([1, 1, 0, 1, 0, 0, 1, 1]), range(2, 7))
    [3, 6]
    >>> ref = LandedMapRef(session_id="10.0.0.7:15933", ptr=0x7f00_0000_1000, num_chunks=8, num_tensors=3)
    >>> Stream(parent=ref, first_chunk=4, end_chunk=8).chunks
    range(4, 8)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = ["LANDED", "NOT_LANDED", "HEADER_BYTES", "LandedMapRef", "Stream", "NotALandedMap", "pack_header",
           "parse_header", "plan_digest", "landed_offset", "region_bytes", "landed_in"]

LANDED = 1
NOT_LANDED = 0
MAGIC = b"RFLM"
VERSION = 1
_HEADER = struct.Struct("<4sIII16s")
HEADER_BYTES = _HEADER.size
MAX_CHUNKS = 1 << 24
"""A rank of 16 million chunks (1 TiB in 64 KiB chunks) is a mistake, not a model: refused."""
MAX_TENSORS = 1 << 22


class NotALandedMap(ValueError):
    """What was read where a landed map should be is not one (wrong address, another version)."""


def plan_digest(plan: Sequence) -> bytes:
    """16 bytes that differ between chunk plans whose chunk ids mean other bytes: every chunk's
    ``segments`` ((tensor, offset, length), rfork_api/chunking.py), in order."""
    h = hashlib.blake2b(digest_size=16)
    for chunk in plan:
        h.update(repr(chunk.segments).encode())
        h.update(b";")
    return h.digest()


def pack_header(num_chunks: int, num_tensors: int, digest: bytes) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, num_chunks, num_tensors, digest)


def parse_header(data: bytes | bytearray | memoryview, where: str) -> tuple[int, int, bytes]:
    """(num_chunks, num_tensors, plan digest) of a map's header, or :class:`NotALandedMap` saying what was found."""
    if len(data) < HEADER_BYTES:
        raise NotALandedMap(f"{where}: {len(data)} bytes is shorter than a landed map's {HEADER_BYTES}-byte header")
    magic, version, num_chunks, num_tensors, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise NotALandedMap(f"{where}: no landed map there (it starts {bytes(magic)!r}, not {MAGIC!r}); "
                            "is the address the parent's landed map?")
    if version != VERSION:
        raise NotALandedMap(f"{where}: landed map version {version}, this reader knows {VERSION}; "
                            "run the same rfork version on parent and reader")
    return num_chunks, num_tensors, digest


def landed_offset(num_tensors: int) -> int:
    """Where the landed bytes start in a map of ``num_tensors`` tensor addresses."""
    return HEADER_BYTES + 8 * num_tensors


def region_bytes(num_chunks: int, num_tensors: int) -> int:
    return landed_offset(num_tensors) + num_chunks


@dataclass(frozen=True)
class LandedMapRef:
    """Where an instance's landed map lives: its TransferEngine session, the map's address, its sizes."""

    session_id: str
    ptr: int
    num_chunks: int
    num_tensors: int

    def __post_init__(self) -> None:
        if not self.session_id:
            raise ValueError("a landed map's session_id is empty: give the parent's TransferEngine session "
                             "(host:port)")
        if self.ptr <= 0:
            raise ValueError(f"a landed map's ptr must be a registered address (> 0), got {self.ptr}")
        if not 0 < self.num_chunks <= MAX_CHUNKS:
            raise ValueError(f"a landed map holds 1 to {MAX_CHUNKS} chunks, got {self.num_chunks}")
        if not 0 < self.num_tensors <= MAX_TENSORS:
            raise ValueError(f"a landed map lists 1 to {MAX_TENSORS} tensors, got {self.num_tensors}")


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


def landed_in(landed: bytes | bytearray | memoryview, chunks: Iterable[int]) -> list[int]:
    """The chunks of ``chunks`` that ``landed`` (a copy of a map's landed bytes) shows landed, in order."""
    return [c for c in chunks if landed[c] == LANDED]
