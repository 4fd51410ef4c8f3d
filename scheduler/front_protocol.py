"""What the scheduler's HTTP front ends and its deciding process send each other (``--front-ends``).

With ``rfork scheduler --front-ends N`` the process that holds the scheduler's
state (seeds, jobs, streams: the *deciding* process) serves no HTTP itself. N
front-end processes accept on its listening socket, parse HTTP, check the token
and the body size, and pass each request over one stream socket per front end
(an anonymous socketpair made at spawn) as a :class:`ForwardedRequest`; the
deciding process answers each with a :class:`ForwardedResponse`. Replies come
back in any order: a long-polled ``/work`` answers after requests that came
later. (Bodies cross as the client sent them: checking a small JSON body again
costs less than unpickling a pydantic model.)

Frames: an 8-byte big-endian length, then a pickle of one message (named
tuples: a frozen dataclass unpickles several times slower). Pickle is
safe here: both ends are this package in one install, and only a process the
scheduler spawned holds the other end of the socket.

    >>> frame = encode_frame(ForwardedResponse(7, 204, [], b""))
    >>> len(frame) > FRAME_HEADER.size, decode_payload(frame[FRAME_HEADER.size:]).status
    (True, 204)
"""

from __future__ import annotations

import asyncio
import pickle
import re
import struct
from typing import NamedTuple


FRAME_HEADER = struct.Struct(">Q")

WORK_PATH = re.compile(r"/v1/jobs/([^/]+)/work")
"""The hot route the deciding process serves without its app's routing (Starlette's ``{job_id}``)."""

REPLICA_SCOPE_KEY = "rfork.replica"
"""Set in the ASGI scope of a copy of a request sent to every decider (``--deciders``), for each
decider but 0: the copies' latency is not observed again."""


class ForwardedRequest(NamedTuple):
    """An HTTP request as the front end received it: the deciding process runs its app on it."""

    request_id: int
    method: str
    path: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    client: tuple[str, int] | None
    http_version: str
    scheme: str
    body: bytes
    replica: bool = False
    """A copy of a request every decider answers, to a decider but the first (``--deciders``)."""

    def scope(self) -> dict:
        """The ASGI HTTP scope of this request (as uvicorn built it in the front end)."""
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": self.http_version,
                 "method": self.method, "scheme": self.scheme, "path": self.path, "raw_path": self.raw_path,
                 "query_string": self.query_string, "root_path": "", "headers": self.headers,
                 "client": self.client, "server": None, "state": {}}
        if self.replica:
            scope[REPLICA_SCOPE_KEY] = True
        return scope


class ForwardedResponse(NamedTuple):
    """The deciding process's whole answer to one request."""

    request_id: int
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


Message = ForwardedRequest | ForwardedResponse


def encode_frame(message: Message) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> Message:
    message = pickle.loads(payload)
    if not isinstance(message, (ForwardedRequest, ForwardedResponse)):
        raise TypeError(f"a front-end frame held a {type(message).__name__}, not a front-end message")
    return message


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None once the other end closed the socket."""
    try:
        header = await reader.readexactly(FRAME_HEADER.size)
        (length,) = FRAME_HEADER.unpack(header)
        return decode_payload(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class FrameWriter:
    """Writes messages to a stream, every message of one event-loop pass in one ``send``.

    Under load many requests (or replies) are ready in the same pass; sending them
    together wakes the other process once for all of them instead of once each
    (``python -m bench.front_link``: a request costs the deciding process ~150 us
    of CPU one at a time, 60-90 us with 16 or more in flight). Holding sends back
    for 2 or 5 ms to make bigger batches measured no gain on a 1024-member
    scale-out (docs/benchmarks.md), so a pass is all it waits.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._frames: list[bytes] = []
        self._flush_scheduled = False

    def send(self, message: Message) -> None:
        self._frames.append(encode_frame(message))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        frames, self._frames = self._frames, []
        if frames and not self._writer.is_closing():
            self._writer.write(b"".join(frames))

    def close(self) -> None:
        self._flush()
        self._writer.close()
