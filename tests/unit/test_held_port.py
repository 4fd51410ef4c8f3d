"""testbed.fleet.HeldPort: a port handed to a child process stays ours until the child listens on it."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from testbed.fleet import HeldPort


def test_no_other_bind_takes_a_held_port():
    with HeldPort() as held:
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", held.port))


def test_a_child_listening_with_reuseaddr_takes_it_and_is_reachable():
    # What the testbed's scheduler and agents do: uvicorn (and socket.create_server) set SO_REUSEADDR.
    with HeldPort() as held:
        child = subprocess.Popen(
            [sys.executable, "-c",
             "import socket, sys; s = socket.create_server(('127.0.0.1', int(sys.argv[1])));"
             "print('up', flush=True); c, _ = s.accept(); c.sendall(b'hi'); c.close()", str(held.port)],
            stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "up"
            with socket.create_connection(("127.0.0.1", held.port), timeout=10) as conn:
                assert conn.recv(2) == b"hi"
        finally:
            child.wait(timeout=10)
    assert child.returncode == 0
