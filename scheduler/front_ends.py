"""The scheduler served through HTTP front-end processes (``rfork scheduler --front-ends N``).

One process holds the scheduler's state and makes every decision (the
*deciding* process, this module); HTTP, most of a request's CPU, runs in N
front-end processes (scheduler/front_end.py) that accept on the deciding
process's listening socket and pass it each request (scheduler/front_protocol.py).
A 1024-instance scale-out is ~5,000 requests in a few seconds: served by one
process, parsing them costs more CPU than deciding them (docs/benchmarks.md).

Here the deciding process answers each request on the app it would serve
itself: ``/work`` by its route's own endpoint, with the app's own error
handlers, the rest by running the whole app in-process. So every route, error and metric is the same whichever
way the scheduler runs. A front end that exits on its own is started again
(backoff 0.5 s doubling to 10 s); one that loses its socket to this process
exits: Ctrl-C or a killed scheduler leaves no front end behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from fastapi import FastAPI
from starlette.requests import Request

from rfork_api.auth import TOKEN_ENV, TOKEN_FILE_ENV
from rfork_api.http import error_body
from scheduler.front_protocol import WORK_PATH, ForwardedRequest, ForwardedResponse, FrameWriter, read_message

log = logging.getLogger("rfork.scheduler")

WORK_ROUTE = "POST /v1/jobs/{job_id}/work"
CREATE_ROUTE = "POST /v1/jobs"
CREATE_PATH = "/v1/jobs"
RESTART_BACKOFF_SECONDS = (0.5, 10.0)
"""A front end that exited is started again after the first, doubling up to the second while it keeps
exiting within ``STABLE_SECONDS`` of its start."""
STABLE_SECONDS = 30.0
STOP_GRACE_SECONDS = 5.0


class FrontEndError(RuntimeError):
    """The front ends could not be started (the message says why)."""


# --------------------------------------------------------------------------- answering one request


async def answer(app: FastAPI, request: ForwardedRequest) -> ForwardedResponse:
    """The app's response to one forwarded request."""
    if request.method == "POST":
        if match := WORK_PATH.fullmatch(request.path):
            return await _plain(app, request, app.state.work_plain, WORK_ROUTE, {"job_id": match.group(1)})
        if request.path == CREATE_PATH:
            return await _plain(app, request, app.state.create_job_plain, CREATE_ROUTE, {})
    return await _run_app(app, request)


async def _plain(app: FastAPI, forwarded: ForwardedRequest, endpoint, route: str,
                 path_params: dict[str, str]) -> ForwardedResponse:
    """The hot routes (``/work``; a job's creation, every member of a scale-out's) by their own
    endpoints (``work_plain``, ``create_job_plain``), without the app's routing and middleware, which
    cost the deciding process as much as a creation by reference itself: the front end checked the
    token and the body's size already; the errors and the latency histogram are the app's."""
    started = time.perf_counter()
    scope = forwarded.scope()
    scope["path_params"] = path_params

    async def receive():
        return {"type": "http.request", "body": forwarded.body, "more_body": False}

    request = Request(scope, receive)
    try:
        response = await endpoint(request)
    except Exception as exc:
        handler = _handler_for(app, exc)
        if handler is None:
            raise
        response = await handler(request, exc)
        if response.status_code >= 500:
            log.error("POST %s failed", forwarded.path, exc_info=exc)
    app.state.scheduler.metrics.api_latency.labels(
        route=route, status=f"{response.status_code // 100}xx").observe(time.perf_counter() - started)
    return ForwardedResponse(forwarded.request_id, response.status_code, response.raw_headers, response.body)


def _handler_for(app: FastAPI, exc: Exception):
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler
    return None


async def _run_app(app: FastAPI, request: ForwardedRequest) -> ForwardedResponse:
    status, headers, body = 500, [], bytearray()
    started = sent_body = False

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await asyncio.Event().wait()  # the front end owns the connection: no disconnect to report

    async def send(message) -> None:
        nonlocal status, headers, started
        if message["type"] == "http.response.start":
            status, headers, started = message["status"], list(message.get("headers", [])), True
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    try:
        await app(request.scope(), receive, send)
    except Exception:
        # Starlette's error middleware answered already (500, in the services' shape) and re-raised
        # for the server to log, as uvicorn would.
        log.exception("%s %s failed", request.method, request.path)
        if not started:
            return _internal_error(request.request_id, f"{request.method} {request.path}")
    return ForwardedResponse(request.request_id, status, headers, bytes(body))


def _internal_error(request_id: int, what: str) -> ForwardedResponse:
    payload = error_body("internal_error",
                         f"the scheduler failed serving {what}; this is a bug: the scheduler's log has the traceback")
    return ForwardedResponse(request_id, 500, [(b"content-type", b"application/json")], json.dumps(payload).encode())


async def serve_link(app: FastAPI, sock: socket.socket) -> None:
    """Answer one front end's requests until it closes its socket (each request in its own task:
    a long-polled ``/work`` must not hold up the others)."""
    reader, stream_writer = await asyncio.open_connection(sock=sock)
    writer = FrameWriter(stream_writer)
    answering: set[asyncio.Task] = set()

    async def answer_one(message: ForwardedRequest) -> None:
        try:
            reply = await answer(app, message)
        except Exception:
            log.exception("answering a front end's %s %s failed", message.method, message.path)
            reply = _internal_error(message.request_id, f"{message.method} {message.path}")
        writer.send(reply)

    try:
        while (message := await read_message(reader)) is not None:
            if not isinstance(message, ForwardedRequest):
                log.error("a front end sent a %s; closing its socket", type(message).__name__)
                break
            task = asyncio.create_task(answer_one(message))
            answering.add(task)
            task.add_done_callback(answering.discard)
    finally:
        for task in list(answering):
            task.cancel()
        writer.close()


# --------------------------------------------------------------------------- the front-end processes


class Deciders:
    """Deciders 1..K-1 of ``--deciders K`` (this process is decider 0), each a ``scheduler.decider``
    process with ``config`` and a control socket over which it gets its end of each front end's link;
    started again when one exits.

    A decider that exits takes the jobs of its ranks with it (their forks start over, as after a
    scheduler restart) and closes its end of every front end's link, so every front end exits and is
    started again, linked to the new decider once it runs. The other deciders keep their jobs. The new
    decider knows no seed until the agents register again: its reply to their next heartbeat,
    ``unknown_seed``, is what the front ends answer, and the agents re-register (every decider)."""

    def __init__(self, config, count: int, metrics, *, log_level: str, verbose: int) -> None:
        self.config = config
        self.count = count
        self.metrics = metrics
        self.log_level = log_level
        self.verbose = verbose
        self.controls: dict[int, socket.socket] = {}
        """Decider index -> our end of its control socket, while it runs."""
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._running = {index: asyncio.Event() for index in range(1, count)}
        self._stopping = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the deciders running until ``stop`` is set; then stop them all and return.

        Raises FrontEndError if one cannot be started (the others are stopped first)."""
        def close_controls() -> None:
            for control in self.controls.values():
                control.close()  # a decider exits when its control socket closes

        await _supervise([asyncio.create_task(self._slot(index)) for index in range(1, self.count)], stop,
                         self._stopping, self.processes, close_controls)

    async def ready(self) -> None:
        """Until every decider runs (a front end started before would be linked to one that is gone)."""
        for running in self._running.values():
            await running.wait()

    async def _slot(self, index: int) -> None:
        from dataclasses import replace

        from scheduler.decider import CONFIG_ENV, encode_config

        backoff = RESTART_BACKOFF_SECONDS[0]
        loop = asyncio.get_running_loop()
        env = {**os.environ, CONFIG_ENV: encode_config(replace(self.config, decider_index=index))}
        while not self._stopping.is_set():
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "scheduler.decider", "--control-fd", str(theirs.fileno()),
                    "--log-level", self.log_level, "--verbose", str(self.verbose),
                    pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                ours.close()
                raise FrontEndError(f"cannot start decider {index}: {exc}") from exc
            finally:
                theirs.close()
            started = loop.time()
            self.processes[index], self.controls[index] = process, ours
            self._running[index].set()
            self._count_running()
            try:
                code = await process.wait()
            finally:
                self._running[index].clear()
                self.processes.pop(index, None)
                self.controls.pop(index, None)
                ours.close()
                self._count_running()
            if self._stopping.is_set():
                return
            if loop.time() - started >= STABLE_SECONDS:
                backoff = RESTART_BACKOFF_SECONDS[0]
            log.error("decider %d (pid %d) exited (%s): the jobs of ranks r %% %d == %d are gone, their forks "
                      "start over; starting another in %.1f s", index, process.pid, _exit_text(code), self.count,
                      index, backoff)
            self.metrics.decider_restarts_total.inc()
            backoff = await _back_off(self._stopping, backoff)

    def _count_running(self) -> None:
        self.metrics.deciders.set(1 + len(self.processes))  # this process is decider 0

    def hand_links(self, links: dict[int, socket.socket]) -> None:
        """Give each decider its end of one front end's links (and close ours). A decider that is not
        running gets none: that link closes, and its front end exits and is started again."""
        from scheduler.decider import hand_link

        for index, sock in links.items():
            control = self.controls.get(index)
            try:
                if control is not None:
                    hand_link(control, sock)
            except OSError as exc:  # it exited just now: its slot starts another
                log.warning("could not hand decider %d a front end's link: %s", index, exc)
            finally:
                sock.close()


class FrontEnds:
    """N front-end processes on ``listening``, each linked to ``app`` (and to each of ``deciders``);
    started again when one exits."""

    def __init__(self, app: FastAPI, listening: socket.socket, count: int, *, token: str | None,
                 max_body_bytes: int, log_level: str, verbose: int, deciders: Deciders | None = None) -> None:
        if count < 1:
            raise ValueError(f"front ends: count must be >= 1, got {count}")
        self.app = app
        self.deciders = deciders
        self.listening = listening
        self.count = count
        self.max_body_bytes = max_body_bytes
        self.log_level = log_level
        self.verbose = verbose
        self.env = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, TOKEN_FILE_ENV)}
        if token:
            self.env[TOKEN_ENV] = token  # the environment, not argv: ps shows argv to everyone
        self.metrics = app.state.scheduler.metrics
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        """Front end index -> its running process."""
        self._stopping = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep ``count`` front ends running until ``stop`` is set; then stop them all and return.

        Raises FrontEndError if one cannot be started (the others are stopped first)."""
        await _supervise([asyncio.create_task(self._slot(index)) for index in range(self.count)], stop,
                         self._stopping, self.processes)

    async def _slot(self, index: int) -> None:
        backoff = RESTART_BACKOFF_SECONDS[0]
        loop = asyncio.get_running_loop()
        deciders = 1 if self.deciders is None else self.deciders.count
        while not self._stopping.is_set():
            if self.deciders is not None:
                await self._until_stopping_or(self.deciders.ready())
                if self._stopping.is_set():
                    return
            pairs = [socket.socketpair() for _ in range(deciders)]  # one link per decider, 0 first
            theirs = [pair[1] for pair in pairs]
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "scheduler.front_end", "--listen-fd", str(self.listening.fileno()),
                    "--link-fds", ",".join(str(t.fileno()) for t in theirs), "--index", str(index),
                    "--max-body-bytes", str(self.max_body_bytes), "--log-level", self.log_level,
                    "--verbose", str(self.verbose),
                    pass_fds=(self.listening.fileno(), *(t.fileno() for t in theirs)), env=self.env,
                    stdin=subprocess.DEVNULL,
                    # Out of the terminal's process group: a Ctrl-C reaches this process, which stops them
                    # (SIGTERM). Caught mid-start-up by the terminal's SIGINT, one printed a traceback.
                    start_new_session=True)
            except OSError as exc:
                for ours, _ in pairs:
                    ours.close()
                raise FrontEndError(f"cannot start front end {index}: {exc}") from exc
            finally:
                for sock in theirs:
                    sock.close()
            if self.deciders is not None:
                self.deciders.hand_links({k: pairs[k][0] for k in range(1, deciders)})
            link = asyncio.create_task(serve_link(self.app, pairs[0][0]))
            started = loop.time()
            self._running(index, process)
            try:
                code = await process.wait()
            finally:
                self._running(index, None)
                link.cancel()
            if self._stopping.is_set():
                return
            if code == 0 and self.deciders is not None:
                # It stopped itself because a decider it was linked to exited: not a front end's failure
                # (that decider's own restart is counted). Another starts once every decider runs.
                log.info("front end %d (pid %d) stopped: a decider it was linked to exited; starting another",
                         index, process.pid)
                continue
            if loop.time() - started >= STABLE_SECONDS:
                backoff = RESTART_BACKOFF_SECONDS[0]
            log.warning("front end %d (pid %d) exited (%s); starting another in %.1f s", index, process.pid,
                        _exit_text(code), backoff)
            self.metrics.front_end_restarts_total.inc()
            backoff = await _back_off(self._stopping, backoff)

    async def _until_stopping_or(self, awaitable) -> None:
        waiting = asyncio.ensure_future(awaitable)
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            stopping.cancel()

    def _running(self, index: int, process: asyncio.subprocess.Process | None) -> None:
        if process is None:
            self.processes.pop(index, None)
        else:
            self.processes[index] = process
        self.metrics.front_ends.set(len(self.processes))


async def _back_off(stopping: asyncio.Event, seconds: float) -> float:
    """Wait ``seconds`` before starting a process again (less if stopping); returns the next wait."""
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    return min(seconds * 2, RESTART_BACKOFF_SECONDS[1])


async def _supervise(slots: list[asyncio.Task], stop: asyncio.Event, stopping: asyncio.Event,
                    processes: dict[int, asyncio.subprocess.Process], before_stopping=None) -> None:
    """Let ``slots`` keep their processes running until ``stop`` is set or a slot ends (it could not
    start one); then stop them all (SIGTERM, SIGKILL after ``STOP_GRACE_SECONDS``), wait for the slots,
    and raise the error a slot ended with."""
    stop_waiting = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([*slots, stop_waiting], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.set()
        stop_waiting.cancel()
        if before_stopping is not None:
            before_stopping()
        for process in list(processes.values()):
            _terminate(process)
        _, late = await asyncio.wait(slots, timeout=STOP_GRACE_SECONDS)
        for process in list(processes.values()):
            _terminate(process, kill=True)
        if late:
            await asyncio.wait(late)
    for slot in slots:
        if slot.exception() is not None:
            raise slot.exception()


def _terminate(process: asyncio.subprocess.Process, kill: bool = False) -> None:
    if process.returncode is None:
        try:
            process.kill() if kill else process.terminate()
        except ProcessLookupError:
            pass


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


# --------------------------------------------------------------------------- the deciding process


def listen(host: str, port: int) -> socket.socket:
    """The scheduler's listening socket (the front ends accept on it). Raises OSError (e.g. the port is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=4096)


def serve(app: FastAPI, listening: socket.socket, count: int, *, token: str | None, max_body_bytes: int,
          log_level: str, verbose: int, deciders: int = 1) -> int:
    """Run the deciding process (decider 0 of ``deciders``): the app's lifespan, the other deciders,
    ``count`` front ends, until SIGINT or SIGTERM."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with app.router.lifespan_context(app):
            others = None if deciders <= 1 else Deciders(
                app.state.scheduler.config, deciders, app.state.scheduler.metrics, log_level=log_level,
                verbose=verbose)
            front_ends = FrontEnds(app, listening, count, token=token, max_body_bytes=max_body_bytes,
                                   log_level=log_level, verbose=verbose, deciders=others)
            if others is None:
                await front_ends.run(stop)
                return
            running = [asyncio.create_task(others.run(stop)), asyncio.create_task(front_ends.run(stop))]
            try:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.set()  # one could not start its processes: the other stops too
                await asyncio.wait(running)
            for task in running:
                if task.exception() is not None:
                    raise task.exception()

    try:
        asyncio.run(main())
    finally:
        listening.close()
    return 0
