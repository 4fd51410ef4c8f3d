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


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "sglang: runs SGLang's real code (needs .venv-sglang)")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.sglang)
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


def run_sglang_client(config: dict, env: dict[str, str], timeout: float = 180) -> tuple[dict, str]:
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


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh interpreter of this venv (SGLang hooks patch process state)."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env or client_env(),
                          capture_output=True, text=True, timeout=timeout)
