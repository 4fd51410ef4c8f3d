"""A stream follows a parent in another process over a real TransferEngine (TCP on loopback).

The parent process registers zeroed weights and its landed map, then lands its chunks in
a shuffled order when told to: each chunk's bytes first, its map byte after. The child
(this process) reads the parent's map one-sided and then the chunks it shows: a chunk
read before its bytes were in place would come back as zeros.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mooncake.engine")

from rfork_agent.landed import FollowOptions, LandedMap, ParentLost, follow  # noqa: E402
from rfork_agent.transport import MooncakeTransport  # noqa: E402
from rfork_api.landed import LandedMapRef, Stream  # noqa: E402

pytestmark = [pytest.mark.cpu_only, pytest.mark.timeout(90)]

CHUNK = 256 << 10
CHUNKS = 48

PARENT_SCRIPT = textwrap.dedent("""
    import json, random, sys, time, torch
    from rfork_agent.landed import LandedMap
    from rfork_agent.transport import MooncakeTransport
    chunk, chunks, land_first = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    weights = torch.zeros(chunk * chunks, dtype=torch.uint8)
    full = (torch.arange(chunk * chunks, dtype=torch.int64) * 7 % 251).to(torch.uint8)
    t = MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")
    t.register(weights.data_ptr(), weights.numel())
    landed = LandedMap(t, chunks)
    print(json.dumps({"session_id": t.session_id, "weights": weights.data_ptr(), "map": landed.ptr}), flush=True)
    order = list(range(chunks))
    random.Random(7).shuffle(order)
    sys.stdin.readline()                      # "go"
    for i, c in enumerate(order[:land_first]):
        weights[c * chunk:(c + 1) * chunk] = full[c * chunk:(c + 1) * chunk]   # the bytes first ...
        landed.mark([c])                                                          # ... then the map
        time.sleep(0.004)
    print("landed", flush=True)
    sys.stdin.read()                          # live until the test closes stdin or kills us
""")


def expected(c: int):
    return (torch.arange(c * CHUNK, (c + 1) * CHUNK, dtype=torch.int64) * 7 % 251).to(torch.uint8)


@contextlib.contextmanager
def parent_process(directory, land_first: int = CHUNKS):
    script = directory / "parent.py"
    script.write_text(PARENT_SCRIPT)
    process = subprocess.Popen([sys.executable, str(script), str(CHUNK), str(CHUNKS), str(land_first)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert line, "the parent script exited before printing its session"
        info = json.loads(line)
        info["process"] = process
        yield info
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def child():
    return MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")


def follow_parent(child: MooncakeTransport, parent: dict, first: int, end: int, options: FollowOptions,
                  on_started=None, landed_at_end: list | None = None):
    weights = torch.zeros(CHUNK * CHUNKS, dtype=torch.uint8)
    child.register(weights.data_ptr(), weights.numel())
    base = weights.data_ptr()

    def reads_for(chunk_ids):
        return ([base + c * CHUNK for c in chunk_ids], [parent["weights"] + c * CHUNK for c in chunk_ids],
                [CHUNK] * len(chunk_ids))

    stream = Stream(LandedMapRef(parent["session_id"], parent["map"], CHUNKS), first, end)
    mine = LandedMap(child, CHUNKS)

    async def run():
        task = asyncio.create_task(follow(child, stream, reads_for, mine, options))
        if on_started is not None:
            on_started(mine)
        return await task

    try:
        return asyncio.run(run()), weights, mine.snapshot()
    finally:
        if landed_at_end is not None:
            landed_at_end.append(mine.snapshot())
        mine.close()
        child.unregister(base)


def test_a_stream_follows_a_parent_in_another_process_byte_exact(child, tmp_path) -> None:
    with parent_process(tmp_path) as parent:
        go = lambda _: (parent["process"].stdin.write("go\n"), parent["process"].stdin.flush())  # noqa: E731
        options = FollowOptions(read_timeout_seconds=20, stall_seconds=30)
        count, weights, landed = follow_parent(child, parent, 8, 40, options, on_started=go)
    assert count == 32
    for c in range(CHUNKS):
        got = weights[c * CHUNK:(c + 1) * CHUNK]
        if 8 <= c < 40:
            assert torch.equal(got, expected(c)), f"chunk {c} differs from the parent's"
            assert landed[c] == 1
        else:
            assert not got.any() and landed[c] == 0


def test_a_killed_parent_is_reported_lost_not_waited_for(child, tmp_path) -> None:
    with parent_process(tmp_path, land_first=CHUNKS // 2) as parent:
        process = parent["process"]

        def kill_once_half_read(mine: LandedMap):
            # Once the child has read the half the parent landed, it only polls the map for the rest.
            deadline = time.monotonic() + 60
            while sum(mine.snapshot()) < CHUNKS // 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)

        def go_then_kill(mine: LandedMap):
            process.stdin.write("go\n")
            process.stdin.flush()
            threading.Thread(target=kill_once_half_read, args=(mine,), daemon=True).start()

        started = time.monotonic()
        landed: list[bytes] = []
        with pytest.raises(ParentLost, match=f"from parent {parent['session_id']}: reading") as lost:
            follow_parent(child, parent, 0, CHUNKS, FollowOptions(read_timeout_seconds=10, stall_seconds=60),
                          on_started=go_then_kill, landed_at_end=landed)
    assert time.monotonic() - started < 30, f"a dead parent must end the stream, not hang it ({lost.value})"
    assert sum(landed[0]) == CHUNKS // 2, "the half the parent landed before it died was read and marked"
