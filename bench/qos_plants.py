"""The plants `rfork bench qos --plant NAME` runs the throttle against (issue #16).

A plant is the seeds' serving load and how the ITL SLO is set against it. Every
plant's seeds serve a closed loop of concurrent requests (``concurrency`` in
flight: each decode step decodes one token for each, as SGLang's continuous
batching does), with output lengths spread +-50 % so requests finish and new
ones prefill at staggered times: thousands of tokens/s per seed.

- ``steady``: 64 requests in flight, all the time.
- ``bursty``: 96 in flight for 1.5 s, then no arrivals for 1.5 s (running
  requests finish), repeating: on/off arrivals.
- ``near-slo``: as steady, with the SLO at the tightest bucket bound where
  every seed alone still meets the budget (it uses up to 90 % of it, at the
  upper end of its 95 % interval over the baseline's windows): the hard case,
  where the transfer has almost no room and the seed's own noise is most of
  what the law sees.
- ``load-change``: 32 in flight for the first half of every measured phase
  (each oracle probe and each throttled phase), 96 for the second half: the
  load changes mid-fork, and the oracle is measured under the same change.
- ``gpu-decode``: as steady, with the seeds' weights and decode on the GPU
  (``--device cuda``).

Pure data: no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PlantError(ValueError):
    """An unknown plant name."""


@dataclass(frozen=True)
class Load:
    """A seed's load as ``POST /testbed/load`` takes it (testbed.decode.LoadShape's fields)."""

    concurrency: int = 0
    rps: float = 0.0
    on_seconds: float = 0.0
    off_seconds: float = 0.0

    def body(self) -> dict:
        return {"concurrency": self.concurrency, "rps": self.rps, "on_seconds": self.on_seconds,
                "off_seconds": self.off_seconds}

    def describe(self) -> str:
        parts = []
        if self.concurrency:
            parts.append(f"{self.concurrency} requests in flight")
        if self.rps:
            parts.append(f"{self.rps:g} req/s")
        if self.on_seconds:
            parts.append(f"on {self.on_seconds:g} s / off {self.off_seconds:g} s")
        return ", ".join(parts) or "idle"


IDLE = Load()


@dataclass(frozen=True)
class Plant:
    name: str
    description: str
    load: Load
    changed_load: Load | None = None
    """Load for the second half of every measured phase (None: ``load`` throughout)."""
    change_at_fraction: float = 0.5
    slo_rule: str = "ratio"
    """``ratio``: the largest bucket bound <= 1.15 x the baseline p99 where every seed alone uses <= 3/4 of the
    budget (the rule of `rfork bench qos` since issue #3); ``near``: the tightest bound where every seed alone
    uses <= ``near_base_share`` of the budget (both judged as ``bench.qos_bench.choose_slo`` does)."""
    near_base_share: float = 0.9
    device: str = "cpu"
    seed_args: tuple[str, ...] = field(default=())

    def loads(self) -> list[Load]:
        """Every load the plant runs, in order (the baseline measures each on its own).

            >>> [l.concurrency for l in PLANTS["load-change"].loads()], len(PLANTS["steady"].loads())
            ([32, 96], 1)
        """
        return [self.load] if self.changed_load is None else [self.load, self.changed_load]

    def schedule(self, seconds: float) -> list[tuple[float, Load]]:
        """(offset, load) changes over a measured phase of ``seconds``, the first at 0.

            >>> PLANTS["load-change"].schedule(30.0)[1][0]
            15.0
        """
        if self.changed_load is None:
            return [(0.0, self.load)]
        return [(0.0, self.load), (self.change_at_fraction * seconds, self.changed_load)]


SERVING_SEED_ARGS = ("--output-tokens", "128", "--output-tokens-jitter", "0.5", "--prompt-tokens", "32",
                     "--max-running-requests", "128", "--max-queued-requests", "512")
"""Every plant's seeds: 128-token outputs (+-50 %), 32-token prompts, up to 128 requests in a batch."""

PLANTS: dict[str, Plant] = {p.name: p for p in (
    Plant("steady", "64 requests in flight per seed, all the time", Load(concurrency=64)),
    Plant("bursty", "96 requests in flight for 1.5 s, no arrivals for 1.5 s, repeating",
          Load(concurrency=96, on_seconds=1.5, off_seconds=1.5)),
    Plant("near-slo", "64 in flight; the SLO where the seed alone uses up to 90 % of the budget",
          Load(concurrency=64), slo_rule="near"),
    Plant("load-change", "32 in flight, then 96 from the middle of every measured phase",
          Load(concurrency=32), changed_load=Load(concurrency=96)),
    Plant("gpu-decode", "64 in flight per seed, weights and decode on the GPU", Load(concurrency=64), device="cuda"),
)}

CPU_PLANTS = ("steady", "bursty", "near-slo", "load-change")


def get_plant(name: str) -> Plant:
    """The plant called ``name``; PlantError names the known ones.

        >>> get_plant("bursty").load.on_seconds
        1.5
        >>> get_plant("spiky")
        Traceback (most recent call last):
        ...
        bench.qos_plants.PlantError: unknown plant 'spiky'; plants: steady, bursty, near-slo, load-change, gpu-decode
    """
    try:
        return PLANTS[name]
    except KeyError:
        raise PlantError(f"unknown plant {name!r}; plants: {', '.join(PLANTS)}") from None


def parse_plants(text: str) -> list[Plant]:
    """A comma list of plant names, checked, in order, without repeats.

        >>> [p.name for p in parse_plants("steady, near-slo")]
        ['steady', 'near-slo']
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise PlantError(f"no plant named in {text!r}; plants: {', '.join(PLANTS)}")
    if len(set(names)) != len(names):
        raise PlantError(f"a plant is named twice in {text!r}")
    return [get_plant(n) for n in names]
