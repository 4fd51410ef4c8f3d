"""`rfork bench fleet`'s judgement: a pure function of the measured points, written part-way too."""

import pytest

from bench.fleet_bench import summarize

MODEL = 256 * 2**20


def point(clients: int, peers: bool, seconds: float, seed_copies: float, verified: bool = True) -> dict:
    return {"clients": clients, "peers": peers, "time_to_all_seconds": seconds,
            "seed_bytes_served": int(seed_copies * MODEL), "model_bytes": MODEL, "verified": verified}


def judge(runs, planned=None):
    return summarize(runs, size=MODEL, chunk=4 * 2**20, seed_rate=50e6, client_rate=50e6, device="cpu",
                     planned=planned)


@pytest.mark.parametrize("runs, planned, met, complete", [
    # every point in, with peers at N=8 inside both targets
    ([point(1, True, 5.4, 1), point(8, True, 7.3, 1), point(1, False, 5.4, 1), point(8, False, 43, 8)], 4, True, True),
    # same numbers, but written after the peer points only: judged, never "met" before the run ends
    ([point(1, True, 5.4, 1), point(8, True, 7.3, 1)], 4, False, False),
    # time-to-all over 1.5 x the single fork
    ([point(1, True, 5.0, 1), point(8, True, 8.0, 1)], None, False, True),
    # the seed served too much
    ([point(1, True, 5.0, 1), point(8, True, 6.0, 1.6)], None, False, True),
    # a client that did not verify fails the run whatever the times
    ([point(1, True, 5.0, 1), point(8, True, 6.0, 1, verified=False)], None, False, True),
])
def test_summarize(runs, planned, met, complete):
    report = judge(runs, planned)
    assert report["met"] is met
    assert report["complete"] is complete
    assert any("part-way" in line for line in report["lines"]) is (not complete)
