"""Weights manifests in SGLang's format, {name: [ptr, numel, element_size]}.

    >>> m = parse_manifest({"w": [4096, 10, 2]})
    >>> m["w"].nbytes
    20

Manifests of MoE models hold hundreds of thousands of tensors, so the per-tensor
work here is kept small: one pass of exact-type checks, and a ``Manifest`` that
stores names and one integer array rather than an object per tensor. A million
long-lived objects per job would cost more than their memory: each full
collection of Python's garbage collector walks them all while holding the GIL,
which stalled the scheduler's event loop for half a second at a time.
``ManifestTable`` is the validated form sent between processes
(scheduler/intake.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import operator
import sys
from array import array
from typing import Any, Iterator, Mapping, NamedTuple

from rfork_api.errors import InvalidManifest, ManifestMismatch, clip

MAX_TENSORS = 1_000_000
MAX_TENSOR_BYTES = 2**46  # 64 TiB: far above any single tensor, far below int overflow


class TensorSpec(NamedTuple):
    ptr: int
    numel: int
    element_size: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.element_size


class Manifest(Mapping[str, TensorSpec]):
    """{name: TensorSpec} in tensor order, stored as names, a name -> index dict and one array.

        >>> m = Manifest(["a", "b"], array("Q", [4096, 10, 2, 8192, 3, 4]))
        >>> m["b"]
        TensorSpec(ptr=8192, numel=3, element_size=4)
    """

    __slots__ = ("names", "_values", "_index", "_layout")

    def __init__(self, names: list[str], values: array, index: dict[str, int] | None = None,
                 layout: str | None = None) -> None:
        """``index`` and ``layout`` (its ``layout_digest``) may come from another manifest of the
        same layout (shared, read-only): a job created from a known layout builds neither."""
        self.names = names
        self._values = values
        self._index = dict(zip(names, range(0, 3 * len(names), 3))) if index is None else index
        self._layout = layout

    def __getitem__(self, name: str) -> TensorSpec:
        i, v = self._index[name], self._values
        return TensorSpec(v[i], v[i + 1], v[i + 2])

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def pointer_table(self) -> tuple[dict[str, int], array]:
        """(name -> position, values): ``values[position]`` is the tensor's ptr. For callers that
        look up thousands of pointers (the planner's reads) without building a ``TensorSpec`` each."""
        return self._index, self._values

    def values(self):
        numbers = iter(self._values)
        return map(TensorSpec._make, zip(numbers, numbers, numbers))

    def items(self):
        return zip(self.names, self.values())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Manifest):
            return self.names == other.names and self._values == other._values
        return Mapping.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Manifest({len(self)} tensors)"


class ManifestTable(NamedTuple):
    """A validated manifest as tensor names and ``[ptr, numel, element_size, ...]`` (unsigned 64-bit)."""

    names: list[str]
    values: array
    shapes_digest: bytes
    """Digest of the sorted (name, numel, element_size) triples: two manifests with equal
    digests match (``match_manifests``) whatever their pointers and order."""

    def to_manifest(self) -> Manifest:
        return Manifest(self.names, self.values)


def parse_manifest_table(raw: object) -> ManifestTable:
    """Validate a wire manifest; raises InvalidManifest naming the tensor and the problem."""
    if not isinstance(raw, Mapping):
        raise InvalidManifest("manifest must be an object {name: [ptr, numel, element_size]}")
    if len(raw) > MAX_TENSORS:
        raise InvalidManifest(f"manifest has {len(raw)} tensors; at most {MAX_TENSORS} are accepted")
    names, values = list(raw), array("Q")
    extend = values.extend
    for name, entry in raw.items():
        # Exact types: JSON gives str, list and int; bool (an int subclass) is not a count.
        if (type(entry) is list or type(entry) is tuple) and len(entry) == 3:
            ptr, numel, element_size = entry
            if (type(ptr) is int and type(numel) is int and type(element_size) is int and type(name) is str
                    and name and 0 <= ptr < 2**64 and 1 <= element_size <= 16
                    and 0 <= numel * element_size <= MAX_TENSOR_BYTES):
                extend(entry)
                continue
        _reject(name, entry)  # the slow path: say exactly what is wrong
    shapes = sorted(zip(names, values[1::3], values[2::3]))
    return ManifestTable(names, values, hashlib.sha256(json.dumps(shapes).encode()).digest())


def parse_manifest(raw: object) -> Manifest:
    """Validate a wire manifest into {name: TensorSpec}; raises InvalidManifest."""
    return parse_manifest_table(raw).to_manifest()


def _reject(name: object, entry: object) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidManifest(f"tensor names must be non-empty strings, got {clip(name)}")
    if not (isinstance(entry, (list, tuple)) and len(entry) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in entry)):
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
    raise AssertionError(f"tensor {clip(name)}: {clip(entry)} was rejected for no reason")  # pragma: no cover


def layout_digest(manifest: Mapping[str, TensorSpec]) -> str:
    """Hex digest of a manifest's layout: its tensor names, sizes and ORDER, not its pointers.

    Two manifests with equal layouts differ only in where their tensors live, so one client
    can send its layout's digest and its pointers instead of the whole manifest
    (``compact_manifest``), and the scheduler gives equal chunk ids to equal bytes. The
    names are hashed as JSON (ASCII, unambiguous), the sizes as little-endian 64-bit integers.

        >>> layout_digest(parse_manifest({"w": [4096, 10, 2]})) == layout_digest(parse_manifest({"w": [8192, 10, 2]}))
        True
    """
    if isinstance(manifest, Manifest):
        if manifest._layout is None:
            manifest._layout = _layout_digest(manifest.names, manifest._values)
        return manifest._layout
    names = list(manifest)
    values = array("Q", [v for name in names for v in (0, manifest[name].numel, manifest[name].element_size)])
    return _layout_digest(names, values)


def _layout_digest(names: list[str], values: array) -> str:
    digest = hashlib.sha256(json.dumps(names).encode("ascii"))
    for column in (values[1::3], values[2::3]):
        if sys.byteorder == "big":
            column.byteswap()
        digest.update(column.tobytes())
    return digest.hexdigest()


def compact_manifest(raw: Mapping[str, Any]) -> tuple[str, str] | None:
    """(layout digest, pointers) of a wire manifest, the pointers as base64 of little-endian
    64-bit integers in tensor order; None for a manifest that is not all ``[int, int, int]``
    entries (send it whole: the scheduler says what is wrong with it)."""
    try:
        if any(len(entry) != 3 for entry in raw.values()):
            return None
        values = array("Q", [v for entry in raw.values() for v in entry])
    except (TypeError, OverflowError, ValueError):
        return None
    names = list(raw)
    if not all(type(name) is str for name in names):
        return None
    pointers = values[0::3]
    if sys.byteorder == "big":
        pointers.byteswap()
    return _layout_digest(names, values), base64.b64encode(pointers.tobytes()).decode("ascii")


def decode_pointers(text: str) -> array:
    """The pointers of ``compact_manifest`` back as an array of unsigned 64-bit integers;
    raises InvalidManifest when ``text`` is not base64 of a whole number of them."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidManifest("layout.pointers is not base64: send base64 (RFC 4648, with padding) of "
                              "the tensors' pointers as little-endian 64-bit integers") from None
    if len(raw) % 8:
        raise InvalidManifest(f"layout.pointers decodes to {len(raw)} bytes, not a whole number of 64-bit "
                              "pointers (8 bytes each, little-endian)")
    pointers = array("Q")
    pointers.frombytes(raw)
    if sys.byteorder == "big":
        pointers.byteswap()
    return pointers


def tensor_sizes(manifest: Mapping[str, TensorSpec]) -> Iterator[tuple[str, int]]:
    """(name, nbytes) in tensor order; for a ``Manifest`` without a TensorSpec per tensor."""
    if isinstance(manifest, Manifest):
        v = manifest._values
        return zip(manifest.names, map(operator.mul, v[1::3], v[2::3]))
    return ((name, t.nbytes) for name, t in manifest.items())


def total_bytes(manifest: Mapping[str, TensorSpec]) -> int:
    if isinstance(manifest, Manifest):
        v = manifest._values
        return sum(map(operator.mul, v[1::3], v[2::3]))
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
