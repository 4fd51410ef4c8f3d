"""The fork client's metrics are scrapable: `rfork fork --metrics-port`, `rfork testbed --client-metrics-port`.

The end-to-end path (a real Prometheus scraping `rfork fork --metrics-port`
during a fork) is in test_real_prometheus.py; these are the cheap edges.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry

from metrics.definitions import ClientMetrics, serve_metrics
from rfork_agent.cli import main as rfork
from testbed import orchestrator
from testbed.fleet import free_port


def test_serve_metrics_serves_the_given_registry_on_loopback():
    metrics = ClientMetrics(CollectorRegistry())
    metrics.progress_ratio.set(0.25)
    server = serve_metrics(metrics.registry, 0)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
        assert "rfork_client_progress_ratio 0.25" in text
        assert "python_gc" not in text  # an explicit registry, not the global one
    finally:
        server.close()
    with pytest.raises(httpx.ConnectError):  # closed means the port is free again
        httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=1)


@pytest.mark.parametrize("args, message", [
    (["--metrics-port", "70000"], "--metrics-port must be between 0 and 65535"),
    (["--metrics-port", "-1"], "--metrics-port must be between 0 and 65535"),
    (["--metrics-linger", "-1"], "--metrics-linger must be >= 0"),
])
def test_rfork_fork_rejects_bad_metrics_flags(args, message, capsys):
    code = rfork(["fork", "--scheduler", "http://127.0.0.1:1", "--like-seed", "http://127.0.0.1:2", *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_serving_on_a_busy_port_raises_oserror():
    """`rfork fork` turns this into a one-line error naming the address."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError):
            serve_metrics(CollectorRegistry(), port)


def test_testbed_client_metrics_port_flag_is_validated():
    parser = _testbed_parser()
    ok = orchestrator.options_from_args(parser.parse_args(["--client-metrics-port", "0"]))
    assert ok.client_metrics_port == 0
    assert orchestrator.options_from_args(parser.parse_args([])).client_metrics_port is None
    with pytest.raises(ValueError, match="--client-metrics-port must be between 0 and 65535"):
        orchestrator.options_from_args(parser.parse_args(["--client-metrics-port", "65536"]))


def test_testbed_serves_its_client_metrics_while_it_runs(monkeypatch):
    """run_testbed serves the one ClientMetrics it hands the fork client, and stops serving after."""
    port = free_port()
    seen = {}

    def fake_fleet_run(options, spec, client_metrics):
        client_metrics.bytes_total.labels(seed="seed-0").inc(4096)
        seen["text"] = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return {"verified": True}

    monkeypatch.setattr(orchestrator, "_run_fleet", fake_fleet_run)
    options = orchestrator.TestbedOptions(model="tiny", client_metrics_port=port, progress=False)
    assert orchestrator.run_testbed(options) == {"verified": True}
    assert 'rfork_client_bytes_total{seed="seed-0"} 4096.0' in seen["text"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)


def _testbed_parser():
    import argparse

    p = argparse.ArgumentParser()
    orchestrator.add_arguments(p)
    return p
