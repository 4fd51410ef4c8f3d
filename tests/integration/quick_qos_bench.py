"""`python -m bench.qos_bench` run as its own process, in miniature: two quick runs of `steady` on one seed
(the mechanics, not the goals: a busy 2-core machine); its stdout and its JSON result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def quick_qos_bench(directory: Path, *flags: str) -> tuple[str, dict]:
    """Run the bench with ``flags`` after the miniature's; (its stdout, its result). Exit 1 (a goal missed)
    is expected of so short a run; anything else fails with the bench's last output."""
    out = directory / "qos.json"
    argv = [sys.executable, "-m", "bench.qos_bench", "--plant", "steady", "--quick", "--runs", "2", "--seeds", "1",
            "--concurrency", "8", "--oracle-probes", "1", "--oracle-probe-seconds", "2", "--throttled-seconds", "2",
            *flags, "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=220,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())
