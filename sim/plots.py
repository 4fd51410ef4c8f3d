"""Pictures of `rfork simulate` results (matplotlib, headless).

``plot_sweep``: time-to-all against N per strategy (with one fork alone), the
completion CDF of each strategy at the largest N, bytes served by seeds and by
peers (in model copies), and the scheduler's work: work calls and assignments
per second it must answer, and the CPU of its decisions as a share of one core
(measured by running the real planner). ``plot_run``: the same for one run.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"direct": "tab:red", "cascade": "tab:orange", "swarm": "tab:blue", "stream": "tab:green"}


def _cdf(ax, seconds: list[float], n: int, label: str, color: str | None, **kw) -> None:
    xs = sorted(seconds)
    ax.step([0.0, *xs], [0.0, *[(i + 1) / n for i in range(len(xs))]], where="post", label=label, color=color, **kw)


def plot_sweep(sweep: dict, path: str) -> None:
    runs, single = sweep["runs"], sweep.get("single_fork_seconds")
    model = sweep["base_scenario"]["model"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (t_ax, cdf_ax), (bytes_ax, sched_ax) = axes
    biggest = max(sweep["instances"])
    for strategy in sweep["strategies"]:
        mine = sorted((r for r in runs if r["scenario"]["strategy"] == strategy), key=lambda r: r["scenario"]["instances"])
        ns = [r["scenario"]["instances"] for r in mine]
        color = COLORS.get(strategy)
        t_ax.plot(ns, [r["time_to_all_seconds"] for r in mine], "o-", color=color, label=strategy)
        bytes_ax.plot(ns, [r["seed_bytes_over_model"] for r in mine], "o-", color=color, label=f"{strategy}: seeds")
        served = [(n, r["peer_bytes_served"] / r["model_bytes_per_instance"]) for n, r in zip(ns, mine)
                  if r["peer_bytes_served"] > 0]  # a log axis has no zero (N = 1 serves nobody)
        if served:
            bytes_ax.plot(*zip(*served), "s--", color=color, alpha=0.6, label=f"{strategy}: instances")
        sched_ax.plot(ns, [r["scheduler"]["work_calls_per_second"] for r in mine], "o-", color=color,
                      label=f"{strategy}: work calls/s")
        sched_ax.plot(ns, [r["scheduler"]["assignments_per_second"] for r in mine], "^:", color=color,
                      label=f"{strategy}: assignments/s")
        for r in mine:
            if r["scenario"]["instances"] == biggest:
                _cdf(cdf_ax, r["completion_seconds"], biggest, strategy, color)
    if single:
        t_ax.axhline(single, color="gray", ls="--", label=f"one fork alone ({single:.2f} s)")
        cdf_ax.axvline(single, color="gray", ls="--", label="one fork alone")
    t_ax.set(xscale="log", yscale="log", xlabel="new instances N", ylabel="time to all (s)",
             title=f"{model}: time until every new instance has the model")
    cdf_ax.set(xscale="log", xlabel="seconds since the scale-out began (log)", ylabel="share of instances loaded",
               title=f"completion CDF, N = {biggest}")
    bytes_ax.set(xscale="log", yscale="log", xlabel="new instances N", ylabel="bytes served / model bytes",
                 title="bytes served by the seeds and by the new instances")
    sched_ax.set(xscale="log", yscale="log", xlabel="new instances N", ylabel="per simulated second",
                 title="the scheduler's work (one process per model and rank)")
    share_ax = sched_ax.twinx()
    for strategy in sweep["strategies"]:
        mine = sorted((r for r in runs if r["scenario"]["strategy"] == strategy), key=lambda r: r["scenario"]["instances"])
        share_ax.plot([r["scenario"]["instances"] for r in mine], [r["scheduler_cpu_share"] for r in mine], "x-",
                      color=COLORS.get(strategy), alpha=0.5, lw=3, label=f"{strategy}: CPU share")
    share_ax.axhline(0.5, color="black", ls=":", lw=1)
    share_ax.set(yscale="log", ylabel="planner CPU / time to all (cores; dotted: 0.5)")
    for ax in (t_ax, cdf_ax, bytes_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    sched_ax.grid(True, which="both", alpha=0.3)
    lines = sched_ax.get_legend_handles_labels()
    shares = share_ax.get_legend_handles_labels()
    sched_ax.legend(lines[0] + shares[0], lines[1] + shares[1], fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run(r: dict, path: str) -> None:
    s, sched = r["scenario"], r["scheduler"]
    n = s["instances"]
    fig, (cdf_ax, bytes_ax) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    _cdf(cdf_ax, r["completion_seconds"], n, s["strategy"], COLORS.get(s["strategy"]))
    if r.get("single_fork_seconds"):
        cdf_ax.axvline(r["single_fork_seconds"], color="gray", ls="--",
                       label=f"one fork alone ({r['single_fork_seconds']:.2f} s)")
    cdf_ax.set(xlabel="seconds since the scale-out began", ylabel="share of instances loaded",
               title=f"{s['model']}, {s['strategy']}, N = {n}, {s['seeds']} seed(s): "
                     f"time to all {r['time_to_all_seconds']:.2f} s")
    cdf_ax.grid(True, alpha=0.3)
    cdf_ax.legend(fontsize=8)
    model = r["model_bytes_per_instance"]
    bytes_ax.bar(["seeds", "new instances"], [r["seed_bytes_served"] / model, r["peer_bytes_served"] / model],
                 color=["tab:red", "tab:blue"])
    bytes_ax.set(ylabel="bytes served / model bytes", title="who served the bytes")
    cpu = sched["cpu_per_work_call_seconds"]
    bytes_ax.text(0.02, 0.97, f"scheduler: {sched['work_calls_per_second']:,.0f} work calls/s\n"
                              f"{sched['assignments_per_second']:,.0f} assignments/s\n"
                              f"CPU {r['scheduler_cpu_share']:.2f} of a core\n"
                              f"per call p50 {cpu['p50'] * 1e6:.0f} us, p99 {cpu['p99'] * 1e6:.0f} us",
                  transform=bytes_ax.transAxes, va="top", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_validation(v: dict, path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n = v["scenario"]["instances"]
    _cdf(ax, v["measured"]["completion_seconds"], n, "testbed (measured)", "black")
    _cdf(ax, v["simulated"]["completion_seconds"], n, "simulated", "tab:blue", ls="--")
    ax.set(xlabel="seconds since the scale-out began", ylabel="share of clients done",
           title=f"testbed vs simulator, N = {n}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
