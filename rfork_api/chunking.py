"""Split a manifest into chunks: big tensors split, small neighbours coalesced.

Part of the contract between the scheduler and its clients: chunk ids mean the same
on both sides. The scheduler plans every job with it; a client following a parent's
stream (rfork_agent/landed.py) plans its own manifest with it to build its reads.

    >>> from rfork_api.manifest import parse_manifest
    >>> [c.nbytes for c in plan_chunks(parse_manifest({"a": [0, 6, 1], "b": [0, 3, 1]}), 4, minimum=1)]
    [4, 2, 3]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

from rfork_api.errors import InvalidChunkSize, clip
from rfork_api.manifest import Manifest, tensor_sizes, total_bytes

MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 4 * 2**30
DEFAULT_CHUNK_SIZE = 64 * 2**20
MAX_CHUNKS = 2_000_000
MAX_SEGMENTS_PER_CHUNK = 2048
"""Tensors coalesced into one chunk at most. Over TCP each segment is one TransferEngine
request (0.1-0.4 ms each on loopback), so 2,048 tiny tensors take about as long as a
64 MiB chunk; without a bound, a model of 40,000 small tensors was one chunk that one
seed served alone and that endgame duplication and retries read again whole."""


Segment = tuple[str, int, int]
"""(tensor, offset, length): plain tuples, which Python's garbage collector stops tracking
once it has seen them (a tuple subclass it tracks forever). A MoE model's job has
hundreds of thousands; see rfork_api/manifest.py for why that matters."""


@dataclass(frozen=True)
class Chunk:
    chunk_id: int
    segments: tuple[Segment, ...]
    nbytes: int = -1
    """The segments' total length (computed when not given). Stored, not summed on each
    use: the planner asks often, and a chunk of small tensors has thousands of segments."""

    def __post_init__(self) -> None:
        if self.nbytes < 0:
            object.__setattr__(self, "nbytes", sum(length for _, _, length in self.segments))


class ReadIndex:
    """A plan's segments, flattened in chunk order, with where each run of contiguous bytes of
    one tensor ends: the reads of consecutive chunks are found per read, not per chunk.

    Built once per plan (``ChunkPlan.read_index``) and shared by every job of it."""

    __slots__ = ("tensor", "offset", "end", "first", "last", "run_end", "sizes", "bytes_before")

    def __init__(self, chunks: list[Chunk]) -> None:
        self.sizes = [chunk.nbytes for chunk in chunks]
        """Chunk id -> bytes."""
        self.bytes_before = list(itertools.accumulate(self.sizes, initial=0))
        """Chunk id -> bytes of the chunks before it (one more entry: the plan's total): a range's
        bytes in O(1), as a stream's stripe lands whole."""
        tensor: list[str] = []
        offset: list[int] = []
        end: list[int] = []
        self.first: list[int] = []
        """Chunk id -> the index of its first segment."""
        self.last: list[int] = []
        """Chunk id -> the index of its last segment."""
        for chunk in chunks:
            self.first.append(len(tensor))
            for name, at, length in chunk.segments:
                tensor.append(name)
                offset.append(at)
                end.append(at + length)
            self.last.append(len(tensor) - 1)
        self.tensor, self.offset, self.end = tensor, offset, end
        run_end = list(range(len(tensor)))
        """Segment index -> the last segment of the run of contiguous bytes of one tensor it is in."""
        for g in range(len(tensor) - 2, -1, -1):
            if tensor[g + 1] == tensor[g] and offset[g + 1] == end[g]:
                run_end[g] = run_end[g + 1]
        self.run_end = run_end


class ChunkPlan(list):
    """``plan_chunks``' chunks (a list), carrying what the planner derives from them once."""

    __slots__ = ("_read_index",)

    @property
    def read_index(self) -> ReadIndex:
        try:
            return self._read_index
        except AttributeError:
            self._read_index = ReadIndex(self)
            return self._read_index


def read_index(chunks: list[Chunk]) -> ReadIndex:
    """The plan's ``ReadIndex``: kept with a ``ChunkPlan``, built afresh for any other list."""
    return chunks.read_index if isinstance(chunks, ChunkPlan) else ReadIndex(chunks)


def validate_chunk_size(chunk_size: int, *, minimum: int = MIN_CHUNK_SIZE) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise InvalidChunkSize(f"chunk size must be an integer byte count, got {clip(chunk_size)}")
    if not minimum <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidChunkSize(
            f"chunk size {clip(chunk_size)} is outside [{minimum}, {MAX_CHUNK_SIZE}] bytes; "
            f"the default is {DEFAULT_CHUNK_SIZE} (64 MiB)"
        )


def plan_chunks(manifest: Manifest, chunk_size: int, *, minimum: int = MIN_CHUNK_SIZE) -> ChunkPlan:
    validate_chunk_size(chunk_size, minimum=minimum)
    total = total_bytes(manifest)
    if total // chunk_size > MAX_CHUNKS:
        raise InvalidChunkSize(
            f"{total} bytes in {chunk_size}-byte chunks is more than {MAX_CHUNKS} chunks; use a larger chunk size"
        )
    chunks = ChunkPlan()
    open_segments: list[Segment] = []
    open_bytes = 0

    def close() -> None:
        nonlocal open_segments, open_bytes
        if open_segments:
            chunks.append(Chunk(len(chunks), tuple(open_segments), open_bytes))
            open_segments, open_bytes = [], 0

    for name, n in tensor_sizes(manifest):
        if n == 0:
            continue  # zero-byte tensors: nothing to read (SGLang has hung on these)
        if n > chunk_size:
            close()
            for offset in range(0, n, chunk_size):
                length = min(chunk_size, n - offset)
                chunks.append(Chunk(len(chunks), ((name, offset, length),), length))
            continue
        if open_bytes + n > chunk_size or len(open_segments) >= MAX_SEGMENTS_PER_CHUNK:
            close()
        open_segments.append((name, 0, n))
        open_bytes += n
    close()
    return chunks


class Read(NamedTuple):
    """One contiguous copy: a tuple, because a merged assignment carries one per segment and a
    frozen dataclass costs several times more to build (measured by ``rfork simulate``)."""

    dst_ptr: int
    src_ptr: int
    length: int


PointerTable = tuple[Mapping[str, int], Sequence[int]]
"""(tensor name -> position, values): ``values[position]`` is the tensor's address
(``Manifest.pointer_table``)."""


def chunk_reads(chunk_ids: list[int], index: ReadIndex, dst: PointerTable, src: PointerTable) -> list[Read]:
    """The copies of these chunks from ``src``'s tensors into ``dst``'s, in order. A tensor split
    over consecutive chunks is ONE read (its bytes are contiguous on both sides, inside one
    registered tensor): fewer reads to build, send and post. Reads never span two tensors, whose
    memory may be registered apart even when adjacent. Found per read, not per chunk: each run of
    consecutive chunk ids is a range of the plan's segments, which ``index`` splits into runs of
    contiguous bytes; addresses come from the pointer tables (no ``TensorSpec`` each). The
    scheduler builds assignments' reads with it, a stream reader its own reads from a parent.

        >>> from rfork_api.manifest import parse_manifest
        >>> plan = plan_chunks(parse_manifest({"a": [0, 6, 1], "b": [0, 3, 1]}), 4, minimum=1)
        >>> chunk_reads([0, 1, 2], read_index(plan), ({"a": 0, "b": 1}, [1000, 2000]), ({"a": 0, "b": 1}, [50, 90]))
        [Read(dst_ptr=1000, src_ptr=50, length=6), Read(dst_ptr=2000, src_ptr=90, length=3)]
    """
    reads: list[Read] = []
    new = tuple.__new__  # Read's own __new__ is Python code: several times slower per read
    dst_index, dst_values = dst
    src_index, src_values = src
    first, last, run_end = index.first, index.last, index.run_end
    tensors, offsets, ends = index.tensor, index.offset, index.end
    i, n = 0, len(chunk_ids)
    while i < n:
        j = i
        while j + 1 < n and chunk_ids[j + 1] == chunk_ids[j] + 1:
            j += 1
        g, g_last = first[chunk_ids[i]], last[chunk_ids[j]]
        while g <= g_last:
            e = run_end[g]
            if e > g_last:
                e = g_last
            tensor, offset = tensors[g], offsets[g]
            reads.append(new(Read, (dst_values[dst_index[tensor]] + offset,
                                    src_values[src_index[tensor]] + offset, ends[e] - offset)))
            g = e + 1
        i = j + 1
    return reads
