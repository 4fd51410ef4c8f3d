"""A fork server for the SGLang tier's client processes: imports SGLang and torch once, forks a child per case.

Run as ``python tests/sglang/client_zygote.py`` with the SGLang venv's python. It
reads one JSON request per line on stdin, ``{"config": ..., "env": ..., "stdout":
PATH, "stderr": PATH}``, forks, and answers ``PID <pid>`` then ``EXIT <code>``
on stdout. The child is the process ``sglang_client.py`` would have been: its
environment is exactly ``env``, its output goes to the two files, and it runs
``sglang_client.main`` (``load_plugins()`` included) from scratch. Only the
imports are shared: importing SGLang and torch took 10-20 s of each case on the
2-core machine, every time the same.

Nothing here calls ``load_plugins()`` or touches SGLang's hook registry, so each
child starts from SGLang's state as imported.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def preload() -> None:
    """The imports every case makes, in the order ``sglang_client.main`` makes them."""
    sys.path[:0] = [str(REPO), str(HERE)]
    from testbed.sglang_pieces import prepare_cpu_sglang_env

    prepare_cpu_sglang_env()
    import torch  # noqa: F401
    import sglang.srt.configs.load_config  # noqa: F401
    import sglang.srt.model_loader.loader  # noqa: F401
    import sglang.srt.model_loader.remote_instance_weight_loader_utils  # noqa: F401
    import sglang.srt.plugins  # noqa: F401
    import sglang.srt.plugins.hook_registry  # noqa: F401
    import sglang.srt.runtime_context  # noqa: F401
    import sglang.srt.server_args  # noqa: F401
    from mooncake.engine import TransferEngine  # noqa: F401

    import sglang_client  # noqa: F401


def run_case(request: dict) -> None:
    """In the forked child: become the case's process, run it, never return."""
    try:
        os.setpgid(0, 0)  # its own group: a hung case is killed whole, the zygote spared
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(REPO)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import sglang_client

        try:
            sglang_client.run_and_exit(request["config"])
        except KeyboardInterrupt:
            # What Python does with an uncaught KeyboardInterrupt: end the process by SIGINT.
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(70)  # only if the case itself could not run: the test reports the missing RESULT


def main() -> int:
    preload()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_case(request)
        sys.stdout.write(f"PID {pid}\n")
        sys.stdout.flush()
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(f"EXIT {os.waitstatus_to_exitcode(status)}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    # A Ctrl-C reaches this process with pytest's; the case running then (its own group) is killed by the
    # tests' teardown. Otherwise stdin's end (pytest gone) ends it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
