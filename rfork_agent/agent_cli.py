"""`rfork agent`: run the seed agent beside one SGLang seed.

    rfork agent --sglang-url http://127.0.0.1:30000 --scheduler http://127.0.0.1:8700 \\
                --port 8800 --rate-cap 2GB/s      # or 16Gbps; 0 = paused; default unlimited

Serving QoS (issue #3): ``--throttle adaptive --slo-itl 0.04 [--slo-ttft 2] [--slo-budget 0.01]``
keeps the seed's inter-token latency inside its SLO while forks read from it;
each flag also reads an environment variable (``RFORK_THROTTLE``,
``RFORK_SLO_ITL``, ``RFORK_SLO_TTFT``, ``RFORK_SLO_BUDGET``,
``RFORK_THROTTLE_TUNING`` for ``--throttle-tuning``); a flag wins.

Inputs are checked before anything starts; a bad flag prints one line saying
what is wrong and exits 2 (no traceback).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from urllib.parse import urlparse

from rfork_api.auth import load_token
from rfork_api.logs import add_log_arguments, uvicorn_options
from rfork_api.units import UnitError, parse_rate, parse_size

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
THROTTLE_MODES = ("adaptive", "fixed", "off")

# Flag -> environment variable that supplies its default (deployments set SLOs per pod).
QOS_ENV = {
    "--throttle": "RFORK_THROTTLE",
    "--slo-itl": "RFORK_SLO_ITL",
    "--slo-ttft": "RFORK_SLO_TTFT",
    "--slo-budget": "RFORK_SLO_BUDGET",
    "--throttle-tuning": "RFORK_THROTTLE_TUNING",
    "--idle-watch": "RFORK_IDLE_WATCH",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sglang-url", required=True, help="the seed's HTTP URL, e.g. http://127.0.0.1:30000")
    p.add_argument("--scheduler", required=True, help="the rfork scheduler's URL, e.g. http://127.0.0.1:8700")
    p.add_argument("--seed-id", default=None,
                   help="this seed's id in the scheduler (default: seed-HOST-PORT of --sglang-url)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8800, help="port to bind (default 8800)")
    p.add_argument("--advertise-url", default=None,
                   help="URL fork clients use to reach this agent (default http://HOST:PORT; "
                        "required when HOST is a wildcard like 0.0.0.0)")
    p.add_argument("--rate-cap", default="unlimited",
                   help="most forks may read from this seed: bytes/s (100MB/s, 2GiB/s) or bits/s (10Gbps, "
                        "10Gbit/s); 0 pauses the seed (it serves no fork); unlimited (default) = no cap")
    p.add_argument("--burst", default=None,
                   help="token bucket burst in bytes, e.g. 64MiB (default max(0.25 s x rate, 1 MiB))")
    p.add_argument("--model", help="model identity override (default: the seed's model_path)")
    p.add_argument("--revision", help="revision override (default: the seed's, or 'main')")
    p.add_argument("--dtype", help="dtype override (default: the seed's)")
    p.add_argument("--tp-size", type=int, help="tp size override (default: the seed's)")
    p.add_argument("--ranks", default=None, help="comma-separated ranks to serve (default: 0..tp_size-1)")
    p.add_argument("--lease-ttl", type=float, default=30.0, help="seconds before an unreleased lease expires (default 30)")
    p.add_argument("--max-wait", type=float, default=5.0,
                   help="longest a lease request waits for budget before 429 (default 5 s)")
    p.add_argument("--read-piece", default="0", metavar="SIZE",
                   help="clients read each leased chunk in pieces of at most SIZE, one after another (e.g. 1MiB; "
                        "default 0: in one read): for a seed that one long read stalls, such as a GPU seed over "
                        "TCP (docs/qos.md \"Reads in pieces\")")
    p.add_argument("--read-piece-gap", type=float, default=0.0, metavar="SECONDS",
                   help="and wait SECONDS between two pieces (0 to 1; default 0)")
    add_log_arguments(p)
    p.add_argument("--token-file", default=None,
                   help="file holding the fleet's shared bearer token (default $RFORK_TOKEN_FILE, else "
                        "$RFORK_TOKEN; none = no auth). With a token, leases need the scheduler's signed grant")
    qos = p.add_argument_group("serving QoS (keep the seed inside its latency SLO while forks read from it)")
    # Plain strings here, checked in build_config: argparse's own type errors print usage
    # and cannot name the environment variable a bad value came from.
    qos.add_argument("--throttle", default=None, metavar="{adaptive,fixed,off}",
                     help="adaptive: follow the seed's latency (needs --rate-cap, --slo-itl); fixed: pace at "
                          "--rate-cap and export the seed's latency; off: pace at --rate-cap, no scraping "
                          "(default $RFORK_THROTTLE or off)")
    qos.add_argument("--slo-itl", default=None, metavar="SECONDS",
                     help="inter-token latency SLO, e.g. 0.04; best one of SGLang's ITL bucket bounds "
                          "(0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, ...) (default $RFORK_SLO_ITL)")
    qos.add_argument("--slo-ttft", default=None, metavar="SECONDS",
                     help="time-to-first-token SLO, e.g. 2; default $RFORK_SLO_TTFT or not judged")
    qos.add_argument("--slo-budget", default=None, metavar="FRACTION",
                     help="fraction of tokens allowed above the SLO, in (0, 1) (default $RFORK_SLO_BUDGET or 0.01)")
    qos.add_argument("--throttle-tuning", default=None, metavar="FIELD=VALUE,...",
                     help="override the control law's ControllerConfig fields (throttle/controller.py), e.g. "
                          "confidence_z=1.5,off_every_max_seconds=30, or law=aimd for the law before issue 16; "
                          "'none' disables a field that allows it (default $RFORK_THROTTLE_TUNING)")
    qos.add_argument("--idle-watch", default=None, metavar="SECONDS",
                     help="while the adaptive law gives an idle seed the cap, also scrape it this often and "
                          "decide at once when requests return; 0 = only every second "
                          "(default $RFORK_IDLE_WATCH or 0.25)")
    qos.add_argument("--seed-metrics-url", default=None,
                     help="the seed's Prometheus endpoint (default SGLANG_URL/metrics)")


def default_seed_id(sglang_url: str) -> str:
    """seed-HOST-PORT of the seed's URL (characters the scheduler accepts in ids).

        >>> default_seed_id("http://127.0.0.1:30000")
        'seed-127.0.0.1-30000'
    """
    parsed = urlparse(sglang_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"seed-{parsed.hostname}-{port}"


class _BadFlag(Exception):
    pass


def _url(flag: str, value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise _BadFlag(f"{flag} {value!r} is not an http(s) URL like http://127.0.0.1:30000")
    try:
        parsed.port
    except ValueError:
        raise _BadFlag(f"{flag} {value!r} has an invalid port") from None
    return value.rstrip("/")


def _flag_or_env(args: argparse.Namespace, flag: str) -> tuple[str | None, str]:
    """The flag's value, else its environment variable's; and where it came from (for messages)."""
    value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
    if value is not None:
        return value, flag
    env = QOS_ENV[flag]
    value = os.environ.get(env)
    return (value if value not in (None, "") else None), f"{flag} (from ${env})"


def _positive_seconds(args: argparse.Namespace, flag: str, *, zero_is_off: bool = False,
                      example: str = "0.04") -> float | None:
    raw, source = _flag_or_env(args, flag)
    if raw is None:
        return None
    off = " (0 = off)" if zero_is_off else ""
    try:
        value = float(raw)
    except ValueError:
        raise _BadFlag(f"{source} {raw!r} is not a number of seconds, e.g. {example}{off}") from None
    if not ((value > 0 or (zero_is_off and value == 0)) and math.isfinite(value)):
        raise _BadFlag(f"{source} must be {'0 (off) or ' if zero_is_off else ''}a number of seconds > 0, got {raw}")
    return value


def qos_settings(args: argparse.Namespace, rate_cap: float | None) -> dict:
    """AgentConfig's QoS fields from flags and environment; raises _BadFlag with a one-line reason."""
    raw_mode, mode_source = _flag_or_env(args, "--throttle")
    mode = (raw_mode or "off").strip().lower()
    if mode not in THROTTLE_MODES:
        raise _BadFlag(f"{mode_source} {raw_mode!r} is not one of {', '.join(THROTTLE_MODES)}")
    itl = _positive_seconds(args, "--slo-itl")
    ttft = _positive_seconds(args, "--slo-ttft")
    raw_budget, budget_source = _flag_or_env(args, "--slo-budget")
    budget = 0.01
    if raw_budget is not None:
        try:
            budget = float(raw_budget)
        except ValueError:
            raise _BadFlag(f"{budget_source} {raw_budget!r} is not a fraction, e.g. 0.01 for 1%") from None
        if not 0 < budget < 1:
            raise _BadFlag(f"{budget_source} must be a fraction strictly between 0 and 1, e.g. 0.01 for 1%; "
                           f"got {raw_budget}")
    if ttft is not None and itl is None:
        raise _BadFlag("--slo-ttft needs --slo-itl too: the throttle always judges inter-token latency")
    if mode == "adaptive":
        if rate_cap is None:
            raise _BadFlag("--throttle adaptive needs --rate-cap (the link's rate, e.g. 2GB/s): the throttle's floor "
                           "(5% of it) and its recovery step (1/16) are fractions of the cap")
        if itl is None:
            raise _BadFlag("--throttle adaptive needs --slo-itl SECONDS (or $RFORK_SLO_ITL), e.g. 0.04")
    if mode == "fixed" and rate_cap is None:
        raise _BadFlag("--throttle fixed paces at --rate-cap; give one, e.g. --rate-cap 200MB/s")
    if mode != "off" and rate_cap == 0:
        raise _BadFlag(f"--rate-cap 0 pauses this seed, so --throttle {mode} has nothing to pace; give the "
                       "link's rate, e.g. --rate-cap 10Gbps, or --throttle off")
    settings = {"throttle": mode, "slo_itl_seconds": itl, "slo_ttft_seconds": ttft, "slo_budget": budget}
    tuning = throttle_tuning(args, rate_cap)
    if tuning is not None:
        settings["controller"] = tuning
    if getattr(args, "seed_metrics_url", None):
        settings["metrics_url"] = _url("--seed-metrics-url", args.seed_metrics_url)
    watch = _positive_seconds(args, "--idle-watch", zero_is_off=True, example="0.25")
    if watch is not None:
        settings["qos_idle_watch_seconds"] = watch
    return settings


def throttle_tuning(args: argparse.Namespace, rate_cap: float | None):
    """A ControllerConfig from ``--throttle-tuning field=value,...`` (None when not given).

    The cap and the interval-derived defaults stay the agent's; only the named
    fields change, and ControllerConfig's own checks say what a bad value is.
    """
    from throttle.controller import InvalidTuning, tuning_from_text

    raw, source = _flag_or_env(args, "--throttle-tuning")
    if raw is None:
        return None
    if rate_cap is None:
        raise _BadFlag(f"{source} tunes the adaptive law, which needs --rate-cap")
    try:
        return tuning_from_text(raw, rate_cap)
    except InvalidTuning as exc:
        raise _BadFlag(f"{source}: {exc}") from None



def build_config(args: argparse.Namespace):
    """AgentConfig from parsed flags; raises _BadFlag with a one-line reason."""
    from rfork_agent.agent import AgentConfig
    from rfork_api.models import ReadPieces

    sglang_url = _url("--sglang-url", args.sglang_url)
    scheduler_url = _url("--scheduler", args.scheduler)
    advertise = _url("--advertise-url", args.advertise_url) if args.advertise_url else ""
    if not 0 < args.port < 65536:
        raise _BadFlag(f"--port {args.port} is not in 1..65535")
    if args.host in ("0.0.0.0", "::", "") and not advertise:
        raise _BadFlag(f"--host {args.host!r} is a wildcard address; give --advertise-url with the address "
                       "fork clients should use, e.g. http://10.0.0.5:8800")
    try:
        cap = parse_rate(args.rate_cap)
    except UnitError as exc:
        raise _BadFlag(f"--rate-cap: {exc}") from None
    try:
        burst = float(parse_size(args.burst)) if args.burst is not None else None
    except UnitError as exc:
        raise _BadFlag(f"--burst: {exc}") from None
    if burst is not None and burst <= 0:
        raise _BadFlag(f"--burst must be > 0 bytes, got {args.burst}")
    if not (args.lease_ttl > 0 and math.isfinite(args.lease_ttl)):
        raise _BadFlag(f"--lease-ttl must be a number of seconds > 0, got {args.lease_ttl}")
    if not (0 <= args.max_wait < math.inf):
        raise _BadFlag(f"--max-wait must be a number of seconds >= 0, got {args.max_wait}")
    try:
        pieces = ReadPieces.from_flags(args.read_piece, args.read_piece_gap)
    except ValueError as exc:
        raise _BadFlag(str(exc)) from None
    if args.tp_size is not None and args.tp_size < 1:
        raise _BadFlag(f"--tp-size must be >= 1, got {args.tp_size}")
    ranks = None
    if args.ranks:
        try:
            ranks = tuple(sorted({int(r) for r in args.ranks.split(",") if r.strip()}))
        except ValueError:
            raise _BadFlag(f"--ranks {args.ranks!r} must be comma-separated integers, e.g. 0,1") from None
        if not ranks or ranks[0] < 0:
            raise _BadFlag(f"--ranks {args.ranks!r} must list ranks >= 0")
        if args.tp_size is not None and ranks[-1] >= args.tp_size:
            raise _BadFlag(f"--ranks {args.ranks!r} has rank {ranks[-1]} >= --tp-size {args.tp_size}")
    if args.log_level.lower() not in LOG_LEVELS:
        raise _BadFlag(f"--log-level {args.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    qos = qos_settings(args, cap)
    try:
        return AgentConfig(
            seed_id=args.seed_id or default_seed_id(sglang_url),
            sglang_url=sglang_url,
            scheduler_url=scheduler_url,
            host=args.host,
            port=args.port,
            agent_url=advertise,
            rate_cap=cap,
            burst_bytes=burst,
            model=args.model,
            revision=args.revision,
            dtype=args.dtype,
            tp_size=args.tp_size,
            ranks=ranks,
            lease_ttl_seconds=args.lease_ttl,
            max_wait_seconds=args.max_wait,
            read_piece_bytes=pieces.read_piece_bytes,
            read_piece_gap_seconds=pieces.read_piece_gap_seconds,
            token=load_token(args.token_file),
            **qos,
        )
    except ValueError as exc:
        raise _BadFlag(str(exc)) from None


def main(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
    except _BadFlag as exc:
        print(f"rfork agent: error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from rfork_agent.agent import create_app
    from rfork_api.units import format_rate

    logging.getLogger("rfork").info(
        "agent %s for %s -> scheduler %s, cap %s, serving on %s, throttle %s%s",
        config.seed_id, config.sglang_url, config.scheduler_url, format_rate(config.rate_cap), config.advertised_url,
        config.throttle,
        "" if config.slo is None else f" (ITL SLO {config.slo_itl_seconds:g} s, budget {config.slo_budget:.2%}"
        + ("" if config.slo_ttft_seconds is None else f", TTFT SLO {config.slo_ttft_seconds:g} s") + ")",
    )
    try:
        uvicorn.run(create_app(config), host=config.host, port=config.port, **uvicorn_options())
    except OSError as exc:  # e.g. the port is taken
        print(f"rfork agent: error: cannot serve on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0
