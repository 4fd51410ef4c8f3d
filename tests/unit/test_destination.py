"""The fork destination outside SGLang (rfork_agent/destination.py): aligned typed views and the dump."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from rfork_agent import fork_cli
from rfork_agent.destination import ALIGNMENT, allocate_like, layout, write_dump

ELEMENT_SIZES = (1, 2, 4, 8, 16, 3)  # 3: a width torch has no integer dtype of (a uint8 view)
DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128, 3: torch.uint8}


def manifest_of(entries: list[tuple[int, int]]) -> dict:
    """{t0: [ptr, numel, esize], ...}; the seed's pointers do not matter to the destination."""
    return {f"t{i}": [4096 * i, numel, esize] for i, (numel, esize) in enumerate(entries)}


def check(manifest: dict) -> None:
    tensors, buffer = allocate_like(manifest, torch)
    assert list(tensors) == list(manifest)
    spans = []
    for name, (_, numel, esize) in manifest.items():
        t = tensors[name]
        assert t.dtype == DTYPES[esize]
        assert t.numel() * t.element_size() == numel * esize
        if numel:
            assert t.data_ptr() % ALIGNMENT == 0, (name, t.data_ptr())
            spans.append((t.data_ptr(), t.data_ptr() + numel * esize))
        else:
            assert t.numel() == 0
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), "views overlap"
    lo, hi = buffer.data_ptr(), buffer.data_ptr() + buffer.numel()
    assert all(lo <= s and e <= hi for s, e in spans), "a view outside the buffer"
    assert not buffer.any()


def test_the_reported_crash_a_narrow_tensor_before_a_wider_one():
    tensors, _ = allocate_like({"a": [0, 1, 1], "b": [8, 1, 4]}, torch)
    assert tensors["b"].dtype == torch.int32 and tensors["b"].data_ptr() % ALIGNMENT == 0


@pytest.mark.parametrize("sizes", list(itertools.permutations((1, 2, 4, 8, 16))))
def test_every_order_of_element_sizes(sizes):
    check(manifest_of([(n, esize) for n, esize in zip((1, 3, 5, 7, 2), sizes)]))


@pytest.mark.parametrize("entries", [
    [],
    [(0, 4)],
    [(0, 1), (0, 16)],
    [(1, 1), (0, 4), (1, 4)],                # a zero-size tensor at an odd offset, then a wide one
    [(3, 1), (0, 2), (0, 8), (5, 16), (0, 1)],
    [(1, 3), (1, 8)],                        # element size 3: a byte view, then an 8-byte one
    [(64, 4), (64, 4)],                      # already on boundaries: no padding
    [(1, 1)] * 1000,                         # many tiny tensors
])
def test_zero_size_and_odd_layouts(entries):
    check(manifest_of(entries))


def test_tensors_that_end_on_a_boundary_are_packed():
    offsets, total = layout(manifest_of([(64, 4), (64, 4), (1, 1)]))
    assert [o for o, _ in offsets.values()] == [0, 256, 512] and total == 513


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_the_device_is_honoured(device):
    tensors, buffer = allocate_like({"a": [0, 1, 1], "b": [0, 3, 8]}, torch, device=device)
    assert buffer.device.type == device and tensors["b"].device.type == device


def test_fork_cli_still_exports_allocate_like():
    assert fork_cli.allocate_like is allocate_like


def test_the_dump_is_every_tensor_back_to_back_with_an_index(tmp_path):
    tensors, _ = allocate_like({"a": [0, 1, 1], "z": [0, 0, 4], "b": [0, 2, 4], "c": [0, 3, 2]}, torch)
    tensors["a"].fill_(7)
    tensors["b"].copy_(torch.tensor([0x01020304, -1], dtype=torch.int32))
    tensors["c"].copy_(torch.tensor([1, 2, 3], dtype=torch.int16))
    write_dump(str(tmp_path), 3, tensors)
    raw = (tmp_path / "rank3.bin").read_bytes()
    index = json.loads((tmp_path / "rank3.index.json").read_text())
    assert len(raw) == 1 + 0 + 8 + 6
    assert index == {"a": {"offset": 0, "numel": 1, "element_size": 1},
                     "z": {"offset": 1, "numel": 0, "element_size": 4},
                     "b": {"offset": 1, "numel": 2, "element_size": 4},
                     "c": {"offset": 9, "numel": 3, "element_size": 2}}
    for name, entry in index.items():
        start, n = entry["offset"], entry["numel"] * entry["element_size"]
        assert raw[start:start + n] == tensors[name].numpy().tobytes()

