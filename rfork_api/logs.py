"""One logging set-up for every rfork process (scheduler, agent, fork, testbed, seed stand-in, bench).

By default a process logs one line per notable event of its own (the
``rfork.*`` loggers, at ``--log-level``, default info) and only warnings and
errors from the libraries under it: httpx and httpcore (one INFO line per
request: ~6 a second from an agent's heartbeats, liveness probes and scrapes),
APScheduler (one per job run: the scheduler's reaper twice a second), uvicorn
(start-up banner, access lines) and Mooncake's TransferEngine (its C++ glog
start-up chatter on stderr). ``-v`` brings the libraries' INFO lines back
(``-vv`` their DEBUG), as does ``--log-level debug``.

    >>> settings = LogSettings(level=logging.INFO)   # what `rfork agent` runs with by default
    >>> logging.getLevelName(settings.library_level)
    'WARNING'
    >>> logging.getLevelName(LogSettings(level=logging.DEBUG, verbose=1).library_level)   # -v
    'INFO'

Each CLI's ``add_arguments`` calls :func:`add_log_arguments`; ``rfork``
(rfork_agent/cli.py) then calls :func:`setup_logging_from_args` once for every
subcommand, and the services pass :func:`uvicorn_options` to uvicorn.

Environment: ``RFORK_LOG_LEVEL`` is the default of ``--log-level``;
``RFORK_LOG_VERBOSE`` (1 or 2) of ``-v``. A verbose process exports
``RFORK_LOG_VERBOSE`` so the processes it starts (the testbed's fleet) are
verbose too. ``MC_LOG_LEVEL`` (Mooncake's own: INFO, WARNING, ERROR), when
set, is left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import sys
from dataclasses import dataclass
from typing import Iterator

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}
LEVEL_ENV = "RFORK_LOG_LEVEL"
VERBOSE_ENV = "RFORK_LOG_VERBOSE"
MOONCAKE_LEVEL_ENV = "MC_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Libraries whose INFO lines are per request or per job run; set explicitly so a
#: library that configures its own logger level cannot bring them back.
LIBRARY_LOGGERS = ("httpx", "httpcore", "apscheduler", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

# glog's severities (Mooncake's TransferEngine logs through glog).
_GLOG_ERROR, _GLOG_FATAL = 2, 3
_GLOG_MIN_LEVEL_SYMBOL = "_ZN3fLI17FLAGS_minloglevelE"  # glog's FLAGS_minloglevel (C++ mangled)


@dataclass(frozen=True)
class LogSettings:
    """What :func:`setup_logging` applied: rfork's own level and how verbose the libraries are."""

    level: int
    """Level of the ``rfork`` loggers."""
    verbose: int = 0
    """0: libraries log warnings and errors only; 1: their INFO too; 2: their DEBUG."""

    @property
    def library_level(self) -> int:
        return {0: logging.WARNING, 1: logging.INFO}.get(self.verbose, logging.DEBUG)

    def uvicorn_options(self) -> dict:
        """``uvicorn.run``/``uvicorn.Config`` keywords: our handler, not uvicorn's own, and no access
        lines unless verbose."""
        return {"log_config": None, "log_level": self.library_level, "access_log": self.verbose > 0}


_applied = LogSettings(level=logging.INFO)


def uvicorn_options() -> dict:
    """:meth:`LogSettings.uvicorn_options` of the last :func:`setup_logging` in this process."""
    return _applied.uvicorn_options()


class LogLevelError(ValueError):
    """A log level that is not one of :data:`LEVELS`; the message says which are."""


def parse_level(text: str) -> str:
    """One of :data:`LEVELS`, any case.

        >>> parse_level("WARNING")
        'warning'
        >>> parse_level("loud")
        Traceback (most recent call last):
        ...
        rfork_api.logs.LogLevelError: --log-level 'loud' is not one of debug, info, warning, error, critical
    """
    level = str(text).strip().lower()
    if level not in LEVELS:
        raise LogLevelError(f"--log-level {text!r} is not one of {', '.join(LEVELS)}")
    return level


def add_log_arguments(parser: argparse.ArgumentParser, default: str = "info") -> None:
    """``--log-level`` and ``-v``; the default comes from ``$RFORK_LOG_LEVEL`` when set."""
    env = os.environ.get(LEVEL_ENV)
    try:
        default = parse_level(env) if env else default
    except LogLevelError:
        pass  # a bad environment value must not stop the CLI; setup_logging warns about it
    # A plain string, checked by setup_logging: argparse's own type errors print the usage too.
    parser.add_argument("--log-level", default=default, metavar="LEVEL",
                        help=f"rfork's own log level: {', '.join(LEVELS)} (default {default}; ${LEVEL_ENV}). "
                             "Libraries (httpx, APScheduler, uvicorn, Mooncake) log warnings and errors only "
                             "unless -v or debug")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="also log the libraries' INFO lines (each HTTP request, each scheduled job run, "
                             f"TransferEngine start-up); -vv their DEBUG; implies --log-level debug (${VERBOSE_ENV})")


def setup_logging_from_args(args: argparse.Namespace, default: str = "info") -> LogSettings:
    """:func:`setup_logging` from :func:`add_log_arguments`'s flags (missing ones take their defaults)."""
    return setup_logging(getattr(args, "log_level", None) or default, getattr(args, "verbose", 0) or 0)


def setup_logging(level: str | int = "info", verbose: int = 0, stream=None) -> LogSettings:
    """Configure this process's logging; safe to call again (the previous set-up is replaced).

    ``level`` is rfork's own level; ``verbose`` (or ``$RFORK_LOG_VERBOSE``)
    turns the libraries' INFO (1) or DEBUG (2) lines back on. ``debug`` implies
    ``verbose >= 1``: whoever asks for details wants the libraries' too.
    Raises :class:`LogLevelError` for an unknown level.
    """
    verbose = max(int(verbose or 0), _env_verbose())
    numeric = LEVELS[parse_level(level)] if isinstance(level, str) else int(level)
    if verbose:
        numeric = min(numeric, logging.DEBUG)
    elif numeric <= logging.DEBUG:
        verbose = 1
    settings = LogSettings(level=numeric, verbose=verbose)
    global _applied
    _applied = settings

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_rfork", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler._rfork = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    # Anything not ours (torch, asyncio, multipart, ...) follows the libraries' level.
    root.setLevel(settings.library_level)
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.setLevel(settings.library_level)
        # A uvicorn started earlier in this process with its own log config gave its loggers
        # their own handlers and no propagation: bring them back to this one handler.
        if name.startswith("uvicorn"):
            library.handlers.clear()
            library.propagate = True
            library.disabled = False
    logging.getLogger("rfork").setLevel(numeric)
    logging.captureWarnings(True)

    if verbose:
        os.environ[VERBOSE_ENV] = str(verbose)  # the processes we start inherit it
    quiet_mooncake_by_default()
    env_level = os.environ.get(LEVEL_ENV)
    if env_level and env_level.strip().lower() not in LEVELS:
        logging.getLogger("rfork").warning("ignoring %s=%r: not one of %s", LEVEL_ENV, env_level, ", ".join(LEVELS))
    return settings


def quiet_mooncake_by_default() -> None:
    """Set ``MC_LOG_LEVEL`` (unless set): ERROR, or INFO when verbose. For this process and those it starts.

    Mooncake reads it once per process, when its first engine is created; ERROR keeps real
    transfer errors and drops the INFO/WARNING chatter (topology, "No RDMA devices found").
    (``GLOG_minloglevel`` does not work: Mooncake sets glog's level from ``MC_LOG_LEVEL``.)
    """
    global _mooncake_level_set
    if os.environ.get(MOONCAKE_LEVEL_ENV) in (None, _mooncake_level_set):  # the operator's value wins
        _mooncake_level_set = os.environ[MOONCAKE_LEVEL_ENV] = "INFO" if _env_verbose() else "ERROR"


_mooncake_level_set: str | None = None


def _env_verbose() -> int:
    try:
        return max(int(os.environ.get(VERBOSE_ENV, "0") or 0), 0)
    except ValueError:
        return 0


def quiet_engine_start() -> bool:
    """Whether :func:`mooncake_start_quietly` silences TransferEngine's start-up log in this process."""
    return not _env_verbose() and os.environ.get(MOONCAKE_LEVEL_ENV, "ERROR").upper() == "ERROR"


@contextlib.contextmanager
def mooncake_start_quietly() -> Iterator[None]:
    """Around ``TransferEngine.initialize``: drop glog lines below FATAL, then restore the level.

    Mooncake (0.3.13) logs ``Local segment descriptor not found`` at ERROR on
    every start (its P2P handshake set-up looks up the local segment before it
    is registered; nothing is wrong), and ``MC_LOG_LEVEL`` goes no higher than
    ERROR, so a quiet start needs glog's own threshold. An initialise that
    fails still says so (its return code); ``-v`` shows TransferEngine's
    reasons. Does nothing when verbose, when ``MC_LOG_LEVEL`` asks for more
    than errors, or when glog's flag cannot be found.
    """
    flag = _glog_min_level() if quiet_engine_start() else None
    if flag is None:
        yield
        return
    before = flag.value
    flag.value = quiet = max(before, _GLOG_FATAL)
    try:
        yield
    finally:
        if flag.value == quiet:  # unless the engine loaded its own level meanwhile
            flag.value = before


def _glog_min_level() -> ctypes.c_int | None:
    """glog's ``FLAGS_minloglevel`` in the glog the loaded TransferEngine uses (found in /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line and ".so" in line}
    except OSError:
        return None
    # The wheels bundle glog (mooncake_transfer_engine*.libs/libglog-*.so); a build may link it into engine.so.
    candidates = sorted(p for p in paths if "libglog" in os.path.basename(p)) + sorted(
        p for p in paths if "mooncake" in p and "libglog" not in os.path.basename(p))
    for path in candidates:
        try:
            return ctypes.c_int.in_dll(ctypes.CDLL(path), _GLOG_MIN_LEVEL_SYMBOL)
        except (OSError, ValueError):
            continue
    return None
