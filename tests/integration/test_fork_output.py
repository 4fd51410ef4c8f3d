"""`rfork fork --output` end to end: real processes, TransferEngine over TCP on loopback."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_rfork_fork_output_dumps_exactly_what_the_seed_serves(tmp_path):
    """`rfork fork --output` as a user runs it, against a real one-seed fleet (TransferEngine over TCP)."""
    import hashlib
    import subprocess
    import sys

    import httpx

    from testbed.fleet import Fleet, FleetSpec

    with Fleet(FleetSpec(seeds=1, preset="tiny", include_zero_byte=True, log_dir=str(tmp_path / "fleet"))) as fleet:
        out = tmp_path / "dump"
        proc = subprocess.run(
            [sys.executable, "-m", "rfork_agent.cli", "fork", "--scheduler", fleet.scheduler_url,
             "--like-seed", fleet.seeds[0].url, "--output", str(out), "--no-progress", "--log-level", "WARNING"],
            capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        served = httpx.get(f"{fleet.seeds[0].url}/testbed/digests", params={"rank": 0}, timeout=60).json()["digests"]
    raw = (out / "rank0.bin").read_bytes()
    index = json.loads((out / "rank0.index.json").read_text())
    assert list(index) == list(served)
    dumped = {name: hashlib.blake2b(raw[e["offset"]:e["offset"] + e["numel"] * e["element_size"]],
                                    digest_size=32).hexdigest() for name, e in index.items()}
    assert dumped == served
