"""The scheduler's exception tree. Each error carries its API code and status."""

from __future__ import annotations


class SchedulerError(Exception):
    code = "scheduler_error"
    http_status = 400


class UnknownModel(SchedulerError):
    code, http_status = "unknown_model", 404


class UnknownJob(SchedulerError):
    code, http_status = "unknown_job", 404


class UnknownSeed(SchedulerError):
    code, http_status = "unknown_seed", 404


class ManifestMismatch(SchedulerError):
    code, http_status = "manifest_mismatch", 409


class InvalidManifest(SchedulerError):
    code, http_status = "invalid_manifest", 422


class InvalidChunkSize(SchedulerError):
    code, http_status = "invalid_chunk_size", 422


class InvalidResume(SchedulerError):
    code, http_status = "invalid_resume", 422


class InvalidRequest(SchedulerError):
    """A body that is not JSON or not the documented shape (as FastAPI's own validation reports it)."""

    code, http_status = "invalid_request", 422
