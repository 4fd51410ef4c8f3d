"""`rfork scheduler`: run the fork scheduler."""

from __future__ import annotations

import argparse
import logging
import math
import sys

from rfork_api.logs import add_log_arguments, uvicorn_options
from rfork_api.units import UnitError, parse_size
from scheduler.partition import MAX_DECIDERS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--heartbeat-timeout", type=float, default=5.0, help="drop seeds silent this long (s)")
    p.add_argument("--client-timeout", type=float, default=30.0, help="abandon jobs whose client is silent this long (s)")
    p.add_argument("--peer-read-deadline", type=float, default=30.0, metavar="S",
                   help="a read from a peer whose reader went away without reporting it counts as on the wire "
                        "this long more; the peer's withdraw waits for it. Keep it above the clients' read "
                        "timeout (10 s + 1 s per 10 MB of chunk) (default 30)")
    p.add_argument("--chunk-size", default="64MiB", help="default chunk size (default 64MiB)")
    p.add_argument("--max-in-flight-per-seed", type=int, default=4,
                   help="chunk reads a job keeps in flight per seed at most (default 4)")
    p.add_argument("--pipeline-seconds", type=float, default=0.5,
                   help="in-flight budget per seed, in seconds of its allowed rate (default 0.5)")
    p.add_argument("--merge-seconds", type=float, default=0.0, metavar="S",
                   help="also size merged assignments to about S seconds of each source's measured rate "
                        "(up to 16 GiB): fewer /work calls on fast links (default 0: 256 MiB at most)")
    p.add_argument("--max-forks-per-seed", type=int, default=None, metavar="N",
                   help="fork jobs that may read from one seed rank at once, fleet-wide; more wait in a queue "
                        "(GET /v1/fleet shows it). Default: no limit")
    p.add_argument("--stream-stripes", type=int, default=8, metavar="N",
                   help="peers that register a landed map follow other peers' maps, one stream per stripe of "
                        "N, with no decision per chunk (docs/fleet.md, \"Streams\"); 0 = off (default 8)")
    p.add_argument("--stream-fanout", type=int, default=8, metavar="N",
                   help="children a streaming peer relays its home stripe to (default 8)")
    p.add_argument("--stream-min-members", type=int, default=16, metavar="N",
                   help="a group of forks streams once N of them registered landed maps; fewer feed each other "
                        "per chunk (default 16)")
    p.add_argument("--stream-reports-per-second", type=float, default=256.0, metavar="R",
                   help="pace streaming forks' progress reports so that together they send about R a second "
                        "(each at most every members / R seconds, at least its own 1 s, at most a third of "
                        "--client-timeout): a scale-out's reports cost about R /work calls a second whatever "
                        "its size; 0 = every fork reports every second (default 256)")
    p.add_argument("--layout-cache-tensors", type=int, default=2_000_000, metavar="N",
                   help="tensors of manifest layouts kept, so a scale-out's forks send their manifests by "
                        "reference (about 150 bytes each); 0 = every fork sends its manifest whole "
                        "(default 2000000)")
    p.add_argument("--max-body-bytes", default="64MiB",
                   help="largest request body accepted; larger ones get 413 (default 64MiB)")
    p.add_argument("--token-file", default=None,
                   help="file holding the fleet's shared bearer token (default $RFORK_TOKEN_FILE, else "
                        "$RFORK_TOKEN; none = no auth). Also signs the lease grants agents verify")
    p.add_argument("--front-ends", type=int, default=0, metavar="N",
                   help="serve HTTP from N front-end processes that pass requests to this one, which decides "
                        "(for scale-outs of hundreds of forks: parsing their requests costs more CPU than "
                        "deciding them); 0 = serve HTTP in this process (default 0)")
    p.add_argument("--deciders", type=int, default=1, metavar="K",
                   help="decide in K processes, each owning the ranks r with r %% K equal to its index (a TP8 "
                        "fleet's 8 ranks never feed each other: --deciders 8 decides them in parallel); needs "
                        "--front-ends, which route each request to its decider (default 1)")
    add_log_arguments(p)


def main(args: argparse.Namespace) -> int:
    from scheduler.chunking import InvalidChunkSize, validate_chunk_size

    try:
        chunk = parse_size(args.chunk_size)
        validate_chunk_size(chunk)
    except (UnitError, InvalidChunkSize) as exc:
        print(f"rfork scheduler: error: --chunk-size: {exc}", file=sys.stderr)
        return 2
    try:
        max_body = parse_size(args.max_body_bytes)
    except UnitError as exc:
        print(f"rfork scheduler: error: --max-body-bytes: {exc}", file=sys.stderr)
        return 2
    if max_body < 4096:
        print(f"rfork scheduler: error: --max-body-bytes must be at least 4KiB, got {max_body}", file=sys.stderr)
        return 2
    for flag, value in (("--heartbeat-timeout", args.heartbeat_timeout), ("--client-timeout", args.client_timeout),
                        ("--peer-read-deadline", args.peer_read_deadline)):
        if not 0 < value < math.inf:
            print(f"rfork scheduler: error: {flag} must be > 0 seconds, got {value}", file=sys.stderr)
            return 2
    if args.max_forks_per_seed is not None and args.max_forks_per_seed < 1:
        print(f"rfork scheduler: error: --max-forks-per-seed must be >= 1 (leave it out for no limit), "
              f"got {args.max_forks_per_seed}", file=sys.stderr)
        return 2
    if not args.pipeline_seconds > 0:
        print("rfork scheduler: error: --pipeline-seconds must be > 0", file=sys.stderr)
        return 2
    if not 0 <= args.stream_reports_per_second < math.inf:
        print("rfork scheduler: error: --stream-reports-per-second must be a rate >= 0 (0: no pacing), got "
              f"{args.stream_reports_per_second}", file=sys.stderr)
        return 2
    if not 0 <= args.merge_seconds < math.inf:
        print(f"rfork scheduler: error: --merge-seconds must be a number of seconds >= 0, got {args.merge_seconds}",
              file=sys.stderr)
        return 2
    for flag, value, low, high, rule in (
            ("--max-in-flight-per-seed", args.max_in_flight_per_seed, 1, None, ">= 1"),
            ("--stream-stripes", args.stream_stripes, 0, 1024, "0 (off) to 1024"),
            ("--stream-fanout", args.stream_fanout, 1, 1024, "1 to 1024"),
            ("--stream-min-members", args.stream_min_members, 1, None, ">= 1"),
            ("--layout-cache-tensors", args.layout_cache_tensors, 0, None, ">= 0 (0: no layouts kept)"),
            ("--front-ends", args.front_ends, 0, 64, "0 (serve HTTP here) to 64"),
            ("--deciders", args.deciders, 1, MAX_DECIDERS, f"1 to {MAX_DECIDERS}")):
        if value < low or (high is not None and value > high):
            print(f"rfork scheduler: error: {flag} must be {rule}, got {value}", file=sys.stderr)
            return 2
    if args.deciders > 1 and not args.front_ends:
        print(f"rfork scheduler: error: --deciders {args.deciders} needs --front-ends N (N >= 1): the front ends "
              "route each request to the decider that owns it", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"rfork scheduler: error: --port {args.port} is not a TCP port", file=sys.stderr)
        return 2

    from rfork_api.auth import AuthConfigError, load_token

    try:
        token = load_token(args.token_file)
    except AuthConfigError as exc:
        print(f"rfork scheduler: error: --token-file: {exc}", file=sys.stderr)
        return 2
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"rfork scheduler: warning: listening on {args.host} with no token: anyone who reaches it can "
              "register seeds and create forks (set --token-file)", file=sys.stderr)

    import uvicorn

    from scheduler.fleet import AdmissionConfig
    from scheduler.planner import PlannerConfig
    from scheduler.service import SchedulerConfig, create_app, tune_gc

    config = SchedulerConfig(heartbeat_timeout_seconds=args.heartbeat_timeout,
                             client_timeout_seconds=args.client_timeout, default_chunk_size=chunk,
                             peer_read_deadline_seconds=args.peer_read_deadline,
                             max_body_bytes=max_body, token=token, stream_stripes=args.stream_stripes,
                             stream_fanout=args.stream_fanout, stream_min_members=args.stream_min_members,
                             stream_reports_per_second=args.stream_reports_per_second,
                             layout_cache_tensors=args.layout_cache_tensors,
                             admission=AdmissionConfig(max_forks_per_seed=args.max_forks_per_seed),
                             deciders=args.deciders,
                             planner=PlannerConfig(max_in_flight_per_seed=args.max_in_flight_per_seed,
                                                   pipeline_seconds=args.pipeline_seconds,
                                                   merge_seconds=args.merge_seconds))
    # uvicorn's own start-up lines are -v only: say once that we serve.
    logging.getLogger("rfork.scheduler").info(
        "scheduler on http://%s:%d (heartbeat timeout %g s, client timeout %g s, auth %s)", args.host, args.port,
        args.heartbeat_timeout, args.client_timeout, "on" if token else "off")
    app = create_app(config)
    tune_gc()
    if not args.front_ends:
        uvicorn.run(app, host=args.host, port=args.port, **uvicorn_options())
        return 0

    from scheduler import front_ends

    try:
        listening = front_ends.listen(args.host, args.port)
    except OSError as exc:
        print(f"rfork scheduler: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    logging.getLogger("rfork.scheduler").info(
        "serving HTTP from %d front-end processes%s", args.front_ends,
        f", deciding in {args.deciders} processes (ranks r % {args.deciders})" if args.deciders > 1 else "")
    try:
        return front_ends.serve(app, listening, args.front_ends, token=token, max_body_bytes=max_body,
                                log_level=args.log_level, verbose=args.verbose, deciders=args.deciders)
    except front_ends.FrontEndError as exc:
        print(f"rfork scheduler: error: {exc}", file=sys.stderr)
        return 1
