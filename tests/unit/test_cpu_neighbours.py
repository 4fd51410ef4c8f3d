"""bench/cpu_neighbours.py: the CPU-list parsing, the topology this machine reports, the CLI's bad input."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys

import pytest

from bench import cpu_neighbours
from bench.cpu_neighbours import parse_cpu_list, thread_siblings


def test_doctests():
    assert doctest.testmod(cpu_neighbours).failed == 0


@pytest.mark.parametrize("text, cpus", [
    ("0", {0}),
    ("0,8", {0, 8}),
    ("0-3", {0, 1, 2, 3}),
    ("0-1,16-17\n", {0, 1, 16, 17}),
])
def test_parse_cpu_list(text, cpus):
    assert parse_cpu_list(text) == cpus


def test_every_cpu_is_its_own_sibling_and_siblings_are_symmetric():
    cpus = sorted(os.sched_getaffinity(0))
    siblings = thread_siblings(cpus)
    assert set(siblings) == set(cpus)
    for cpu, group in siblings.items():
        assert cpu in group
        for other in group & set(cpus):
            assert cpu in siblings[other]


@pytest.mark.parametrize("args, message", [
    (["--victim", "100000"], "--victim 100000 is not a CPU this process may use"),
    (["--seconds", "0"], "--seconds must be positive, got 0.0"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    done = subprocess.run([sys.executable, "-m", "bench.cpu_neighbours", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
