"""The plugin's environment contract, table-driven and in-process (no SGLang import needed)."""

from __future__ import annotations

import pytest

from rfork_agent.sglang_plugin import PluginConfig, RforkPluginError, model_identity

URL = "http://127.0.0.1:8700"


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"RFORK_SCHEDULER_URL": "  "}, None),
    ({"RFORK_SCHEDULER_URL": URL + "/"}, PluginConfig(URL)),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_CHUNK_SIZE": "16MiB", "RFORK_TP_SIZE": "4", "RFORK_FALLBACK": "0"},
     PluginConfig(URL, chunk_size_bytes=16 << 20, tp_size=4, fallback=False)),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_TOKEN": "s3cret"}, PluginConfig(URL, token="s3cret")),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_PEER_RATE": "50MB/s", "RFORK_PEER_MAX_IN_FLIGHT": "4"},
     PluginConfig(URL, peer_rate=50e6, peer_max_in_flight=4)),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_PEERS": "0"}, PluginConfig(URL, peers=False)),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_PEER_RATE": "0"}, PluginConfig(URL, peers=False, peer_rate=0.0)),
])
def test_from_env(env, expected):
    assert PluginConfig.from_env(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"RFORK_SCHEDULER_URL": "sched:8700"}, "not an http(s) URL"),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_CHUNK_SIZE": "big"}, "RFORK_CHUNK_SIZE='big'"),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_CHUNK_SIZE": "1e400"}, "RFORK_CHUNK_SIZE='1e400': size '1e400' is too large"),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_CHUNK_SIZE": "4096.5"}, "not a whole number of bytes"),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_TP_SIZE": "two"}, "RFORK_TP_SIZE='two'"),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_FALLBACK": "maybe"}, "RFORK_FALLBACK='maybe'"),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_TOKEN_FILE": "/nonexistent/token"}, "cannot read the token file"),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_PEER_RATE": "2Gb/s"}, "RFORK_PEER_RATE='2Gb/s': rate '2Gb/s' is ambiguous"),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_PEER_MAX_IN_FLIGHT": "0"}, "RFORK_PEER_MAX_IN_FLIGHT must be between 1"),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_PEER_MAX_IN_FLIGHT": "many"}, "RFORK_PEER_MAX_IN_FLIGHT='many'"),
    ({"RFORK_SCHEDULER_URL": URL, "RFORK_PEERS": "maybe"}, "RFORK_PEERS='maybe'"),
])
def test_malformed_env_names_the_variable(env, message):
    with pytest.raises(RforkPluginError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PluginConfig.from_env(env)


def test_token_is_not_in_the_repr():
    assert "s3cret" not in repr(PluginConfig(URL, token="s3cret"))


def test_identity_from_env_alone_when_sglang_has_not_published():
    config = PluginConfig(URL, model="m", dtype="float16", tp_size=2)
    assert model_identity(config).model_dump() == {"model": "m", "revision": "main", "dtype": "float16", "tp_size": 2}
    with pytest.raises(RforkPluginError, match="set RFORK_MODEL"):
        model_identity(PluginConfig(URL))


def test_fork_runs_from_a_thread_that_already_runs_an_event_loop():
    import asyncio

    from rfork_agent.sglang_plugin import _run_sync

    async def answer():
        return 42

    async def caller():  # SGLang's loader called from inside a running loop
        return _run_sync(answer)

    assert _run_sync(answer) == 42
    assert asyncio.run(caller()) == 42


def test_draft_runner_is_recognised_from_sglangs_call_frame():
    from rfork_agent.sglang_plugin import _draft_reason

    class Qwen2ForCausalLM:
        pass

    def load_model_with_memory_saver(is_draft_worker):  # SGLang's frame, by name and local
        return _draft_reason(Qwen2ForCausalLM())

    assert load_model_with_memory_saver(is_draft_worker=True) == "draft (speculative) model"
    assert load_model_with_memory_saver(is_draft_worker=False) == ""
    assert _draft_reason(Qwen2ForCausalLM()) == ""
