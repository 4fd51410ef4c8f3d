"""Reads in pieces against whole reads, at fixed rates on the same seeds: ``python -m bench.piece_study``.

The question (docs/qos.md, "Reads in pieces"): does a seed pay for a chunk read per byte, or per read? On a
GPU seed over TCP each whole read is staged through host memory by copies on the GPU, and its decode waits
behind them; if the cost is per read, the same bytes in short pieces cost the seed less, and the throttle
can move more within the same budget. A fixed rate, not the law, so that the arms differ in the reads only.

One fleet (``bench.qos_bench``'s: the plant's seeds and load, two fork loops that keep asking for bytes), the
SLO chosen from a no-transfer baseline as the QoS bench chooses it, then, at every rate, ``--cycles`` cycles
of one window per arm: ``off`` (rate 0, the seed alone), ``whole`` (one read a chunk) and one arm per
``--pieces`` entry (``SIZE`` or ``SIZE:GAP``), the agents switched by ``PUT /v1/read-pieces`` and held at the
rate by ``PUT /v1/throttle``. The order alternates (ABC, CBA, ...), so a drift of the host's speed within the
minutes weighs on every arm alike. Per window: each seed's tokens and tokens over the SLO, the bytes that
landed. Per rate and arm: the share pooled over the windows and seeds, and each arm's difference from
``whole`` paired by cycle, with its standard error.

    python -m bench.piece_study --plant gpu-decode --pieces 1MiB,1MiB:0.005 --rates 5MB/s,20MB/s \\
        --cycles 3 --window-seconds 15 --deadline-seconds 540 --json $OUT/pieces.json --plot $OUT/pieces.png

Exit 0 (measured), 2 (bad flags), 3 (the measurement failed), 130 (interrupted: partial JSON kept).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import httpx

from bench import qos_bench
from bench.qos_plants import PlantError, get_plant
from rfork_api.logs import add_log_arguments, quiet_mooncake_by_default, setup_logging_from_args
from rfork_api.models import ReadPieces
from rfork_api.units import UnitError, format_rate, parse_rate, parse_size

OFF, WHOLE = "off", "whole"


class StudyArgsError(ValueError):
    """A flag the study cannot run with; the message is the one line to print."""


@dataclass(frozen=True)
class Arm:
    """One way of reading: ``off`` (no transfer), ``whole`` (one read a chunk) or pieces."""

    name: str
    pieces: ReadPieces
    transfer: bool = True


def parse_arm(text: str) -> Arm:
    """``SIZE`` or ``SIZE:GAP`` -> an arm reading in pieces. Raises StudyArgsError.

        >>> parse_arm("1MiB").pieces.read_piece_bytes, parse_arm("256KiB:0.005").pieces.read_piece_gap_seconds
        (1048576, 0.005)
        >>> try:
        ...     parse_arm("1KiB")
        ... except StudyArgsError as exc:
        ...     print(exc)
        --pieces 1KiB must be 0 (whole reads) or at least 64KiB, got 1KiB
    """
    size_text, _, gap_text = text.strip().partition(":")
    try:
        gap = float(gap_text) if gap_text else 0.0
    except ValueError:
        raise StudyArgsError(f"--pieces {text}: cannot read the gap {gap_text!r} (give SIZE or SIZE:GAP_SECONDS, "
                             "e.g. 1MiB:0.005)") from None
    try:
        pieces = ReadPieces.from_flags(size_text, gap, piece_flag=f"--pieces {text.strip()}",
                                       gap_flag=f"--pieces {text.strip()}: the gap")
    except ValueError as exc:
        raise StudyArgsError(str(exc)) from None
    if not pieces.read_piece_bytes:
        raise StudyArgsError(f"--pieces {text}: an arm in pieces needs a size (whole reads always run)")
    return Arm(text.strip(), pieces)


def arms_of(pieces: list[str], with_off: bool = True) -> list[Arm]:
    arms = [Arm(OFF, ReadPieces(), transfer=False)] if with_off else []
    arms.append(Arm(WHOLE, ReadPieces()))
    for text in pieces:
        arm = parse_arm(text)
        if arm.name in {a.name for a in arms}:
            raise StudyArgsError(f"--pieces names {arm.name} twice")
        arms.append(arm)
    return arms


def cycle_order(arms: list[str], cycle: int) -> list[str]:
    """The arms' order in ``cycle``: as given, then reversed, and so on.

        >>> [cycle_order(["off", "whole", "1MiB"], k) for k in range(3)]
        [['off', 'whole', '1MiB'], ['1MiB', 'whole', 'off'], ['off', 'whole', '1MiB']]
    """
    return list(arms) if cycle % 2 == 0 else list(reversed(arms))


@dataclass(frozen=True)
class Window:
    """One measured window: an arm at a rate in a cycle."""

    rate: float
    arm: str
    cycle: int
    tokens: tuple[float, ...]
    """Per seed."""
    slow: tuple[float, ...]
    """Per seed: tokens over the SLO."""
    bytes: int
    seconds: float

    @property
    def share(self) -> float | None:
        """Tokens over the SLO over tokens, the seeds pooled (None: no token)."""
        tokens = sum(self.tokens)
        return sum(self.slow) / tokens if tokens > 0 else None


def _mean_and_se(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (None with fewer than two values for the error).

        >>> mean, se = _mean_and_se([1.0, 2.0, 3.0])
        >>> mean, round(se, 6)
        (2.0, 0.57735)
    """
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def summarize(windows: list[Window], budget: float) -> list[dict]:
    """Per rate and arm: the pooled share (the seeds and windows together), each seed's, the throughput, and
    the share's difference from ``whole`` and from ``off`` paired by cycle (mean and standard error).

        >>> w = lambda arm, c, slow: Window(5e6, arm, c, (1000.0,), (slow,), 0 if arm == "off" else 5_000_000, 1.0)
        >>> rows = summarize([w("off", 0, 5), w("whole", 0, 20), w("1MiB", 0, 8),
        ...                   w("off", 1, 7), w("whole", 1, 18), w("1MiB", 1, 10)], budget=0.01)
        >>> [(r["arm"], r["share"], r["within_budget"]) for r in rows]
        [('off', 0.006, True), ('whole', 0.019, False), ('1MiB', 0.009, True)]
        >>> round(rows[2]["minus_whole"]["mean"], 9), round(rows[2]["minus_off"]["mean"], 9)
        (-0.01, 0.003)
    """
    out = []
    for rate in sorted({w.rate for w in windows}):
        at_rate = [w for w in windows if w.rate == rate]
        by_arm: dict[str, list[Window]] = {}
        for w in at_rate:
            by_arm.setdefault(w.arm, []).append(w)
        for arm, mine in by_arm.items():
            tokens = sum(sum(w.tokens) for w in mine)
            slow = sum(sum(w.slow) for w in mine)
            seeds = len(mine[0].tokens)
            per_seed = [sum(w.slow[i] for w in mine) / t if (t := sum(w.tokens[i] for w in mine)) > 0 else None
                        for i in range(seeds)]
            share = slow / tokens if tokens > 0 else None
            row = {"rate_per_seed_bytes_per_second": rate, "arm": arm, "windows": len(mine),
                   "share": share, "share_per_seed": per_seed,
                   "worst_seed_share": max((s for s in per_seed if s is not None), default=None),
                   "within_budget": None if share is None else max(s for s in per_seed if s is not None) <= budget,
                   "tokens": tokens,
                   "throughput_per_seed_bytes_per_second":
                       sum(w.bytes for w in mine) / max(sum(w.seconds for w in mine), 1e-9) / seeds,
                   "window_shares": [w.share for w in sorted(mine, key=lambda w: w.cycle)]}
            for reference in (WHOLE, OFF):
                theirs = {w.cycle: w.share for w in by_arm.get(reference, [])}
                diffs = [w.share - theirs[w.cycle] for w in mine
                         if w.share is not None and theirs.get(w.cycle) is not None]
                if arm != reference and diffs:
                    mean, se = _mean_and_se(diffs)
                    row[f"minus_{reference}"] = {"mean": mean, "standard_error": se, "cycles": len(diffs)}
            out.append(row)
    return out


def summary_lines(rows: list[dict], budget: float) -> list[str]:
    """The table the study prints."""
    lines = [f"{'rate/seed':>10} {'arm':>14} {'share':>8} {'worst':>8} {'moved/seed':>10} {'- whole (SE)':>18} "
             f"{'- off (SE)':>18}"]

    def pct(x):
        return "-" if x is None else f"{x:.2%}"

    def diff(d):
        if not d:
            return "-"
        se = "" if d["standard_error"] is None else f" ({d['standard_error'] * 100:.2f})"
        return f"{d['mean'] * 100:+.2f}{se}"

    for r in rows:
        lines.append(f"{format_rate(r['rate_per_seed_bytes_per_second']):>10} {r['arm']:>14} {pct(r['share']):>8} "
                     f"{pct(r['worst_seed_share']):>8} {format_rate(r['throughput_per_seed_bytes_per_second']):>10} "
                     f"{diff(r.get('minus_whole')):>18} {diff(r.get('minus_off')):>18}")
    lines.append(f"(share: tokens over the ITL SLO, seeds pooled; worst: the worst seed's; differences in points, "
                 f"paired by cycle; budget {budget:.0%})")
    return lines


# --------------------------------------------------------------------------- the fleet (I/O)


def _window(observer, driver, options: qos_bench.QosBenchOptions, arm: Arm, rate: float, cycle: int,
            seconds: float, slo: float) -> Window:
    observer.put_agents("/v1/read-pieces", arm.pieces.model_dump())
    observer.put_throttle(mode="fixed", rate_bytes_per_second=rate if arm.transfer else 0.0)
    if arm.transfer:
        driver.resume()
        time.sleep(options.settle_seconds)  # leases granted before the switch land first
        qos_bench._wait_bytes(observer, driver, options.first_bytes_timeout_seconds, since=observer.landed())
    else:
        # The seed alone: rate 0 alone would still let the leases booked before it land (pay first keeps their
        # start), so the forks are paused too (each waits for its reads on the wire and releases its leases).
        driver.pause()
        time.sleep(options.drain_seconds)
    r = observer.measure(f"{arm.name} at {format_rate(rate)}/seed, cycle {cycle + 1}", seconds)
    # Counted as the bench counts a phase's blocks (a seed with no window: no token).
    counts = [qos_bench.slow_and_tokens([w], slo)[0] if w is not None else (0.0, 0.0) for w in r.per_seed]
    return Window(rate, arm.name, cycle, tuple(n for _, n in counts), tuple(slow for slow, _ in counts), r.bytes,
                  r.seconds)


def run_study(options: qos_bench.QosBenchOptions, plant, arms: list[Arm], rates: list[float], cycles: int,
              window_seconds: float, say=print, on_update=None, deadline: float | None = None) -> dict:
    """The study on one fleet; the result dict (``on_update`` gets it after every window)."""
    quiet_mooncake_by_default()
    from testbed.fleet import Fleet

    budget = options.slo_budget
    result: dict = {"plant": plant.name, "options": qos_bench._options_dict(options), "cycles": cycles,
                    "window_seconds": window_seconds, "rates_per_seed_bytes_per_second": rates,
                    "arms": [{"name": a.name, **a.pieces.model_dump(), "transfer": a.transfer} for a in arms],
                    "windows": [], "summary": []}
    say(f"piece study on {plant.name}: {options.seeds} seeds on {options.device}, arms "
        f"{', '.join(a.name for a in arms)}, rates {', '.join(format_rate(r) for r in rates)} a seed, "
        f"{cycles} cycles of {window_seconds:g} s windows")
    with Fleet(qos_bench._fleet_spec(options, plant)) as fleet:
        observer = qos_bench.Observer(fleet, time.monotonic(), say=say)
        driver = qos_bench.ForkDriver(fleet, observer, options.fork_streams, options.chunk_size, options.device)
        result["log_dir"] = str(fleet.log_dir)
        observer.start()
        try:
            observer.set_load(plant.load)
            driver.start()
            say(f"  forks moving after {qos_bench._wait_bytes(observer, driver, options.first_bytes_timeout_seconds):.1f} s")
            time.sleep(options.warmup_seconds)
            observer.phase = "baseline"
            observer.put_throttle(mode="fixed", rate_bytes_per_second=0.0)
            driver.pause()  # as in the off arm: nothing booked before lands in the baseline
            # The same phase A as `rfork bench qos`: the SLO is chosen by the same rule from the same windows.
            calibration = qos_bench.calibrate(observer, options, plant, plant.load, fleet.log_dir, say)
            slo = calibration.slo
            result.update(slo_itl_seconds=slo, slo_choice=calibration.how, slo_budget=budget)
            per_window = window_seconds + options.settle_seconds + 1.0
            windows: list[Window] = []
            for rate in rates:
                for cycle in range(cycles):
                    for name in cycle_order([a.name for a in arms], cycle):
                        if deadline is not None and time.monotonic() + per_window > deadline:
                            result["stopped"] = "the deadline came: the windows after this were not measured"
                            say(f"  {result['stopped']}")
                            raise _Deadline
                        arm = next(a for a in arms if a.name == name)
                        observer.phase = f"{name}@{rate:g}"
                        w = _window(observer, driver, options, arm, rate, cycle, window_seconds, slo)
                        windows.append(w)
                        moved = w.bytes / w.seconds / options.seeds if w.seconds else 0.0
                        say(f"  {format_rate(rate)}/seed cycle {cycle + 1} {name}: "
                            f"{'-' if w.share is None else f'{w.share:.2%}'} over the SLO, "
                            f"{format_rate(moved)} a seed moved")
                        result["windows"].append({**vars(w), "share": w.share})
                        result["summary"] = summarize(windows, budget)
                        if on_update:
                            on_update(result)
        except _Deadline:
            pass
        finally:
            observer.phase = "end"
            driver.stop()
            observer.stop()
    return result


class _Deadline(Exception):
    """The study's deadline came between two windows."""


def plot(result: dict, path: str) -> None:
    """Per rate, each arm's pooled share over the SLO (its windows' spread as error bars), the budget as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["summary"]
    rates = sorted({r["rate_per_seed_bytes_per_second"] for r in rows})
    arms = [a["name"] for a in result["arms"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(arms), 1)
    for k, arm in enumerate(arms):
        xs, ys, errs = [], [], []
        for i, rate in enumerate(rates):
            row = next((r for r in rows if r["arm"] == arm and r["rate_per_seed_bytes_per_second"] == rate), None)
            if row is None or row["share"] is None:
                continue
            shares = [s for s in row["window_shares"] if s is not None]
            _, se = _mean_and_se(shares)
            xs.append(i + (k - (len(arms) - 1) / 2) * width)
            ys.append(row["share"] * 100)
            errs.append(0.0 if se is None else 1.96 * se * 100)
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=arm)
    ax.axhline(result.get("slo_budget", 0.01) * 100, color="k", linestyle="--", linewidth=1, label="budget")
    ax.set_xticks(range(len(rates)), [f"{format_rate(r)}/seed" for r in rates])
    ax.set_ylabel("% of tokens over the ITL SLO")
    ax.set_title(f"reads in pieces vs whole, {result['plant']}: {result['cycles']} cycles of "
                 f"{result['window_seconds']:g} s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plant", default="gpu-decode", help="the seeds' load (bench/qos_plants.py; default gpu-decode)")
    p.add_argument("--pieces", default="1MiB", help="comma list of arms reading in pieces, SIZE or SIZE:GAP_SECONDS "
                                                   "(default 1MiB); whole reads and the seed alone always run")
    p.add_argument("--no-off", action="store_true", help="leave out the seed-alone (rate 0) arm")
    p.add_argument("--rates", default="5MB/s,20MB/s", help="comma list of fixed rates a seed (default 5MB/s,20MB/s)")
    p.add_argument("--cycles", type=int, default=4, help="cycles of one window per arm, at every rate (default 4)")
    p.add_argument("--window-seconds", type=float, default=15.0, help="seconds each window is measured (default 15)")
    p.add_argument("--cap", default="100MB/s", help="every agent's --rate-cap (default 100MB/s, as bench qos)")
    p.add_argument("--chunk-size", default="8MiB", help="chunk size (default 8MiB, as bench qos)")
    p.add_argument("--size", default=None, help="model size (default bench qos's)")
    p.add_argument("--slo-itl", type=float, default=None, help="ITL SLO in seconds (default: chosen from the baseline)")
    p.add_argument("--slo-budget", type=float, default=0.01)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the plant's)")
    p.add_argument("--quick", action="store_true", help="bench qos's short phases and small model: the mechanics only")
    p.add_argument("--deadline-seconds", type=float, default=None,
                   help="measure no window that would end later than this many seconds from now")
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH")
    p.add_argument("--plot", dest="plot_path", default=None, metavar="PATH.png")
    p.add_argument("--log-dir", default=None)
    add_log_arguments(p, default="warning")


def options_from_args(args: argparse.Namespace):
    """Flags -> (bench options, plant, arms, rates). StudyArgsError says what was wrong; nothing starts here."""
    try:
        plant = get_plant(args.plant)
    except PlantError as exc:
        raise StudyArgsError(f"--plant: {exc}") from None
    arms = arms_of([t for t in args.pieces.split(",") if t.strip()], with_off=not args.no_off)
    try:
        cap = parse_rate(args.cap)
        rates = [parse_rate(t) for t in args.rates.split(",") if t.strip()]
        chunk = parse_size(args.chunk_size)
        size = parse_size(args.size) if args.size else None
    except UnitError as exc:
        raise StudyArgsError(str(exc)) from None
    if not cap:
        raise StudyArgsError(f"--cap {args.cap}: the agents need a link rate > 0, e.g. 100MB/s")
    if not rates or any(not r or r > cap for r in rates):
        raise StudyArgsError(f"--rates {args.rates}: give rates > 0 and at most the cap ({format_rate(cap)})")
    if args.cycles < 1:
        raise StudyArgsError(f"--cycles must be at least 1, got {args.cycles}")
    if not (args.window_seconds > 0 and math.isfinite(args.window_seconds)):
        raise StudyArgsError(f"--window-seconds must be > 0, got {args.window_seconds}")
    if not 0 < args.slo_budget < 1:
        raise StudyArgsError(f"--slo-budget must be in (0, 1), got {args.slo_budget}")
    device = args.device or plant.device
    from rfork_agent.devices import DeviceError, check_device
    try:
        check_device(device)
    except DeviceError as exc:
        raise StudyArgsError(f"--plant {plant.name} needs --device {device}: {exc}") from None
    fields = dict(cap=cap, chunk_size=chunk, slo_itl_seconds=args.slo_itl, slo_budget=args.slo_budget,
                  log_dir=args.log_dir, device=device)
    if size:
        fields["size_bytes"] = size
    options = qos_bench.QosBenchOptions.quick(**fields) if args.quick else qos_bench.QosBenchOptions(**fields)
    return options, plant, arms, rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.piece_study", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    setup_logging_from_args(args)
    try:
        options, plant, arms, rates = options_from_args(args)
    except StudyArgsError as exc:
        print(f"bench.piece_study: error: {exc}", file=sys.stderr)
        return 2
    from testbed.fleet import FleetError

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    update = (lambda r: qos_bench.write_json(args.json_path, r)) if args.json_path else None
    deadline = None if args.deadline_seconds is None else time.monotonic() + args.deadline_seconds
    try:
        result = run_study(options, plant, arms, rates, args.cycles, args.window_seconds,
                           say=lambda line: print(line, flush=True), on_update=update, deadline=deadline)
    except KeyboardInterrupt:
        print("interrupted; the fleet is stopped" + (f"; partial results in {args.json_path}"
                                                    if args.json_path and os.path.exists(args.json_path) else ""))
        return 130
    except (qos_bench.QosBenchError, FleetError, httpx.HTTPError) as exc:
        print(f"bench.piece_study: error: {exc.__class__.__name__}: {exc}", file=sys.stderr, flush=True)
        return 3
    for line in summary_lines(result["summary"], options.slo_budget):
        print(line, flush=True)
    if args.json_path:
        qos_bench.write_json(args.json_path, result)
        print(f"wrote {args.json_path}")
    if args.plot_path and result["summary"]:
        plot(result, args.plot_path)
        print(f"wrote {args.plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
