"""Manifest layouts: the digest both ends compute, the pointers' encoding, the scheduler's cache."""

from __future__ import annotations

import base64
from array import array

import pytest

from rfork_api.errors import InvalidManifest
from rfork_api.manifest import compact_manifest, decode_pointers, layout_digest, parse_manifest, parse_manifest_table
from scheduler.layouts import LayoutCache

WIRE = {"a.weight": [1 << 20, 8192, 2], "b.bias": [2 << 20, 4096, 1], "c": [3 << 20, 0, 4]}


def moved(wire: dict, offset: int) -> dict:
    return {name: [ptr + offset, numel, size] for name, (ptr, numel, size) in wire.items()}


@pytest.mark.parametrize("other, same", [
    (moved(WIRE, 1 << 30), True),                                              # pointers only
    (dict(reversed(list(WIRE.items()))), False),                               # order
    ({**WIRE, "a.weight": [1 << 20, 8192, 4]}, False),                         # an element size
    ({**WIRE, "a.weight": [1 << 20, 8193, 2]}, False),                         # a count
    ({("a.weightx" if k == "a.weight" else k): v for k, v in WIRE.items()}, False),  # a name
    ({**WIRE, "d": [4 << 20, 1, 1]}, False),                                   # a tensor more
])
def test_the_layout_digest_sees_names_sizes_and_order_not_pointers(other, same):
    assert (layout_digest(parse_manifest(WIRE)) == layout_digest(parse_manifest(other))) is same


def test_names_that_join_alike_have_different_layouts():
    # "a\0b" as one name vs "a" and "b": a digest over joined names would confuse them.
    assert layout_digest(parse_manifest({"a\0b": [0, 1, 1], "c": [0, 1, 1]})) != layout_digest(
        parse_manifest({"a": [0, 1, 1], "b\0c": [0, 1, 1]}))


def test_the_client_and_the_scheduler_compute_the_same_digest_and_pointers():
    digest, pointers = compact_manifest(WIRE)
    assert digest == layout_digest(parse_manifest(WIRE))
    assert list(decode_pointers(pointers)) == [v[0] for v in WIRE.values()]
    # The wire's bytes are little-endian, whatever the machine's order.
    assert base64.b64decode(pointers)[:8] == (1 << 20).to_bytes(8, "little")


@pytest.mark.parametrize("wire", [
    {"a": [1, 2]}, {"a": [1, 2, 3, 4]}, {"a": [-1, 2, 2]}, {"a": [1 << 64, 2, 2]}, {"a": [1, 2.5, 2]},
    {"a": "abc"}, {"a": None}, {"a": [1, 2, "2"]},
])
def test_a_manifest_that_is_not_all_integer_triples_is_sent_whole(wire):
    assert compact_manifest(wire) is None


@pytest.mark.parametrize("text, needle", [
    ("not base64!", "not base64"),
    (base64.b64encode(b"\0" * 7).decode(), "7 bytes, not a whole number"),
    ("AAAA", "3 bytes"),
])
def test_bad_pointers_say_what_is_wrong(text, needle):
    with pytest.raises(InvalidManifest, match=needle):
        decode_pointers(text)


def _table(n: int, base: int = 0, numel: int = 16):
    return parse_manifest_table({f"t{i}": [base + i * 4096, numel, 2] for i in range(n)})


def test_a_layout_takes_another_clients_pointers_and_shares_the_rest():
    table = _table(3)
    cache = LayoutCache(max_tensors=100)
    layout = cache.add(table.to_manifest(), table.shapes_digest)
    theirs = layout.manifest(array("Q", [7, 8, 9]))
    assert [theirs[f"t{i}"] for i in range(3)] == [(7, 16, 2), (8, 16, 2), (9, 16, 2)]
    assert theirs.names is layout.names and layout_digest(theirs) == layout.digest
    assert cache.get(layout.digest) is layout and layout.shapes_digest == table.shapes_digest
    with pytest.raises(InvalidManifest, match="has 3 tensors but layout.pointers holds 2 pointers"):
        layout.manifest(array("Q", [7, 8]))


def test_the_cache_keeps_the_recently_used_layouts_within_its_tensor_budget():
    cache = LayoutCache(max_tensors=10)
    layouts = [cache.add(t.to_manifest(), t.shapes_digest) for t in (_table(4), _table(5), _table(3))]
    # 4 + 5 + 3 > 10: the least recently used (4 tensors) goes.
    assert cache.get(layouts[0].digest) is None and len(cache) == 2 and cache.tensors == 8
    cache.get(layouts[1].digest)                      # used: now the most recent
    cache.add(_table(3, numel=32).to_manifest(), b"")  # 8 + 3 > 10: the 3-tensor layout goes
    assert cache.get(layouts[2].digest) is None and cache.get(layouts[1].digest) is not None
    big = _table(50)
    assert cache.add(big.to_manifest(), big.shapes_digest) is cache.get(layout_digest(big.to_manifest()))
    assert len(cache) == 1  # over the budget alone: kept (the latest always is), the rest dropped


def test_adding_a_held_layout_keeps_one_copy():
    cache = LayoutCache(max_tensors=10)
    first = cache.add(_table(4).to_manifest(), b"")
    assert cache.add(_table(4, base=1 << 30).to_manifest(), b"") is first and cache.tensors == 4


def test_a_cache_of_no_tensors_keeps_nothing():
    cache = LayoutCache(max_tensors=0)
    layout = cache.add(_table(2).to_manifest(), b"")
    assert cache.get(layout.digest) is None and len(cache) == 0
    with pytest.raises(ValueError, match="max_tensors must be >= 0"):
        LayoutCache(max_tensors=-1)
