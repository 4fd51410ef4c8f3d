"""testbed/decode.py's load shapes: open loop, closed loop (continuous batching) and on/off bursts.

The closed loop is stepped by hand with a fake clock: no threads, the real scheduler and forward pass.
"""

from __future__ import annotations

import doctest
import math

import pytest
from prometheus_client import CollectorRegistry

from testbed import decode
from testbed.decode import DecodeConfig, DecodeLoop, DecodeMetrics, LoadShape
from testbed.presets import get_preset
from testbed.weights import materialize


def test_doctests():
    assert doctest.testmod(decode).failed == 0


@pytest.mark.parametrize("shape, elapsed, on, switch_in", [
    (LoadShape(concurrency=8), 0.0, True, math.inf),
    (LoadShape(rps=5), 123.4, True, math.inf),
    (LoadShape(concurrency=8, on_seconds=2, off_seconds=1), 0.0, True, 2.0),
    (LoadShape(concurrency=8, on_seconds=2, off_seconds=1), 1.5, True, 0.5),
    (LoadShape(concurrency=8, on_seconds=2, off_seconds=1), 2.0, False, 1.0),
    (LoadShape(concurrency=8, on_seconds=2, off_seconds=1), 2.75, False, 0.25),
    (LoadShape(concurrency=8, on_seconds=2, off_seconds=1), 3.0, True, 2.0),   # the next period
    (LoadShape(concurrency=8, on_seconds=2, off_seconds=1), 8.5, False, 0.5),
])
def test_burst_phase(shape, elapsed, on, switch_in):
    got_on, got_switch = shape.phase(elapsed)
    assert got_on is on and got_switch == pytest.approx(switch_in)
    assert shape.target_in_flight(elapsed) == (shape.concurrency if on else 0)
    assert shape.rate(elapsed) == (shape.rps if on else 0.0)


@pytest.mark.parametrize("fields, says", [
    ({"concurrency": -1}, "whole number of requests >= 0"),
    ({"concurrency": 2.5}, "whole number of requests >= 0"),
    ({"concurrency": True}, "whole number of requests >= 0"),
    ({"rps": -1}, "requests/s >= 0"),
    ({"rps": math.inf}, "requests/s >= 0"),
    ({"concurrency": 4, "on_seconds": 1}, "needs both on_seconds and off_seconds"),
    ({"concurrency": 4, "on_seconds": math.nan, "off_seconds": 1}, "on_seconds must be finite seconds"),
    ({"concurrency": 4, "on_seconds": 1, "off_seconds": -1}, "off_seconds must be finite seconds"),
])
def test_bad_load_shapes_say_why(fields, says):
    with pytest.raises(ValueError, match=says):
        LoadShape(**fields)


@pytest.mark.parametrize("jitter", [-0.1, 1.0])
def test_output_jitter_must_be_a_fraction(jitter):
    with pytest.raises(ValueError, match="output_tokens_jitter must be in"):
        DecodeConfig(output_tokens_jitter=jitter)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def weights():
    return [materialize(get_preset("tiny"), 0, rng_seed=1)]


def _step(loop: DecodeLoop, clock: FakeClock, seconds: float = 0.01) -> int:
    """One scheduler step, as the step thread runs it; returns the batch size."""
    with loop._work:
        batch = loop.scheduler.schedule()
    assert batch is not None
    tokens = loop.forward.run(*batch.token_ids())
    clock.now += seconds
    with loop._work:
        loop.scheduler.finish_step(batch, tokens, clock())
        loop._top_up_locked()
    return len(batch.requests)


def test_a_closed_loop_decodes_its_whole_batch_every_step_and_replaces_finished_requests(weights):
    clock = FakeClock()
    config = DecodeConfig(load_concurrency=16, output_tokens=8, output_tokens_jitter=0.5, max_running_requests=64,
                          max_prefill_tokens=1024, prompt_tokens=8, layers_per_step=1)
    loop = DecodeLoop(weights, config, DecodeMetrics(CollectorRegistry(), "tiny"), clock=clock)
    with loop._work:
        loop._top_up_locked()
    assert loop.scheduler.num_waiting == 16
    with loop._work:
        batch = loop.scheduler.schedule()  # one prefill step admits all 16
    # While it runs they are neither queued nor running, but still in flight: a top-up adds none.
    assert batch.kind == "prefill" and loop.scheduler.num_waiting == 0 and loop.scheduler.num_in_flight == 16
    with loop._work:
        loop._top_up_locked()
    assert loop.scheduler.num_in_flight == 16
    clock.now += 0.01
    with loop._work:
        loop.scheduler.finish_step(batch, loop.forward.run(*batch.token_ids()), clock())
    assert loop.scheduler.num_running == 16
    decode_batches = []
    for _ in range(60):
        decode_batches.append(_step(loop, clock))
        # Every finished request is replaced at once: 16 in flight after every step.
        assert loop.scheduler.num_in_flight == 16
    assert loop.scheduler.completed >= 16
    # Lengths of 4-12 tokens: requests finish at different steps, so most steps decode the whole batch.
    assert max(decode_batches) == 16
    lengths = {r.max_new_tokens for r in loop.scheduler.running}
    assert len(lengths) > 1 and all(4 <= n <= 12 for n in lengths)


def test_a_bursty_closed_loop_stops_replacing_requests_while_off(weights):
    clock = FakeClock()
    config = DecodeConfig(output_tokens=4, prompt_tokens=8, max_prefill_tokens=1024, layers_per_step=1)
    loop = DecodeLoop(weights, config, DecodeMetrics(CollectorRegistry(), "tiny"), clock=clock)
    loop.set_shape(LoadShape(concurrency=8, on_seconds=1.0, off_seconds=1.0))
    with loop._work:
        loop._top_up_locked()
    while clock.now < 100.9:  # on: topped up to 8 after every step
        _step(loop, clock, 0.05)
        assert loop.scheduler.num_in_flight == 8
    clock.now = 101.2  # off: requests in flight finish, none replaces them
    while loop.scheduler.has_work():
        _step(loop, clock, 0.05)
    assert clock.now < 102.0 and loop.scheduler.num_running == 0
    clock.now = 102.1  # on again: the next top-up refills
    with loop._work:
        loop._top_up_locked()
    assert loop.scheduler.num_waiting == 8


def test_set_load_is_open_loop_only(weights):
    loop = DecodeLoop(weights, DecodeConfig(load_concurrency=4), DecodeMetrics(CollectorRegistry(), "tiny"))
    loop.set_load(12.5)
    assert loop.shape == LoadShape(rps=12.5) and loop.load_rps == 12.5
    assert loop.stats()["load"] == {"rps": 12.5, "concurrency": 0, "on_seconds": 0.0, "off_seconds": 0.0}
