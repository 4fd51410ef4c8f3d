"""One HTTP front end of the scheduler (``rfork scheduler --front-ends N`` starts N of them).

It accepts on the scheduler's listening socket (inherited), answers what needs
no state itself (a missing or wrong token: 401; a body over the limit: 413, the
same middleware the deciding process uses) and passes every other request to
the deciding process (scheduler/front_protocol.py). HTTP, most of a request's
CPU, so runs in N processes beside the one that decides. With ``--deciders K``
it holds one link to each of the K deciding processes and routes each request
to the decider that owns it, or to all of them and merges their answers
(scheduler/partition.py).

When the deciding process goes away (its end of the socket closes) the front
end answers 503 to what was waiting and exits: a front end never outlives its
scheduler. Started by ``scheduler.front_ends``, not by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import socket
import sys

from rfork_api.auth import load_token
from rfork_api.http import BearerAuth, BodySizeLimit, send_json_error
from rfork_api.logs import setup_logging, uvicorn_options
from scheduler import partition
from scheduler.front_protocol import ForwardedRequest, ForwardedResponse, FrameWriter, read_message

log = logging.getLogger("rfork.scheduler.front_end")


class DecidingProcessGone(ConnectionError):
    """The deciding process closed its end of the front end's socket (it stopped or died)."""


class Link:
    """This front end's one socket to the deciding process: requests out, replies matched by id."""

    def __init__(self, sock: socket.socket, on_closed) -> None:
        self._sock = sock
        self._on_closed = on_closed
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._writer: FrameWriter | None = None
        self._reading: asyncio.Task | None = None
        self.closed = False

    async def open(self) -> None:
        reader, writer = await asyncio.open_connection(sock=self._sock)
        self._writer = FrameWriter(writer)
        self._reading = asyncio.create_task(self._read(reader))

    def next_id(self) -> int:
        return next(self._ids)

    async def call(self, message: ForwardedRequest) -> ForwardedResponse:
        if self.closed or self._writer is None:
            raise DecidingProcessGone()
        answer = asyncio.get_running_loop().create_future()
        self._waiting[message.request_id] = answer
        try:
            self._writer.send(message)
            return await answer
        finally:
            self._waiting.pop(message.request_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (message := await read_message(reader)) is not None:
                answer = self._waiting.get(message.request_id)
                if answer is not None and not answer.done():
                    answer.set_result(message)
        finally:
            self.closed = True
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(DecidingProcessGone())
            self._on_closed()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None:
            self._reading.cancel()


class Forwarder:
    """The front end's ASGI app, inside the same auth and body-size middleware as the deciding process's."""

    def __init__(self, links: list[Link]) -> None:
        self.links = links

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        client = scope.get("client")
        request = ForwardedRequest(
            request_id=0, method=scope["method"], path=scope["path"],
            raw_path=scope.get("raw_path") or scope["path"].encode(), query_string=scope.get("query_string", b""),
            headers=list(scope["headers"]), client=tuple(client) if client else None,
            http_version=scope.get("http_version", "1.1"), scheme=scope.get("scheme", "http"), body=bytes(body))
        try:
            reply = await self._answer(request)
        except DecidingProcessGone:
            await send_json_error(send, 503, "scheduler_stopping",
                                  "the scheduler's deciding process stopped; retry against the restarted scheduler",
                                  headers=[(b"connection", b"close"), (b"retry-after", b"1")])
            return
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _answer(self, request: ForwardedRequest) -> ForwardedResponse:
        if len(self.links) == 1:  # one decider: nothing to route (the hot path skips partition.route)
            return await self._call(0, request)
        where = partition.route(request.method, request.path, request.body, len(self.links))
        if where.merge is None:
            return await self._call(where.deciders[0], request)
        first = where.deciders[0]
        replies = await asyncio.gather(*(self._call(k, request, replica=k != first) for k in where.deciders))
        return merged_reply(where.merge, replies)

    async def _call(self, decider: int, request: ForwardedRequest, replica: bool = False) -> ForwardedResponse:
        link = self.links[decider]
        return await link.call(request._replace(request_id=link.next_id(), replica=replica))

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                for link in self.links:
                    await link.open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for link in self.links:
                    await link.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def merged_reply(merge: str, replies: list[ForwardedResponse]) -> ForwardedResponse:
    """One answer from every decider's (decider 0's first). The first that is not a success is the
    answer: a seed's registration every decider refused is refused, and one a decider failed is not
    half done silently (the agent registers again)."""
    first = replies[0]
    failed = next((r for r in replies if not 200 <= r.status < 300), None)
    if failed is not None:
        return failed
    if merge == partition.MERGE_ONE:
        return first
    if merge == partition.MERGE_METRICS:
        from prometheus_client import CollectorRegistry, generate_latest

        families = partition.merge_metrics([r.body.decode() for r in replies])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        body = generate_latest(registry)
    elif merge == partition.MERGE_FLEET:
        body = partition.merge_fleet([r.body for r in replies])
    else:
        body = partition.merge_health([r.body for r in replies])
    headers = [(k, v) for k, v in first.headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    return ForwardedResponse(first.request_id, first.status, headers, body)


class _Families:
    """A collector of already-built families (the deciders' merged metrics)."""

    def __init__(self, families) -> None:
        self._families = families

    def collect(self):
        return self._families


def build_app(links: list[Link], token: str | None, max_body_bytes: int):
    app = BodySizeLimit(Forwarder(links), max_bytes=max_body_bytes)
    return BearerAuth(app, token=token) if token else app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m scheduler.front_end",
                                description="one HTTP front end of `rfork scheduler --front-ends N`")
    p.add_argument("--listen-fd", type=int, required=True, help="the scheduler's listening socket (inherited)")
    p.add_argument("--link-fds", required=True,
                   help="this front end's sockets to the deciding processes, comma-separated, decider 0 first")
    p.add_argument("--index", type=int, default=0, help="which front end this is, for the logs")
    p.add_argument("--max-body-bytes", type=int, required=True)
    p.add_argument("--log-level", default="info")
    p.add_argument("--verbose", type=int, default=0)
    args = p.parse_args(argv)
    setup_logging(args.log_level, args.verbose)
    token = load_token()  # the scheduler passes its token in the environment, never on the command line
    listening = socket.socket(fileno=args.listen_fd)
    server: uvicorn.Server | None = None

    def deciding_process_gone() -> None:
        if server is not None and not server.should_exit:
            log.info("front end %d: a deciding process closed its socket; stopping", args.index)
            server.should_exit = True

    links = [Link(socket.socket(fileno=int(fd)), deciding_process_gone) for fd in args.link_fds.split(",")]
    config = uvicorn.Config(build_app(links, token, args.max_body_bytes), lifespan="on",
                            timeout_graceful_shutdown=2, **uvicorn_options())
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[listening])
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
