"""One small transport protocol around Mooncake's TransferEngine.

``MooncakeTransport`` is the real one (protocol ``tcp`` on machines without an
RDMA NIC, ``rdma`` in production: same code path). ``InMemoryTransport`` is the
fake for unit tests: it copies between regions registered in this process.

    >>> t = MooncakeTransport(protocol="tcp")
    >>> t.register(buf.data_ptr(), nbytes)
    >>> handle = t.submit_read(seed_session, [dst], [src], [n])
    >>> t.poll(handle)
    <ReadStatus.DONE: 0>
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence


class TransportError(RuntimeError):
    """The transport could not be set up; the message says how to fix it."""


class ReadFailed(RuntimeError):
    """A read finished with an error (peer gone, bad address, refused)."""


class ReadTimeout(ReadFailed):
    """A read did not finish in time."""


class ReadStatus(enum.IntEnum):
    # Values are TransferEngine's batch status codes, measured on 0.3.13.
    DONE = 0
    PENDING = 1
    FAILED = -1


class Transport(Protocol):
    session_id: str

    def register(self, ptr: int, length: int) -> None: ...
    def unregister(self, ptr: int) -> None: ...
    def submit_read(self, session_id: str, dst_ptrs: Sequence[int], src_ptrs: Sequence[int],
                    lengths: Sequence[int]) -> int: ...
    def poll(self, handle: int) -> ReadStatus: ...
    def read_sync(self, session_id: str, dst_ptrs: Sequence[int], src_ptrs: Sequence[int],
                  lengths: Sequence[int]) -> int: ...


class MooncakeTransport:
    """TransferEngine initialised with P2PHANDSHAKE (no metadata server)."""

    def __init__(self, protocol: str = "tcp", local_ip: str = "127.0.0.1", device: str = "",
                 engine: object | None = None) -> None:
        if protocol not in ("tcp", "rdma"):
            raise TransportError(f"protocol {protocol!r} is not supported; use 'tcp' or 'rdma'")
        if engine is None:
            engine = _new_engine()
            rc = engine.initialize(local_ip, "P2PHANDSHAKE", protocol, device)
            if rc != 0:
                raise TransportError(
                    f"TransferEngine.initialize({local_ip!r}, P2PHANDSHAKE, {protocol!r}, {device!r}) returned {rc}; "
                    "check the IP is this host's and, for rdma, that the device name exists (ibv_devices)"
                )
        self.engine = engine
        self.protocol = protocol
        self.session_id = f"{local_ip}:{engine.get_rpc_port()}"
        # TE's status calls are not documented as thread-safe; we poll from one loop
        # but the lock keeps threads (e.g. the SGLang plugin) honest.
        self._lock = threading.Lock()

    def register(self, ptr: int, length: int) -> None:
        rc = self.engine.register_memory(ptr, length)
        if rc != 0:
            raise TransportError(f"register_memory(ptr={ptr:#x}, length={length}) returned {rc}")

    def unregister(self, ptr: int) -> None:
        self.engine.unregister_memory(ptr)

    def submit_read(self, session_id, dst_ptrs, src_ptrs, lengths) -> int:
        with self._lock:
            handle = self.engine.batch_transfer_async_read(session_id, list(dst_ptrs), list(src_ptrs), list(lengths))
        if not handle:
            raise ReadFailed(f"TransferEngine refused a read from {session_id} ({len(lengths)} segments)")
        return handle

    def poll(self, handle: int) -> ReadStatus:
        with self._lock:
            status = self.engine.get_batch_transfer_status([handle])
        if status == 0:
            return ReadStatus.DONE
        if status == 1:
            return ReadStatus.PENDING
        return ReadStatus.FAILED

    def read_sync(self, session_id, dst_ptrs, src_ptrs, lengths) -> int:
        return self.engine.batch_transfer_sync_read(session_id, list(dst_ptrs), list(src_ptrs), list(lengths))


def _new_engine():
    try:
        from mooncake.engine import TransferEngine
    except ImportError as exc:
        hint = ""
        if "libibverbs" in str(exc) or "librdmacm" in str(exc):
            hint = " (install Debian's libibverbs1 and librdmacm1: apt-get install libibverbs1 librdmacm1)"
        raise TransportError(
            f"cannot import Mooncake's TransferEngine: {exc}{hint}; install "
            "mooncake-transfer-engine-non-cuda (CPU) or mooncake-transfer-engine (CUDA)"
        ) from exc
    return TransferEngine()


async def read(transport: Transport, session_id: str, dst_ptrs: Sequence[int], src_ptrs: Sequence[int],
               lengths: Sequence[int], timeout_s: float, poll_interval: float = 0.002) -> None:
    """Submit one batch read and wait for it without blocking the event loop.

    Raises ReadFailed or ReadTimeout. On timeout the read may still be on the
    wire; callers must not free the destination until it settles, which is why
    we keep polling briefly after the deadline before giving up.
    """
    handle = transport.submit_read(session_id, dst_ptrs, src_ptrs, lengths)
    deadline = time.monotonic() + timeout_s
    interval = poll_interval
    while True:
        status = transport.poll(handle)
        if status == ReadStatus.DONE:
            return
        if status == ReadStatus.FAILED:
            raise ReadFailed(f"read of {sum(lengths)} bytes from {session_id} failed")
        if time.monotonic() > deadline:
            raise ReadTimeout(f"read of {sum(lengths)} bytes from {session_id} did not finish in {timeout_s:.1f} s")
        await asyncio.sleep(interval)
        interval = min(interval * 1.25, 0.005)  # a 16 MiB chunk takes ~12 ms on loopback TCP


@dataclass
class _Fabric:
    """Process-wide registry of fake endpoints: session id -> registered regions."""

    endpoints: dict[str, "InMemoryTransport"] = field(default_factory=dict)
    ports: itertools.count = field(default_factory=lambda: itertools.count(20000))


FABRIC = _Fabric()


class InMemoryTransport:
    """Fake transport for unit tests: same submit/poll semantics, memmove copies.

    ``fail_when(session_id, lengths) -> bool`` injects failures.

        >>> seed, client = InMemoryTransport(), InMemoryTransport()
        >>> seed.register(src_ptr, n); client.register(dst_ptr, n)
        >>> client.read_sync(seed.session_id, [dst_ptr], [src_ptr], [n])
        0
    """

    def __init__(self, fabric: _Fabric = FABRIC,
                 fail_when: Callable[[str, Sequence[int]], bool] | None = None) -> None:
        self.fabric = fabric
        self.session_id = f"inmem:{next(fabric.ports)}"
        self.regions: dict[int, int] = {}
        self.fail_when = fail_when
        self._handles: dict[int, ReadStatus] = {}
        self._next = itertools.count(1)
        fabric.endpoints[self.session_id] = self

    def register(self, ptr: int, length: int) -> None:
        self.regions[ptr] = length

    def unregister(self, ptr: int) -> None:
        self.regions.pop(ptr, None)

    def close(self) -> None:
        self.fabric.endpoints.pop(self.session_id, None)

    def _covers(self, ptr: int, length: int) -> bool:
        return any(base <= ptr and ptr + length <= base + size for base, size in self.regions.items())

    def _copy(self, session_id, dst_ptrs, src_ptrs, lengths) -> ReadStatus:
        peer = self.fabric.endpoints.get(session_id)
        if peer is None or (self.fail_when and self.fail_when(session_id, lengths)):
            return ReadStatus.FAILED
        for dst, src, n in zip(dst_ptrs, src_ptrs, lengths):
            if not (peer._covers(src, n) and self._covers(dst, n)):
                return ReadStatus.FAILED
        for dst, src, n in zip(dst_ptrs, src_ptrs, lengths):
            ctypes.memmove(dst, src, n)
        return ReadStatus.DONE

    def submit_read(self, session_id, dst_ptrs, src_ptrs, lengths) -> int:
        handle = next(self._next)
        self._handles[handle] = self._copy(session_id, dst_ptrs, src_ptrs, lengths)
        return handle

    def poll(self, handle: int) -> ReadStatus:
        return self._handles.get(handle, ReadStatus.FAILED)

    def read_sync(self, session_id, dst_ptrs, src_ptrs, lengths) -> int:
        return 0 if self._copy(session_id, dst_ptrs, src_ptrs, lengths) == ReadStatus.DONE else -1
