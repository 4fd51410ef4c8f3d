"""``clients.seeds_serving``: the preflight's answer to "does a live seed serve this identity and rank?"."""

from __future__ import annotations

import pytest

from rfork_agent import clients

IDENTITY = {"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 2}
SEEDS = [
    {"seed_id": "seed-0", "identity": IDENTITY, "ranks": [0, 1]},
    {"seed_id": "seed-1", "identity": IDENTITY, "ranks": [0]},
    {"seed_id": "other", "identity": dict(IDENTITY, model="n"), "ranks": [0, 1]},
]


@pytest.mark.parametrize("identity, rank, served_by", [
    (IDENTITY, 0, ["seed-0", "seed-1"]),
    (IDENTITY, 1, ["seed-0"]),
    (dict(IDENTITY, model="n"), 1, ["other"]),
])
def test_seeds_with_the_same_identity_and_rank_serve(identity, rank, served_by):
    assert [s["seed_id"] for s in clients.seeds_serving(SEEDS, identity, rank)] == served_by


@pytest.mark.parametrize("seeds, identity, rank, message", [
    (SEEDS, dict(IDENTITY, dtype="float16"), 0,
     "no live seed serves m@main float16 tp=2 rank 0; registered: m@main bfloat16 tp=2, n@main bfloat16 tp=2."),
    (SEEDS, dict(IDENTITY, tp_size=4), 0, "registered: m@main bfloat16 tp=2, n@main bfloat16 tp=2"),
    (SEEDS, IDENTITY, 2, "the live seeds of m@main bfloat16 tp=2 serve ranks [0, 1], not rank 2"),
    ([], IDENTITY, 0, "registered: none"),
])
def test_no_serving_seed_is_unknown_model_naming_what_is_registered(seeds, identity, rank, message):
    with pytest.raises(clients.UnknownModel) as info:
        clients.seeds_serving(seeds, identity, rank)
    assert message in str(info.value)
