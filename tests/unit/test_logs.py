"""rfork_api/logs.py: the one logging set-up every CLI uses (levels per logger, -v, environment)."""

from __future__ import annotations

import argparse
import doctest
import io
import logging

import pytest

from rfork_api import logs


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    """Each test configures the process's logging; put it back as pytest had it. (The root logger's
    handlers and level are put back after every test of the suite: tests/conftest.py.)"""
    for name in (logs.LEVEL_ENV, logs.VERBOSE_ENV, logs.MOONCAKE_LEVEL_ENV):
        # setenv first so monkeypatch records the variable's absence too: setup_logging writes
        # os.environ itself (for the processes it starts), and a bare delenv of an unset name
        # records nothing to undo, so -v leaked into every later test's subprocesses.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    names = ("rfork",) + logs.LIBRARY_LOGGERS
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


def emitted(stream: io.StringIO) -> list[str]:
    for name, level in (("rfork.agent", logging.INFO), ("rfork.agent", logging.DEBUG), ("httpx", logging.INFO),
                        ("apscheduler.executors.default", logging.INFO), ("uvicorn.access", logging.INFO),
                        ("httpx", logging.WARNING)):
        logging.getLogger(name).log(level, "%s %s", name, logging.getLevelName(level))
    return [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]


def test_default_is_our_info_and_the_libraries_warnings():
    stream = io.StringIO()
    settings = logs.setup_logging("info", stream=stream)
    assert emitted(stream) == ["rfork.agent INFO", "httpx WARNING"]
    assert settings.uvicorn_options() == {"log_config": None, "log_level": logging.WARNING, "access_log": False}


@pytest.mark.parametrize("level, verbose", [("info", 1), ("debug", 0)])
def test_v_or_debug_bring_the_libraries_back(level, verbose, monkeypatch):
    stream = io.StringIO()
    settings = logs.setup_logging(level, verbose, stream=stream)
    assert emitted(stream) == ["rfork.agent INFO", "rfork.agent DEBUG", "httpx INFO",
                               "apscheduler.executors.default INFO", "uvicorn.access INFO", "httpx WARNING"]
    assert settings.uvicorn_options()["access_log"] is True
    assert logs.quiet_engine_start() is False  # TransferEngine's start-up log is shown too


def test_set_up_twice_replaces_the_handler_and_processes_we_start_inherit_verbosity(monkeypatch):
    logs.setup_logging("warning")
    logs.setup_logging("info", verbose=1)
    assert len([h for h in logging.getLogger().handlers if getattr(h, "_rfork", False)]) == 1
    import os
    assert os.environ[logs.VERBOSE_ENV] == "1" and os.environ[logs.MOONCAKE_LEVEL_ENV] == "INFO"


def test_mooncake_is_quiet_by_default_unless_the_operator_set_its_level(monkeypatch):
    import os
    logs.setup_logging("info")
    assert os.environ[logs.MOONCAKE_LEVEL_ENV] == "ERROR" and logs.quiet_engine_start()
    monkeypatch.setenv(logs.MOONCAKE_LEVEL_ENV, "INFO")
    logs.setup_logging("info")
    assert os.environ[logs.MOONCAKE_LEVEL_ENV] == "INFO" and not logs.quiet_engine_start()


def test_flags_take_their_default_from_the_environment(monkeypatch):
    monkeypatch.setenv(logs.LEVEL_ENV, "DEBUG")
    p = argparse.ArgumentParser()
    logs.add_log_arguments(p, default="warning")
    assert p.parse_args([]).log_level == "debug"
    assert p.parse_args(["-vv", "--log-level", "error"]).verbose == 2
    monkeypatch.setenv(logs.LEVEL_ENV, "loud")  # a bad value must not stop the CLI
    p = argparse.ArgumentParser()
    logs.add_log_arguments(p, default="warning")
    assert p.parse_args([]).log_level == "warning"


def test_a_bad_level_is_a_typed_error_naming_the_choices():
    with pytest.raises(logs.LogLevelError, match="'loud' is not one of debug, info, warning, error, critical"):
        logs.setup_logging("loud")


def test_docstring_examples():
    assert doctest.testmod(logs).failed == 0
