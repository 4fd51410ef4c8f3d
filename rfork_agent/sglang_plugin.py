"""SGLang plugin: ``--load-format remote_instance`` forks from every matching seed.

Installed with rfork (entry point ``rfork`` in group ``sglang.srt.plugins``);
SGLang's ``load_plugins()`` calls :func:`register` in each of its processes.
Enabled by the environment, because SGLang rejects
``--model-loader-extra-config`` for the TransferEngine backend:

``RFORK_SCHEDULER_URL``
    The rfork scheduler (``http://HOST:8700``). Unset or empty: the plugin
    registers nothing and SGLang behaves exactly as without rfork.
``RFORK_TOKEN_FILE`` or ``RFORK_TOKEN``
    The fleet's shared bearer token, when the scheduler and agents run with
    one (docs/operating.md, "Security").
``RFORK_CHUNK_SIZE``
    Chunk size, e.g. ``64MiB`` (default: the scheduler's).
``RFORK_MODEL``, ``RFORK_REVISION``, ``RFORK_DTYPE``, ``RFORK_TP_SIZE``
    Override the model identity, which otherwise comes from SGLang's server
    args exactly as the seeds' agents read it from ``/server_info``
    (``model_path``, ``revision`` or ``main``, ``dtype``, ``tp_size``).
``RFORK_FALLBACK``
    ``1`` (default): when rfork cannot fork a rank, log why and let SGLang's
    own single-seed read load it. ``0``: raise instead.
``RFORK_PEERS``, ``RFORK_PEER_RATE``, ``RFORK_PEER_MAX_IN_FLIGHT``
    While it loads, the instance serves the chunks it has landed to other
    instances loading the same weights (``RFORK_PEERS=0``: it does not), at
    most ``RFORK_PEER_RATE`` (like `rfork fork --peer-rate`; default
    unlimited) with at most ``RFORK_PEER_MAX_IN_FLIGHT`` reads at once
    (default 8). Before the hook returns to SGLang (whose post-load step may
    rewrite weights in place) or falls back to SGLang's own read, it withdraws
    and waits until no read from its memory is on the wire.

When enabled it wraps (``HookType.AROUND``)
``RemoteInstanceModelLoader.load_model_from_remote_instance_by_transfer_engine``.
SGLang calls that after it has built the model and registered every
parameter with its TransferEngine; the wrapper forks this TP rank through the
scheduler, reading chunks from every seed that serves the same identity, into
those parameters over SGLang's own engine, then runs SGLang's
``post_load_weights`` and returns ``True`` like the original.

Failure is never silent:

- the scheduler is unreachable, no seed serves this model and rank, or the
  manifests differ: the scheduler refuses the job before any byte moves; the
  reason is logged and SGLang's original path runs (``RFORK_FALLBACK=0``
  raises :class:`RforkLoadError` instead);
- a job that fails part-way is logged as an error and the original path runs:
  it rewrites every parameter from the seed SGLang was given;
- SGLang's ``apply_hooks`` only logs a patch that failed; the plugin checks
  ``HookRegistry._patched`` right after it and logs whether rfork is active;
- a draft (speculative) model is left to SGLang: seeds' agents serve the
  target model, so the draft would never match.

Stopping the process during a fork never falls back: KeyboardInterrupt,
SystemExit or SIGTERM (where SIGTERM would otherwise kill the process
outright) cancel the fork — reads on the wire settle, leases are released, the
job is cancelled at the scheduler — and the interruption then goes on (SIGTERM
is re-delivered with its default action). A SIGKILL (what ``launch_server``
sends its scheduler processes when it stops) leaves no time for any of it:
the agents' lease ttl and the scheduler's client timeout clean up then.

    $ RFORK_SCHEDULER_URL=http://10.0.0.5:8700 python -m sglang.launch_server --model-path M \\
        --load-format remote_instance --remote-instance-weight-loader-backend transfer_engine \\
        --remote-instance-weight-loader-seed-instance-ip 10.0.0.7 \\
        --remote-instance-weight-loader-seed-instance-service-port 30000
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from rfork_api.models import ModelIdentity

log = logging.getLogger("rfork.sglang")

HOOK_TARGET = (
    "sglang.srt.model_loader.loader.RemoteInstanceModelLoader."
    "load_model_from_remote_instance_by_transfer_engine"
)
"""What the plugin wraps: SGLang's TransferEngine read of one TP rank from one seed."""

ENV_SCHEDULER_URL = "RFORK_SCHEDULER_URL"
ENV_CHUNK_SIZE = "RFORK_CHUNK_SIZE"
ENV_MODEL = "RFORK_MODEL"
ENV_REVISION = "RFORK_REVISION"
ENV_DTYPE = "RFORK_DTYPE"
ENV_TP_SIZE = "RFORK_TP_SIZE"
ENV_FALLBACK = "RFORK_FALLBACK"
ENV_PEERS = "RFORK_PEERS"
ENV_PEER_RATE = "RFORK_PEER_RATE"
ENV_PEER_MAX_IN_FLIGHT = "RFORK_PEER_MAX_IN_FLIGHT"

# Called from inside SGLang's model runner: a draft runner reaches the same
# loader through this function, with ``is_draft_worker`` as a local.
_DRAFT_FRAME = "load_model_with_memory_saver"
# Draft models SGLang ships (EAGLE heads, NextN/MTP layers); used when the
# frame above is not on the stack (an SGLang that loads differently).
_DRAFT_CLASS_MARKERS = ("Eagle", "NextN", "MTP", "Draft")


class RforkPluginError(RuntimeError):
    """The plugin is misconfigured; the message names the variable and the fix."""


class RforkLoadError(RuntimeError):
    """rfork could not load this rank and ``RFORK_FALLBACK=0`` forbids SGLang's own path."""


class ForkInterrupted(BaseException):
    """SIGTERM arrived during a fork, where it would have killed the process outright.

    A BaseException like KeyboardInterrupt: nothing may catch it and carry on loading.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} during the fork")
        self.signum = signum


@dataclass(frozen=True)
class PluginConfig:
    """What the environment asks for. ``from_env`` returns None when the plugin is disabled.

        >>> PluginConfig.from_env({"RFORK_SCHEDULER_URL": "http://127.0.0.1:8700", "RFORK_CHUNK_SIZE": "16MiB"})
        PluginConfig(scheduler_url='http://127.0.0.1:8700', chunk_size_bytes=16777216, ...)
    """

    scheduler_url: str
    chunk_size_bytes: int | None = None
    """None: the scheduler's default."""
    model: str | None = None
    revision: str | None = None
    dtype: str | None = None
    tp_size: int | None = None
    fallback: bool = True
    """Let SGLang's single-seed read load a rank rfork could not fork."""
    token: str | None = field(default=None, repr=False)
    """The fleet's bearer token (never logged)."""
    peers: bool = True
    """Serve landed chunks to other instances loading the same weights, during the load."""
    peer_rate: float | None = None
    """Their reads from us, bytes/s; None = unlimited."""
    peer_max_in_flight: int = 8

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "PluginConfig | None":
        url = environ.get(ENV_SCHEDULER_URL, "").strip()
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise RforkPluginError(
                f"{ENV_SCHEDULER_URL}={url!r} is not an http(s) URL; set it to the rfork scheduler, "
                "e.g. http://10.0.0.5:8700"
            )
        from rfork_api.units import UnitError, parse_size

        chunk = environ.get(ENV_CHUNK_SIZE, "").strip() or None
        try:
            chunk_size = parse_size(chunk) if chunk else None
        except UnitError as exc:
            raise RforkPluginError(f"{ENV_CHUNK_SIZE}={chunk!r}: {exc}; e.g. 64MiB") from exc
        tp = environ.get(ENV_TP_SIZE, "").strip() or None
        try:
            tp_size = int(tp) if tp else None
        except ValueError:
            tp_size = 0
        if tp_size is not None and tp_size < 1:
            raise RforkPluginError(f"{ENV_TP_SIZE}={tp!r} must be a whole number >= 1, or unset to use SGLang's --tp-size")
        from rfork_api.auth import AuthConfigError, load_token

        try:
            token = load_token(environ=dict(environ))
        except AuthConfigError as exc:
            raise RforkPluginError(str(exc)) from exc
        fallback = environ.get(ENV_FALLBACK, "1").strip().lower()
        if fallback not in ("1", "0", "true", "false", "yes", "no", ""):
            raise RforkPluginError(f"{ENV_FALLBACK}={fallback!r}: use 1 (fall back to SGLang's own read) or 0 (fail)")
        peers = environ.get(ENV_PEERS, "1").strip().lower()
        if peers not in ("1", "0", "true", "false", "yes", "no", ""):
            raise RforkPluginError(f"{ENV_PEERS}={peers!r}: use 1 (serve landed chunks to other instances) or 0")
        from rfork_agent.fork import parse_peer_settings

        rate_text = environ.get(ENV_PEER_RATE, "").strip() or None
        limit_text = environ.get(ENV_PEER_MAX_IN_FLIGHT, "").strip() or None
        try:
            limit = int(limit_text) if limit_text else None
        except ValueError:
            raise RforkPluginError(f"{ENV_PEER_MAX_IN_FLIGHT}={limit_text!r} must be a whole number of reads, "
                                   "e.g. 8") from None
        try:
            settings = parse_peer_settings(rate_text, limit, no_peers=peers in ("0", "false", "no"), flag=ENV_PEER_RATE)
        except ValueError as exc:
            raise RforkPluginError(str(exc).replace("--peer-max-in-flight", ENV_PEER_MAX_IN_FLIGHT)
                                   .replace(ENV_PEER_RATE + ":", f"{ENV_PEER_RATE}={rate_text!r}:")) from None
        return cls(
            scheduler_url=url.rstrip("/"),
            chunk_size_bytes=chunk_size,
            model=environ.get(ENV_MODEL, "").strip() or None,
            revision=environ.get(ENV_REVISION, "").strip() or None,
            dtype=environ.get(ENV_DTYPE, "").strip() or None,
            tp_size=tp_size,
            fallback=fallback in ("1", "true", "yes", ""),
            token=token,
            peers=settings.serve,
            peer_rate=settings.rate,
            peer_max_in_flight=settings.max_in_flight,
        )


@dataclass
class LoadRecord:
    """How the last rank was loaded in this process (logs say the same; tests and operators read this)."""

    rank: int
    path: str
    """``rfork``, ``sglang`` (the original single-seed read) or ``failed``."""
    reason: str = ""
    """Why SGLang's path ran, or why the load failed."""
    identity: dict = field(default_factory=dict)
    """The model identity it forked (``ModelIdentity.model_dump()``; empty when none was derived)."""
    job_id: str = ""
    bytes_total: int = 0
    bytes_by_seed: dict = field(default_factory=dict)
    seconds: float = 0.0
    bytes_from_peers: int = 0
    served_as_peer: bool = False
    """It offered its landed chunks to other instances during the load."""
    withdrawal: str = ""
    """How it stopped serving before returning to SGLang (or falling back)."""


last_load: LoadRecord | None = None
"""The record of the most recent load through the hook in this process."""

_config: PluginConfig | None = None
_registered = False


def register() -> None:
    """Entry point SGLang's ``load_plugins()`` calls once per process.

    Registers nothing when ``RFORK_SCHEDULER_URL`` is unset. Raises
    ``RforkPluginError`` on a malformed variable (SGLang logs it with the
    traceback and carries on without rfork).
    """
    global _config, _registered
    config = PluginConfig.from_env()
    if config is None:
        log.debug("rfork plugin: %s is not set; not hooking SGLang", ENV_SCHEDULER_URL)
        return
    if _registered:
        return  # a second call in one process would stack a second wrapper
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    _config = config
    HookRegistry.register(HOOK_TARGET, _around_transfer_engine_load, HookType.AROUND)
    _registered = True
    _verify_after_apply(HookRegistry)
    log.info("rfork plugin: registered an AROUND hook on %s (scheduler %s)", HOOK_TARGET, config.scheduler_url)


def hook_active() -> bool:
    """Whether SGLang patched the loader with rfork's wrapper in this process."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    if HOOK_TARGET not in HookRegistry._patched:
        return False
    import pkgutil

    owner_path, attr = HOOK_TARGET.rsplit(".", 1)
    try:
        fn = getattr(pkgutil.resolve_name(owner_path), attr)
    except (ImportError, AttributeError, ValueError):
        return False  # the loader does not import, or has no such method: nothing of ours is there
    while fn is not None:
        # SGLang's AROUND wrapper closes over our hook; walk the chain it builds.
        cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
        if _around_transfer_engine_load in cells:
            return True
        fn = getattr(fn, "__wrapped__", None)
    return False


def _verify_after_apply(registry: Any) -> None:
    """Check, right after SGLang's ``apply_hooks``, that our hook took.

    ``apply_hooks`` logs a failed patch and carries on; without this check an
    import error in SGLang's loader would leave the server loading from one
    seed with only a line in the log. One-shot: the original is put back
    after its first call.
    """
    original = registry.__dict__["apply_hooks"]

    def apply_hooks_then_verify(cls):
        try:
            original.__func__(cls)
        finally:
            cls.apply_hooks = original
            if hook_active():
                log.info("rfork plugin: hook active on %s; ranks load through the rfork scheduler at %s",
                         HOOK_TARGET, _config.scheduler_url if _config else "?")
            else:
                log.error(
                    "rfork plugin: SGLang did NOT apply rfork's hook on %s (see 'Failed to apply hooks' above); "
                    "this instance will load with SGLang's own single-seed read. Check that this SGLang "
                    "version has that method and that sglang.srt.model_loader.loader imports",
                    HOOK_TARGET,
                )

    registry.apply_hooks = classmethod(apply_hooks_then_verify)


def _around_transfer_engine_load(original: Callable, loader: Any, model: Any, transfer_engine: Any,
                                 seed_url: str, tp_rank: int) -> bool:
    """The AROUND hook: fork this rank through rfork, or run SGLang's original and say why."""
    global last_load
    config = _config or PluginConfig.from_env()

    def sglang_path(reason: str) -> bool:
        global last_load
        last_load = LoadRecord(rank=tp_rank, path="sglang", reason=reason)
        ok = original(loader, model, transfer_engine, seed_url, tp_rank)
        if not ok:
            last_load.path, last_load.reason = "failed", f"{reason}; SGLang's own read from {seed_url} failed too"
        return ok

    if config is None:
        return sglang_path(f"{ENV_SCHEDULER_URL} is not set in this process")
    draft = _draft_reason(model)
    if draft:
        log.info("rfork: rank %d: %s; SGLang loads it from %s itself", tp_rank, draft, seed_url)
        return sglang_path(draft)

    started = time.perf_counter()
    job_started = False
    identity = None
    client = None
    try:
        identity = model_identity(config)
        if not 0 <= tp_rank < identity.tp_size:
            raise RforkPluginError(f"TP rank {tp_rank} is outside tp_size {identity.tp_size}; "
                                   f"check {ENV_TP_SIZE} / --tp-size")
        transport = _transport(loader, transfer_engine)
        tensors = dict(model.named_parameters())
        log.info("rfork: rank %d: forking %d tensors of %s through %s", tp_rank, len(tensors),
                 identity.describe(), config.scheduler_url)

        def on_progress(_progress) -> None:
            nonlocal job_started
            job_started = True

        client = _client(config, transport, on_progress)
        peer = client.peer_offer(_peer_settings(config))
        # fork() withdraws as a peer and waits for the reads from our memory before it returns or
        # raises: SGLang's post-load step below, or its own read on fallback, may rewrite it.
        result = _run_sync(lambda: client.fork(identity, tp_rank, tensors, chunk_size_bytes=config.chunk_size_bytes,
                                               peer=peer))
    except (KeyboardInterrupt, SystemExit, ForkInterrupted) as exc:
        # Stopped, not failed: no fallback read. The fork was cancelled before this ran.
        reason = f"interrupted by {_interruption(exc)}; {_cleanup_outcome(client)}"
        last_load = LoadRecord(rank=tp_rank, path="failed", reason=reason, identity=_record_identity(identity))
        log.warning("rfork: rank %d: %s", tp_rank, reason)
        if isinstance(exc, ForkInterrupted):
            signal.raise_signal(exc.signum)  # its default action again: the process ends as SIGTERM ends it
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is logged below, then handled per RFORK_FALLBACK
        when = "after its job started" if job_started else "before any byte moved"
        reason = f"rfork could not fork rank {tp_rank} ({when}): {type(exc).__name__}: {exc}"
        if not config.fallback:
            last_load = LoadRecord(rank=tp_rank, path="failed", reason=reason, identity=_record_identity(identity))
            log.error("rfork: %s; %s=0, so the load fails", reason, ENV_FALLBACK)
            raise RforkLoadError(f"{reason}. Fix the cause, or set {ENV_FALLBACK}=1 to let SGLang read "
                                 f"every weight from {seed_url}") from exc
        if job_started:
            # The client let its reads settle before raising (a read TE timed out
            # may still land later, but with the very bytes every seed holds);
            # the original read rewrites every parameter, so nothing stale remains.
            log.error("rfork: %s; falling back to SGLang's single-seed read from %s, which rewrites every "
                      "parameter", reason, seed_url, exc_info=not _expected(exc))
        else:
            log.warning("rfork: %s; falling back to SGLang's single-seed read from %s",
                        reason, seed_url, exc_info=not _expected(exc))
        _log_withdrawal(client, tp_rank)
        ok = sglang_path(reason)
        last_load.identity = _record_identity(identity)
        _record_withdrawal(last_load, client)
        return ok

    from sglang.srt.model_loader import loader as sglang_loader

    # What the original does after its read: the model's own post-load fixups.
    sglang_loader.post_load_weights(model)
    seconds = time.perf_counter() - started
    last_load = LoadRecord(rank=tp_rank, path="rfork", identity=_record_identity(identity), job_id=result.job_id,
                           bytes_total=result.bytes_total, bytes_by_seed=dict(result.bytes_by_seed), seconds=seconds,
                           bytes_from_peers=result.bytes_from_peers)
    _record_withdrawal(last_load, client)
    _log_withdrawal(client, tp_rank)
    log.info("rfork: rank %d: %d bytes in %.2f s from %s (job %s, %d chunks retried)", tp_rank,
             result.bytes_total, seconds,
             ", ".join(f"{s}={b}" for s, b in sorted(result.bytes_by_seed.items())) or "no seed (nothing to read)",
             result.job_id, result.retried_chunks)
    return True


def _peer_settings(config: PluginConfig):
    from rfork_agent.fork import PeerSettings

    return PeerSettings(serve=config.peers, rate=config.peer_rate, max_in_flight=config.peer_max_in_flight)


def _record_withdrawal(record: LoadRecord, client) -> None:
    withdrawal = getattr(client, "withdrawal", None)
    record.served_as_peer = withdrawal is not None
    record.withdrawal = "" if withdrawal is None else withdrawal.describe()


def _log_withdrawal(client, tp_rank: int) -> None:
    """A peer that gave up waiting for reads from its memory says so: SGLang may now rewrite it."""
    withdrawal = getattr(client, "withdrawal", None)
    if withdrawal is not None and not withdrawal.confirmed:
        log.warning("rfork: rank %d: %s", tp_rank, withdrawal.describe())


def _record_identity(identity) -> dict:
    return {} if identity is None else identity.model_dump()


def model_identity(config: PluginConfig) -> "ModelIdentity":
    """The identity this instance forks: SGLang's server args, overridden by ``RFORK_*``.

    Reads the same fields, resolved the same way, as the seeds' agents read from
    SGLang's ``/server_info`` (``server_args.resolved_dict()``), so a client and
    seeds launched with the same flags match without any override.
    """
    resolved = _sglang_server_args()
    model = config.model or resolved.get("model_path")
    if not model:
        raise RforkPluginError(
            "cannot tell which model this instance loads: SGLang's server args are not published in this "
            f"process; set {ENV_MODEL} (and {ENV_DTYPE}, {ENV_TP_SIZE}) to what the seeds' agents registered"
        )
    from rfork_api.models import ModelIdentity

    # The one identity rule, as the seeds' agents apply it to SGLang's /server_info.
    return ModelIdentity.from_server_info(resolved, model=str(model), revision=config.revision, dtype=config.dtype,
                                          tp_size=config.tp_size)


def _sglang_server_args() -> dict:
    try:
        from sglang.srt.runtime_context import get_server_args

        args = get_server_args()
    except (ImportError, ValueError, AttributeError):
        return {}  # not published in this process (tests, embedders): RFORK_* must say
    if args is None:
        return {}
    try:
        return args.resolved_dict()
    except Exception:  # noqa: BLE001 - an SGLang without resolved_dict: read the raw fields
        return {name: getattr(args, name, None) for name in ("model_path", "revision", "dtype", "tp_size")}


def _draft_reason(model: Any) -> str:
    """Non-empty when ``model`` is a speculative draft model (SGLang issues #20818, #32905)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == _DRAFT_FRAME and "is_draft_worker" in frame.f_locals:
            return "draft (speculative) model" if frame.f_locals["is_draft_worker"] else ""
        frame = frame.f_back
    name = type(model).__name__
    if any(marker in name for marker in _DRAFT_CLASS_MARKERS):
        return f"draft (speculative) model {name}"
    return ""


def _transport(loader: Any, transfer_engine: Any):
    """SGLang's own TransferEngine, with its registered parameters, as an rfork Transport."""
    from rfork_agent.transport import MooncakeTransport

    protocol = os.environ.get("MOONCAKE_PROTOCOL", "rdma")
    # The protocol only labels the transport here: SGLang initialised the engine.
    transport = MooncakeTransport(protocol=protocol if protocol in ("tcp", "rdma") else "rdma",
                                  engine=transfer_engine)
    session_id = getattr(getattr(loader, "load_config", None),
                         "remote_instance_weight_loader_transfer_engine_session_id", "")
    if session_id:
        transport.session_id = session_id
    return transport


def _interruption(exc: BaseException) -> str:
    if isinstance(exc, ForkInterrupted):
        return signal.Signals(exc.signum).name
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt (SIGINT)"
    return f"{type(exc).__name__}({exc})" if str(exc) else type(exc).__name__


def _cleanup_outcome(client) -> str:
    if client is None or (client.job_id is None and client.cancellation is None):
        return "no fork job had been created yet"
    if client.cancellation is None:
        return (f"the cleanup of job {client.job_id} did not finish within {CANCEL_WAIT_SECONDS:g} s; the "
                "scheduler drops it after its client timeout and the agents expire its leases")
    return client.cancellation.describe()


def _client(config: PluginConfig, transport, on_progress):
    from rfork_agent.fork import ForkClient

    # Only pass the token when there is one: ForkClient takes it as a keyword.
    auth = {"token": config.token} if config.token else {}
    return ForkClient(config.scheduler_url, transport, progress=on_progress, **auth)


CANCEL_WAIT_SECONDS = 60.0
"""How long an interrupted load waits for the cancelled fork to clean up: reads on the wire end
within their own timeout (10 s + 0.1 s per MB by default), then releases and the job cancel
within ``ForkOptions.cleanup_seconds``."""


def _run_sync(make_coroutine: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from SGLang's synchronous loader, on a thread of its own.

    This thread only waits, so an interruption reaches it at once whatever it
    runs (SGLang's loader may be called from a thread that runs an event loop,
    and ``asyncio.run`` refuses to nest): KeyboardInterrupt, SystemExit, or
    SIGTERM where it would kill the process outright (see ``ForkInterrupted``).
    The coroutine is then cancelled and given ``CANCEL_WAIT_SECONDS`` to clean
    up before the interruption goes on.
    """
    runner = _CoroutineThread(make_coroutine)
    with _sigterm_interrupts():
        runner.start()
        try:
            runner.finished.wait()
        except BaseException:
            runner.cancel()
            runner.finished.wait(CANCEL_WAIT_SECONDS)
            raise
    return runner.result()


class _CoroutineThread(threading.Thread):
    """``asyncio.run(make_coroutine())`` on its own thread, cancellable from another.

    Wait on ``finished``, not ``join()``: in Python 3.11 a join interrupted by a signal
    handler's exception marks the still-running thread as stopped (bpo-45274's fix), and
    every later join returns at once.
    """

    def __init__(self, make_coroutine: Callable[[], Any]) -> None:
        super().__init__(name="rfork-fork", daemon=True)
        self._make_coroutine = make_coroutine
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._cancelled = False
        self._outcome: dict = {}
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self._outcome["value"] = asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._outcome["error"] = exc
        finally:
            self.finished.set()

    async def _main(self) -> Any:
        with self._lock:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            if self._cancelled:
                self._task.cancel()
        return await self._make_coroutine()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._loop is not None and self._task is not None:
                with contextlib.suppress(RuntimeError):  # the loop already closed: nothing to cancel
                    self._loop.call_soon_threadsafe(self._task.cancel)

    def result(self) -> Any:
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["value"]


@contextlib.contextmanager
def _sigterm_interrupts():
    """While a fork runs, SIGTERM raises ``ForkInterrupted`` here instead of killing the process.

    Only where SIGTERM has its default action, and only on the main thread (where
    Python runs signal handlers): a handler SGLang or an embedder installed stays
    in charge. The default action is back when the block ends.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum, _frame) -> None:
        raise ForkInterrupted(signum)

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _expected(exc: BaseException) -> bool:
    """Failures with a clear message of their own (no traceback needed in the log)."""
    from rfork_agent.fork import ForkError
    from rfork_api.errors import RforkApiError

    return isinstance(exc, (RforkApiError, ForkError, RforkPluginError))

