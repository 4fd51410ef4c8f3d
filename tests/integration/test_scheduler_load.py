"""The scheduler under large, legal job requests: a real scheduler process, real HTTP.

Many forks of a MoE model starting at once is the normal fleet case: each job
request carries a manifest of hundreds of thousands of tensors. Creating them
must not hold up heartbeats (issue 12, item 4).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bench.scheduler_load import SchedulerProcess, measure
from tests.integration.scheduler_fakes import process_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_heartbeats_keep_flowing_while_large_jobs_are_created(tmp_path):
    # Heartbeats every 0.2 s. A scheduler that stops answering them while it parses and plans is
    # caught by the last check: a heartbeat queued behind a creation waits about one creation. The
    # timeout is the default 5 s, not 1 s: on a 2-core machine running two suites (CI beside a
    # second run), where every process waits its turn for a CPU, the scheduler heard no heartbeat
    # for 1.9 s outside its own measured stalls and dropped the seeds, as a 1 s timeout tells it to.
    with SchedulerProcess(str(tmp_path / "scheduler.log"), heartbeat_timeout=5.0) as scheduler:
        result = measure(scheduler.url, jobs=4, tensors=260_000, heartbeat_interval=0.2)
    summary = result.summary()
    print(summary)
    assert result.job_status == [201] * 4, summary
    assert result.heartbeat_failures == [], summary
    assert result.seeds_dropped == 0 and result.seeds_registered_after == 2, summary
    # Heartbeats are answered while jobs are created, not queued behind them.
    assert result.heartbeat_max_seconds < max(result.job_seconds) / 4, summary


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_the_decoding_processes_leave_with_the_scheduler(tmp_path, sig):
    log_path = tmp_path / "scheduler.log"
    with SchedulerProcess(str(log_path)) as scheduler:
        pid = scheduler.process.pid
        deadline = time.monotonic() + 60
        while not (workers := _children(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)  # the pool starts its first worker at startup
        assert workers, "no decoding process started"
        scheduler.process.send_signal(sig)
        if sig == signal.SIGINT:
            for worker in workers:  # Ctrl-C reaches the whole process group
                os.kill(worker, signal.SIGINT)
        scheduler.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(process_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(process_alive(w) for w in workers), f"left behind: {workers}"
    assert "Traceback" not in log_path.read_text()


_CLOSE_AS_A_WORKER_STARTS = """
import multiprocessing, time
from scheduler.intake import Intake
if __name__ == "__main__":
    intake = Intake(process_min_bytes=1, workers=2)
    intake.start()              # a worker process starts (spawn: it imports for a second)
    time.sleep(0.1)
    intake.close()
    print(len(multiprocessing.active_children()))
"""


def test_closing_the_intake_waits_until_its_decoding_processes_are_gone(tmp_path):
    # As the scheduler or a decider does on Ctrl-C, possibly as its first worker starts. Closing
    # without waiting left the pool's manager thread closing its wake-up pipe while the exiting
    # interpreter wrote to it: an ignored "Bad file descriptor" traceback in a decider's log.
    script = tmp_path / "close_intake.py"
    script.write_text(_CLOSE_AS_A_WORKER_STARTS)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", done.stdout + done.stderr   # no worker left when close returns
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
