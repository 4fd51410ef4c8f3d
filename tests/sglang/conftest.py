"""The SGLang tier: SGLang 0.5.23's real code on CPU, each case in its own process.

Runs in .venv-sglang (`make test-sglang`). Under the main venv, where SGLang is
not installed, every test here is reported as skipped with the command that
runs it — never collected as a silent pass.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SGLANG_INSTALLED = importlib.util.find_spec("sglang") is not None
SKIP_REASON = "SGLang is not installed in this venv; `make test-sglang` runs tests/sglang in .venv-sglang"

# Hang guards, not speed limits. Every case starts a fresh interpreter that imports SGLang and
# torch: measured on a loaded 2-core machine, one client process took 23-157 s to its result,
# so the former 180 s per process and pytest's 300 s per test failed healthy runs. A hung
# process still fails, after these.
PROCESS_HANG_GUARD_SECONDS = 600
TEST_HANG_GUARD_SECONDS = 1200
"""Per test: its fixture's fleet start plus up to two client processes."""


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "sglang: runs SGLang's real code (needs .venv-sglang)")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.sglang)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(TEST_HANG_GUARD_SECONDS))
            if not SGLANG_INSTALLED:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def client_env(**overrides: str | None) -> dict[str, str]:
    """The environment of an SGLang client process: no RFORK_* leaking in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RFORK_")}
    env.update(PYTHONUNBUFFERED="1", GLOG_minloglevel="2")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_sglang_client(config: dict, env: dict[str, str],
                      timeout: float = PROCESS_HANG_GUARD_SECONDS) -> tuple[dict, str]:
    """Run tests/sglang/sglang_client.py in a fresh process; (result, stderr)."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "sglang_client.py"), json.dumps(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"client exited {proc.returncode} without a result; stderr:\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert "crash" not in result, f"client crashed:\n{result['crash']}\nstderr:\n{proc.stderr[-4000:]}"
    return result, proc.stderr


def run_python(code: str, env: dict[str, str] | None = None,
               timeout: float = PROCESS_HANG_GUARD_SECONDS) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh interpreter of this venv (SGLang hooks patch process state)."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env or client_env(),
                          capture_output=True, text=True, timeout=timeout)
