"""`rfork agent`: run the seed agent beside one SGLang seed."""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlparse

from rfork_agent.units import UnitError, parse_rate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sglang-url", required=True, help="the seed's HTTP URL, e.g. http://127.0.0.1:30000")
    p.add_argument("--scheduler", required=True, help="the rfork scheduler's URL")
    p.add_argument("--seed-id", default=None, help="id in the scheduler (default: seed-HOST-PORT of --sglang-url)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=8800)
    p.add_argument("--advertise-url", default=None, help="URL fork clients use to reach this agent (default http://HOST:PORT)")
    p.add_argument("--rate-cap", default="inf", help="bytes/s forks may read from this seed, e.g. 2GB/s (default inf)")
    p.add_argument("--model", help="model identity override (default: the seed's model_path)")
    p.add_argument("--revision", help="revision override (default: the seed's, or 'main')")
    p.add_argument("--dtype", help="dtype override (default: the seed's)")
    p.add_argument("--tp-size", type=int, help="tp size override (default: the seed's)")
    p.add_argument("--lease-ttl", type=float, default=30.0, help="seconds before an unreleased lease expires")
    p.add_argument("--log-level", default="INFO")


def _check_url(flag: str, url: str) -> str | None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return f"{flag} {url!r} is not an http(s) URL like http://127.0.0.1:30000"
    return None


def main(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"rfork agent: error: {message}", file=sys.stderr)
        return 2

    for flag, url in (("--sglang-url", args.sglang_url), ("--scheduler", args.scheduler)):
        if (problem := _check_url(flag, url)) is not None:
            return fail(problem)
    try:
        cap = parse_rate(args.rate_cap)
    except UnitError as exc:
        return fail(f"--rate-cap: {exc}")
    if not args.lease_ttl > 0:
        return fail(f"--lease-ttl must be > 0 seconds, got {args.lease_ttl}")
    if args.tp_size is not None and args.tp_size < 1:
        return fail("--tp-size must be >= 1")
    seed_id = args.seed_id or "seed-" + urlparse(args.sglang_url).netloc.replace(":", "-")

    import uvicorn

    from rfork_agent.agent import AgentConfig, create_app

    config = AgentConfig(
        seed_id=seed_id, sglang_url=args.sglang_url.rstrip("/"), scheduler_url=args.scheduler.rstrip("/"),
        agent_url=args.advertise_url or "", host=args.host, port=args.port, rate_cap=cap,
        model=args.model, revision=args.revision, dtype=args.dtype, tp_size=args.tp_size,
        lease_ttl_seconds=args.lease_ttl,
    )
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level.lower(),
                access_log=False)
    return 0
