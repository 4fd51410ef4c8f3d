"""The one identity rule (``ModelIdentity.from_server_info``) as each process applies it.

A seed whose /server_info lacks ``dtype`` and ``tp_size`` (older SGLang builds, stand-ins) must give
the same identity to its agent, to ``rfork fork --like-seed`` and to the SGLang plugin: SGLang's own
defaults, dtype ``auto`` and tp_size 1, and the flags override each field.
"""

from __future__ import annotations

import argparse
import asyncio

import httpx
import pytest

from rfork_agent import fork_cli
from rfork_agent.agent import AgentConfig, discover
from rfork_api.errors import InvalidIdentity
from rfork_api.models import ModelIdentity
from tests.integration.agent_fakes import FakeSeed, Served, _socket

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("info, overrides, expected", [
    ({"model_path": "m"}, {}, ("m", "main", "auto", 1)),
    ({"model_path": "m", "dtype": None, "tp_size": None}, {}, ("m", "main", "auto", 1)),
    ({"model_path": "m", "dtype": "bfloat16", "tp_size": 4, "revision": "r1"}, {}, ("m", "r1", "bfloat16", 4)),
    ({"model_path": "m", "tp_size": "2"}, {}, ("m", "main", "auto", 2)),
    ({"model_path": "m"}, {"model": "x", "revision": "r", "dtype": "float16", "tp_size": 8}, ("x", "r", "float16", 8)),
    ({}, {"model": "x"}, ("x", "main", "auto", 1)),
])
def test_the_identity_rule(info, overrides, expected):
    i = ModelIdentity.from_server_info(info, **overrides)
    assert (i.model, i.revision, i.dtype, i.tp_size) == expected


@pytest.mark.parametrize("info, needle", [
    ({}, "--model"),
    ({"model_path": "m", "tp_size": "eight"}, "--tp-size"),
    ({"model_path": "m", "tp_size": 0}, "--tp-size"),
])
def test_an_identity_that_cannot_be_derived_names_the_flag(info, needle):
    with pytest.raises(InvalidIdentity, match=needle):
        ModelIdentity.from_server_info(info)


@pytest.fixture
def bare_seed():
    """A seed whose /server_info has model_path only (no dtype, no tp_size)."""
    server = Served(FakeSeed(tp_size=1, server_info_fields=("model_path",)).app())
    yield server.url
    server.stop()


def test_fork_like_seed_and_the_agent_agree_on_a_seed_without_dtype_or_tp_size(bare_seed):
    dead = _socket()  # a scheduler address nobody answers: --fallback-seed carries on without it
    url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    args = argparse.Namespace(like_seed=bare_seed, scheduler=url, token=None, fallback_seed=True, rank=0,
                              model=None, revision=None, dtype=None, tp_size=None)
    identity, _session, manifest, reachable = asyncio.run(fork_cli.preflight(args))
    assert not reachable and manifest
    assert identity.model_dump() == {"model": "Qwen/Qwen2.5-0.5B", "revision": "main", "dtype": "auto", "tp_size": 1}

    async def agent_view():
        async with httpx.AsyncClient(timeout=5) as http:
            return await discover(AgentConfig(seed_id="s", sglang_url=bare_seed, scheduler_url=url, port=9), http)

    assert asyncio.run(agent_view()).identity == identity
