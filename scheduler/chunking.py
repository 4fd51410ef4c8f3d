"""The chunk plan, from rfork_api.chunking (the scheduler and its clients share it): re-exported."""

from rfork_api.chunking import (  # noqa: F401 - re-exported for the scheduler's modules
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_SEGMENTS_PER_CHUNK,
    MIN_CHUNK_SIZE,
    Chunk,
    ChunkPlan,
    InvalidChunkSize,
    PointerTable,
    Read,
    ReadIndex,
    Segment,
    chunk_reads,
    plan_chunks,
    read_index,
    validate_chunk_size,
)
