"""Issue #7 on a GPU machine: fork GPU-resident weights and measure, in one run.

Runs, each as fresh `rfork testbed` fleets with ``--device cuda`` (seeds hold
and decode their weights on the GPU, the client forks into GPU memory and
verifies there), the fork benchmark's scenarios (bench.fork_bench): 1 seed
uncapped vs SGLang's single batch read, 3 seeds capped (striping), capped
100/100/25, one seed SIGKILLed at 50%; then the same 1-seed comparison on
the CPU of the same machine (so GPU and CPU numbers share a host), one larger
uncapped 1-seed fork, seeds and client on different GPUs when two are
visible, and `rfork bench qos --plant gpu-decode` (the oracle once, then
``--qos-runs`` throttled runs) with the seeds' decode load on the GPU; and,
asked for by name (part ``fleet``), `rfork bench fleet` with GPU-resident
weights: one seed and N clients as processes sharing the GPU; and (part
``stream``) bench.stream_chain with every member's weights on the GPU
(gpu-stream-chain-*.json).

Results go to ``--out`` (gpu-fork.json, gpu-fork.png, gpu-qos.json,
gpu-qos.png); JSON is rewritten after every scenario, so a run cut short
still leaves what it measured. Parts that would start after
``--budget-seconds`` are skipped and recorded as skipped.

    python -m bench.gpu_run --out $OUT             # bench/gpu_run.sh does this on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import textwrap

from rfork_api.units import UnitError, format_bytes, format_rate, parse_size

MB = 1e6


def environment() -> dict:
    """What the numbers were taken on."""
    import torch

    env = {
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "gpus": [], "cpu_count": os.cpu_count(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        from importlib.metadata import version

        env["mooncake"] = version("mooncake-transfer-engine-cuda13")
    except Exception as exc:  # noqa: BLE001 - informational only
        env["mooncake"] = f"unknown ({exc})"
    try:
        env["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,pcie.link.gen.current,pcie.link.width.current",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        env["nvidia_smi"] = f"unavailable ({exc})"
    return env


def fork_plan(size: int, big_size: int, chunk: int, device: str, repeat: int, gpus: int):
    """(part, label, TestbedOptions, target, repeat) for every fork run, in order.

    Parts: ``fork`` (the fork benchmark on ``device``), ``cpu`` (its 1-seed case on
    this host's CPU), ``big`` (one larger 1-seed fork), ``split`` (seeds on
    cuda:1, client on cuda:0; only with two GPUs).
    """
    from bench.fork_bench import scenarios

    plan = [("fork", f"{device}: {name}", options, target, repeat)
            for name, options, target in scenarios(size, chunk, device)]
    one_seed_name, one_seed, one_seed_target = scenarios(size, chunk, "cpu")[0]
    plan.append(("cpu", f"cpu (same host): {one_seed_name}", one_seed, one_seed_target, repeat))
    plan.append(("big", f"{device}, {format_bytes(big_size)} model: {one_seed_name}",
                 scenarios(big_size, chunk, device)[0][1], one_seed_target, 1))
    if gpus >= 2:
        for name, options, target in scenarios(size, chunk, "cuda:0", seed_device="cuda:1")[:2]:
            plan.append(("split", f"seeds cuda:1, client cuda:0: {name}", options, target, repeat))
    return plan


def run_fork_part(args, env: dict, started: float) -> dict:
    from bench.fork_bench import measure

    size, big, chunk = parse_size(args.size), parse_size(args.big_size), parse_size(args.chunk_size)
    report = {"environment": env, "size_bytes": size, "big_size_bytes": big, "chunk_size_bytes": chunk,
              "scenarios": [], "skipped": []}
    path = os.path.join(args.out, "gpu-fork.json")
    parts = {p.strip() for p in args.parts.split(",")}
    for part, label, options, target, repeat in fork_plan(size, big, chunk, args.device, args.repeat, len(env["gpus"])):
        if part not in parts:
            continue
        if time.monotonic() - started > args.budget_seconds:
            report["skipped"].append(f"{label}: past the {args.budget_seconds:.0f} s budget")
            print(f"SKIP  {label} (budget)", flush=True)
            continue
        try:
            record = measure(label, options, target, repeat)
        except Exception as exc:  # noqa: BLE001 - record and go on: one broken scenario must not lose the rest
            record = {"scenario": label, "target": target, "error": f"{type(exc).__name__}: {exc}"}
            print(f"ERROR {label}: {record['error']}", flush=True)
        report["scenarios"].append(record)
        _write_json(path, report)
    plot_fork(report, os.path.join(args.out, "gpu-fork.png"))
    return report


def run_qos_part(args, env: dict, started: float) -> dict:
    """`rfork bench qos --plant gpu-decode` (issue #16), sized to one device call: the oracle once, then runs."""
    path = os.path.join(args.out, "gpu-qos.json")
    if time.monotonic() - started > args.budget_seconds:
        result = {"skipped": f"past the {args.budget_seconds:.0f} s budget"}
        _write_json(path, result)
        return result
    from bench import qos_bench

    fields = {"device": args.device, "throttled_measure_seconds": 15.0}
    if getattr(args, "qos_chunk_size", None):
        fields["chunk_size"] = parse_size(args.qos_chunk_size)
    options = qos_bench.QosBenchOptions(**fields)
    deadline = started + args.budget_seconds

    def update(partial: dict) -> None:
        _write_json(path, qos_bench._finite({**partial, "environment": env}))

    try:
        result = qos_bench.run_qos_bench(options, "gpu-decode", args.qos_runs, on_update=update, deadline=deadline)
        result["environment"] = env
        _write_json(path, qos_bench._finite(result))
        qos_bench.plot(result, os.path.join(args.out, "gpu-qos.png"))
        qos_bench.print_checks(result, lambda line: print(f"qos {line}", flush=True))
    except Exception as exc:  # noqa: BLE001 - record it; the fork part's results stand on their own
        result = {"error": f"{type(exc).__name__}: {exc}", "environment": env}
        print(f"ERROR qos: {result['error']}", flush=True)
        _write_json(path, result)
    return result


FLEET_PLAN = (
    # (file stem, size, chunk, seed rate, client upload rate, N list, repeat): the CPU benchmark's shape
    # first (same caps, so the two compare), then a larger model at 8x the rates. Each run starts N + 1
    # CUDA processes (~30 s on an H200 host), so one repeat is what fits a 10-minute call.
    ("gpu-fleet", "256MiB", "4MiB", "50MB/s", "50MB/s", "1,2,4,8", 1),
    ("gpu-fleet-1gib", "1GiB", "16MiB", "400MB/s", "400MB/s", "1,8", 1),
    # Asked for by name only (part fleet-per-chunk): the larger model with peers per chunk, no streams.
    ("gpu-fleet-1gib-per-chunk", "1GiB", "16MiB", "400MB/s", "400MB/s", "1,8", 1),
)


def run_fleet_part(args, env: dict, started: float, per_chunk: bool = False) -> list[dict]:
    """`rfork bench fleet` with every seed and client holding its weights on the GPU (issue #14); with
    ``per_chunk``, only the per-chunk comparison (``--stream-stripes 0``)."""
    from bench import fleet_bench

    reports = []
    for stem, size, chunk, seed_rate, client_rate, counts, repeat in FLEET_PLAN:
        if stem.endswith("-per-chunk") != per_chunk:
            continue
        if time.monotonic() - started > args.budget_seconds:
            print(f"SKIP  fleet {stem} (budget)", flush=True)
            continue
        p = argparse.ArgumentParser()
        fleet_bench.add_arguments(p)
        fleet_args = p.parse_args([
            "--size", size, "--chunk-size", chunk, "--seed-rate", seed_rate, "--client-rate", client_rate,
            "--clients", counts, "--repeat", str(repeat), "--device", args.device,
            "--json", os.path.join(args.out, f"{stem}.json"), "--plot", os.path.join(args.out, f"{stem}.png")]
            + (["--scheduler-arg=--stream-stripes=0"] if per_chunk else []))
        try:
            rc = fleet_bench.run(fleet_args)
        except Exception as exc:  # noqa: BLE001 - record and go on to the next configuration
            print(f"ERROR fleet {stem}: {type(exc).__name__}: {exc}", flush=True)
            continue
        path = os.path.join(args.out, f"{stem}.json")
        if os.path.exists(path):
            with open(path) as f:
                report = json.load(f)
            report["environment"] = env
            _write_json(path, report)
            reports.append(report)
        print(f"fleet {stem}: {'met' if rc == 0 else 'NOT met'}", flush=True)
    return reports


STREAM_PLAN = [  # (stem, hops, size, chunk size, the head's landing rate)
    ("gpu-stream-chain-unpaced", 3, "1GiB", "16MiB", "unlimited"),
    ("gpu-stream-chain-paced", 6, "1GiB", "16MiB", "1GB/s"),
]


def run_stream_part(args, started: float) -> list[str]:
    """bench.stream_chain with every member's weights on the GPU: stream readers following GPU-resident parents."""
    from bench import stream_chain

    lines = []
    for stem, hops, size, chunk, rate in STREAM_PLAN:
        if time.monotonic() - started > args.budget_seconds:
            print(f"SKIP  stream {stem} (budget)", flush=True)
            continue
        path = os.path.join(args.out, f"{stem}.json")
        rc = stream_chain.main(["--hops", str(hops), "--size", size, "--chunk-size", chunk, "--land-rate", rate,
                                "--device", args.device, "--json", path])
        lines.append(f"stream {stem}: {'every hop verified' if rc == 0 else f'FAILED (exit {rc})'}")
    return lines


def plot_fork(report: dict, path: str) -> None:
    """Throughput of every fork scenario (median run), with SGLang's single batch read beside the 1-seed ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["scenarios"] if "median" in r]
    if not rows:
        return
    labels, rfork, baseline, targets = [], [], [], []
    for r in rows:
        m = r["median"]
        labels.append(textwrap.fill(r["scenario"], 22))
        rfork.append(m["bytes"] / m["transfer_seconds"] / MB)
        baseline.append(m["bytes"] / m["baseline_seconds"] / MB if m.get("baseline_seconds") else 0.0)
        caps = [s["rate_cap_bytes_per_second"] for s in m["seeds"]]
        # The kill case is judged on time vs its ideal, not on throughput: no line there.
        targets.append(0.9 * sum(caps) / MB if all(caps) and not m.get("ideal_seconds") else None)
    fig, ax = plt.subplots(figsize=(max(8, 1.7 * len(rows)), 6.5))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], rfork, width=0.4, label="rfork (median run)")
    ax.bar([i + 0.2 for i in x], baseline, width=0.4, label="SGLang single batch read, 1 seed")
    for i, t in enumerate(targets):
        if t:
            ax.hlines(t, i - 0.4, i + 0.4, colors="red", linestyles="--", label="target: 0.9 x sum of caps" if t == next(v for v in targets if v) else None)
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("MB/s (bytes / transfer seconds)")
    gpus = ", ".join(report["environment"].get("gpus") or ["no GPU"])
    ax.set_title(f"rfork fork over TCP (TransferEngine) on {gpus}: {report['size_bytes'] / 2**20:.0f} MiB model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_run", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu-*.json and gpu-*.png")
    p.add_argument("--parts", default="fork,cpu,big,split,qos",
                   help="comma list of parts: fork, cpu, big, split, qos, fleet, fleet-per-chunk, stream (default all but fleet "
                        "and stream)")
    p.add_argument("--device", default="cuda", help="device of seeds and client (default cuda)")
    p.add_argument("--size", default="600MiB", help="model size of the fork scenarios (default 600MiB, as on CPU)")
    p.add_argument("--big-size", default="2GiB", help="model size of the larger uncapped 1-seed fork (default 2GiB)")
    p.add_argument("--chunk-size", default="16MiB")
    p.add_argument("--qos-chunk-size", default=None,
                   help="chunk size of the QoS part (default: bench qos's 8MiB); a chunk read over TCP from "
                        "GPU memory is one staging copy, so its size sets how long one read stalls decode")
    p.add_argument("--repeat", type=int, default=3, help="runs per scenario; the median is reported")
    p.add_argument("--qos-runs", type=int, default=3,
                   help="throttled runs of the qos part after its one oracle (default 3; fewer if the budget ends)")
    p.add_argument("--budget-seconds", type=float, default=480.0,
                   help="start no part or scenario after this many seconds (default 480)")
    args = p.parse_args(argv)
    from rfork_agent.devices import DeviceError, check_device

    try:
        check_device(args.device)
        for flag in ("size", "big_size", "chunk_size", "qos_chunk_size"):
            if getattr(args, flag) is not None:
                parse_size(getattr(args, flag))
    except UnitError as exc:
        print(f"bench.gpu_run: error: --{flag.replace('_', '-')}: {exc}", file=sys.stderr)
        return 2
    except DeviceError as exc:
        print(f"bench.gpu_run: error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    env = environment()
    print(json.dumps(env, indent=1), flush=True)
    parts = {p.strip() for p in args.parts.split(",")}
    summary = []
    if "qos" in parts:  # first: the longest part, and its JSON is written only when it ends
        run_qos_part(args, env, started)
    if "stream" in parts:
        summary.extend(run_stream_part(args, started))
    if "fleet" in parts:
        for report in run_fleet_part(args, env, started):
            summary.extend(report["lines"])
    if "fleet-per-chunk" in parts:
        for report in run_fleet_part(args, env, started, per_chunk=True):
            summary.extend(report["lines"])
    if parts & {"fork", "cpu", "big", "split"}:
        report = run_fork_part(args, env, started)
        for r in report["scenarios"]:
            if "median" in r:
                m = r["median"]
                summary.append(f"{r['scenario']:62} {format_rate(m['bytes'] / m['transfer_seconds']):>12} "
                               f"{m['transfer_seconds']:7.3f} s  verified={r['verified']}  {r['summary']}")
            else:
                summary.append(f"{r['scenario']:62} ERROR {r.get('error')}")
    print(f"\n== gpu_run on {env['gpus']} in {time.monotonic() - started:.0f} s ==")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
