"""Weights manifests in SGLang's format, {name: [ptr, numel, element_size]}.

    >>> m = parse_manifest({"w": [4096, 10, 2]})
    >>> m["w"].nbytes
    20
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from rfork_api.errors import InvalidManifest, ManifestMismatch, clip

MAX_TENSORS = 1_000_000
MAX_TENSOR_BYTES = 2**46  # 64 TiB: far above any single tensor, far below int overflow


@dataclass(frozen=True)
class TensorSpec:
    ptr: int
    numel: int
    element_size: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.element_size


Manifest = dict[str, TensorSpec]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_manifest(raw: object) -> Manifest:
    """Validate a wire manifest; raises InvalidManifest naming the tensor and the problem."""
    if not isinstance(raw, Mapping):
        raise InvalidManifest("manifest must be an object {name: [ptr, numel, element_size]}")
    if len(raw) > MAX_TENSORS:
        raise InvalidManifest(f"manifest has {len(raw)} tensors; at most {MAX_TENSORS} are accepted")
    out: Manifest = {}
    for name, entry in raw.items():
        if not isinstance(name, str) or not name:
            raise InvalidManifest(f"tensor names must be non-empty strings, got {clip(name)}")
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and all(_is_int(v) for v in entry)):
            raise InvalidManifest(f"tensor {clip(name)}: expected [ptr, numel, element_size] as integers, "
                                  f"got {clip(entry)}")
        ptr, numel, element_size = entry
        if ptr < 0 or ptr >= 2**64:
            raise InvalidManifest(f"tensor {clip(name)}: ptr {clip(ptr)} is not a 64-bit address")
        if numel < 0:
            raise InvalidManifest(f"tensor {clip(name)}: numel {clip(numel)} is negative")
        if not 1 <= element_size <= 16:
            raise InvalidManifest(f"tensor {clip(name)}: element_size {clip(element_size)} is outside 1..16")
        if numel * element_size > MAX_TENSOR_BYTES:
            raise InvalidManifest(f"tensor {clip(name)}: {clip(numel * element_size)} bytes is larger than "
                                  f"{MAX_TENSOR_BYTES}")
        out[name] = TensorSpec(ptr, numel, element_size)
    return out


def total_bytes(manifest: Manifest) -> int:
    return sum(t.nbytes for t in manifest.values())


def match_manifests(client: Manifest, seed: Manifest, seed_id: str) -> None:
    """Raise ManifestMismatch naming the first tensor that differs (client order, then seed-only)."""
    for name, mine in client.items():
        theirs = seed.get(name)
        if theirs is None:
            raise ManifestMismatch(f"tensor {clip(name)}: the client has it, seed {seed_id!r} does not "
                                   "(different model, revision or parallelism?); "
                                   "build the client with the seeds' exact model and parallelism")
        if (mine.numel, mine.element_size) != (theirs.numel, theirs.element_size):
            raise ManifestMismatch(
                f"tensor {clip(name)}: client has numel={mine.numel} element_size={mine.element_size}, "
                f"seed {seed_id!r} has numel={theirs.numel} element_size={theirs.element_size} "
                "(different dtype, quantisation or tensor-parallel split?); fork only between identical deployments"
            )
    for name in seed:
        if name not in client:
            raise ManifestMismatch(
                f"tensor {clip(name)}: seed {seed_id!r} has it, the client does not "
                "(different model, revision, speculative/draft weights or parallelism?); "
                "build the client with the seeds' exact model and parallelism"
            )
