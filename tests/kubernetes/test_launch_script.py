"""deploy/kubernetes/sglang/common/launch.sh, run for real: fork when the fleet serves, else load from storage.

SGLang itself is replaced at the very end (``python3 -m sglang.launch_server``) by a stand-in that
records its arguments; the health check the script makes is real HTTP against a real server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from testbed.fleet import free_port
from tests.kubernetes.manifests import DEPLOY

LAUNCH = DEPLOY / "sglang" / "common" / "launch.sh"
SEED_FLAG = "--remote-instance-weight-loader-start-seed-via-transfer-engine"


@pytest.fixture
def shim(tmp_path):
    """A python3 on PATH that records `-m sglang.launch_server ARGS` and runs everything else for real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sglang-args.json"
    (bin_dir / "python3").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "sglang.launch_server" ]; then\n'
        f'  shift 2; exec "{sys.executable}" -c "import json,sys; json.dump(sys.argv[1:], open(\'{record}\', \'w\'))" "$@"\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    return bin_dir, record


@pytest.fixture
def serving_seed(tmp_path):
    """A real HTTP server whose /health answers 200, like a serving SGLang instance."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "health").write_text("ok")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                               cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(timeout=10)


def launch(shim, port: int, extra_env=None) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir, record = shim
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RFORK_SEEDS_HOST="127.0.0.1",
               RFORK_SEEDS_PORT=str(port), **(extra_env or {}))
    r = subprocess.run(["/bin/sh", str(LAUNCH), "--model-path=M", "--tp-size=2"], env=env, capture_output=True,
                       text=True, timeout=60)
    return r, json.loads(record.read_text()) if record.exists() else []


def test_with_a_serving_seed_the_instance_forks_and_seeds(shim, serving_seed):
    r, args = launch(shim, serving_seed)
    assert r.returncode == 0, r.stderr
    assert args == ["--model-path=M", "--tp-size=2", "--load-format", "remote_instance",
                    "--remote-instance-weight-loader-backend", "transfer_engine",
                    "--remote-instance-weight-loader-seed-instance-ip", "127.0.0.1",
                    "--remote-instance-weight-loader-seed-instance-service-port", str(serving_seed), SEED_FLAG]
    assert "forking weights from the fleet" in r.stderr


def test_the_first_instance_loads_from_storage_and_seeds(shim):
    nobody = free_port()
    r, args = launch(shim, nobody)
    assert r.returncode == 0, r.stderr
    assert args == ["--model-path=M", "--tp-size=2", SEED_FLAG]
    assert f"no serving seed at 127.0.0.1:{nobody}" in r.stderr and "loading weights from storage" in r.stderr


def test_without_the_seeds_service_it_says_what_to_set(shim):
    bin_dir, record = shim
    env = {k: v for k, v in os.environ.items() if k != "RFORK_SEEDS_HOST"}
    r = subprocess.run(["/bin/sh", str(LAUNCH)], env=dict(env, PATH=f"{bin_dir}:{env['PATH']}"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "set RFORK_SEEDS_HOST" in r.stderr
    assert not record.exists()
