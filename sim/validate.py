"""The simulator against the testbed: the simulated counterpart of one `rfork testbed --clients N` run.

`rfork testbed --clients N --json PATH` (testbed.scale_out) records a real
scale-out on this machine: N fork client processes, each with its own
TransferEngine, the seeds' caps, the clients' upload cap, and what came of it
(``clients[]``, ``time_to_all_seconds``, ``seed_bytes_served``, ``model_bytes``).
``simulate_testbed`` builds the same scale-out as a ``Scenario`` (same model
tensors, chunk size, caps, strategy) and runs it, so the two can be compared
(issue #15 item 4: within 20 % on time-to-all).

    >>> record = json.load(open("out/testbed-fleet.json"))
    >>> simulate_testbed(record)["time_to_all_ratio"]      # simulated / measured
    1.07
"""

from __future__ import annotations

from typing import Any, Mapping

from scheduler.chunking import DEFAULT_CHUNK_SIZE
from scheduler.planner import PlannerConfig
from scheduler.swarm import Swarm
from sim.engine import simulate
from sim.presets import SIZED_PREFIX, is_known
from sim.scenario import Scenario, ScenarioError

LOOPBACK_RATE = 1.5e9
"""Bytes/s an uncapped loopback TCP read reaches through the TransferEngine on the 2-core CPU
machine (docs/benchmarks.md, 1 seed uncapped: 600 MiB in about 0.4 s); a cap below it binds."""
LOOPBACK_CONTROL_SECONDS = 0.003
"""A /work call or a lease over loopback HTTP on that machine, about."""


CLIENT_MAX_IN_FLIGHT = 16
"""``rfork_agent.fork.ForkOptions.max_in_flight``: reads a fork client keeps in flight."""


class TestbedRecordError(ValueError):
    """The testbed JSON lacks a field the simulation needs; the message names it."""


def scenario_from_testbed(record: Mapping[str, Any], link_rate: float = LOOPBACK_RATE,
                          control_latency_seconds: float = LOOPBACK_CONTROL_SECONDS, **overrides: Any) -> Scenario:
    """The ``Scenario`` of a testbed scale-out record (``overrides`` replace any field)."""
    def need(name: str) -> Any:
        if record.get(name) is None:
            raise TestbedRecordError(f"the testbed record has no {name!r}; it must come from "
                                     "`rfork testbed --clients N --json PATH`")
        return record[name]

    model_name = str(record.get("model") or "")
    model = model_name if is_known(model_name) else f"{SIZED_PREFIX}{int(need('model_bytes'))}"
    seeds = need("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise TestbedRecordError("the testbed record's 'seeds' must be a non-empty list")
    caps = [s.get("rate_cap_bytes_per_second") for s in seeds]
    capped = [c for c in caps if c]
    # The simulator gives every seed one rate: the testbed's caps, where all seeds are capped alike.
    seed_cap = min(capped) if len(capped) == len(caps) else None
    client_rate = record.get("client_rate_bytes_per_second")
    values: dict[str, Any] = {
        "model": model,
        "instances": int(need("clients_count")),
        "seeds": len(seeds),
        "strategy": "swarm" if record.get("peers", True) else "direct",
        "chunk_size": int(record.get("chunk_size_bytes") or DEFAULT_CHUNK_SIZE),
        "seed_egress": link_rate,
        "seed_rate_cap": seed_cap,
        "instance_ingress": link_rate,
        "instance_egress": link_rate,
        "peer_rate": client_rate or None,
        "control_latency_seconds": control_latency_seconds,
        # What the real processes use, not the simulator's defaults for 50 GB/s links:
        "max_assignment_bytes": PlannerConfig().max_assignment_bytes,  # the scheduler's
        "max_peers_per_decision": Swarm().max_peers_per_decision,     # the scheduler's swarm
        "client_max_in_flight": CLIENT_MAX_IN_FLIGHT,                  # rfork fork's
    }
    values.update(overrides)
    try:
        return Scenario.from_mapping(values)
    except ScenarioError as exc:
        raise TestbedRecordError(f"the testbed record gives an invalid scenario: {exc}") from None


def simulate_testbed(record: Mapping[str, Any], **kwargs: Any) -> dict:
    """Measured next to simulated: time-to-all, per-client completion, seed bytes served."""
    scenario = scenario_from_testbed(record, **kwargs)
    result = simulate(scenario)
    measured_t = record.get("time_to_all_seconds")
    clients = record.get("clients") or []
    measured = {
        "time_to_all_seconds": measured_t,
        "completion_seconds": sorted(c["fork_seconds"] for c in clients
                                     if isinstance(c, Mapping) and c.get("fork_seconds") is not None),
        "seed_bytes_served": record.get("seed_bytes_served"),
        "model_bytes": record.get("model_bytes"),
    }
    simulated = result.to_json()
    ratio = simulated["time_to_all_seconds"] / measured_t if measured_t else None
    return {
        "scenario": scenario.to_json(),
        "measured": measured,
        "simulated": {k: simulated[k] for k in ("time_to_all_seconds", "completion_seconds", "seed_bytes_served",
                                                 "model_bytes_per_instance", "single_fork_seconds",
                                                 "instances_completed")},
        "time_to_all_ratio": ratio,
        "within_20_percent": ratio is not None and abs(ratio - 1) <= 0.2,
    }
