"""AgentConfig's read pieces: what a lease tells the client, and the bounds a config is refused outside."""

from __future__ import annotations

import pytest

from rfork_agent.agent_config import AgentConfig
from rfork_api.models import MIN_READ_PIECE_BYTES, lease_read_pieces

MiB = 2**20


def config(**overrides) -> AgentConfig:
    return AgentConfig(seed_id="seed-0", sglang_url="http://127.0.0.1:30000", scheduler_url="http://127.0.0.1:8700",
                       **overrides)


@pytest.mark.parametrize("piece, gap, ttl, nbytes, expected", [
    (0, 0.0, 30.0, 8 * MiB, (0, 0.0)),                    # whole reads
    (MiB, 0.0, 30.0, 8 * MiB, (MiB, 0.0)),                # pieces back to back
    (MiB, 0.005, 30.0, 8 * MiB, (MiB, 0.005)),
    (MiB, 0.005, 30.0, MiB, (MiB, 0.0)),                  # one piece: no gap
    (MiB, 0.005, 30.0, MiB + 1, (MiB, 0.005)),            # two pieces, the second of one byte
    (MiB, 1.0, 30.0, 16 * MiB, (MiB, 1.0)),               # 15 gaps of 1 s: 15 s, half the ttl
    (MiB, 1.0, 30.0, 31 * MiB, (MiB, 0.5)),               # 30 gaps: shortened to 15 s in all
    (MiB, 0.01, 1.0, 101 * MiB, (MiB, 0.005)),            # 100 gaps within 0.5 s
])
def test_a_lease_is_read_in_pieces_whose_gaps_fit_in_half_its_ttl(piece, gap, ttl, nbytes, expected):
    start = config(read_piece_bytes=piece, read_piece_gap_seconds=gap, lease_ttl_seconds=ttl)
    got = lease_read_pieces(start.read_pieces, nbytes, start.lease_ttl_seconds)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("overrides, says", [
    ({"read_piece_bytes": MIN_READ_PIECE_BYTES - 1}, "read_piece_bytes must be 0 (whole reads) or at least 65536"),
    ({"read_piece_bytes": -1}, "read_piece_bytes: Input should be greater than or equal to 0"),
    ({"read_piece_bytes": 2**41}, "read_piece_bytes: Input should be less than or equal to"),
    ({"read_piece_bytes": MiB, "read_piece_gap_seconds": 1.5}, "read_piece_gap_seconds: Input should be less than"),
    ({"read_piece_bytes": MiB, "read_piece_gap_seconds": -0.1}, "read_piece_gap_seconds: Input should be greater"),
    ({"read_piece_bytes": MiB, "read_piece_gap_seconds": float("nan")}, "read_piece_gap_seconds: Input should be a "
                                                                         "finite number"),
    ({"read_piece_gap_seconds": 0.01}, "read_piece_gap_seconds needs read_piece_bytes"),
])
def test_a_config_outside_the_bounds_is_refused_naming_the_field(overrides, says):
    with pytest.raises(ValueError, match="invalid agent config") as refused:
        config(**overrides)
    assert says in str(refused.value)


def test_the_smallest_piece_is_accepted():
    smallest = config(read_piece_bytes=MIN_READ_PIECE_BYTES)
    assert lease_read_pieces(smallest.read_pieces, MIN_READ_PIECE_BYTES + 1, 30.0)[0] == MIN_READ_PIECE_BYTES
