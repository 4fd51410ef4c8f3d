"""SGLang's real RemoteInstanceModelLoader, hooked by the plugin, loading from testbed seeds.

One fleet (scheduler, 2 seed stand-ins with real TransferEngines, 2 agents) for
the module; each case is a fresh SGLang client process
(tests/sglang/sglang_client.py) calling SGLang's own
``load_model_from_remote_instance_by_transfer_engine`` over real TE (TCP).
"""

from __future__ import annotations

from dataclasses import asdict

import httpx
import pytest

from testbed.fleet import Fleet, FleetSpec, free_port
from tests.sglang.conftest import SGLANG_INSTALLED, client_env, run_sglang_client

TOKEN = "sglang-tier-token"
# Auth on, as in production: the plugin must pass the fleet's token.
SPEC = FleetSpec(seeds=2, preset="tiny", dtype="bfloat16", include_zero_byte=True, token=TOKEN)
MODEL_FIELDS = ("preset", "size_bytes", "dtype", "tp_size", "include_zero_byte", "rng_seed")
# Small chunks, so both seeds serve some of a ~8 MB model.
CHUNK = "256KiB"


@pytest.fixture(scope="module")
def fleet():
    if not SGLANG_INSTALLED:
        pytest.skip("SGLang is not installed")
    with Fleet(SPEC) as running:
        yield running


def load(fleet, env: dict, **config) -> tuple[dict, str]:
    config = {"mode": "load", "seed_url": fleet.seeds[0].url, "rank": 0,
              "fleet": {k: asdict(SPEC)[k] for k in MODEL_FIELDS}, **config}
    return run_sglang_client(config, client_env(**env))


def rfork_env(fleet, **extra) -> dict:
    identity = fleet.identity()
    return {"RFORK_SCHEDULER_URL": fleet.scheduler_url, "RFORK_CHUNK_SIZE": CHUNK, "RFORK_TOKEN": TOKEN,
            "RFORK_MODEL": identity.model, "RFORK_DTYPE": identity.dtype, **extra}


def test_hooked_loader_forks_every_byte_from_every_seed(fleet):
    # The identity's dtype and tp_size come from a published ServerArgs, as in a real SGLang
    # process; only the model name is given, because "tiny" is no Hugging Face model SGLang
    # could resolve.
    identity = fleet.identity()
    env = {"RFORK_SCHEDULER_URL": fleet.scheduler_url, "RFORK_CHUNK_SIZE": CHUNK, "RFORK_MODEL": identity.model,
           "RFORK_TOKEN": TOKEN}
    result, stderr = load(fleet, env, publish={"dtype": identity.dtype, "tp_size": 1})
    assert result["hook_active"] and result["ok"] and result["error"] is None
    assert result["mismatched"] == [], result
    record = result["last_load"]
    assert record["path"] == "rfork", record
    assert record["identity"] == identity.model_dump()
    assert sorted(record["bytes_by_seed"]) == ["seed-0", "seed-1"], "both seeds should serve chunks"
    # Endgame duplicates may read a chunk twice, so the per-seed sum can exceed the total.
    assert record["bytes_total"] == fleet.seeds[0].total_bytes <= sum(record["bytes_by_seed"].values())
    # SGLang's post-load step ran once, as after its own read; the zero-byte tensor hung nothing.
    assert result["post_load_calls"] == 1
    assert "rfork: rank 0: forking" in stderr
    # It served its landed chunks while loading, and stopped (confirmed) before SGLang got its weights back.
    assert record["served_as_peer"], record
    assert "no read from it is on the wire" in record["withdrawal"], record
    assert httpx.get(f"{fleet.scheduler_url}/v1/jobs/{record['job_id']}", headers=fleet.headers,
                     timeout=5).status_code == 404


def test_with_peers_off_the_instance_serves_nobody(fleet):
    result, _ = load(fleet, rfork_env(fleet, RFORK_PEERS="0"))
    assert result["ok"] and result["mismatched"] == []
    assert result["last_load"]["path"] == "rfork" and not result["last_load"]["served_as_peer"]


def test_scheduler_down_falls_back_to_sglangs_own_read(fleet):
    env = rfork_env(fleet, RFORK_SCHEDULER_URL=f"http://127.0.0.1:{free_port()}")
    result, stderr = load(fleet, env)
    assert result["ok"] and result["mismatched"] == []
    record = result["last_load"]
    assert record["path"] == "sglang"
    assert "before any byte moved" in record["reason"] and "cannot reach the rfork scheduler" in record["reason"]
    assert "falling back to SGLang's single-seed read" in stderr
    assert result["post_load_calls"] == 1  # SGLang's original ran its own post-load


def test_model_no_seed_serves_falls_back_with_the_schedulers_reason(fleet):
    result, _ = load(fleet, rfork_env(fleet, RFORK_MODEL="not-a-served-model"))
    assert result["ok"] and result["mismatched"] == []
    assert result["last_load"]["path"] == "sglang"
    assert "UnknownModel" in result["last_load"]["reason"]


def test_wrong_token_is_refused_before_any_byte_moves_and_falls_back(fleet):
    result, _ = load(fleet, rfork_env(fleet, RFORK_TOKEN="not-the-fleets-token"))
    assert result["ok"] and result["mismatched"] == []
    record = result["last_load"]
    assert record["path"] == "sglang" and "before any byte moved" in record["reason"]
    assert "not-the-fleets-token" not in record["reason"]  # the token is never echoed


def test_different_parallelism_is_refused_before_any_byte_moves(fleet):
    result, _ = load(fleet, rfork_env(fleet, RFORK_TP_SIZE="2", RFORK_FALLBACK="0"))
    assert not result["ok"]
    assert result["error"].startswith("RforkLoadError") and "before any byte moved" in result["error"]
    assert len(result["untouched"]) == result["tensors"] - 1  # every non-empty tensor still zero


def test_manifest_mismatch_is_refused_before_any_byte_moves(fleet):
    result, stderr = load(fleet, rfork_env(fleet, RFORK_FALLBACK="0"), extra_param=True)
    assert not result["ok"]
    assert "ManifestMismatch" in result["error"] and "model.extra_not_on_seeds.weight" in result["error"]
    assert len(result["untouched"]) == result["tensors"] - 1
    # With the fallback on, SGLang's own check refuses it too: the load fails, loudly, with nothing read.
    result, stderr = load(fleet, rfork_env(fleet), extra_param=True)
    assert not result["ok"] and result["last_load"]["path"] == "failed"
    assert "Cannot find weight info for model.extra_not_on_seeds.weight" in stderr
    assert len(result["untouched"]) == result["tensors"] - 1


def test_draft_model_is_left_to_sglang_and_does_not_hang(fleet):
    result, stderr = load(fleet, rfork_env(fleet), class_name="Qwen2ForCausalLMEagle")
    assert result["ok"] and result["mismatched"] == []
    assert result["last_load"]["path"] == "sglang"
    assert "draft (speculative) model" in result["last_load"]["reason"]


def test_job_that_fails_after_it_started_falls_back_and_sglang_rewrites_every_byte():
    # Seeds stay registered (long heartbeat timeout) but their agents are gone: the job is
    # created, every lease fails, the scheduler excludes both seeds and fails the job. The
    # seed processes are alive, so SGLang's own read still loads everything.
    spec = FleetSpec(seeds=2, preset="tiny", dtype="bfloat16", token=TOKEN, heartbeat_timeout_seconds=600)
    with Fleet(spec) as lonely:
        identity = lonely.identity()
        for index in range(spec.seeds):
            lonely.kill_agent(index)
        env = {"RFORK_SCHEDULER_URL": lonely.scheduler_url, "RFORK_TOKEN": TOKEN, "RFORK_CHUNK_SIZE": CHUNK,
               "RFORK_MODEL": identity.model, "RFORK_DTYPE": identity.dtype}
        config = {"mode": "load", "seed_url": lonely.seeds[0].url, "rank": 0,
                  "fleet": {k: asdict(spec)[k] for k in MODEL_FIELDS}}
        result, stderr = run_sglang_client(config, client_env(**env))
    assert result["ok"] and result["mismatched"] == [], result
    record = result["last_load"]
    assert record["path"] == "sglang" and "after its job started" in record["reason"], record
    assert "ForkFailed" in record["reason"]
    assert "which rewrites every parameter" in stderr
    assert record["served_as_peer"] and record["withdrawal"], record  # withdrew before SGLang's own read
