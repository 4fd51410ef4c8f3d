"""throttle.prom_text: Prometheus text exposition -> Scrape."""

from __future__ import annotations

import doctest
import math
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

import throttle.prom_text as prom_text_module
from throttle.histogram import WindowHistogram, window
from throttle.prom_text import (
    ITL_HISTOGRAM,
    QUEUED_GAUGE,
    RUNNING_GAUGE,
    TTFT_HISTOGRAM,
    ScrapeParseError,
    label_equals,
    parse_scrape,
    parse_sglang_scrape,
)

# SGLang 0.5.23 defaults (srt/observability/metrics_collector.py).
SGLANG_ITL_BUCKETS = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040,
    0.060, 0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000,
)
SGLANG_TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
SGLANG_LABELS = ("model_name", "engine_type", "tp_rank", "pp_rank")


def sglang_exposition(itl_by_model: dict[str, list[float]], running: dict[str, float], queued: dict[str, float],
                      ttft: dict[tuple[str, str], list[float]] | None = None) -> str:
    """A /metrics body shaped like SGLang's: same names, labels and default buckets."""
    reg = CollectorRegistry()
    itl = Histogram(ITL_HISTOGRAM, "Histogram of inter-token latency in seconds.", SGLANG_LABELS,
                    buckets=SGLANG_ITL_BUCKETS, registry=reg)
    ttft_h = Histogram(TTFT_HISTOGRAM, "Histogram of time to first token in seconds.",
                       (*SGLANG_LABELS, "is_streaming"), buckets=SGLANG_TTFT_BUCKETS, registry=reg)
    run_g = Gauge(RUNNING_GAUGE, "The number of running requests.", SGLANG_LABELS, registry=reg)
    queue_g = Gauge(QUEUED_GAUGE, "The number of requests in the waiting queue.", SGLANG_LABELS, registry=reg)
    for model, values in itl_by_model.items():
        child = itl.labels(model, "unified", "0", "0")
        for v in values:
            child.observe(v)
    for (model, streaming), values in (ttft or {}).items():
        child = ttft_h.labels(model, "unified", "0", "0", streaming)
        for v in values:
            child.observe(v)
    for model, v in running.items():
        run_g.labels(model, "unified", "0", "0").set(v)
    for model, v in queued.items():
        queue_g.labels(model, "unified", "0", "0").set(v)
    return generate_latest(reg).decode()


def test_docstring_examples():
    assert doctest.testmod(prom_text_module).failed == 0


def test_parses_sglang_exposition_summed_over_label_sets():
    body = sglang_exposition(
        {"llama": [0.012] * 30 + [0.05] * 5, "qwen": [0.03] * 10 + [0.5] * 2},
        running={"llama": 3, "qwen": 2},
        queued={"llama": 1, "qwen": 0},
        ttft={("llama", "true"): [0.3, 0.7], ("llama", "false"): [3.0]},
    )
    s = parse_sglang_scrape(body, taken_at=5.0)
    itl = s.histograms[ITL_HISTOGRAM]
    assert itl.bounds == (*SGLANG_ITL_BUCKETS, math.inf)
    by_bound = dict(zip(itl.bounds, itl.counts))
    assert by_bound[0.015] == 30
    assert by_bound[0.035] == 40
    assert by_bound[0.06] == 45
    assert by_bound[0.6] == by_bound[math.inf] == 47
    assert itl.count == 47
    assert itl.sum == pytest.approx(30 * 0.012 + 5 * 0.05 + 10 * 0.03 + 2 * 0.5)
    assert itl.created is not None  # prometheus_client publishes _created unless disabled
    ttft = s.histograms[TTFT_HISTOGRAM]
    assert dict(zip(ttft.bounds, ttft.counts))[0.4] == 1 and ttft.counts[-1] == 3
    assert s.gauges == {RUNNING_GAUGE: 5.0, QUEUED_GAUGE: 1.0}
    assert s.taken_at == 5.0


def test_label_filter_selects_one_model():
    body = sglang_exposition({"llama": [0.012] * 30, "qwen": [0.5] * 2}, running={"llama": 3, "qwen": 2}, queued={})
    s = parse_sglang_scrape(body, taken_at=0.0, model_name="qwen")
    assert s.histograms[ITL_HISTOGRAM].counts[-1] == 2
    assert s.gauges == {RUNNING_GAUGE: 2.0}


def test_series_without_samples_are_absent():
    # SGLang creates labelled children on first use: before any request only HELP/TYPE lines.
    body = sglang_exposition({}, running={}, queued={})
    s = parse_sglang_scrape(body, taken_at=0.0)
    assert s.histograms == {} and s.gauges == {}
    assert parse_scrape("", taken_at=0.0, histograms=[ITL_HISTOGRAM]).histograms == {}


def test_window_between_two_parsed_scrapes():
    first = {"llama": [0.012] * 30, "qwen": [0.03] * 10}
    second = {"llama": [0.012] * 30 + [0.07] * 4, "qwen": [0.03] * 16}
    prev = parse_sglang_scrape(sglang_exposition(first, {}, {}), taken_at=0.0)
    cur = parse_sglang_scrape(sglang_exposition(second, {}, {}), taken_at=1.0)
    # Each exposition comes from a fresh registry, so _created differs; drop it to diff them.
    p = prev.histograms[ITL_HISTOGRAM]
    c = cur.histograms[ITL_HISTOGRAM]
    w = window(replace(p, created=None), replace(c, created=None))
    assert isinstance(w, WindowHistogram)
    assert w.cumulative[-1] == 10
    assert dict(zip(w.bounds, w.cumulative))[0.06] == 6


def test_hand_written_body_without_type_lines():
    body = (
        'sglang:inter_token_latency_seconds_bucket{le="0.04",model_name="m"} 90\n'
        'sglang:inter_token_latency_seconds_bucket{le="0.06",model_name="m"} 99\n'
        'sglang:inter_token_latency_seconds_bucket{le="+Inf",model_name="m"} 100\n'
        'sglang:num_queue_reqs{model_name="m"} NaN\n'
    )
    s = parse_sglang_scrape(body, taken_at=0.0)
    h = s.histograms[ITL_HISTOGRAM]
    assert (h.bounds, h.counts, h.count, h.sum) == ((0.04, 0.06, math.inf), (90, 99, 100), None, None)
    assert s.gauges == {}  # a NaN gauge is "no value", not a number to sum


def test_label_equals():
    assert label_equals("model_name", "a")({"model_name": "a"})
    assert not label_equals("model_name", "a")({"model_name": "b"})
    assert not label_equals("model_name", "a")({})


H = 'sglang:inter_token_latency_seconds'


@pytest.mark.parametrize(
    "body, match",
    [
        ("<html><body>502 Bad Gateway</body></html>\n", "not a Prometheus text exposition"),
        ("\x00\x01\x02\n", "not a Prometheus text exposition"),
        (f'{H}_bucket{{le="0.04"}} 90\n{H}_bucket{{le="+In', "does not end with a newline"),
        (f'{H}_bucket{{le="0.04"}} 90\n{H}_bucket{{le="0.06"}} 99\n', "no le=\"\\+Inf\" bucket"),
        (f'{H}_bucket{{le="0.04"}} 9\n{H}_bucket{{le="0.04"}} 9\n{H}_bucket{{le="+Inf"}} 9\n', "appears twice"),
        (f'{H}_bucket{{le="0.04"}} -1\n{H}_bucket{{le="+Inf"}} 9\n', "non-negative"),
        (f'{H}_bucket{{le="fast"}} 1\n{H}_bucket{{le="+Inf"}} 9\n', "not a number"),
        (f'{H}_bucket{{x="a"}} 1\n', "no 'le' label"),
        (f'{H}_bucket{{le="+Inf"}} 1\n', "only the \\+Inf bucket"),
        (f'{H}_count 4\n', "_count samples but no _bucket"),
        (
            f'{H}_bucket{{m="a",le="0.04"}} 1\n{H}_bucket{{m="a",le="+Inf"}} 1\n'
            f'{H}_bucket{{m="b",le="0.06"}} 1\n{H}_bucket{{m="b",le="+Inf"}} 1\n',
            "different bucket bounds",
        ),
        (f'{H}_bucket{{le="0.04"}} abc\n', "not a Prometheus text exposition"),
    ],
)
def test_garbage_raises_scrape_parse_error(body, match):
    with pytest.raises(ScrapeParseError, match=match):
        parse_sglang_scrape(body, taken_at=0.0)


def test_bytes_body_is_a_typed_error():
    with pytest.raises(ScrapeParseError, match="decode it first"):
        parse_scrape(b"x 1\n", taken_at=0.0)  # type: ignore[arg-type]
