"""rfork_agent.gate: the rollout gate's decision table and its settings (pure; no Prometheus)."""

from __future__ import annotations

import doctest
import math

import pytest

import rfork_agent.gate as gate_module
from rfork_agent.gate import (
    FORK_LATENCY_IMPACT,
    QUERIES,
    SEED_ITL_P99,
    WINDOW,
    GateConfig,
    GateInputError,
    Verdict,
    check_prometheus_url,
    decide,
)

ITL, IMPACT = SEED_ITL_P99.name, FORK_LATENCY_IMPACT.name
NAN = math.nan

BOTH = dict(slo_itl_seconds=0.04, max_impact=1.5)


@pytest.mark.parametrize("bounds, values, verdict, words", [
    # ITL only
    (dict(slo_itl_seconds=0.04), {ITL: 0.031}, Verdict.PROCEED, ["worst seed ITL p99 0.031 s <= 0.04 s"]),
    (dict(slo_itl_seconds=0.04), {ITL: 0.04}, Verdict.PROCEED, ["<= 0.04 s"]),  # at the SLO is within it
    (dict(slo_itl_seconds=0.04), {ITL: 0.0401}, Verdict.HOLD, ["0.0401 s > 0.04 s (--slo-itl)", "last 1m"]),
    (dict(slo_itl_seconds=0.04), {ITL: None}, Verdict.CANNOT_TELL, ["no seed ITL series", "job rfork-seed"]),
    (dict(slo_itl_seconds=0.04), {ITL: NAN}, Verdict.CANNOT_TELL, ["served no tokens in the last 1m"]),
    (dict(slo_itl_seconds=0.04), {ITL: math.inf}, Verdict.HOLD, ["inf s > 0.04 s"]),
    # impact only: 1 is what the query gives when no fork ran in the window
    (dict(max_impact=1.5), {IMPACT: 1.0}, Verdict.PROCEED, ["worst latency impact during forks 1x <= 1.5x"]),
    (dict(max_impact=1.5), {IMPACT: 2.2}, Verdict.HOLD, ["2.2x > 1.5x (--max-impact)"]),
    (dict(max_impact=1.5), {IMPACT: None}, Verdict.CANNOT_TELL, ["no rfork agent series", "job rfork-agent"]),
    (dict(max_impact=1.5), {IMPACT: NAN}, Verdict.CANNOT_TELL, ["no latency baseline yet"]),
    # both: hold wins over cannot-tell (the SLO is at risk either way); cannot-tell over proceed
    (BOTH, {ITL: 0.03, IMPACT: 1.2}, Verdict.PROCEED, ["0.03 s <= 0.04 s; worst latency impact"]),
    (BOTH, {ITL: 0.05, IMPACT: None}, Verdict.HOLD, ["0.05 s > 0.04 s"]),
    (BOTH, {ITL: NAN, IMPACT: 3.0}, Verdict.HOLD, ["3x > 1.5x"]),
    (BOTH, {ITL: 0.05, IMPACT: 3.0}, Verdict.HOLD, ["0.05 s > 0.04 s", "3x > 1.5x"]),
    (BOTH, {ITL: 0.03, IMPACT: NAN}, Verdict.CANNOT_TELL, ["no latency baseline yet"]),
    # a value nobody asked about is not judged
    (dict(slo_itl_seconds=0.04), {ITL: 0.03, IMPACT: 99.0}, Verdict.PROCEED, []),
])
def test_decision_table(bounds, values, verdict, words):
    decision = decide(GateConfig(window="1m", **bounds), values)
    assert decision.verdict is verdict, decision.line()
    line = decision.line()
    assert "\n" not in line
    assert line.startswith({Verdict.PROCEED: "proceed: ", Verdict.HOLD: "hold: ",
                            Verdict.CANNOT_TELL: "cannot tell: "}[verdict])
    for word in words:
        assert word in line, line
    if bounds.get("max_impact") is None:
        assert "impact" not in line


@pytest.mark.parametrize("kwargs, message", [
    (dict(slo_itl_seconds=-0.04), "--slo-itl must be a number of seconds > 0, got -0.04"),
    (dict(slo_itl_seconds=0.0), "--slo-itl must be a number of seconds > 0"),
    (dict(slo_itl_seconds=math.nan), "--slo-itl must be a number of seconds > 0, got nan"),
    (dict(slo_itl_seconds=math.inf), "--slo-itl must be a number of seconds > 0, got inf"),
    (dict(max_impact=0.5), "--max-impact must be a ratio >= 1"),
    (dict(max_impact=-2.0), "--max-impact must be a ratio >= 1"),
    (dict(), "nothing to judge: give --slo-itl SECONDS, --max-impact RATIO, or both"),
    (dict(slo_itl_seconds=0.04, window="1 minute"), "--window '1 minute' is not a Prometheus duration"),
    (dict(slo_itl_seconds=0.04, window="60"), "is not a Prometheus duration"),
    (dict(slo_itl_seconds=0.04, window="1m]) or vector(0"), "is not a Prometheus duration"),
])
def test_bad_settings_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(GateInputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        GateConfig(**kwargs)


@pytest.mark.parametrize("window", ["30s", "1m", "1m30s", "2h", "500ms"])
def test_good_windows_are_accepted(window):
    assert GateConfig(slo_itl_seconds=0.04, window=window).window == window


@pytest.mark.parametrize("url, ok", [
    ("http://prometheus:9090", True), ("https://prom.example/prometheus/", True), ("http://127.0.0.1:9090/", True),
    ("prometheus:9090", False), ("ftp://prometheus", False), ("http://", False), ("http://host:99999", False),
    ("http://[::1", False), ("", False),
])
def test_prometheus_url_check(url, ok):
    if ok:
        assert not check_prometheus_url(url).endswith("/")
    else:
        with pytest.raises(GateInputError, match="--prometheus"):
            check_prometheus_url(url)


def test_queries_have_one_parameter_and_no_template_braces():
    """The window is the only parameter, and no ``{{``/``}}`` of the query itself can be taken for a
    template action by Argo Rollouts' or Flagger's renderers."""
    for query in QUERIES:
        assert query.template.count(WINDOW) >= 1
        rendered = query.render("5m")
        assert WINDOW not in rendered and "$" not in rendered
        assert "{{" not in rendered and "}}" not in rendered
        assert rendered.count("(") == rendered.count(")") and rendered.count("[") == rendered.count("]")


def test_doctests():
    assert doctest.testmod(gate_module, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("at, sent", [(None, None), (1764806400.25, "1764806400.250")])
def test_the_gate_queries_the_window_ending_at_at_or_now(at, sent):
    """``--at`` becomes Prometheus's ``time`` parameter on every query; without it none is sent (now)."""
    import httpx

    from rfork_agent.gate import GateConfig, PrometheusClient, run_gate

    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params.get("time"))
        return httpx.Response(200, json={"status": "success",
                                         "data": {"resultType": "vector", "result": [{"value": [0, "0.02"]}]}})

    with PrometheusClient("http://prometheus:9090", transport=httpx.MockTransport(answer)) as prometheus:
        decision = run_gate(GateConfig(slo_itl_seconds=0.04), prometheus, at)
    assert seen and all(t == sent for t in seen)
    assert decision.line().startswith("proceed"), decision.line()
