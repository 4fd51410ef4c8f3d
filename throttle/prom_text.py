"""Parse a Prometheus text exposition (a seed's ``/metrics`` body) into a :class:`Scrape`.

Pure: the caller fetches the body and says when it was taken. Only the
series asked for are kept; histograms are summed over label sets per ``le``
bound, gauges are summed over label sets, optionally restricted by a label
predicate (e.g. one ``model_name``).

Any malformed or truncated body raises :class:`ScrapeParseError` with a
sentence saying what is wrong; the parser's own exceptions never escape.

Example::

    >>> body = '''# TYPE sglang:inter_token_latency_seconds histogram
    ... sglang:inter_token_latency_seconds_bucket{le="0.04",model_name="m"} 90.0
    ... sglang:inter_token_latency_seconds_bucket{le="+Inf",model_name="m"} 100.0
    ... sglang:inter_token_latency_seconds_count{model_name="m"} 100.0
    ... sglang:inter_token_latency_seconds_sum{model_name="m"} 3.2
    ... sglang:num_running_reqs{model_name="m"} 4.0
    ... '''
    >>> s = parse_scrape(body, taken_at=12.0,
    ...                  histograms=["sglang:inter_token_latency_seconds"],
    ...                  gauges=["sglang:num_running_reqs"])
    >>> s.histograms["sglang:inter_token_latency_seconds"].counts, s.gauges
    ((90.0, 100.0), {'sglang:num_running_reqs': 4.0})
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

from throttle.histogram import CumulativeHistogram, HistogramError

__all__ = [
    "ITL_HISTOGRAM",
    "TTFT_HISTOGRAM",
    "RUNNING_GAUGE",
    "QUEUED_GAUGE",
    "ScrapeParseError",
    "Scrape",
    "LabelFilter",
    "parse_scrape",
    "parse_sglang_scrape",
    "label_equals",
]

# SGLang's series (observability/metrics_collector.py, sglang 0.5.23).
ITL_HISTOGRAM = "sglang:inter_token_latency_seconds"
TTFT_HISTOGRAM = "sglang:time_to_first_token_seconds"
RUNNING_GAUGE = "sglang:num_running_reqs"
QUEUED_GAUGE = "sglang:num_queue_reqs"

LabelFilter = Callable[[Mapping[str, str]], bool]


class ScrapeParseError(ValueError):
    """The exposition body could not be read as the series we need (garbage, truncated, inconsistent)."""


@dataclass(frozen=True)
class Scrape:
    """The series of interest from one ``/metrics`` body, taken at ``taken_at`` (seconds, caller's clock).

    ``histograms`` maps a base name to its label-summed cumulative histogram
    and ``gauges`` a name to its label-summed value. A name with no samples in
    the body (e.g. SGLang before its first request creates the labelled child)
    is absent from the mapping, not zero. Treat the mappings as read-only.
    """

    taken_at: float
    histograms: Mapping[str, CumulativeHistogram] = field(default_factory=dict)
    gauges: Mapping[str, float] = field(default_factory=dict)


def label_equals(name: str, value: str) -> LabelFilter:
    """A label predicate: keep series whose label ``name`` equals ``value``.

    >>> label_equals("model_name", "m")({"model_name": "m", "le": "0.1"})
    True
    """
    return lambda labels: labels.get(name) == value


def _parse_le(raw: str, series: str) -> float:
    try:
        bound = float(raw)  # accepts "+Inf", "0.002", "1e-3"
    except ValueError:
        raise ScrapeParseError(f"{series}: bucket bound le={raw!r} is not a number") from None
    if math.isnan(bound):
        raise ScrapeParseError(f"{series}: bucket bound le={raw!r} is NaN")
    return bound


def _label_key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "le"))


def _count_value(value: float, series: str, labels: Mapping[str, str]) -> float:
    if math.isnan(value) or value < 0:
        raise ScrapeParseError(f"{series}{dict(labels)}: a counter must be a non-negative number; got {value!r}")
    return value


class _HistogramAccumulator:
    """Samples of one histogram base name, grouped by label set until all are read."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buckets: dict[tuple, dict[float, float]] = {}
        self.count: dict[tuple, float] = {}
        self.sum: dict[tuple, float] = {}
        self.created: list[float] = []

    def add(self, suffix: str, labels: Mapping[str, str], value: float) -> None:
        key = _label_key(labels)
        series = self.name + suffix
        if suffix == "_bucket":
            if "le" not in labels:
                raise ScrapeParseError(f"{series}{dict(labels)} has no 'le' label")
            bound = _parse_le(labels["le"], series)
            per_set = self.buckets.setdefault(key, {})
            if bound in per_set:
                raise ScrapeParseError(f"{series}{dict(labels)} appears twice in one scrape")
            per_set[bound] = _count_value(value, series, labels)
        elif suffix == "_count":
            self.count[key] = self.count.get(key, 0.0) + _count_value(value, series, labels)
        elif suffix == "_sum":
            self.sum[key] = self.sum.get(key, 0.0) + value
        elif suffix == "_created":
            self.created.append(value)

    def build(self) -> CumulativeHistogram | None:
        if not self.buckets:
            if self.count:
                raise ScrapeParseError(
                    f"{self.name} has _count samples but no _bucket samples (truncated scrape or not a histogram?)"
                )
            return None
        layouts = {tuple(sorted(per_set)) for per_set in self.buckets.values()}
        if len(layouts) != 1:
            raise ScrapeParseError(
                f"{self.name}: label sets have different bucket bounds ({len(layouts)} layouts); "
                "their counts cannot be summed — filter to one layout with a label predicate"
            )
        bounds = layouts.pop()
        if bounds[-1] != math.inf:
            raise ScrapeParseError(f"{self.name} has no le=\"+Inf\" bucket (truncated scrape?)")
        if len(bounds) < 2:
            raise ScrapeParseError(f"{self.name} has only the +Inf bucket; a quantile needs finite bounds")
        counts = tuple(sum(per_set[b] for per_set in self.buckets.values()) for b in bounds)
        # _count/_sum are only meaningful if every label set had them; otherwise
        # a partial total would look like a counter reset at the next scrape.
        complete = set(self.buckets)
        count = sum(self.count.values()) if set(self.count) == complete else None
        total = sum(self.sum.values()) if set(self.sum) == complete else None
        created = max(self.created) if self.created else None
        try:
            return CumulativeHistogram(bounds, counts, count=count, sum=total, created=created)
        except HistogramError as exc:  # defensive: checks above should make this unreachable
            raise ScrapeParseError(f"{self.name}: {exc}") from exc


def parse_scrape(
    text: str,
    *,
    taken_at: float,
    histograms: Iterable[str] = (),
    gauges: Iterable[str] = (),
    label_filter: LabelFilter | None = None,
) -> Scrape:
    """Read the named histograms and gauges out of a text exposition body.

    Histogram samples are matched by sample name (``<base>_bucket``,
    ``_count``, ``_sum``, ``_created``), so a body without ``# TYPE`` lines
    still works. ``label_filter`` receives each sample's labels (without
    ``le``) and drops the series it rejects.

    Raises :class:`ScrapeParseError` when the body does not parse, does not
    end in a newline (the format requires one, so a missing one means the
    body was cut off), has a histogram without a ``+Inf`` bucket, label sets
    with different bucket layouts, duplicate series, or negative/NaN counts.
    NaN gauge samples are skipped (prometheus_client publishes NaN for unset
    gauges); a gauge with only NaN samples is absent.
    """
    if not isinstance(text, str):
        raise ScrapeParseError(f"exposition body must be text; got {type(text).__name__} (decode it first)")
    if text and not text.endswith("\n"):
        tail = text[-40:]
        raise ScrapeParseError(f"exposition body does not end with a newline; it was probably truncated (...{tail!r})")
    hist_names = tuple(histograms)
    gauge_names = set(gauges)
    accs = {name: _HistogramAccumulator(name) for name in hist_names}
    suffixed = {
        name + suffix: (name, suffix)
        for name in hist_names
        for suffix in ("_bucket", "_count", "_sum", "_created")
    }
    gauge_sums: dict[str, float] = {}
    try:
        # The parser is lazy and third-party; what it raises on bad input is not
        # part of its API (ValueError, IndexError, ...), so map everything here.
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in suffixed or sample.name in gauge_names:
                    _route(sample.name, sample.labels, sample.value, suffixed, gauge_sums, accs, label_filter)
    except ScrapeParseError:
        raise
    except Exception as exc:
        raise ScrapeParseError(f"not a Prometheus text exposition: {exc}") from exc
    built = {name: acc.build() for name, acc in accs.items()}
    return Scrape(
        taken_at=taken_at,
        histograms={name: h for name, h in built.items() if h is not None},
        gauges=gauge_sums,
    )


def _route(
    name: str,
    labels: Mapping[str, str],
    value: float,
    suffixed: Mapping[str, tuple[str, str]],
    gauge_sums: dict[str, float],
    accs: Mapping[str, _HistogramAccumulator],
    label_filter: LabelFilter | None,
) -> None:
    if label_filter is not None and not label_filter({k: v for k, v in labels.items() if k != "le"}):
        return
    if name in suffixed:
        base, suffix = suffixed[name]
        accs[base].add(suffix, labels, value)
    elif not math.isnan(value):
        gauge_sums[name] = gauge_sums.get(name, 0.0) + value


def parse_sglang_scrape(text: str, *, taken_at: float, model_name: str | None = None) -> Scrape:
    """:func:`parse_scrape` for the series the throttle reads from an SGLang seed.

    ``model_name`` restricts to one served model (SGLang labels every series
    with it); None sums all.
    """
    return parse_scrape(
        text,
        taken_at=taken_at,
        histograms=(ITL_HISTOGRAM, TTFT_HISTOGRAM),
        gauges=(RUNNING_GAUGE, QUEUED_GAUGE),
        label_filter=None if model_name is None else label_equals("model_name", model_name),
    )
