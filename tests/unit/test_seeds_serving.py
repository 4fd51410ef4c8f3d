"""``rfork_api.clients.seeds_serving``: the preflight's answer to "does a live seed serve this identity and rank?"."""

from __future__ import annotations

import pytest

from rfork_api import models as m
from rfork_api.clients import seeds_serving
from rfork_api.errors import UnknownModel

IDENTITY = {"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 2}


def _seed(seed_id: str, identity: dict, ranks: list[int]) -> m.SeedSummary:
    """One entry of a GET /v1/seeds answer, as the scheduler sends it."""
    return m.SeedSummary.model_validate({
        "seed_id": seed_id, "identity": identity, "agent_url": f"http://{seed_id}:8800", "ranks": ranks,
        "rate_cap_bytes_per_second": None, "allowed_rate_bytes_per_second": None, "in_flight_leases": 0,
        "seconds_since_heartbeat": 0.1})


SEEDS = [
    _seed("seed-0", IDENTITY, [0, 1]),
    _seed("seed-1", IDENTITY, [0]),
    _seed("other", dict(IDENTITY, model="n"), [0, 1]),
]


@pytest.mark.parametrize("identity, rank, served_by", [
    (IDENTITY, 0, ["seed-0", "seed-1"]),
    (IDENTITY, 1, ["seed-0"]),
    (dict(IDENTITY, model="n"), 1, ["other"]),
])
def test_seeds_with_the_same_identity_and_rank_serve(identity, rank, served_by):
    assert [s.seed_id for s in seeds_serving(SEEDS, m.ModelIdentity(**identity), rank)] == served_by


@pytest.mark.parametrize("seeds, identity, rank, message", [
    (SEEDS, dict(IDENTITY, dtype="float16"), 0,
     "no live seed serves m@main float16 tp=2 rank 0; registered: m@main bfloat16 tp=2, n@main bfloat16 tp=2."),
    (SEEDS, dict(IDENTITY, tp_size=4), 0, "registered: m@main bfloat16 tp=2, n@main bfloat16 tp=2"),
    (SEEDS, IDENTITY, 2, "the live seeds of m@main bfloat16 tp=2 serve ranks [0, 1], not rank 2"),
    ([], IDENTITY, 0, "registered: none"),
])
def test_no_serving_seed_is_unknown_model_naming_what_is_registered(seeds, identity, rank, message):
    with pytest.raises(UnknownModel) as info:
        seeds_serving(seeds, m.ModelIdentity(**identity), rank)
    assert message in str(info.value)
