"""bench.piece_study's pure parts: arms from flags, the alternating order, and the per-rate summary."""

from __future__ import annotations

import pytest

from bench.piece_study import OFF, WHOLE, StudyArgsError, Window, arms_of, cycle_order, parse_arm, summarize

MiB = 2**20


@pytest.mark.parametrize("text, piece, gap", [("1MiB", MiB, 0.0), ("256KiB:0.005", 256 * 2**10, 0.005),
                                              (" 64KiB:1 ", 64 * 2**10, 1.0)])
def test_an_arm_reads_in_the_pieces_it_names(text, piece, gap):
    arm = parse_arm(text)
    assert (arm.pieces.read_piece_bytes, arm.pieces.read_piece_gap_seconds, arm.transfer) == (piece, gap, True)


@pytest.mark.parametrize("text, says", [("1KiB", "at least 64KiB"), ("1MiB:2", "the gap must be 0 to 1 seconds"),
                                        ("1MiB:-1", "the gap must be 0 to 1 seconds"), ("lots", "cannot read size"),
                                        ("1MiB:soon", "give SIZE or SIZE:GAP_SECONDS"),
                                        ("0", "needs a size"), ("0:0.01", "needs --pieces 0:0.01")])
def test_a_bad_arm_is_one_sentence(text, says):
    with pytest.raises(StudyArgsError, match=f"--pieces {text.strip()}"):
        parse_arm(text)
    with pytest.raises(StudyArgsError) as refused:
        parse_arm(text)
    assert says in str(refused.value)


def test_the_arms_are_the_seed_alone_whole_reads_then_the_pieces_once_each():
    assert [a.name for a in arms_of(["1MiB", "1MiB:0.005"])] == [OFF, WHOLE, "1MiB", "1MiB:0.005"]
    assert [a.name for a in arms_of(["1MiB"], with_off=False)] == [WHOLE, "1MiB"]
    assert not arms_of([])[0].transfer and arms_of([])[1].pieces.read_piece_bytes == 0
    with pytest.raises(StudyArgsError, match="names 1MiB twice"):
        arms_of(["1MiB", "1MiB"])


def test_every_arm_takes_every_place_in_turn_over_two_cycles():
    arms = ["a", "b", "c"]
    orders = [cycle_order(arms, k) for k in range(4)]
    assert orders == [arms, arms[::-1], arms, arms[::-1]]
    mean_place = {arm: sum(order.index(arm) for order in orders) / 4 for arm in arms}
    assert len(set(mean_place.values())) == 1  # no arm always first (after a drain) or always last


def _w(rate, arm, cycle, slow, tokens=(1000.0, 1000.0), nbytes=0):
    return Window(rate, arm, cycle, tokens, slow, nbytes, 10.0)


def test_the_summary_pools_seeds_and_windows_and_pairs_by_cycle():
    windows = [
        _w(5e6, OFF, 0, (4.0, 6.0)), _w(5e6, WHOLE, 0, (20.0, 30.0), nbytes=100_000_000),
        _w(5e6, "1MiB", 0, (8.0, 12.0), nbytes=90_000_000),
        _w(5e6, "1MiB", 1, (10.0, 10.0), nbytes=100_000_000), _w(5e6, WHOLE, 1, (15.0, 25.0), nbytes=100_000_000),
        _w(5e6, OFF, 1, (6.0, 4.0)),
        _w(2e7, WHOLE, 0, (50.0, 10.0)),                     # another rate: summarized on its own
    ]
    rows = summarize(windows, budget=0.01)
    at5 = {r["arm"]: r for r in rows if r["rate_per_seed_bytes_per_second"] == 5e6}
    assert at5[OFF]["share"] == pytest.approx(20 / 4000) and at5[OFF]["within_budget"]
    assert at5[WHOLE]["share"] == pytest.approx(90 / 4000)
    assert at5[WHOLE]["share_per_seed"] == pytest.approx([35 / 2000, 55 / 2000])
    assert at5[WHOLE]["worst_seed_share"] == pytest.approx(55 / 2000) and not at5[WHOLE]["within_budget"]
    # Pooled 1.0 %, but seed 1 read 22 of 2,000 (1.1 %): every seed must keep its own within the budget.
    assert at5["1MiB"]["share"] == pytest.approx(0.01) and at5["1MiB"]["worst_seed_share"] == pytest.approx(22 / 2000)
    assert at5["1MiB"]["within_budget"] is False
    assert at5["1MiB"]["throughput_per_seed_bytes_per_second"] == pytest.approx(190e6 / 20 / 2)
    # Paired by cycle: cycle 0 1MiB 1.0 % vs whole 2.5 %, cycle 1 1.0 % vs 2.0 %.
    assert at5["1MiB"]["minus_whole"]["mean"] == pytest.approx(-0.0125)
    assert at5["1MiB"]["minus_whole"]["standard_error"] == pytest.approx(0.0025)
    assert at5["1MiB"]["minus_off"]["mean"] == pytest.approx(0.005) and at5["1MiB"]["minus_off"]["cycles"] == 2
    assert "minus_whole" not in at5[WHOLE] and "minus_off" not in at5[OFF]
    at20 = [r for r in rows if r["rate_per_seed_bytes_per_second"] == 2e7]
    assert [(r["arm"], r["windows"]) for r in at20] == [(WHOLE, 1)] and "minus_off" not in at20[0]


def test_a_window_without_tokens_has_no_share_and_pairs_with_nothing():
    rows = summarize([_w(5e6, WHOLE, 0, (0.0, 0.0), tokens=(0.0, 0.0)), _w(5e6, "1MiB", 0, (1.0, 1.0))], 0.01)
    whole, pieces = rows
    assert whole["share"] is None and whole["within_budget"] is None and "minus_whole" not in pieces
