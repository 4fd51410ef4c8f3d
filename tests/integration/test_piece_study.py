"""`python -m bench.piece_study` end to end, in miniature: the real fleet, agents switched between whole reads
and pieces at run time (``PUT /v1/read-pieces``), one cycle of short windows on the CPU's steady plant.

What is checked is the mechanics (every window measured in its arm, the pieces arms reading, the seed-alone
arm not, the JSON, the table and the plot), not what pieces do to a seed: a busy 2-core machine says nothing
about a GPU seed's staging copies (docs/qos.md, "Reads in pieces").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_a_miniature_study_measures_every_arm_and_writes_the_table(tmp_path):
    out = tmp_path / "pieces.json"
    argv = [sys.executable, "-m", "bench.piece_study", "--plant", "steady", "--quick", "--cycles", "1",
            "--window-seconds", "2", "--rates", "20MB/s", "--pieces", "256KiB:0.001", "--json", str(out),
            "--plot", str(tmp_path / "pieces.png"), "--log-dir", str(tmp_path / "logs")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=220, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [a["name"] for a in result["arms"]] == ["off", "whole", "256KiB:0.001"]
    assert result["arms"][2]["read_piece_bytes"] == 256 * 2**10 and result["slo_itl_seconds"] > 0
    windows = {w["arm"]: w for w in result["windows"]}
    assert sorted(windows) == ["256KiB:0.001", "off", "whole"] and len(result["windows"]) == 3
    assert all(sum(w["tokens"]) > 0 for w in windows.values()), windows
    assert windows["whole"]["bytes"] > 0 and windows["256KiB:0.001"]["bytes"] > 0
    assert windows["off"]["bytes"] == 0, windows   # the seed alone: the forks paused, nothing read
    rows = {r["arm"]: r for r in result["summary"]}
    assert set(rows) == {"off", "whole", "256KiB:0.001"} and "minus_whole" in rows["256KiB:0.001"]
    assert "256KiB:0.001" in done.stdout and "- whole (SE)" in done.stdout
    assert (tmp_path / "pieces.png").stat().st_size > 0
