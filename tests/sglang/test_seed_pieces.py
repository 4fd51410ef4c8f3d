"""The seed side against SGLang's real pieces: EngineInfoBootstrapServer, server info, TokenizerMetricsCollector.

Seeds are ``testbed.sglang_pieces`` stand-ins (SGLang's bootstrap server as
their TE-info source, SGLang's ``build_server_info`` as /server_info, SGLang's
collector behind /metrics); rfork agents discover them as they would a stock
SGLang seed, and SGLang's hooked loader forks from them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed.fleet import FleetSpec
from tests.sglang.conftest import SGLANG_INSTALLED, client_env, run_python, run_sglang_client
from throttle.prom_text import ITL_HISTOGRAM, RUNNING_GAUGE, TTFT_HISTOGRAM, parse_sglang_scrape

# Agents pace at a fixed cap and scrape the seed's /metrics (--throttle fixed), as
# beside a stock SGLang seed.
SPEC = FleetSpec(seeds=2, preset="tiny", dtype="bfloat16", tp_size=2, load_rps=4.0,
                 seed_rates=(1e9,), agent_args=("--throttle", "fixed"))
MODEL_FIELDS = ("preset", "size_bytes", "dtype", "tp_size", "include_zero_byte", "rng_seed")


@pytest.fixture(scope="module")
def fleet():
    if not SGLANG_INSTALLED:
        pytest.skip("SGLang is not installed")
    from testbed.sglang_pieces import SGLangPiecesFleet

    with SGLangPiecesFleet(SPEC) as running:
        yield running


def test_agents_discover_identity_from_sglangs_real_server_info(fleet):
    info = httpx.get(f"{fleet.seeds[0].url}/server_info", timeout=5).json()
    # SGLang's own JSON (flat resolved args + launch_command), not the stand-in's.
    assert "launch_command" in info and info["revision"] is None
    assert (info["model_path"], info["dtype"], info["tp_size"]) == ("tiny", "bfloat16", 2)
    assert fleet.identity().model_dump() == {"model": "tiny", "revision": "main", "dtype": "bfloat16", "tp_size": 2}
    seeds = httpx.get(f"{fleet.scheduler_url}/v1/seeds", timeout=5).json()
    listed = seeds if isinstance(seeds, list) else seeds["seeds"]
    assert len(listed) == 2


def test_te_info_comes_from_sglangs_engine_info_bootstrap_server(fleet):
    seed = fleet.seeds[0]
    for path in ("/remote_instance_transfer_engine_info", "/get_remote_instance_transfer_engine_info"):
        for rank in (0, 1):
            body = httpx.get(f"{seed.url}{path}", params={"rank": rank}, timeout=5).json()
            session_id, manifest = body["remote_instance_transfer_engine_info"]
            assert body["rank"] == rank and session_id == seed.sessions[str(rank)]
            assert all(len(entry) == 3 for entry in manifest.values())
        missing = httpx.get(f"{seed.url}{path}", params={"rank": 2}, timeout=5)
        assert missing.status_code == 400  # SGLang's answer when the bootstrap server has no such rank


def test_hooked_loader_forks_rank_1_from_bootstrap_server_backed_seeds(fleet):
    config = {"mode": "load", "seed_url": fleet.seeds[1].url, "rank": 1,
              "fleet": {k: asdict(SPEC)[k] for k in MODEL_FIELDS}}
    env = client_env(RFORK_SCHEDULER_URL=fleet.scheduler_url, RFORK_CHUNK_SIZE="128KiB",
                     RFORK_MODEL="tiny", RFORK_DTYPE="bfloat16", RFORK_TP_SIZE="2")
    result, _ = run_sglang_client(config, env)
    assert result["ok"] and result["mismatched"] == [], result
    record = result["last_load"]
    assert record["path"] == "rfork" and sorted(record["bytes_by_seed"]) == ["seed-0", "seed-1"]


def test_live_seed_metrics_come_from_sglangs_collector_and_parse(fleet):
    # The seeds decode at 4 requests/s; wait for SGLang's collector to have observed some tokens.
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(f"{fleet.seeds[0].url}/metrics", timeout=5).text
        scrape = parse_sglang_scrape(text, taken_at=time.monotonic(), model_name="tiny")
        itl = scrape.histograms.get(ITL_HISTOGRAM)
        if itl is not None and itl.counts[-1] > 0:
            break
        assert time.monotonic() < deadline, f"no inter-token latency observed in 60 s:\n{text[:2000]}"
        time.sleep(1)
    assert TTFT_HISTOGRAM in scrape.histograms and RUNNING_GAUGE in scrape.gauges
    # SGLang's exposition: its buckets and its labels.
    assert 'sglang:inter_token_latency_seconds_bucket{engine_type="unified",le="0.002",model_name="tiny"}' in text

    # The agent beside the seed reads the same body: its observed ITL p99 becomes a number.
    agent, seed_id = fleet.seeds[0].agent_url, fleet.seeds[0].seed_id
    p99_key = ("rfork_agent_observed_itl_p99_seconds", (("seed", seed_id),))
    while True:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(httpx.get(f"{agent}/metrics", timeout=5).text)
                   for s in family.samples}
        p99 = samples.get(p99_key, math.nan)
        if not math.isnan(p99):
            break
        assert time.monotonic() < deadline + 30, f"agent never reported an observed ITL p99: {samples.get(p99_key)}"
        time.sleep(1)
    assert 0 < p99 < 10
    failures = {dict(labels)["reason"]: v for (name, labels), v in samples.items()
                if name == "rfork_agent_seed_metrics_scrape_failures_total"}
    # What this test is about: SGLang's body parses and its answers are 200s. A scrape that timed out
    # ("unreachable") is the agent doing its job on a loaded machine: two CI runs side by side saw one.
    assert failures.get("parse_error", 0) == 0 and failures.get("http_error", 0) == 0, \
        f"the agent could not parse SGLang's exposition (scrape failures by reason: {failures})"


def test_tokenizer_metrics_collector_exposition_reads_back_exactly():
    code = '''
from testbed.sglang_pieces import prepare_cpu_sglang_env, tokenizer_metrics
prepare_cpu_sglang_env()
import json
from prometheus_client import REGISTRY, generate_latest
from throttle.prom_text import parse_sglang_scrape, ITL_HISTOGRAM, TTFT_HISTOGRAM
collector, labels = tokenizer_metrics("m")
# SGLang's calls as its tokenizer manager makes them: one streamed chunk of 5 tokens
# over 50 ms counts 5 observations of 10 ms; one token after 300 ms counts once.
collector.observe_inter_token_latency(labels, 0.05, 5)
collector.observe_inter_token_latency(labels, 0.3, 1)
collector.observe_time_to_first_token(labels, 0.2, stream=True)
text = generate_latest(REGISTRY).decode()
s = parse_sglang_scrape(text, taken_at=0.0, model_name="m")
itl, ttft = s.histograms[ITL_HISTOGRAM], s.histograms[TTFT_HISTOGRAM]
other = parse_sglang_scrape(text, taken_at=0.0, model_name="other")
print(json.dumps({"labels": labels, "itl": dict(zip(map(str, itl.bounds), itl.counts)), "itl_sum": itl.sum,
                  "ttft_total": ttft.counts[-1], "other": list(other.histograms)}))
'''
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["labels"] == {"model_name": "m", "engine_type": "unified"}
    itl = out["itl"]
    assert itl["0.01"] == 5 and itl["0.2"] == 5 and itl["0.4"] == 6 and itl["inf"] == 6
    assert abs(out["itl_sum"] - 0.35) < 1e-9
    assert out["ttft_total"] == 1
    assert out["other"] == []  # the model_name filter keeps another model's series out
