"""A stream follows a parent in another process over a real TransferEngine (TCP on loopback).

The parent process registers zeroed weights and its landed map, then lands its chunks in
a shuffled order when told to: each chunk's bytes first, its map byte after. The child
(this process) reads the parent's map one-sided and then the chunks it shows: a chunk
read before its bytes were in place would come back as zeros.
"""

from __future__ import annotations

import asyncio
import json
import signal
import textwrap
import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mooncake.engine")

from tests.integration.script_process import script_process  # noqa: E402
from rfork_agent.landed import FollowOptions, LandedMap, ParentLost, follow  # noqa: E402
from rfork_agent.transport import MooncakeTransport  # noqa: E402
from rfork_api.chunking import plan_chunks  # noqa: E402
from rfork_api.landed import LandedMapRef, Stream  # noqa: E402
from rfork_api.manifest import parse_manifest  # noqa: E402

pytestmark = [pytest.mark.cpu_only, pytest.mark.timeout(90)]

CHUNK = 256 << 10
TENSORS = [5 << 20, (3 << 20) + 7, 100, 4 << 20, 12_345]  # split, coalesced, odd sizes
TOTAL = sum(TENSORS)

PARENT_SCRIPT = textwrap.dedent("""
    import json, random, sys, time, torch
    from rfork_agent.landed import LandedMap
    from rfork_agent.transport import MooncakeTransport
    from rfork_api.chunking import plan_chunks
    from rfork_api.manifest import parse_manifest
    chunk, sizes, land_first = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
    weights = torch.zeros(sum(sizes), dtype=torch.uint8)
    full = (torch.arange(sum(sizes), dtype=torch.int64) * 7 % 251).to(torch.uint8)
    base, starts = weights.data_ptr(), [sum(sizes[:i]) for i in range(len(sizes))]
    manifest = parse_manifest({f"t{i}": [base + starts[i], n, 1] for i, n in enumerate(sizes)})
    plan = plan_chunks(manifest, chunk)
    t = MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")
    t.register(base, weights.numel())
    landed = LandedMap(t, plan, manifest)
    print(json.dumps({"session_id": t.session_id, "map": landed.ptr, "chunks": len(plan)}), flush=True)
    order = list(range(len(plan)))
    random.Random(7).shuffle(order)
    sys.stdin.readline()                      # "go"
    for c in order[:land_first if land_first >= 0 else len(plan)]:
        for name, offset, length in plan[c].segments:          # the bytes first ...
            at = starts[int(name[1:])] + offset
            weights[at:at + length] = full[at:at + length]
        landed.mark([c])                                          # ... then the map
        time.sleep(0.004)
    print("landed", flush=True)
    sys.stdin.read()                          # live until the test closes stdin or kills us
""")


def expected_all():
    return (torch.arange(TOTAL, dtype=torch.int64) * 7 % 251).to(torch.uint8)


def parent_process(directory, land_first: int = -1):
    return script_process(directory, "parent.py", PARENT_SCRIPT, str(CHUNK), json.dumps(TENSORS), str(land_first))


@pytest.fixture(scope="module")
def child():
    return MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")


def follow_parent(child: MooncakeTransport, parent: dict, first: int, end: int | None, options: FollowOptions,
                  on_started=None, landed_at_end: list | None = None):
    """Follow chunks [first, end) of the parent into weights of our own; returns (FollowResult, weights, plan, map bytes)."""
    weights = torch.zeros(TOTAL, dtype=torch.uint8)
    base = weights.data_ptr()
    child.register(base, TOTAL)
    starts = [sum(TENSORS[:i]) for i in range(len(TENSORS))]
    manifest = parse_manifest({f"t{i}": [base + starts[i], n, 1] for i, n in enumerate(TENSORS)})
    plan = plan_chunks(manifest, CHUNK)
    assert len(plan) == parent["chunks"]
    stream = Stream(LandedMapRef(parent["session_id"], parent["map"], len(plan), len(TENSORS)),
                    first, len(plan) if end is None else end)
    mine = LandedMap(child, plan, manifest)

    async def run():
        task = asyncio.create_task(follow(child, stream, plan, manifest, mine, options))
        if on_started is not None:
            on_started(mine)
        return await task

    try:
        return asyncio.run(run()), weights, plan, mine.snapshot()
    finally:
        if landed_at_end is not None:
            landed_at_end.append(mine.snapshot())
        mine.close()
        child.unregister(base)


def test_a_stream_follows_a_parent_in_another_process_byte_exact(child, tmp_path) -> None:
    with parent_process(tmp_path) as parent:
        go = lambda _: (parent["process"].stdin.write("go\n"), parent["process"].stdin.flush())  # noqa: E731
        options = FollowOptions(read_timeout_seconds=20, stall_seconds=30)
        result, weights, plan, landed = follow_parent(child, parent, 8, 40, options, on_started=go)
    assert result.chunks_read == 32 and result.bytes_read == sum(plan[c].nbytes for c in range(8, 40))
    full = expected_all()
    starts = [sum(TENSORS[:i]) for i in range(len(TENSORS))]
    for c, chunk in enumerate(plan):
        inside = 8 <= c < 40
        assert landed[c] == (1 if inside else 0)
        for name, offset, length in chunk.segments:
            at = starts[int(name[1:])] + offset
            got = weights[at:at + length]
            assert torch.equal(got, full[at:at + length]) if inside else not got.any(), f"chunk {c} of {name}"


def test_a_killed_parent_is_reported_lost_not_waited_for(child, tmp_path) -> None:
    half = 20
    with parent_process(tmp_path, land_first=half) as parent:
        process = parent["process"]

        def kill_once_half_read(mine: LandedMap):
            # Once the child has read the half the parent landed, it only polls the map for the rest.
            deadline = time.monotonic() + 60
            while sum(mine.snapshot()) < half and time.monotonic() < deadline:
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)

        def go_then_kill(mine: LandedMap):
            process.stdin.write("go\n")
            process.stdin.flush()
            threading.Thread(target=kill_once_half_read, args=(mine,), daemon=True).start()

        started = time.monotonic()
        landed: list[bytes] = []
        with pytest.raises(ParentLost, match=f"from parent {parent['session_id']}: reading") as lost:
            follow_parent(child, parent, 0, None, FollowOptions(read_timeout_seconds=10, stall_seconds=60),
                          on_started=go_then_kill, landed_at_end=landed)
    assert time.monotonic() - started < 30, f"a dead parent must end the stream, not hang it ({lost.value})"
    assert sum(landed[0]) == half, "what the parent landed before it died was read and marked"
