"""Independent regeneration of what a seed stand-in holds, to check forked bytes against.

The orchestrator calls ``expected_tensors(fleet_spec, rank)`` after a fork: it
rebuilds the model from the same flags the seeds were started with (through
``presets.resolve_spec``, the function the seed itself uses) and regenerates
the weights in this process, so a match proves the bytes came over intact
rather than that two copies of one buffer agree.

    >>> from types import SimpleNamespace
    >>> fleet = SimpleNamespace(preset="tiny", size_bytes=None, dtype="bfloat16", tp_size=1,
    ...                         include_zero_byte=False, rng_seed=1234)
    >>> next(iter(expected_tensors(fleet, 0)))
    'model.embed_tokens.weight'
"""

from __future__ import annotations

import torch

from testbed.presets import ModelSpec, resolve_spec
from testbed.weights import digests, materialize


def spec_for(fleet_spec) -> ModelSpec:
    """The ModelSpec a fleet's seeds serve (``FleetSpec`` or anything with its model fields)."""
    return resolve_spec(
        preset=fleet_spec.preset, size=fleet_spec.size_bytes, dtype=fleet_spec.dtype,
        tp_size=fleet_spec.tp_size, include_zero_byte=getattr(fleet_spec, "include_zero_byte", False),
    )


def expected_tensors(fleet_spec, rank: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Rank ``rank``'s tensors exactly as every seed of the fleet holds them, on ``device``.

    The bytes are generated on the CPU either way (testbed.weights), so a GPU
    copy is the same bytes and the comparison can run where the fork landed.
    """
    return materialize(spec_for(fleet_spec), rank, fleet_spec.rng_seed, device=device).tensors


def expected_digests(fleet_spec, rank: int) -> dict[str, str]:
    """Digests of ``expected_tensors`` (compare with a seed's ``/testbed/digests``)."""
    return digests(expected_tensors(fleet_spec, rank))
