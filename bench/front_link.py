"""What one request costs the scheduler's deciding process behind front ends, by requests in flight.

    python -m bench.front_link [--in-flight 1,16,64] [--requests 5000] [--path /health]

A stand-in front end (another process) sends ``--requests`` forwarded requests
over the same socket and frames as ``rfork scheduler --front-ends`` uses
(scheduler/front_protocol.py), keeping ``K`` in flight, to a scheduler app
served by ``scheduler.front_ends.serve_link`` in this process; prints this
process's CPU per request. With one in flight every request is one wake-up of
the deciding process; with many, one wake-up serves several. The default
request is ``POST /v1/jobs/<unknown>/work`` (the /work path through the body
check and the error handler, no planner work).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import sys
import time

from scheduler.front_protocol import ForwardedRequest, FrameWriter, read_message

WORK_BODY = b'{"max_assignments": 0}'


def _request(request_id: int, path: str) -> ForwardedRequest:
    method, body = ("POST", WORK_BODY) if path.endswith("/work") else ("GET", b"")
    headers = [(b"host", b"scheduler"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    return ForwardedRequest(request_id, method, path, path.encode(), b"", headers, ("127.0.0.1", 1), "1.1", "http",
                            body)


def _stand_in_front_end(fd: int, requests: int, in_flight: int, path: str) -> None:
    async def main() -> None:
        reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
        frames = FrameWriter(writer)
        slots = asyncio.Semaphore(in_flight)
        answered = asyncio.Event()
        left = requests

        async def read_replies() -> None:
            nonlocal left
            while await read_message(reader) is not None:
                slots.release()
                left -= 1
                if left == 0:
                    answered.set()

        reading = asyncio.create_task(read_replies())
        for request_id in range(requests):
            await slots.acquire()
            frames.send(_request(request_id, path))
        await answered.wait()
        frames.close()
        reading.cancel()

    asyncio.run(main())


def measure(in_flight: int, requests: int, path: str) -> dict:
    """The deciding process's CPU (this process) per request with ``in_flight`` requests outstanding."""
    from prometheus_client import CollectorRegistry

    from scheduler.front_ends import serve_link
    from scheduler.service import SchedulerConfig, create_app

    app = create_app(SchedulerConfig(), registry=CollectorRegistry(), run_reaper=False)
    ours, theirs = socket.socketpair()
    sender = multiprocessing.get_context("fork").Process(
        target=_stand_in_front_end, args=(theirs.fileno(), requests, in_flight, path), daemon=True)
    sender.start()
    theirs.close()

    async def serve() -> tuple[float, float]:
        async with app.router.lifespan_context(app):
            cpu, wall = time.process_time(), time.perf_counter()
            await serve_link(app, ours)
            return time.process_time() - cpu, time.perf_counter() - wall

    cpu, wall = asyncio.run(serve())
    sender.join(timeout=10)
    return {"in_flight": in_flight, "requests": requests, "path": path,
            "cpu_us_per_request": 1e6 * cpu / requests, "wall_us_per_request": 1e6 * wall / requests}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.front_link", description=__doc__.split("\n\n")[0])
    p.add_argument("--in-flight", default="1,16,64", help="requests kept in flight, comma-separated")
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--path", default="/v1/jobs/no-such-job/work", help="/health, or a /work path")
    args = p.parse_args(argv)
    try:
        levels = [int(x) for x in args.in_flight.split(",")]
    except ValueError:
        p.exit(2, f"{p.prog}: error: --in-flight must be integers, comma-separated, got {args.in_flight!r}\n")
    if min(levels) < 1 or args.requests < 1:
        p.exit(2, f"{p.prog}: error: --in-flight and --requests must be >= 1\n")
    for level in levels:
        r = measure(level, args.requests, args.path)
        print(f"{r['in_flight']:>4} in flight: {r['cpu_us_per_request']:.0f} us of the deciding process's CPU per "
              f"request ({r['wall_us_per_request']:.0f} us wall), {args.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
