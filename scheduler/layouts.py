"""Manifest layouts the scheduler holds, so a job can send its manifest by reference.

Every new instance of a scale-out has the same manifest but for its pointers: the
same tensor names, sizes and order (its *layout*, ``rfork_api.manifest.layout_digest``).
Sent whole, a 1,300-tensor manifest is ~100 KB of JSON to parse and check per member,
most of a job creation's cost; by reference it is the layout's digest and one array of
pointers. The cache keeps the layouts of manifests that were sent whole (checked then),
the most recently used last, up to ``max_tensors`` tensors in all (the latest one is
always kept, whatever its size; none with ``max_tensors`` 0).

Pure bookkeeping, no I/O and no lock: the service calls it under its lock.

    >>> layouts = LayoutCache(max_tensors=2_000_000)
    >>> layout = layouts.add(manifest, shapes_digest)       # a manifest sent whole
    >>> layouts.get(layout.digest).manifest(pointers)       # another member's, by reference
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass

from rfork_api.errors import InvalidManifest
from rfork_api.manifest import Manifest, layout_digest


@dataclass(frozen=True)
class Layout:
    digest: str
    names: list[str]
    sizes: array
    """``[0, numel, element_size]`` per tensor (a manifest's values with its pointers zeroed)."""
    index: dict[str, int]
    """Name -> position in the values (shared, read-only, by every manifest of this layout)."""
    shapes_digest: bytes
    """``ManifestTable.shapes_digest``: what the seeds' manifests are matched against."""

    def manifest(self, pointers: array) -> Manifest:
        """This layout with a client's pointers (one per tensor, in order): copied and filled at C speed."""
        if len(pointers) != len(self.names):
            raise InvalidManifest(
                f"layout {self.digest[:12]} has {len(self.names)} tensors but layout.pointers holds "
                f"{len(pointers)} pointers: send one pointer per tensor, in the manifest's order")
        values = array("Q", self.sizes)
        values[0::3] = pointers
        return Manifest(self.names, values, index=self.index, layout=self.digest)


class LayoutCache:
    def __init__(self, max_tensors: int) -> None:
        if max_tensors < 0:
            raise ValueError(f"max_tensors must be >= 0, got {max_tensors}")
        self.max_tensors = max_tensors
        self._layouts: OrderedDict[str, Layout] = OrderedDict()
        self.tensors = 0
        """Tensors of the layouts held."""

    def __len__(self) -> int:
        return len(self._layouts)

    def __contains__(self, digest: object) -> bool:
        return digest in self._layouts

    def get(self, digest: str) -> Layout | None:
        layout = self._layouts.get(digest)
        if layout is not None:
            self._layouts.move_to_end(digest)
        return layout

    def add(self, manifest: Manifest, shapes_digest: bytes) -> Layout:
        """The layout of a checked manifest, kept (or refreshed if held). 0 ``max_tensors``: kept never."""
        digest = layout_digest(manifest)
        held = self.get(digest)
        if held is not None:
            return held
        index, values = manifest.pointer_table()
        sizes = array("Q", values)
        sizes[0::3] = array("Q", bytes(8 * len(manifest)))
        layout = Layout(digest, manifest.names, sizes, index, shapes_digest)
        if self.max_tensors == 0:
            return layout
        self._layouts[digest] = layout
        self.tensors += len(layout.names)
        while self.tensors > self.max_tensors and len(self._layouts) > 1:
            _, dropped = self._layouts.popitem(last=False)
            self.tensors -= len(dropped.names)
        return layout
