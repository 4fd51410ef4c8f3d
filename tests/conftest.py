"""Suite-wide collection order: the slow end-to-end tests first, the longest of them first.

Under pytest-xdist (`make test` runs two workers) a long test that starts last
sets the suite's end while the other worker idles: measured at the first
two-worker runs, the real-Prometheus gate test (about 2 min) started last and
the suite ended 2 min after the other worker ran dry. So the `slow` tests run
first, the real-Prometheus modules (each one fleet under windows of real time,
the suite's longest runs) first among them, and the two thousand quick tests
after them fill the gaps. The sort is stable, so each module's tests keep their
order and its module-scoped fixtures are set up as before.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest

LONGEST_FIRST = ("prometheus",)
"""Test folders whose slow tests run before the other slow ones."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def order(item: pytest.Item) -> tuple[bool, bool]:
        slow = item.get_closest_marker("slow") is not None
        folder = Path(str(item.path)).parent.name
        return not slow, folder not in LONGEST_FIRST

    items.sort(key=order)


@pytest.fixture(autouse=True)
def _root_logging_put_back():
    """Tests that run a CLI's main in-process (the battery's, the benches') set up logging with a
    handler on that test's captured stderr; left in place, every later log line of this worker went
    to a closed file ("--- Logging error --- ValueError: I/O operation on closed file"). Each test
    gets the root logger's handlers and level back as they were, and every logger it had its level:
    a CLI's set-up also sets "rfork" to INFO, and left so, a later test that counts a logger's INFO
    lines saw lines logged before its own capture began (test_scheduler_plans, after
    test_cli_sizes_and_rates, in one process)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {name: logging.getLogger(name).level for name in ["rfork", *logging.root.manager.loggerDict]}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in named.items():
        logging.getLogger(name).setLevel(was)


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_in_pytests_own_directory(tmp_path_factory):
    """What the tests start keeps its logs where a user would look for them: `rfork testbed` in a temp
    directory it names in its summary, the benches where a run failed. Under the suite those are
    pytest's own (rotated, like every tmp_path), not /tmp, where a suite run left ten of them. Set for
    the processes the tests start (TMPDIR) and for this one (tempfile)."""
    scratch = str(tmp_path_factory.mktemp("tmpdir"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", scratch)
        patch.setattr(tempfile, "tempdir", scratch)
        yield
