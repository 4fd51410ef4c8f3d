"""Every size and rate flag of every CLI: a bad value is one line on stderr and exit 2, never a traceback.

Each case runs the real ``rfork`` entry point in-process (the flags are
checked before anything starts, so nothing is spawned or bound).
"""

from __future__ import annotations

import pytest

from rfork_agent import cli

SCHED, SEED = "http://127.0.0.1:9", "http://127.0.0.1:9"
# command line prefix -> the size/rate flags it takes
COMMANDS = {
    "fork": ["fork", "--scheduler", SCHED, "--like-seed", SEED],
    "agent": ["agent", "--sglang-url", SEED, "--scheduler", SCHED],
    "scheduler": ["scheduler"],
    "testbed": ["testbed", "--model", "tiny"],
    "testbed --clients": ["testbed", "--model", "tiny", "--clients", "2"],
    "testbed-seed": ["testbed-seed", "--port", "0"],
    "chaos": ["chaos"],
    "bench fork": ["bench", "fork"],
    "bench qos": ["bench", "qos"],
    "bench fleet": ["bench", "fleet"],
}
SIZE_FLAGS = [
    ("fork", "--chunk-size"), ("scheduler", "--chunk-size"), ("scheduler", "--max-body-bytes"),
    ("agent", "--burst"), ("agent", "--read-piece"), ("testbed", "--chunk-size"), ("testbed-seed", "--size"),
    ("chaos", "--size"), ("chaos", "--chunk-size"), ("bench fork", "--size"), ("bench fork", "--chunk-size"),
    ("bench qos", "--size"), ("bench qos", "--chunk-size"), ("bench qos", "--read-piece"), ("bench fleet", "--size"),
    ("bench fleet", "--chunk-size"),
]
RATE_FLAGS = [("agent", "--rate-cap"), ("testbed", "--seed-rate"), ("chaos", "--seed-rate"), ("bench qos", "--cap"),
              ("fork", "--peer-rate"), ("testbed --clients", "--client-rate"), ("bench fleet", "--seed-rate"),
              ("bench fleet", "--client-rate")]
BAD_SIZES = {"1e400": "too large", "4096.5": "not a whole number of bytes", "-1MiB": "negative",
             "inf": "cannot read size", "nan": "cannot read size", "64Mbit": "unknown unit"}
BAD_RATES = {"1e400": "too large", "2Gb/s": "ambiguous (bits or bytes?)", "-5MB/s": "negative",
             "nan": "ambiguous", "none": "ambiguous", "100MB": "no time unit", "9GB/fortnight": "unknown unit"}


def run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own refusals
        rc = exc.code
    return rc, capsys.readouterr().err


def assert_one_line_refusal(rc: int, err: str, says: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and says in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("command, flag", SIZE_FLAGS)
@pytest.mark.parametrize("value", list(BAD_SIZES))
def test_a_bad_size_is_one_line(command, flag, value, capsys):
    rc, err = run(COMMANDS[command] + [f"{flag}={value}"], capsys)
    assert_one_line_refusal(rc, err, BAD_SIZES[value])


@pytest.mark.parametrize("command, flag", RATE_FLAGS)
@pytest.mark.parametrize("value", list(BAD_RATES))
def test_a_bad_rate_is_one_line(command, flag, value, capsys):
    rc, err = run(COMMANDS[command] + [f"{flag}={value}"], capsys)
    assert_one_line_refusal(rc, err, BAD_RATES[value])


@pytest.mark.parametrize("argv, says", [
    (COMMANDS["agent"] + ["--rate-cap", "0", "--throttle", "adaptive", "--slo-itl", "0.04"],
     "--rate-cap 0 pauses this seed, so --throttle adaptive has nothing to pace"),
    (COMMANDS["agent"] + ["--rate-cap", "0", "--throttle", "fixed"], "--rate-cap 0 pauses this seed"),
    (COMMANDS["testbed"] + ["--seeds", "2", "--seed-rate", "0"], "--seed-rate pauses every seed"),
    (COMMANDS["testbed"] + ["--seeds", "2", "--seed-rate", "0,1GB/s", "--throttle", "fixed"],
     "--seed-rate 0 pauses a seed, so --throttle fixed has nothing to pace"),
    (COMMANDS["chaos"] + ["--seed-rate", "0"], "--seed-rate a rate > 0"),
    (COMMANDS["chaos"] + ["--seed-rate", "unlimited"], "--seed-rate a rate > 0"),
    (COMMANDS["bench qos"] + ["--cap", "0"], "needs a link rate > 0"),
    (COMMANDS["agent"] + ["--burst", "0"], "--burst must be > 0 bytes"),
    (COMMANDS["fork"] + ["--peer-rate", "0", "--serve-seconds", "5"], "--serve-seconds serves chunks to other"),
    (COMMANDS["fork"] + ["--no-peers", "--serve-seconds", "5"], "--serve-seconds serves chunks to other"),
    (COMMANDS["fork"] + ["--serve-seconds", "-1"], "--serve-seconds must be a number of seconds >= 0"),
    (COMMANDS["fork"] + ["--serve-seconds", "inf"], "--serve-seconds must be a number of seconds >= 0"),
    (COMMANDS["fork"] + ["--peer-max-in-flight", "0"], "--peer-max-in-flight must be between 1 and 1024"),
    (COMMANDS["testbed"] + ["--client-rate", "50MB/s"], "give --clients N"),
    (COMMANDS["testbed"] + ["--no-peers"], "give --clients N"),
    (COMMANDS["testbed --clients"] + ["--client-rate", "0"], "use --no-peers for that"),
    (COMMANDS["testbed"] + ["--clients", "0"], "--clients must be at least 1"),
    (COMMANDS["testbed --clients"] + ["--tp-size", "2"], "--clients forks rank 0 into each client"),
    (COMMANDS["bench fleet"] + ["--seed-rate", "unlimited"], "--seed-rate must be a rate > 0"),
    (COMMANDS["bench fleet"] + ["--clients", "1,two"], "--clients must be whole numbers"),
    (COMMANDS["scheduler"] + ["--merge-seconds", "-1"], "--merge-seconds must be a number of seconds >= 0"),
    (COMMANDS["scheduler"] + ["--merge-seconds", "inf"], "--merge-seconds must be a number of seconds >= 0"),
    (COMMANDS["scheduler"] + ["--stream-reports-per-second", "-1"], "--stream-reports-per-second must be a rate >= 0"),
    (COMMANDS["scheduler"] + ["--stream-reports-per-second", "nan"], "--stream-reports-per-second must be a rate >= 0"),
    (COMMANDS["scheduler"] + ["--peer-read-deadline", "0"], "--peer-read-deadline must be > 0 seconds, got 0.0"),
    (COMMANDS["scheduler"] + ["--peer-read-deadline", "inf"], "--peer-read-deadline must be > 0 seconds, got inf"),
    (COMMANDS["scheduler"] + ["--client-timeout", "nan"], "--client-timeout must be > 0 seconds, got nan"),
])
def test_paused_and_unlimited_where_they_make_no_sense(argv, says, capsys):
    assert_one_line_refusal(*run(argv, capsys), says)


def test_gpu_run_refuses_a_bad_size_in_one_line(capsys, tmp_path):
    from bench import gpu_run

    assert gpu_run.main(["--out", str(tmp_path), "--device", "cpu", "--big-size", "1e400"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--big-size" in err and "too large" in err


@pytest.mark.parametrize("value, cap", [("0", 0.0), ("paused", 0.0), ("unlimited", None), ("uncapped", None),
                                        ("16Gbps", 2e9), ("2GB/s", 2e9), ("1.5GiB/s", 1.5 * 2**30)])
def test_the_agent_reads_its_rate_cap(value, cap):
    import argparse

    from rfork_agent import agent_cli

    parser = argparse.ArgumentParser()
    agent_cli.add_arguments(parser)
    args = parser.parse_args(COMMANDS["agent"][1:] + ["--rate-cap", value])
    assert agent_cli.build_config(args).rate_cap == cap


def test_the_agent_default_is_unlimited():
    import argparse

    from rfork_agent import agent_cli

    parser = argparse.ArgumentParser()
    agent_cli.add_arguments(parser)
    assert agent_cli.build_config(parser.parse_args(COMMANDS["agent"][1:])).rate_cap is None
