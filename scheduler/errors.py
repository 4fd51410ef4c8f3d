"""The scheduler's errors: the shared tree of ``rfork_api.errors`` (one table of codes for every service)."""

from rfork_api.errors import (  # noqa: F401 - re-exported for the scheduler's modules
    CLIP_CHARS,
    InvalidChunkSize,
    InvalidManifest,
    InvalidRequest,
    InvalidLandedMap,
    InvalidResume,
    ManifestMismatch,
    SchedulerError,
    UnknownJob,
    UnknownLayout,
    UnknownModel,
    UnknownSeed,
    clip,
)
