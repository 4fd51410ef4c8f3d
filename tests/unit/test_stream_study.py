"""sim/stream_study.py: the design study of per-stripe streams (issue #15's CPU goal)."""

from __future__ import annotations

import pytest

from sim.stream_study import StudyConfig, run


def small(**overrides) -> StudyConfig:
    return StudyConfig(**{"instances": 16, "stripes": 4, "fanout": 4, "model": "qwen2.5-0.5b",
                          "chunk_size": 4 << 20, "link_bytes_per_second": 1e9, "batch_chunks": 2, **overrides})


def test_a_scale_out_completes_near_one_fork_with_one_seed_copy_and_a_decision_per_instance():
    r = run(small())
    assert r.instances_completed == 16 and r.instances_killed == 0
    assert r.seed_bytes_over_model == pytest.approx(1.0)
    assert r.scheduler_decisions == 16
    assert 1.0 <= r.time_to_all_over_single_fork < 1.5


def test_relays_and_seeds_that_die_cost_one_decision_per_orphaned_stream_and_every_survivor_completes():
    r = run(small(instances=32, seeds=4, kill_seeds=2, kill_peers_fraction=0.1, fault_window_seconds=0.3))
    assert r.instances_killed == 3 and r.instances_completed == 29
    assert r.time_to_all_seconds < float("inf")
    assert r.scheduler_decisions > 32  # re-parented streams
    assert r.seed_bytes_over_model < 2.0


@pytest.mark.parametrize("field, value, message", [
    ("instances", 0, "--instances must be >= 1"),
    ("kill_seeds", 1, "--kill-seeds must be in"),
    ("kill_peers_fraction", 1.0, "--kill-peers must be in"),
    ("link_bytes_per_second", 0.0, "--link-rate must be > 0"),
])
def test_bad_settings_say_which_flag(field, value, message):
    with pytest.raises(ValueError, match=message):
        run(small(**{field: value}))
