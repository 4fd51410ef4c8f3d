"""What the dashboards and alert rules query, and what rfork exports: enough PromQL to compare them.

``references(expr)`` walks a PromQL expression with a small tokenizer and
returns the metric selectors (name + matcher labels), the grouping labels
(``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``) and
nothing else; ``check_expr`` compares them with ``exported_series()``, which is
built from metrics/definitions.py's ``catalog()`` plus the SGLang series a seed
exports (the testbed stand-in mirrors SGLang's names and labels).

    >>> references('sum by (seed) (rate(rfork_agent_granted_bytes_total{seed=~"$seed"}[5m]))').selectors
    [Selector(name='rfork_agent_granted_bytes_total', labels=('seed',))]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "grafana" / "dashboards" / "rfork"
ALERT_RULES = REPO / "grafana" / "alerts" / "rfork-alerts.yml"

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# Series Prometheus itself produces for every target.
PROMETHEUS_SERIES = {"up": ()}

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])(?![A-Za-z0-9_:]))
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<var>\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},])
""", re.VERBOSE)

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN", "atan2"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Aggregations may be followed by 'by (...)' before their '(': never metric names.
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                 "topk", "quantile"}


class PromQLSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Selector:
    name: str
    labels: tuple[str, ...]


@dataclass
class References:
    selectors: list[Selector] = field(default_factory=list)
    grouping_labels: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise PromQLSyntaxError(f"cannot read {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def references(expr: str) -> References:
    """Metric selectors and grouping labels in ``expr`` (Grafana's $variables allowed)."""
    toks, refs, i = _tokens(expr), References(), 0

    def label_list(j: int) -> int:
        """Reads '(a, b)' at j into grouping_labels; returns the index after ')'."""
        if j >= len(toks) or toks[j][1] != "(":
            return j
        j += 1
        while toks[j][1] != ")":
            if toks[j][0] == "ident":
                refs.grouping_labels.add(toks[j][1])
            j += 1
        return j + 1

    def matchers(j: int) -> tuple[tuple[str, ...], int]:
        """Reads '{l="v", ...}' at j; returns the label names and the index after '}'."""
        labels = []
        j += 1
        while toks[j][1] != "}":
            kind, text = toks[j]
            if kind == "ident":
                if toks[j + 1][1] not in ("=", "!=", "=~", "!~") or toks[j + 2][0] != "string":
                    raise PromQLSyntaxError(f"bad matcher after {text!r} in {expr!r}")
                labels.append(text)
                j += 3
            elif text == ",":
                j += 1
            else:
                raise PromQLSyntaxError(f"unexpected {text!r} in matchers of {expr!r}")
        return tuple(labels), j + 1

    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in _GROUPING:
            i = label_list(i + 1)
        elif kind == "ident" and (nxt == "(" or text in _KEYWORDS or text in _AGGREGATIONS):
            i += 1  # a function, an aggregation or a keyword
        elif kind == "ident":
            labels: tuple[str, ...] = ()
            if nxt == "{":
                labels, i = matchers(i + 1)
            else:
                i += 1
            refs.selectors.append(Selector(text, labels))
        elif text == "{":  # a selector without a name: {__name__=...}
            labels, i = matchers(i)
            refs.selectors.append(Selector("", labels))
        else:
            i += 1
    return refs


def exported_series() -> dict[str, frozenset[str]]:
    """Sample name -> label names, for every series rfork's processes and a seed export."""
    from metrics.definitions import catalog

    series: dict[str, frozenset[str]] = {}
    for family in catalog():
        for name in family.sample_names():
            series[name] = frozenset(family.sample_labels(name))
    for name, labels in _sglang_series().items():
        series[name] = frozenset(labels)
    for name, labels in PROMETHEUS_SERIES.items():
        series[name] = frozenset(labels)
    return series


def _sglang_series() -> dict[str, tuple[str, ...]]:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from testbed.decode import DecodeMetrics

    out = {}
    for metric in vars(DecodeMetrics(CollectorRegistry(), "model")).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        if metric._type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[metric._name + suffix] = tuple(metric._labelnames) + (("le",) if suffix == "_bucket" else ())
        else:
            out[metric._name + ("_total" if metric._type == "counter" else "")] = tuple(metric._labelnames)
    return out


def check_expr(expr: str, exported: dict[str, frozenset[str]], legend: str = "") -> list[str]:
    """Problems with ``expr``: metrics nobody exports, labels they do not carry."""
    refs = references(expr)
    problems, known_labels = [], set(TARGET_LABELS)
    for sel in refs.selectors:
        if sel.name not in exported:
            problems.append(f"metric {sel.name or '{...}'!r} is not exported by any rfork component or seed")
            continue
        allowed = exported[sel.name] | TARGET_LABELS
        known_labels |= allowed
        for label in sel.labels:
            if label not in allowed:
                problems.append(f"{sel.name} has no label {label!r} (it has {sorted(exported[sel.name])})")
    for label in sorted(refs.grouping_labels - known_labels):
        problems.append(f"grouping label {label!r} is not carried by any metric in the expression")
    for label in re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend):
        if label not in known_labels:
            problems.append(f"legend uses label {label!r}, which no metric in the expression carries")
    if not refs.selectors:
        problems.append("no metric selector found")
    return problems


# -- what the dashboards and rules query ---------------------------------------------------------

@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    expr: str
    legend: str

    def where(self) -> str:
        return f"{self.dashboard} / {self.panel!r}"


def load_dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def panel_queries() -> list[PanelQuery]:
    out = []
    for name, dash in load_dashboards().items():
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                legend = target.get("legendFormat", "")
                out.append(PanelQuery(name, panel["title"], target["expr"], "" if legend == "__auto" else legend))
    return out


_LABEL_VALUES = re.compile(r"^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{[^}]*\})?\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)$")


def variable_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, variable, metric, label) for every label_values() template variable."""
    out = []
    for name, dash in load_dashboards().items():
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = _LABEL_VALUES.match(query.strip())
            if m is None:
                raise PromQLSyntaxError(f"{name}: variable {var['name']} is not label_values(metric, label): {query}")
            out.append((name, var["name"], m.group(1), m.group(2)))
    return out


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's template variables -> concrete values (longest names first: $seed vs $seed_x)."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    if "$" in expr:
        raise ValueError(f"unsubstituted variable in {expr!r}")
    return expr
