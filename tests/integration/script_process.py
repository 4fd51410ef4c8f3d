"""A Python script run as its own process that prints one JSON line when it is ready (tests' peers and seeds)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path


@contextlib.contextmanager
def script_process(directory: Path, name: str, text: str, *args: str):
    """Run ``text`` as ``directory/name`` with ``args``; yield its first stdout line's JSON with ``process``
    added. Its stdin stays open (it may wait on it); it is killed, if still running, on exit."""
    script = directory / name
    script.write_text(text)
    process = subprocess.Popen(
        [sys.executable, str(script), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,   # TE's glog chatter goes to stderr
    )
    try:
        line = process.stdout.readline()
        assert line, f"{name} exited before printing its session"
        info = json.loads(line)
        info["process"] = process
        yield info
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
