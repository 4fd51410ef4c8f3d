"""One more deciding process of ``rfork scheduler --front-ends N --deciders K`` (scheduler/partition.py).

The scheduler's own process is decider 0; it starts deciders 1..K-1 as this module, each with the
scheduler's configuration (in the environment, never on the command line: it holds the token) and
one control socket. Over the control socket the scheduler hands it one end of a socketpair per
front end (``SCM_RIGHTS``); the decider answers the requests each front end routes to it on its own
app (scheduler/front_ends.py ``serve_link``), as decider 0 does on its. Its app runs its lifespan
(the reaper, the intake pool) like any scheduler's.

It exits when the control socket closes (the scheduler stopped or died: a decider never outlives
its scheduler) or on SIGTERM/SIGINT. Started by ``scheduler.front_ends``, not by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import pickle
import signal
import socket
import sys

from rfork_api.logs import setup_logging

log = logging.getLogger("rfork.scheduler.decider")

CONFIG_ENV = "RFORK_DECIDER_CONFIG"
"""The decider's ``SchedulerConfig``, pickled and base64-encoded (the environment: argv is public)."""
LINK_MESSAGE = b"L"
"""A control message: its one file descriptor is this decider's end of a new front end's link."""


def encode_config(config) -> str:
    return base64.b64encode(pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)).decode()


def decode_config(text: str):
    from scheduler.service import SchedulerConfig

    config = pickle.loads(base64.b64decode(text))
    if not isinstance(config, SchedulerConfig):
        raise TypeError(f"{CONFIG_ENV} held a {type(config).__name__}, not a SchedulerConfig")
    return config


def hand_link(control: socket.socket, link: socket.socket) -> None:
    """Give a decider (the other end of ``control``) its end of a front end's link."""
    socket.send_fds(control, [LINK_MESSAGE], [link.fileno()])


async def serve(app, control: socket.socket) -> None:
    """Answer the front ends' requests on ``app`` until the control socket closes or a signal comes."""
    from scheduler.front_ends import serve_link

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    links: set[asyncio.Task] = set()
    control.setblocking(False)

    def on_control() -> None:
        try:
            data, fds, _, _ = socket.recv_fds(control, 16, 8)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            log.info("the scheduler closed its control socket; stopping")
            stop.set()
            loop.remove_reader(control.fileno())
            return
        for fd in fds:
            task = asyncio.create_task(serve_link(app, socket.socket(fileno=fd)))
            links.add(task)
            task.add_done_callback(links.discard)

    async with app.router.lifespan_context(app):
        loop.add_reader(control.fileno(), on_control)
        try:
            await stop.wait()
        finally:
            loop.remove_reader(control.fileno())
            for task in list(links):
                task.cancel()
            await asyncio.gather(*links, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scheduler.decider",
                                description="one more deciding process of `rfork scheduler --deciders K`")
    p.add_argument("--control-fd", type=int, required=True, help="this decider's control socket (inherited)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--verbose", type=int, default=0)
    args = p.parse_args(argv)
    setup_logging(args.log_level, args.verbose)
    config = decode_config(os.environ.pop(CONFIG_ENV))
    control = socket.socket(fileno=args.control_fd)

    from scheduler.service import create_app, tune_gc

    app = create_app(config)
    tune_gc()
    log.info("decider %d of %d: deciding for ranks r with r %% %d == %d", config.decider_index, config.deciders,
             config.deciders, config.decider_index)
    try:
        asyncio.run(serve(app, control))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
