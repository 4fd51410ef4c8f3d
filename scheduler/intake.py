"""Decoding request bodies off the event loop, so big manifests never stall heartbeats.

A job request or a seed registration for a MoE model carries a manifest of
hundreds of thousands of tensors: tens of MB of JSON and seconds of CPU to
decode and validate. Done in the event loop, that work held up heartbeats until
the reaper dropped live seeds. ``json.loads`` holds the GIL for the whole
document, so a worker thread alone would not help: bodies of at least
``SchedulerConfig.process_pool_min_body_bytes`` are decoded in a small pool of
worker processes, which send back a ``ManifestTable`` (names and one integer
array, cheap to unpickle); smaller bodies are decoded in a worker thread, and
the smallest (``inline_max_bytes``: a job sent by reference) where they arrive.
All run the same functions below, so a body gets the same answer either way.

    >>> intake = Intake(process_min_bytes=1 << 20, workers=2)
    >>> request, table = await intake.decode(decode_job_request, body)
    >>> intake.close()
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import os
import signal
import threading
from array import array
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from pydantic import BaseModel, ValidationError

from scheduler import api_models as wire
from scheduler.errors import InvalidRequest
from rfork_api.manifest import ManifestTable, decode_pointers, parse_manifest_table
from rfork_api.http import parse_json_body

log = logging.getLogger("rfork.scheduler")

T = TypeVar("T")


def _validated(model: type[BaseModel], body: bytes) -> BaseModel:
    """``model`` from a JSON body, or InvalidRequest with FastAPI's wording (loc starts at 'body')."""
    try:
        document = parse_json_body(body)  # the same parser, and so the same messages, as every other route
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc.msg}; send one JSON object, UTF-8 encoded") from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise InvalidRequest(wire.validation_message(exc.errors(), prefix=("body",))) from None


def decode_job_request(body: bytes) -> tuple[wire.JobRequest, ManifestTable | array]:
    """A job request with its manifest validated and taken out (the request keeps an empty one);
    for a manifest sent by layout, its pointers (the scheduler holds the rest, ``create_job``)."""
    request = _validated(wire.JobRequest, body)
    if request.layout is not None:
        return request, decode_pointers(request.layout.pointers)
    table = parse_manifest_table(request.manifest)
    return request.model_copy(update={"manifest": {}}), table


def decode_registration(body: bytes) -> tuple[wire.SeedRegistration, dict[int, ManifestTable]]:
    """A seed registration with each rank's manifest validated and taken out."""
    registration = _validated(wire.SeedRegistration, body)
    tables = {r.rank: parse_manifest_table(r.manifest) for r in registration.ranks}
    ranks = [r.model_copy(update={"manifest": {}}) for r in registration.ranks]
    return registration.model_copy(update={"ranks": ranks}), tables


def _ready() -> bool:
    return True


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group; the scheduler shuts its workers down itself,
    # and a worker's KeyboardInterrupt traceback would be noise on the operator's terminal.
    # The worker started with SIGINT blocked (see _sigint_blocked): one sent while it was
    # starting is pending, and is ignored once unblocked here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # A scheduler killed outright (SIGKILL, OOM) cannot shut the pool down, and a worker
    # waiting for work never notices: leave with it.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True, name="parent-watch").start()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while it may start worker processes: they inherit the mask."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    # The pool's first start also starts multiprocessing's resource tracker, which blocks and
    # then *unblocks* SIGINT around its own start: get that done before blocking it here.
    multiprocessing.resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a Ctrl-C meanwhile is delivered now


class Intake:
    """Runs decoding and other CPU-heavy request work away from the event loop, boundedly.

    ``workers`` bounds both the processes and the threads doing this work at once: more
    would only share the same cores, and a queue of awaiting requests costs nothing.
    """

    def __init__(self, process_min_bytes: int, workers: int, inline_max_bytes: int = 0) -> None:
        self.process_min_bytes = process_min_bytes
        self.inline_max_bytes = inline_max_bytes
        """Bodies shorter than this are decoded on the caller's thread: a job sent by reference
        (tens of KB) decodes in well under a millisecond, less than the hop to a thread costs."""
        self.workers = workers
        self.threads = CapacityLimiter(workers)
        self._pool: ProcessPoolExecutor | None = None

    async def decode(self, decoder: Callable[[bytes], T], body: bytes) -> T:
        if len(body) < self.inline_max_bytes:
            return decoder(body)
        if len(body) < self.process_min_bytes:
            return await self.in_thread(decoder, body)
        try:
            return await asyncio.wrap_future(self._submit(decoder, body))
        except BrokenProcessPool:
            # A worker died (killed, out of memory): start a fresh pool next time, decode this one here.
            log.warning("a manifest decoding process died; restarting the pool and decoding in a thread")
            self._pool = None
            return await self.in_thread(decoder, body)

    async def in_thread(self, fn: Callable[..., T], *args) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.threads)

    def start(self) -> None:
        """Start a worker process now (it takes a second to import), not on the first big body."""
        self._submit(_ready)

    def _submit(self, fn: Callable[..., T], *args) -> Future:
        with _sigint_blocked():  # submit may start a worker process
            return self._processes().submit(fn, *args)

    def _processes(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the scheduler has threads (reaper, anyio workers) a fork would copy mid-state.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker)
        return self._pool

    def close(self, timeout_seconds: float = 30.0) -> None:
        """Cancel queued work and wait, at most ``timeout_seconds``, until the worker processes are gone.

        Waiting keeps the exit clean. After ``shutdown(wait=False)`` the pool's manager thread
        closes its wake-up pipe while the exiting interpreter's hook for process pools writes to
        it (CPython guards that with a lock only from gh-125451 on): a Ctrl-C that came as a worker
        was starting left an ignored "Bad file descriptor" traceback in the log. A decode already
        running finishes first (bodies are bounded by ``max_body_bytes``); the bound covers a worker
        that never does, which then leaves with the scheduler (it watches its parent).
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        stopping = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True},
                                    name="intake-shutdown", daemon=True)
        stopping.start()
        stopping.join(timeout_seconds)
        if stopping.is_alive():
            log.warning("the manifest decoding processes did not stop within %.0f s; they leave with the "
                        "scheduler", timeout_seconds)
