"""`rfork agent`: run the seed agent beside one SGLang seed.

    rfork agent --sglang-url http://127.0.0.1:30000 --scheduler http://127.0.0.1:8700 \\
                --port 8800 --rate-cap 2GB/s

Inputs are checked before anything starts; a bad flag prints one line saying
what is wrong and exits 2 (no traceback).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from urllib.parse import urlparse

from rfork_agent.units import UnitError, parse_rate, parse_size

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


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
    p.add_argument("--rate-cap", default="inf",
                   help="bytes/s forks may read from this seed, e.g. 100MB/s, 2GiB/s, or inf (default inf)")
    p.add_argument("--burst", default=None, help="token bucket burst, e.g. 64MiB (default max(0.25 s x rate, 1 MiB))")
    p.add_argument("--model", help="model identity override (default: the seed's model_path)")
    p.add_argument("--revision", help="revision override (default: the seed's, or 'main')")
    p.add_argument("--dtype", help="dtype override (default: the seed's)")
    p.add_argument("--tp-size", type=int, help="tp size override (default: the seed's)")
    p.add_argument("--ranks", default=None, help="comma-separated ranks to serve (default: 0..tp_size-1)")
    p.add_argument("--lease-ttl", type=float, default=30.0, help="seconds before an unreleased lease expires (default 30)")
    p.add_argument("--max-wait", type=float, default=5.0,
                   help="longest a lease request waits for budget before 429 (default 5 s)")
    p.add_argument("--log-level", default="info", help=f"one of {', '.join(LOG_LEVELS)} (default info)")


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


def build_config(args: argparse.Namespace):
    """AgentConfig from parsed flags; raises _BadFlag with a one-line reason."""
    from rfork_agent.agent import AgentConfig

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
        raise _BadFlag("--burst must be > 0 bytes")
    if not (args.lease_ttl > 0 and math.isfinite(args.lease_ttl)):
        raise _BadFlag(f"--lease-ttl must be a number of seconds > 0, got {args.lease_ttl}")
    if not (0 <= args.max_wait < math.inf):
        raise _BadFlag(f"--max-wait must be a number of seconds >= 0, got {args.max_wait}")
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
    from rfork_agent.units import format_rate

    logging.getLogger("rfork").setLevel(args.log_level.upper())
    logging.getLogger("rfork").info(
        "agent %s for %s -> scheduler %s, cap %s, serving on %s",
        config.seed_id, config.sglang_url, config.scheduler_url, format_rate(config.rate_cap), config.advertised_url,
    )
    try:
        uvicorn.run(create_app(config), host=config.host, port=config.port,
                    log_level=args.log_level.lower(), access_log=False)
    except OSError as exc:  # e.g. the port is taken
        print(f"rfork agent: error: cannot serve on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0
