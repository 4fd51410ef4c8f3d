"""The SGLang tier: SGLang 0.5.23's real code on CPU, each case in its own process.

Runs in .venv-sglang (`make test-sglang`). Under the main venv, where SGLang is
not installed, every test here is reported as skipped with the command that
runs it — never collected as a silent pass.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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


class ClientZygote:
    """tests/sglang/client_zygote.py: SGLang and torch imported once, a forked process per case."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(HERE / "client_zygote.py")], cwd=REPO,
                                        env=client_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self._read = b""
        """What was read of the zygote's stdout past the last whole line (a quick case's PID and EXIT
        lines can come in one read: a buffered reader would keep the second where select cannot see it)."""
        self.work = Path(tempfile.mkdtemp(prefix="rfork-sglang-cases-"))
        self.cases = 0
        self.current: Case | None = None
        line = self._line(PROCESS_HANG_GUARD_SECONDS)
        assert line == "READY", f"the zygote did not start ({line!r}); stderr:\n{self._stderr()}"

    def _line(self, timeout: float) -> str:
        """The zygote's next line; '' when none came within ``timeout`` (or it exited)."""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._read:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                return ""
            self._read += chunk
        line, _, self._read = self._read.partition(b"\n")
        return line.decode().strip()

    def _stderr(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read().decode(errors="replace")[-4000:]

    def start(self, config: dict, env: dict[str, str]) -> "Case":
        """Fork one case; it runs while the caller goes on (``Case.wait`` for its end)."""
        self.cases += 1
        out, err = self.work / f"case-{self.cases}.out", self.work / f"case-{self.cases}.err"
        self.process.stdin.write(json.dumps({"config": config, "env": env, "stdout": str(out),
                                             "stderr": str(err)}).encode() + b"\n")
        self.process.stdin.flush()
        pid_line = self._line(60)
        assert pid_line.startswith("PID "), f"the zygote did not fork ({pid_line!r}); stderr:\n{self._stderr()}"
        self.current = Case(self, int(pid_line.split()[1]), out, err)
        return self.current

    def close(self) -> None:
        """End the zygote, and a case still running (its own process group: a Ctrl-C does not reach it)."""
        if self.current is not None and self.current.returncode is None:
            self.current.kill()
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.work, ignore_errors=True)


class Case:
    """One forked client process."""

    def __init__(self, zygote: ClientZygote, pid: int, out: Path, err: Path) -> None:
        self.zygote, self.pid, self.out, self.err = zygote, pid, out, err
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Its exit code once it ended (-N: killed by signal N), else None."""
        if self.returncode is None:
            self._take_exit(0)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """Its exit code; None when it ran past ``timeout`` (then it is killed, with what it started)."""
        if self.returncode is None and not self._take_exit(timeout):
            self.kill()
            self._take_exit(60)
            return None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL it and whatever it started (its own process group)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def output(self) -> tuple[str, str]:
        return self.out.read_text(), self.err.read_text()

    def _take_exit(self, timeout: float) -> bool:
        line = self.zygote._line(timeout)
        if line.startswith("EXIT "):
            self.returncode = int(line.split()[1])
            return True
        return False


_zygote: ClientZygote | None = None


def zygote() -> ClientZygote:
    """The session's zygote, started by the first case that needs it."""
    global _zygote
    if _zygote is None:
        _zygote = ClientZygote()
    return _zygote


@pytest.fixture(scope="session", autouse=True)
def _close_the_zygote():
    yield
    global _zygote
    if _zygote is not None:
        _zygote.close()
        _zygote = None


def run_sglang_client(config: dict, env: dict[str, str],
                      timeout: float = PROCESS_HANG_GUARD_SECONDS) -> tuple[dict, str]:
    """Run tests/sglang/sglang_client.py's case in a fresh process (forked by the zygote); (result, stderr)."""
    case = zygote().start(config, env)
    code = case.wait(timeout)
    stdout, stderr = case.output()
    assert code is not None, f"client hung for {timeout:.0f} s and was killed; stderr:\n{stderr[-4000:]}"
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"client exited {code} without a result; stderr:\n{stderr[-4000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert "crash" not in result, f"client crashed:\n{result['crash']}\nstderr:\n{stderr[-4000:]}"
    return result, stderr


def run_python(code: str, env: dict[str, str] | None = None,
               timeout: float = PROCESS_HANG_GUARD_SECONDS) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh interpreter of this venv (SGLang hooks patch process state)."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env or client_env(),
                          capture_output=True, text=True, timeout=timeout)
