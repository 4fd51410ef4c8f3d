"""Outside ``rfork_api`` nothing reads a wire body as a dict: replies are ``rfork_api.models``.

Checked with ``ast`` over the processes that talk to the scheduler and the agents:

- the fork client, the SGLang plugin and the agent never subscript (or ``.get``)
  a string key that names a field of an ``rfork_api.models`` body: they hold the
  models and read attributes, so a renamed field is an AttributeError in tests,
  not a KeyError in production. The few local records whose keys happen to
  share a field's name are listed below, with what they are;
- those modules and the testbed never call ``.json()`` on a response: an rfork
  service's reply is parsed by its model (``rfork_api.clients``, or
  ``Model.model_validate_json``). Modules that read other services' JSON are listed.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from pydantic import BaseModel

from rfork_api import models

REPO = Path(__file__).resolve().parents[2]
CLIENT_MODULES = ("rfork_agent/fork.py", "rfork_agent/fork_cli.py", "rfork_agent/sglang_plugin.py",
                  "rfork_agent/agent.py", "rfork_agent/agent_state.py", "rfork_agent/seed_link.py",
                  "rfork_agent/qos_loop.py", "rfork_agent/agent_cli.py", "rfork_agent/destination.py")
LOCAL_RECORDS = {
    ("rfork_agent/fork_cli.py", "bytes"): "the CLI's own JSON summary (--json), not a wire body",
    ("rfork_agent/sglang_plugin.py", "error"): "the fork thread's outcome record",
}
OTHER_SERVICES_JSON = {
    "rfork_agent/gate.py": "Prometheus' HTTP API",
    "testbed/sglang_pieces.py": "the stand-in seed's own HTTP API (SGLang's shape)",
}


def _wire_fields() -> set[str]:
    fields: set[str] = set()
    for obj in vars(models).values():
        if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj.__module__ == models.__name__:
            fields |= set(obj.model_fields) - {"root"}
    return fields


WIRE_FIELDS = _wire_fields()


def _string_keys(tree: ast.AST):
    """(line, key, source) of every ``x["key"]`` and ``x.get("key", ...)`` in the tree."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str):
            if isinstance(node.value, ast.Attribute) and node.value.attr == "model_fields":
                continue  # a model's own field metadata, e.g. m.PeerOffer.model_fields["max_in_flight"]
            yield node.lineno, node.slice.value, ast.unparse(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            yield node.lineno, node.args[0].value, ast.unparse(node)


def test_the_wire_fields_are_known():
    # The check below is only as good as this set: it must hold the fields a fork client reads.
    assert {"assignments", "assignment_id", "session_id", "job_id", "lease_id", "tp_size", "progress"} <= WIRE_FIELDS


@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_clients_read_wire_bodies_as_models_not_dicts(module):
    path = REPO / module
    bad = [f"{module}:{line}: {source}" for line, key, source in _string_keys(ast.parse(path.read_text()))
           if key in WIRE_FIELDS and (module, key) not in LOCAL_RECORDS]
    assert not bad, ("these index a wire body as a dict; hold the rfork_api.models reply and read its attributes "
                     "(or, for a local record, add it to LOCAL_RECORDS saying what it is):\n" + "\n".join(bad))


PARSING_MODULES = [m for m in (*CLIENT_MODULES, "rfork_agent/gate.py",
                                 *sorted(str(p.relative_to(REPO)) for p in (REPO / "testbed").rglob("*.py")))
                   if m not in OTHER_SERVICES_JSON]


@pytest.mark.parametrize("module", PARSING_MODULES)
def test_no_response_is_parsed_as_a_plain_dict(module):
    tree = ast.parse((REPO / module).read_text())
    bad = [f"{module}:{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
           if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "json"
           and not node.args and not node.keywords]
    assert not bad, ("parse an rfork reply with its model (rfork_api.clients, or Model.model_validate_json(response"
                     ".content)), not .json():\n" + "\n".join(bad))
