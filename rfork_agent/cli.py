"""The `rfork` command: one entry point, one subcommand per component.

Subcommands import their component lazily, so `rfork agent` does not pay for
torch and `rfork --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with add_arguments/main, one-line help)
SUBCOMMANDS = {
    "scheduler": ("scheduler.cli", "run the fork scheduler (seed registry, fork jobs)"),
    "agent": ("rfork_agent.agent_cli", "run the seed-side agent beside one SGLang seed"),
    "fork": ("rfork_agent.fork_cli", "fork one rank's weights through a scheduler"),
    "testbed": ("testbed.orchestrator", "start a local fleet on loopback and fork a model end to end"),
    "testbed-seed": ("testbed.seed", "run one seed stand-in (used by `rfork testbed`)"),
    "bench": ("bench.cli", "benchmarks that print numbers (fork, qos, scheduler)"),
    "chaos": ("testbed.chaos", "run the fault matrix on a local fleet and print what survived"),
    "gate": ("rfork_agent.gate_cli", "may a rollout step proceed? exit 0 proceed, 1 hold (SLO at risk), 2 cannot tell"),
    "simulate": ("sim.cli", "simulate a fleet scale-out (1 to 1024+ instances) driven by the real planner"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rfork",
        description="Fault-tolerant, multi-seed weight forking for SGLang over Mooncake TransferEngine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"rfork: error: unknown command {argv[0]!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"rfork {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    from rfork_api.logs import LogLevelError, setup_logging_from_args

    try:
        setup_logging_from_args(args)
    except LogLevelError as exc:
        print(f"rfork {name}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
