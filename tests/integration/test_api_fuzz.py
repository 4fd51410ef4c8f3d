"""Property-based fuzzing of the scheduler's and agent's HTTP APIs from their own OpenAPI schemas.

schemathesis generates valid and invalid requests for every operation; the
properties: zero 5xx and zero hangs (each call is bounded by the test
timeout), and every response of either app, success or error, matches the
schema it declares (its ``response_model`` and the shared error shape). Both apps run in-process over ASGI, the agent with auth on so
the 401 path is fuzzed too, the scheduler once with a registered seed so job
and work operations get past 404.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402 - after the importorskip
from schemathesis.core.failures import ServerError  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from rfork_agent.agent import AgentConfig  # noqa: E402
from rfork_agent.agent import create_app as create_agent  # noqa: E402
from scheduler.service import SchedulerConfig  # noqa: E402
from scheduler.service import create_app as create_scheduler  # noqa: E402

pytestmark = pytest.mark.timeout(240)

def no_unplanned_5xx(ctx, response, case):
    """Any 5xx fails, except the agent's designed 503 seed_unavailable ("read this chunk elsewhere")."""
    if response.status_code < 500:
        return None
    try:
        code = response.json()["detail"]["error"]
    except (ValueError, KeyError, TypeError):
        code = None
    if response.status_code == 503 and code == "seed_unavailable":
        return None
    raise ServerError(operation=case.operation.label, status_code=response.status_code)


FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

scheduler_app = create_scheduler(SchedulerConfig(max_body_bytes=1 << 20), run_reaper=False)
with TestClient(scheduler_app) as _client:
    # A registered seed, so POST /v1/jobs and /work reach the planner rather than 404.
    _client.put("/v1/seeds/seed-0", json={
        "identity": {"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 1},
        "agent_url": "http://127.0.0.1:9", "ranks": [{"rank": 0, "session_id": "127.0.0.1:1",
                                                      "manifest": {"w": [4096, 1024, 2]}}]})

agent_app = create_agent(AgentConfig(
    seed_id="seed-0", sglang_url="http://127.0.0.1:9", scheduler_url="http://127.0.0.1:9",
    port=9, liveness_interval_seconds=0, token="fuzz-token", max_wait_seconds=0.5))

scheduler_schema = schemathesis.openapi.from_asgi("/openapi.json", scheduler_app)
agent_schema = schemathesis.openapi.from_asgi("/openapi.json", agent_app, headers={"Authorization": "Bearer fuzz-token"})


@scheduler_schema.parametrize()
@FUZZ
def test_scheduler_never_answers_5xx_and_answers_what_it_documents(case):
    case.call_and_validate(checks=[no_unplanned_5xx, response_schema_conformance])


@agent_schema.parametrize()
@FUZZ
def test_agent_never_answers_5xx_and_answers_what_it_documents_with_or_without_the_token(case):
    case.call_and_validate(checks=[no_unplanned_5xx, response_schema_conformance])
    case.headers = {**(case.headers or {}), "Authorization": "Bearer fuzz-token"}
    case.call_and_validate(checks=[no_unplanned_5xx, response_schema_conformance])
