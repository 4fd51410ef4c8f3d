"""Split a manifest into chunks: big tensors split, small neighbours coalesced.

Part of the contract between the scheduler and its clients: chunk ids mean the same
on both sides. The scheduler plans every job with it; a client following a parent's
stream (rfork_agent/landed.py) plans its own manifest with it to build its reads.

    >>> [c.nbytes for c in plan_chunks(parse_manifest({"a": [0, 6, 1], "b": [0, 3, 1]}), 4)]
    [4, 2, 3]
"""

from __future__ import annotations

from dataclasses import dataclass

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

    __slots__ = ("tensor", "offset", "end", "first", "last", "run_end", "sizes")

    def __init__(self, chunks: list[Chunk]) -> None:
        self.sizes = [chunk.nbytes for chunk in chunks]
        """Chunk id -> bytes."""
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
