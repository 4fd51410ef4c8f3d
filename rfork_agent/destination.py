"""Where a fork lands outside SGLang: one buffer laid out like a seed's manifest.

Inside SGLang the plugin forks straight into the model's parameters. Elsewhere
(``rfork fork``, the testbed, the benchmarks) ``allocate_like`` makes zeroed
typed views shaped like a seed's manifest, all in one buffer so the
TransferEngine registers them cheaply, and ``write_dump`` saves what landed.

    >>> import torch
    >>> tensors, buffer = allocate_like({"a": [0, 1, 1], "b": [8, 1, 4]}, torch)
    >>> tensors["b"].dtype, tensors["b"].data_ptr() % ALIGNMENT
    (torch.int32, 0)
"""

from __future__ import annotations

import json
import os

ALIGNMENT = 256
"""Every destination tensor starts at an address that is a multiple of this many bytes.

Why 256: a typed view needs its start aligned to its element size (up to 16
bytes here), or torch refuses it (``storage_offset() must be divisible by
4``); CUDA's allocators hand out every allocation on a 256-byte boundary, so
each SGLang parameter the fork stands in for is 256-aligned, and kernels that
use wide vector loads assume at least that. TransferEngine reads any byte
range, so it sets no stricter need. The cost is at most 255 bytes per tensor
(under 10 MiB even for 40,000 tensors), and none for tensors that already end
on a boundary. testbed/weights.py lays the seeds out the same way."""

_DTYPE_BY_SIZE = {1: "uint8", 2: "int16", 4: "int32", 8: "int64", 16: "complex128"}
"""Element size -> a torch dtype of that width, so views report SGLang's numel/element_size."""


def aligned(offset: int, alignment: int = ALIGNMENT) -> int:
    """``offset`` rounded up to a multiple of ``alignment``.

        >>> aligned(1), aligned(256), aligned(0)
        (256, 256, 0)
    """
    return -(-offset // alignment) * alignment


def layout(manifest: dict) -> tuple[dict[str, tuple[int, int]], int]:
    """Each tensor's (offset, nbytes) in the buffer, in manifest order, and the bytes the buffer needs.

    Pure: offsets are multiples of ``ALIGNMENT``; zero-byte tensors take no space.

        >>> layout({"a": [0, 1, 1], "b": [8, 3, 4]})
        ({'a': (0, 1), 'b': (256, 12)}, 268)
    """
    offsets, end = {}, 0
    for name, (_, numel, esize) in manifest.items():
        nbytes = numel * esize
        start = aligned(end)
        offsets[name] = (start, nbytes)
        end = start + nbytes
    return offsets, end


def allocate_like(manifest: dict, torch=None, device: str = "cpu") -> tuple[dict, "object"]:
    """Zeroed destination views laid out like ``manifest``, in one contiguous buffer on ``device``.

    Each view starts on an ``ALIGNMENT``-byte address and has the dtype of its
    element size (uint8 for sizes torch has no integer of). With
    ``device="cuda"`` the views are CUDA memory, registered with the
    TransferEngine as they are (as SGLang's parameters are). Returns
    ``(tensors, buffer)``; keep ``buffer`` alive as long as the views.
    """
    if torch is None:
        import torch
    offsets, total = layout(manifest)
    # The allocator's own alignment differs by device (CUDA: 256, CPU: 64), so ask for
    # ALIGNMENT - 1 spare bytes and start at the first aligned address inside.
    raw = torch.empty(total + ALIGNMENT, dtype=torch.uint8, device=device)
    skip = (-raw.data_ptr()) % ALIGNMENT
    buffer = raw[skip:skip + max(total, 1)]
    # empty + zero_ writes every page now: calloc'd zero pages would otherwise fault
    # in during the fork (SGLang's parameters are likewise written before loading).
    buffer.zero_()
    tensors = {}
    for name, (_, _, esize) in manifest.items():
        start, nbytes = offsets[name]
        view = buffer[start:start + nbytes]
        tensors[name] = view.view(getattr(torch, _DTYPE_BY_SIZE[esize])) if esize in _DTYPE_BY_SIZE else view
    return tensors, buffer


def write_dump(directory: str, rank: int, tensors: dict, buffer=None) -> None:
    """Write ``rank<R>.bin`` (every tensor's bytes, back to back in ``tensors`` order, no padding)
    and ``rank<R>.index.json`` ({name: {offset, numel, element_size}}, offsets into the .bin).

    ``buffer`` is accepted for callers of the old signature and not needed.
    """
    import torch

    os.makedirs(directory, exist_ok=True)
    index, offset = {}, 0
    with open(os.path.join(directory, f"rank{rank}.bin"), "wb") as out:
        for name, t in tensors.items():
            nbytes = t.numel() * t.element_size()
            index[name] = {"offset": offset, "numel": t.numel(), "element_size": t.element_size()}
            if nbytes:
                out.write(t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
            offset += nbytes
    with open(os.path.join(directory, f"rank{rank}.index.json"), "w") as f:
        json.dump(index, f)
