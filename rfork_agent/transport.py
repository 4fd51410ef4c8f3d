"""One small transport protocol around Mooncake's TransferEngine.

``MooncakeTransport`` is the real one: protocol ``tcp`` on machines without an
RDMA NIC, ``rdma`` in production — the same code path. ``InMemoryTransport``
is the fake for unit tests: it copies between regions registered in this
process, through a shared in-process ``InMemoryFabric``.

Reads are one-sided and batched: ``submit_read`` starts a batch and returns a
handle, ``poll`` reports ``ReadStatus``; ``read`` (below) drives the pair from
an asyncio loop with a timeout. TE's ``poll`` waits until its batch settles,
so ``read`` runs submits and polls on the transport's ``threads``: the loop
stays free for other reads, leases and heartbeats while a chunk is on the wire.
A batch carries at most
``max_segments_per_batch`` segments (``MAX_SEGMENTS_PER_BATCH`` for TE);
``read`` and ``read_sync`` split longer reads into several batches, one after
another, so a model with tens of thousands of tensors reads like any other.

    >>> seed, client = MooncakeTransport(protocol="tcp"), MooncakeTransport(protocol="tcp")  # two processes
    >>> seed.register(weights.data_ptr(), nbytes)        # on the seed
    >>> client.register(dst.data_ptr(), nbytes)          # on the client
    >>> await read(client, seed.session_id, [dst.data_ptr()], [weights.data_ptr()], [nbytes], timeout_s=10)
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import ctypes
import enum
import itertools
import math
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable


class TransportError(RuntimeError):
    """The transport could not be set up or used; the message says how to fix it."""


class ReadFailed(RuntimeError):
    """A read finished with an error: peer gone, address not registered, or refused."""


class ReadTimeout(ReadFailed):
    """A read did not finish in time (it may still be on the wire; see ``read``)."""


class BatchTooLarge(ReadFailed):
    """``submit_read`` was given more segments than one batch may carry; nothing was submitted.

    ``read`` and ``read_sync`` never raise it: they split the read into batches.
    """


MAX_SEGMENTS_PER_BATCH = 256
"""Segments (dst, src, length triples) in one TransferEngine batch.

Mooncake's TCP transport (0.3.13) queues at most 1024 transfers per peer, plus
1024 waiting for admission that fail after 1 s; every segment of a batch is
one transfer, and the rest of an oversized batch is failed at once
("TCP lane queue-full" in TE's log). ``python -m bench.te_batch_limit``
measured the largest batch that completes on loopback at 2,055-2,112
segments (64 KiB to 8 B each). After a refused batch its admitted segments
still drain, and reads to that peer fail until they have (0.7 s measured);
a read retried with the same oversized batch never gets through.
256 is 8x under the measured limit and 4x under the per-peer queue, so even
four batches in flight to one peer (threads sharing a transport) are admitted
directly. The batch size made no measurable difference to a 5,000-segment
read on loopback (64 to 1024 per batch): each segment's own round trip dominates.
"""


MAX_BATCHES_PER_PEER = 4
"""Batches a ``MooncakeTransport`` keeps in flight to one peer: four of ``MAX_SEGMENTS_PER_BATCH``
fill TE's TCP per-peer queue (1024 transfers) and no more. A submit beyond them waits on its
submit thread until one settles. Without it, 16 reads of thousands of tiny tensors put 16
batches on one peer at once (a 40,000-tensor fork stalled: tests/integration/test_fork_e2e.py)."""

SUBMIT_THREADS = 16
"""Batches a ``MooncakeTransport`` submits at once, as many as the fork client's default
``ForkOptions.max_in_flight``. A submit returns at once unless the peer's session is new (a
handshake) or gone; a read beyond them waits for a thread unsubmitted, its timeout running."""

WAIT_THREADS = 4
"""At most this many batches a ``MooncakeTransport`` waits on at once (see ``WaitThreads``)."""

STUCK_WAIT_SECONDS = 0.5
"""A wait longer than this is stuck (a stalled peer, or a very large batch): another wait
thread starts, so that the batches behind it are noticed when they land."""


class WaitThreads(Executor):
    """Threads that run waits in submit order, one at a time unless one is stuck.

    TE's wait spins on a core until its batch settles, so a thread per batch in flight costs a
    core each: 16 of them made a 3-seed fork on a 2-core machine 1.5-5x slower. Batches end in
    about the order they were submitted, so one waiter, taking them in that order, notices each
    soon after it lands. A batch on a stalled peer would hold that waiter until TE's transfer
    timeout (30 s) and hide every batch behind it: when every running wait has lasted over
    ``stuck_seconds`` and another is queued, one more thread starts (up to ``max_threads``);
    a waiter that finds another unstuck one ends. Daemon threads, drained at exit.
    """

    def __init__(self, max_threads: int = WAIT_THREADS, stuck_seconds: float = STUCK_WAIT_SECONDS,
                 name: str = "rfork-te-wait") -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, got {max_threads}")
        self.max_threads, self.stuck_seconds, self._name = max_threads, stuck_seconds, name
        self._changed = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._busy_since: dict[int, float | None] = {}  # waiter -> when its current wait began; None: idle
        self._numbers = itertools.count()
        self._watchdog: threading.Thread | None = None
        self._shutdown = False
        self.most_threads = 0
        """The most waiters that ran at once (for tests and benchmarks)."""
        atexit.register(self.shutdown)  # no thread left inside TE while the interpreter tears down

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._changed:
            if self._shutdown:
                raise RuntimeError("cannot wait for a batch after shutdown")
            self._queue.append((future, fn, args, kwargs))
            if not self._busy_since:
                self._start_waiter()
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name=f"{self._name}-watchdog", daemon=True)
                self._watchdog.start()
            self._changed.notify_all()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Run what is queued, then end; with ``wait``, return once every wait has ended."""
        with self._changed:
            self._shutdown = True
            self._changed.notify_all()
            threads = [t for t in threading.enumerate() if t.name.startswith(f"{self._name}-{id(self)}-")]
        if wait:
            for thread in threads:
                thread.join()

    def _start_waiter(self) -> None:
        number = next(self._numbers)
        self._busy_since[number] = None
        threading.Thread(target=self._wait_loop, args=(number,), name=f"{self._name}-{id(self)}-{number}",
                         daemon=True).start()
        self.most_threads = max(self.most_threads, len(self._busy_since))

    def _stuck(self, since: float | None, now: float) -> bool:
        return since is not None and now - since > self.stuck_seconds

    def _wait_loop(self, me: int) -> None:
        while True:
            with self._changed:
                self._busy_since[me] = None
                self._changed.notify_all()
                while True:
                    now = time.monotonic()
                    unstuck_others = [n for n, since in self._busy_since.items()
                                      if n != me and not self._stuck(since, now)]
                    if unstuck_others or (self._shutdown and not self._queue):
                        del self._busy_since[me]  # another waiter takes the queue in order
                        self._changed.notify_all()
                        return
                    if self._queue:
                        break
                    self._changed.wait()
                future, fn, args, kwargs = self._queue.popleft()
                if not future.set_running_or_notify_cancel():
                    continue
                self._busy_since[me] = time.monotonic()
                self._changed.notify_all()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the reader
                future.set_exception(exc)
            else:
                future.set_result(result)

    def _watch(self) -> None:
        """Start another waiter when every running one is stuck and a wait is queued."""
        with self._changed:
            while not self._shutdown:
                now = time.monotonic()
                starts = list(self._busy_since.values())
                if not self._queue or None in starts or len(starts) >= self.max_threads:
                    self._changed.wait()
                    continue
                unstuck_in = min(since + self.stuck_seconds - now for since in starts)
                if unstuck_in > 0:
                    self._changed.wait(unstuck_in + 0.001)
                    continue
                self._start_waiter()


@dataclass(frozen=True)
class ReadThreads:
    """The threads ``read`` uses for a transport whose calls block (TE's).

    Submits go to ``submit``, waits to ``wait`` (a ``WaitThreads`` for TE), kept apart so that
    every read gets on the wire at once while only one thread, as a rule, spins waiting.
    """

    submit: Executor
    wait: Executor


class ReadStatus(enum.IntEnum):
    """State of a submitted batch. Values are TransferEngine's batch status codes (0.3.13)."""

    DONE = 0
    PENDING = 1
    FAILED = -1


@runtime_checkable
class Transport(Protocol):
    """What the fork client and the testbed need from a transport.

    ``session_id`` is what peers pass to read from us ("ip:rpc_port" for TE).
    Memory must be registered on both sides before a read touches it.
    """

    session_id: str
    max_segments_per_batch: int
    """The most segments ``submit_read`` accepts in one batch (``BatchTooLarge`` above it)."""
    threads: ReadThreads | None
    """Where ``read`` runs ``submit_read`` and ``poll`` when they can block (TE's ``poll`` waits
    until its batch settles); None when both return at once and may run on the event loop."""

    def register(self, ptr: int, length: int) -> None: ...

    def unregister(self, ptr: int) -> None: ...

    def submit_read(
        self, session_id: str, dst_ptrs: Sequence[int], src_ptrs: Sequence[int], lengths: Sequence[int]
    ) -> int:
        """Start copying each ``src_ptrs[i]`` of peer ``session_id`` to local ``dst_ptrs[i]``.

        Returns a handle for ``poll``; raises ReadFailed if the read cannot even start,
        BatchTooLarge (nothing submitted) above ``max_segments_per_batch`` segments.
        """
        ...

    def poll(self, handle: int) -> ReadStatus:
        """The batch's state; once it reports DONE or FAILED the handle is spent (TE frees the batch).

        Each handle is polled by one thread at a time.
        """
        ...

    def read_sync(
        self, session_id: str, dst_ptrs: Sequence[int], src_ptrs: Sequence[int], lengths: Sequence[int]
    ) -> int:
        """Blocking read of any number of segments (in batches): 0 on success, -1 on failure (TE's convention)."""
        ...


Batch = tuple[Sequence[int], Sequence[int], Sequence[int]]


def split_batches(dst_ptrs: Sequence[int], src_ptrs: Sequence[int], lengths: Sequence[int],
                  max_segments: int, max_bytes: int = 0) -> list[Batch]:
    """Cut a read into batches of at most ``max_segments`` segments and, when ``max_bytes`` > 0, at most
    ``max_bytes`` bytes, in order. A segment longer than what is left of a batch is cut there: its
    first bytes end that batch and the rest go on in the next, at the matching offsets.

        >>> [len(lengths) for _, _, lengths in split_batches(range(5), range(5), [1] * 5, 2)]
        [2, 2, 1]
        >>> [(list(d), list(s), list(n)) for d, s, n in split_batches([0, 100], [10, 200], [3, 6], 4, max_bytes=4)]
        [([0, 100], [10, 200], [3, 1]), ([101], [201], [4]), ([105], [205], [1])]
    """
    if max_segments < 1:
        raise ValueError(f"max_segments must be at least 1, got {max_segments}")
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be 0 (no bound) or more bytes, got {max_bytes}")
    if not max_bytes:
        return [
            (dst_ptrs[i:i + max_segments], src_ptrs[i:i + max_segments], lengths[i:i + max_segments])
            for i in range(0, len(lengths), max_segments)
        ]
    batches: list[Batch] = []
    dst: list[int] = []
    src: list[int] = []
    sizes: list[int] = []
    room = max_bytes
    for d, s, n in zip(dst_ptrs, src_ptrs, lengths):
        done = 0
        while done < n:
            if len(sizes) == max_segments or room == 0:
                batches.append((dst, src, sizes))
                dst, src, sizes, room = [], [], [], max_bytes
            take = min(n - done, room)
            dst.append(d + done)
            src.append(s + done)
            sizes.append(take)
            done += take
            room -= take
    if sizes:
        batches.append((dst, src, sizes))
    return batches


def _check_size(lengths: Sequence[int], max_segments: int, session_id: str) -> None:
    if len(lengths) > max_segments:
        raise BatchTooLarge(
            f"a read batch to {session_id} may carry at most {max_segments} segments, got {len(lengths)} "
            f"({sum(lengths)} bytes); nothing was submitted. Use transport.read() or read_sync(), which "
            "split a read into batches (TransferEngine refuses oversized batches and then refuses "
            "every read to that peer until the admitted part has drained)"
        )


def _check_batch(dst_ptrs: Sequence[int], src_ptrs: Sequence[int], lengths: Sequence[int]) -> None:
    if not (len(dst_ptrs) == len(src_ptrs) == len(lengths)):
        raise ValueError(
            f"a read batch needs one dst, src and length per segment; got {len(dst_ptrs)} dst, "
            f"{len(src_ptrs)} src, {len(lengths)} lengths"
        )
    if any(n <= 0 for n in lengths):
        raise ValueError(f"segment lengths must be > 0 bytes (zero-byte tensors produce no reads): {list(lengths)[:8]}")


class MooncakeTransport:
    """Mooncake TransferEngine initialised with ``P2PHANDSHAKE`` (no metadata server).

    ``protocol`` is ``tcp`` or ``rdma``; ``device`` is the RDMA NIC list
    ("mlx5_0,mlx5_1") or "" to let TE pick. ``engine`` injects an
    already-initialised engine (e.g. SGLang's own) or a fake for tests.
    ``submit_threads`` and ``wait_threads`` size ``threads``, where ``read``
    submits batches and waits for them (``poll`` blocks; see there).

        >>> t = MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")
        >>> t.session_id
        '127.0.0.1:15933'
    """

    max_segments_per_batch: int = MAX_SEGMENTS_PER_BATCH

    def __init__(
        self,
        protocol: str = "tcp",
        local_ip: str = "127.0.0.1",
        device: str = "",
        engine: object | None = None,
        submit_threads: int = SUBMIT_THREADS,
        wait_threads: int = WAIT_THREADS,
    ) -> None:
        if protocol not in ("tcp", "rdma"):
            raise TransportError(f"protocol {protocol!r} is not supported; use 'tcp' or 'rdma'")
        if engine is None:
            from rfork_api.logs import mooncake_start_quietly

            engine = _new_engine()
            with mooncake_start_quietly():  # its start-up always logs a spurious ERROR (see there)
                rc = engine.initialize(local_ip, "P2PHANDSHAKE", protocol, device)
            if rc != 0:
                hint = (
                    "check that the RDMA device exists (ibv_devices) and the IP is this host's"
                    if protocol == "rdma"
                    else "check that the IP is one of this host's addresses"
                )
                raise TransportError(
                    f"TransferEngine.initialize({local_ip!r}, 'P2PHANDSHAKE', {protocol!r}, {device!r}) "
                    f"returned {rc}; {hint} (run with -v for TransferEngine's own log)"
                )
        self.engine = engine
        self.protocol = protocol
        self.local_ip = local_ip
        self.session_id = f"{local_ip}:{engine.get_rpc_port()}"
        # No lock around the engine: TE's Python binding releases the GIL in its submit, status and
        # sync-read calls and guards the one state they share (its cache of open peer sessions)
        # with a mutex of its own; a status call touches only its own batch. A lock here made
        # every read wait for the one on the wire (tests/integration/test_transport_mooncake.py
        # reads from two seeds at once). Threads start on first use: a seed never reads.
        self.threads = ReadThreads(
            submit=ThreadPoolExecutor(max_workers=submit_threads, thread_name_prefix="rfork-te-submit"),
            wait=WaitThreads(max_threads=wait_threads),
        )
        self._peer_slots: dict[str, threading.BoundedSemaphore] = {}
        self._slot_of: dict[int, threading.BoundedSemaphore] = {}  # unsettled handle -> its peer's slots
        self._slots_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MooncakeTransport(protocol={self.protocol!r}, session_id={self.session_id!r})"

    def register(self, ptr: int, length: int) -> None:
        rc = self.engine.register_memory(ptr, length)
        if rc != 0:
            raise TransportError(
                f"TransferEngine.register_memory(ptr={ptr:#x}, length={length}) returned {rc}; "
                "is the region already registered or overlapping another one?"
            )

    def unregister(self, ptr: int) -> None:
        rc = self.engine.unregister_memory(ptr)
        if rc not in (0, None):
            raise TransportError(f"TransferEngine.unregister_memory(ptr={ptr:#x}) returned {rc}; was it registered?")

    def submit_read(self, session_id, dst_ptrs, src_ptrs, lengths) -> int:
        _check_batch(dst_ptrs, src_ptrs, lengths)
        _check_size(lengths, self.max_segments_per_batch, session_id)
        with self._slots_lock:
            slots = self._peer_slots.setdefault(session_id, threading.BoundedSemaphore(MAX_BATCHES_PER_PEER))
        slots.acquire()  # on a submit thread (see read): a full peer holds back this batch alone
        try:
            handle = self.engine.batch_transfer_async_read(session_id, list(dst_ptrs), list(src_ptrs), list(lengths))
        except BaseException:
            slots.release()
            raise
        # TE returns batch id 0 when it cannot start (unknown/unreachable session).
        if handle:
            self._slot_of[handle] = slots
        else:
            slots.release()
            raise ReadFailed(
                f"TransferEngine could not start a read of {sum(lengths)} bytes from {session_id} "
                f"({len(lengths)} segments): the session is unknown or unreachable"
            )
        return handle

    def poll(self, handle: int) -> ReadStatus:
        # TE (0.3.13, 0.3.14) frees a settled batch inside this call: poll a handle until
        # it settles, never after. Its Python binding also waits in here until the batch
        # has settled, spinning with the GIL released; TE's own transfer timeout
        # (MC_TRANSFER_TIMEOUT, 30 s, plus 1 ns per byte) bounds it. So it returns DONE
        # or FAILED, not PENDING, and ``read`` calls it on a ``threads.wait`` thread.
        status = self.engine.get_batch_transfer_status([handle])
        if status != 1:
            slots = self._slot_of.pop(handle, None)
            if slots is not None:
                slots.release()
        if status == 0:
            return ReadStatus.DONE
        if status == 1:
            return ReadStatus.PENDING
        return ReadStatus.FAILED

    def read_sync(self, session_id, dst_ptrs, src_ptrs, lengths) -> int:
        _check_batch(dst_ptrs, src_ptrs, lengths)
        for dst, src, sizes in split_batches(dst_ptrs, src_ptrs, lengths, self.max_segments_per_batch):
            rc = self.engine.batch_transfer_sync_read(session_id, list(dst), list(src), list(sizes))
            if rc != 0:
                return -1
        return 0


def _new_engine():
    try:
        from mooncake.engine import TransferEngine
    except ImportError as exc:
        text = str(exc)
        hint = ""
        if "libibverbs" in text or "librdmacm" in text or "libnuma" in text:
            hint = (
                "; the engine needs the RDMA user-space libraries even for tcp: "
                "apt-get install libibverbs1 librdmacm1 (and libnuma1)"
            )
        raise TransportError(
            f"cannot import Mooncake's TransferEngine ({text}){hint}. Install "
            "mooncake-transfer-engine-non-cuda (CPU machines) or mooncake-transfer-engine (CUDA)"
        ) from exc
    return TransferEngine()


async def read(
    transport: Transport,
    session_id: str,
    dst_ptrs: Sequence[int],
    src_ptrs: Sequence[int],
    lengths: Sequence[int],
    timeout_s: float,
    poll_interval: float = 0.002,
    max_batch_bytes: int = 0,
    gap_seconds: float = 0.0,
) -> None:
    """Read every segment, in batches of ``transport.max_segments_per_batch``, from an asyncio loop.

    Batches go one after another, so one read never has more than one batch
    queued at the peer. ``max_batch_bytes`` > 0 also cuts batches at that many
    bytes (a long segment across several), and ``gap_seconds`` waits that long
    between batches: a seed that asks for it (its lease says so) serves a chunk
    as several short reads with room between them for its own work. The
    timeout covers the gaps too. The loop keeps running while a batch is on the wire:
    a transport with ``threads`` (TE, whose ``poll`` waits for its batch)
    submits and waits on them, any other is polled from the loop.
    Raises ``ReadFailed`` (a batch could not start, or finished with an error;
    later batches are not submitted) or ``ReadTimeout`` (``timeout_s`` covers
    the whole read, and fires on time even while a thread waits inside TE).
    TransferEngine cannot cancel a batch: after a timeout the read may still
    write into ``dst_ptrs``, so callers must not reuse or free that memory for
    anything else until the fork is abandoned. Cancelled, it returns only once
    the batch on the wire has settled (TE's own transfer timeout bounds that).

        >>> await read(client, seed_session, [dst], [src], [4096], timeout_s=5)
    """
    _check_batch(dst_ptrs, src_ptrs, lengths)
    nbytes = sum(lengths)
    if gap_seconds < 0 or not math.isfinite(gap_seconds):
        raise ValueError(f"gap_seconds must be a finite 0 or more seconds, got {gap_seconds}")
    batches = split_batches(dst_ptrs, src_ptrs, lengths, transport.max_segments_per_batch, max_batch_bytes)
    started = time.monotonic()
    deadline = started + timeout_s
    threads = transport.threads
    task = asyncio.current_task()
    for index, (dst, src, sizes) in enumerate(batches):
        if task is not None and task.cancelling():
            # Cancelled while a batch (this read's or an earlier read's) was on the wire, and the wait for it
            # ended at the same moment: Python 3.11's wait_for then returns the batch's result and drops the
            # cancel, which is still pending on the task. Honour it here, before the next batch goes out.
            raise asyncio.CancelledError
        if index:
            # Let the loop run between batches (leases, heartbeats); a gap past the deadline is a timeout.
            if time.monotonic() + gap_seconds > deadline:
                raise ReadTimeout(f"read of {nbytes} bytes from {session_id} did not finish in {timeout_s:.2f} s "
                                  f"({index} of {len(batches)} batches landed, {gap_seconds:.3f} s apart)")
            await asyncio.sleep(gap_seconds)
        where = f"batch {index + 1} of {len(batches)}, {len(sizes)} segments" if len(batches) > 1 else ""
        try:
            if threads is None:
                status = await _poll_on_loop(transport, session_id, dst, src, sizes, deadline, poll_interval)
            else:
                status = await _wait_on_threads(threads, transport, session_id, dst, src, sizes, deadline,
                                                poll_interval)
        except ReadFailed as exc:
            if index == 0:
                raise
            raise type(exc)(f"{exc} ({where}; the earlier batches landed)") from exc
        except _TimedOut as late:
            if not late.submitted:
                state = f" ({where or 'the read'} was still waiting for a free submit thread: not submitted)"
            else:
                state = f" ({where} was on the wire)" if where else ""
            raise ReadTimeout(
                f"read of {nbytes} bytes from {session_id} did not finish in {timeout_s:.2f} s{state}"
            ) from None
        if status == ReadStatus.FAILED:
            raise ReadFailed(
                f"read of {nbytes} bytes ({len(lengths)} segments) from {session_id} failed after "
                f"{time.monotonic() - started:.2f} s{f' in {where}' if where else ''}: TransferEngine "
                "failed the batch without saying why (the seed's process died or restarted, a source "
                "address is not registered there, or TE refused transfers; TE's log on stderr names it)"
            )


class _TimedOut(Exception):
    """The read's deadline passed with a batch unsettled (``read`` turns it into ``ReadTimeout``)."""

    def __init__(self, submitted: bool) -> None:
        super().__init__()
        self.submitted = submitted


async def _poll_on_loop(transport: Transport, session_id: str, dst, src, sizes, deadline: float,
                        poll_interval: float) -> ReadStatus:
    """Submit and poll from the loop: for transports whose calls return at once (no ``threads``)."""
    handle = transport.submit_read(session_id, dst, src, sizes)
    interval = poll_interval
    while True:
        status = transport.poll(handle)
        if status != ReadStatus.PENDING:
            return status
        if time.monotonic() >= deadline:
            raise _TimedOut(submitted=True)
        await asyncio.sleep(interval)
        # Back off a little: polling every 2 ms for a chunk that takes 50 ms is wasted
        # GIL time; never beyond 4x.
        interval = min(interval * 1.25, poll_interval * 4)


def _submit(threads: ReadThreads, transport: Transport, session_id: str, dst, src, sizes,
            poll_interval: float) -> Future:
    """On a submit thread: start one batch, and queue the wait that settles it (and frees it in TE).

    The wait is queued here, not by the reader, so that a batch submitted after its reader
    gave up is still settled.
    """
    handle = transport.submit_read(session_id, dst, src, sizes)
    return threads.wait.submit(_settle, transport, handle, poll_interval)


def _settle(transport: Transport, handle: int, poll_interval: float) -> ReadStatus:
    while (status := transport.poll(handle)) == ReadStatus.PENDING:
        time.sleep(poll_interval)  # only a transport whose poll does not wait itself gets here
    return status


async def _wait_on_threads(threads: ReadThreads, transport: Transport, session_id: str, dst, src, sizes,
                           deadline: float, poll_interval: float) -> ReadStatus:
    """Submit one batch and wait for it on ``threads``, the loop free meanwhile.

    At the deadline the threads are left to settle the batch on their own.
    """
    submitting: Future = threads.submit.submit(_submit, threads, transport, session_id, dst, src, sizes,
                                               poll_interval)
    try:
        settling: Future = await asyncio.wait_for(_shielded(submitting), _left(deadline))
        return await asyncio.wait_for(_shielded(settling), _left(deadline))
    except asyncio.TimeoutError:
        # Still queued for a submit thread: it never runs, nothing was submitted. Otherwise the
        # batch may be on the wire; a wait thread settles it, and read's memory rule covers the rest.
        raise _TimedOut(submitted=not submitting.cancel()) from None
    except asyncio.CancelledError:
        if not submitting.cancel():
            await _until_done(submitting)
            if submitting.exception() is None:
                await _until_done(submitting.result())
        raise


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _shielded(job: Future) -> asyncio.Future:
    """``job`` as an awaitable that a timeout or cancel of its awaiter leaves running."""
    outcome = asyncio.wrap_future(job)
    # Left behind at a timeout, it may still fail with nobody awaiting: read its outcome here.
    outcome.add_done_callback(lambda f: f.cancelled() or f.exception())
    return asyncio.shield(outcome)


async def _until_done(job: Future) -> None:
    """Wait for ``job`` to end, cancelled or not: until then TE may write into the caller's memory."""
    while not job.done():
        try:
            await _shielded(job)
        except asyncio.CancelledError:
            continue
        except Exception:  # noqa: BLE001 - ended with an error: nothing is on the wire any more
            return


@dataclass
class InMemoryFabric:
    """In-process "network" of fake endpoints: session id -> ``InMemoryTransport``.

    Tests that want isolation create their own; the default is process-wide.
    """

    endpoints: dict[str, "InMemoryTransport"] = field(default_factory=dict)
    _ports: itertools.count = field(default_factory=lambda: itertools.count(20000))

    def new_session_id(self) -> str:
        return f"inmem:{next(self._ports)}"


FABRIC = InMemoryFabric()

FailurePredicate = Callable[[str, Sequence[int]], bool]


class InMemoryTransport:
    """Fake transport for unit tests with the real one's submit/poll semantics.

    Copies with ``ctypes.memmove`` between regions registered on the same
    ``fabric``. A read fails (like TE's) when the peer session is unknown or
    closed, when a source or destination range is not inside a registered
    region, or when ``fail_when(session_id, lengths)`` returns True.
    ``pending_polls`` makes each read report PENDING that many polls before it
    settles, to exercise polling loops. ``submit_read`` refuses batches of more
    than ``max_segments_per_batch`` segments with ``BatchTooLarge``, as
    ``MooncakeTransport`` does. With ``settle_when`` it behaves like TE's
    binding: ``poll`` waits until that event is set, then copies and settles,
    and the transport has ``threads`` that ``read`` submits and waits on.

        >>> fabric = InMemoryFabric()
        >>> seed, client = InMemoryTransport(fabric), InMemoryTransport(fabric)
        >>> seed.register(src_ptr, 64); client.register(dst_ptr, 64)
        >>> client.read_sync(seed.session_id, [dst_ptr], [src_ptr], [64])
        0
    """

    def __init__(
        self,
        fabric: InMemoryFabric = FABRIC,
        fail_when: FailurePredicate | None = None,
        pending_polls: int = 0,
        max_segments_per_batch: int = MAX_SEGMENTS_PER_BATCH,
        settle_when: threading.Event | None = None,
    ) -> None:
        self.fabric = fabric
        self.max_segments_per_batch = max_segments_per_batch
        self.session_id = fabric.new_session_id()
        self.regions: dict[int, int] = {}
        self.fail_when = fail_when
        self.pending_polls = pending_polls
        self.reads_submitted = 0
        """Batches copied (``submit_read`` and each batch of ``read_sync``)."""
        self.settle_when = settle_when
        self.threads = None if settle_when is None else ReadThreads(
            submit=ThreadPoolExecutor(thread_name_prefix="inmem-submit"),
            wait=ThreadPoolExecutor(thread_name_prefix="inmem-wait"),
        )
        self._handles: dict[int, list] = {}  # handle -> [status (or, with settle_when, the batch), polls left]
        self._next = itertools.count(1)
        fabric.endpoints[self.session_id] = self

    def __repr__(self) -> str:
        return f"InMemoryTransport(session_id={self.session_id!r}, regions={len(self.regions)})"

    def register(self, ptr: int, length: int) -> None:
        if length <= 0:
            raise TransportError(f"cannot register {length} bytes at {ptr:#x}; give a length > 0")
        self.regions[ptr] = length

    def unregister(self, ptr: int) -> None:
        self.regions.pop(ptr, None)

    def close(self) -> None:
        """Leave the fabric: later reads from this session fail, like a killed seed."""
        self.fabric.endpoints.pop(self.session_id, None)

    def _covers(self, ptr: int, length: int) -> bool:
        return any(base <= ptr and ptr + length <= base + size for base, size in self.regions.items())

    def _copy(self, session_id: str, dst_ptrs, src_ptrs, lengths) -> ReadStatus:
        _check_batch(dst_ptrs, src_ptrs, lengths)
        self.reads_submitted += 1
        peer = self.fabric.endpoints.get(session_id)
        if peer is None or (self.fail_when is not None and self.fail_when(session_id, lengths)):
            return ReadStatus.FAILED
        segments = list(zip(dst_ptrs, src_ptrs, lengths))
        # Check every segment before copying any, so a bad batch writes nothing.
        if not all(peer._covers(src, n) and self._covers(dst, n) for dst, src, n in segments):
            return ReadStatus.FAILED
        for dst, src, n in segments:
            ctypes.memmove(dst, src, n)
        return ReadStatus.DONE

    def submit_read(self, session_id, dst_ptrs, src_ptrs, lengths) -> int:
        if session_id not in self.fabric.endpoints:
            # Same as TE: an unknown session cannot even start.
            raise ReadFailed(f"could not start a read from {session_id}: the session is unknown or closed")
        _check_batch(dst_ptrs, src_ptrs, lengths)
        _check_size(lengths, self.max_segments_per_batch, session_id)
        handle = next(self._next)
        if self.settle_when is not None:
            self._handles[handle] = [(session_id, list(dst_ptrs), list(src_ptrs), list(lengths)), 0]
        else:
            self._handles[handle] = [self._copy(session_id, dst_ptrs, src_ptrs, lengths), self.pending_polls]
        return handle

    @property
    def batches_unsettled(self) -> int:
        """Batches submitted and not yet settled by ``poll`` (with ``settle_when``: still "on the wire")."""
        return len(self._handles)

    def poll(self, handle: int) -> ReadStatus:
        entry = self._handles.get(handle)
        if entry is None:
            return ReadStatus.FAILED
        if self.settle_when is not None:
            self.settle_when.wait()
            status = self._copy(*entry[0])  # the bytes land now, as a late TE batch writes them
            del self._handles[handle]
            return status
        if entry[1] > 0:
            entry[1] -= 1
            return ReadStatus.PENDING
        del self._handles[handle]  # settled: the handle is spent, as TE frees the batch
        return entry[0]

    def read_sync(self, session_id, dst_ptrs, src_ptrs, lengths) -> int:
        _check_batch(dst_ptrs, src_ptrs, lengths)
        for batch in split_batches(dst_ptrs, src_ptrs, lengths, self.max_segments_per_batch):
            if self._copy(session_id, *batch) != ReadStatus.DONE:
                return -1
        return 0
