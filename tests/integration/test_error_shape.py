"""Every error the scheduler and agent APIs answer has the documented shape
``{"detail": {"error": "<code>", "message": "<sentence>"}}`` and a bounded message (issue #12 item 6).

Both real apps run in-process over ASGI (httpx.ASGITransport).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from rfork_agent.agent import AgentConfig
from rfork_agent.agent import create_app as create_agent
from rfork_api.http import JsonBodyRoute, install_error_handlers
from scheduler.service import SchedulerConfig
from scheduler.service import create_app as create_scheduler

IDENTITY = {"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 1}
MANIFEST = {"w": [4096, 1024, 2]}
LONG = "w" * 100_000
JSON = {"content-type": "application/json"}

# Bodies that are not JSON a service can read, as a client or an attacker might send them.
MALFORMED = {
    "a 5,000-digit integer": b'{"rank": ' + b"1" * 5000 + b"}",
    "ten million [": b"[" * 10_000_000,
    "nesting 100,000 deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "bytes that are not UTF-8": b'{"model": "\xff\xfe"}',
    "a truncated object": b'{"rank": ',
    "NUL bytes": b"\x00" * 64,
}
SCHEDULER_BODY_ROUTES = [("POST", "/v1/jobs"), ("PUT", "/v1/seeds/s0"), ("POST", "/v1/seeds/s0/heartbeat"),
                         ("POST", "/v1/jobs/j0/work")]
AGENT_BODY_ROUTES = [("POST", "/v1/leases"), ("PUT", "/v1/throttle"), ("POST", "/v1/leases/l0/release")]


def registration(manifest=None) -> dict:
    return {"identity": IDENTITY, "agent_url": "http://127.0.0.1:9",
            "ranks": [{"rank": 0, "session_id": "127.0.0.1:1", "manifest": manifest or MANIFEST}]}


@pytest.fixture(scope="module")
def scheduler():
    app = create_scheduler(SchedulerConfig(), registry=CollectorRegistry(), clock=lambda: 1000.0, run_reaper=False)
    assert call(app, "PUT", "/v1/seeds/s0", json=registration()).status_code == 200
    return app


@pytest.fixture(scope="module")
def agent():
    return create_agent(AgentConfig(seed_id="seed-0", sglang_url="http://127.0.0.1:9",
                                    scheduler_url="http://127.0.0.1:9", port=9, liveness_interval_seconds=0),
                        registry=CollectorRegistry())


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            return await client.request(method, path, **kwargs)
    return asyncio.run(go())


def documented(response: httpx.Response, status: int, code: str) -> str:
    """Assert the shape, status and code; return the message."""
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], dict), body
    detail = body["detail"]
    assert detail["error"] == code, detail
    assert isinstance(detail["message"], str) and detail["message"], detail
    assert len(detail["message"]) <= 1100, len(detail["message"])
    return detail["message"]


@pytest.mark.parametrize("what", list(MALFORMED))
@pytest.mark.parametrize("method, path", SCHEDULER_BODY_ROUTES)
def test_a_malformed_body_to_the_scheduler_is_a_422_in_the_shape(scheduler, method, path, what):
    message = documented(call(scheduler, method, path, content=MALFORMED[what], headers=JSON), 422, "invalid_request")
    assert message.startswith("request body is not valid JSON: ")


@pytest.mark.parametrize("what", list(MALFORMED))
@pytest.mark.parametrize("method, path", AGENT_BODY_ROUTES)
def test_a_malformed_body_to_the_agent_is_a_422_in_the_shape(agent, method, path, what):
    response = call(agent, method, path, content=MALFORMED[what], headers=JSON)
    if len(MALFORMED[what]) > 1 << 20:  # the agent takes 1 MiB bodies at most: refused before parsing
        documented(response, 413, "body_too_large")
        return
    message = documented(response, 422, "invalid_request")
    assert message.startswith("request body is not valid JSON: ")


@pytest.mark.parametrize("what, says", [
    ("a 5,000-digit integer", "a number has more than 4300 digits"),
    ("ten million [", "nested too deeply"),
    ("bytes that are not UTF-8", "not UTF-8"),
    ("a truncated object", "Expecting value at line 1 column 10"),
])
def test_the_message_says_what_was_wrong_with_the_body(scheduler, what, says):
    assert says in documented(call(scheduler, "POST", "/v1/jobs", content=MALFORMED[what], headers=JSON),
                              422, "invalid_request")


@pytest.mark.parametrize("app_name", ["scheduler", "agent"])
def test_unknown_routes_and_methods_have_the_shape(request, app_name):
    app = request.getfixturevalue(app_name)
    assert "/nope" in documented(call(app, "GET", "/nope"), 404, "not_found")
    assert "PUT is not allowed" in documented(call(app, "PUT", "/health"), 405, "method_not_allowed")
    long_path = "/" + "x" * 60_000
    assert "…(60003 chars)" in documented(call(app, "GET", long_path), 404, "not_found")


# -- echoed values are cut ------------------------------------------------------------------------


def test_a_409_manifest_mismatch_does_not_echo_a_100k_name(scheduler):
    response = call(scheduler, "POST", "/v1/jobs",
                    json={"identity": IDENTITY, "rank": 0, "manifest": {**MANIFEST, LONG: [8192, 1, 2]}})
    message = documented(response, 409, "manifest_mismatch")
    assert "'wwww" in message and "…(100002 chars)" in message and len(message) < 400


@pytest.mark.parametrize("manifest, says", [
    ({LONG: [4096, -1, 2]}, "numel -1 is negative"),
    ({LONG: [4096, 1, 99]}, "element_size 99 is outside 1..16"),
    ({"w": [4096, 1, [LONG]]}, "…(100015 chars)"),
    ({"w": [10**4000, 1, 2]}, "ptr an integer of 4001 digits is not a 64-bit address"),
    ({"w": [4096, 10**4000, 2]}, "an integer of 4001 digits bytes is larger"),
])
def test_a_422_invalid_manifest_cuts_what_it_echoes(scheduler, manifest, says):
    response = call(scheduler, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": manifest})
    message = documented(response, 422, "invalid_manifest")
    assert says in message and len(message) < 400, message


def test_a_huge_chunk_size_is_cut(scheduler):
    response = call(scheduler, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST,
                                                         "chunk_size_bytes": 10**4000})
    assert "an integer of 4001 digits" in documented(response, 422, "invalid_chunk_size")


def test_an_extra_field_with_a_100k_name_is_cut(scheduler):
    response = call(scheduler, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST,
                                                         LONG: 1})
    message = documented(response, 422, "invalid_request")
    assert "Extra inputs are not permitted" in message and len(message) < 400


def test_an_unknown_model_named_with_100k_characters_is_cut(scheduler):
    response = call(scheduler, "POST", "/v1/jobs",
                    json={"identity": {**IDENTITY, "model": "m" * 500}, "rank": 0, "manifest": MANIFEST})
    message = documented(response, 404, "unknown_model")
    assert "…(500 chars)@main" in message and len(message) < 600


def test_an_unknown_job_id_of_60k_characters_is_cut(scheduler):
    message = documented(call(scheduler, "GET", "/v1/jobs/" + "j" * 60_000), 404, "unknown_job")
    assert "…(60002 chars)" in message and len(message) < 300


def test_a_long_lease_id_is_refused_without_echo(agent):
    message = documented(call(agent, "POST", "/v1/leases/" + "l" * 60_000 + "/release"), 422, "invalid_request")
    assert len(message) < 300


def test_an_unexpected_failure_is_a_500_in_the_shape():
    app = FastAPI()
    app.router.route_class = JsonBodyRoute
    install_error_handlers(app)

    @app.get("/bug")
    async def bug():
        raise ZeroDivisionError("a bug")

    message = documented(call(app, "GET", "/bug"), 500, "internal_error")
    assert "ZeroDivisionError" in message and "log" in message
