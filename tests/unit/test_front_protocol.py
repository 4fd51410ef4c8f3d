"""The front ends' frames (scheduler/front_protocol.py): round trips, and one send per event-loop pass."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from scheduler.front_protocol import (FRAME_HEADER, ForwardedRequest, ForwardedResponse, FrameWriter, decode_payload,
                                      encode_frame, read_message)

REQUEST = ForwardedRequest(3, "POST", "/v1/jobs/j/work", b"/v1/jobs/j/work", b"", [(b"host", b"x")],
                           ("127.0.0.1", 5), "1.1", "http", b'{"max_assignments": 1}')


class RecordingWriter:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _frames(data: bytes) -> list:
    async def read_all():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        found = []
        while (message := await read_message(reader)) is not None:
            found.append(message)
        return found

    return asyncio.run(read_all())


def test_messages_round_trip_through_frames():
    reply = ForwardedResponse(3, 200, [(b"content-type", b"application/json")], b"{}")
    assert _frames(encode_frame(REQUEST) + encode_frame(reply)) == [REQUEST, reply]
    assert REQUEST.scope()["path"] == "/v1/jobs/j/work" and REQUEST.scope()["headers"] == [(b"host", b"x")]


def test_a_truncated_stream_ends_like_a_closed_one():
    frame = encode_frame(REQUEST)
    assert _frames(frame[:-1]) == []
    assert _frames(frame[:FRAME_HEADER.size - 1]) == []


def test_a_frame_of_anything_else_is_refused():
    with pytest.raises(TypeError, match="not a front-end message"):
        decode_payload(pickle.dumps({"request_id": 1}))


def test_messages_of_one_loop_pass_go_out_in_one_write():
    async def scenario():
        sink = RecordingWriter()
        writer = FrameWriter(sink)
        for request_id in range(5):
            writer.send(REQUEST._replace(request_id=request_id))
        assert sink.writes == []  # nothing until the pass ends
        await asyncio.sleep(0)
        writer.send(REQUEST._replace(request_id=9))
        await asyncio.sleep(0)
        sink.closed = True
        writer.send(REQUEST)  # the other end closed: dropped, not raised
        await asyncio.sleep(0)
        return sink.writes

    writes = asyncio.run(scenario())
    assert len(writes) == 2
    assert [m.request_id for m in _frames(writes[0])] == [0, 1, 2, 3, 4]
    assert [m.request_id for m in _frames(writes[1])] == [9]
