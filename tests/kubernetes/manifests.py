"""Render deploy/kubernetes with `kubectl kustomize` and validate objects against their schemas.

Built-in kinds: the Kubernetes OpenAPI schemas bundled in ``kubernetes-validate``, strict
(unknown fields are errors). Custom resources: the CRD schemas vendored in crd_schemas/
(SOURCES.md), made strict the same way where the CRD itself does not keep unknown fields.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
CRD_SCHEMAS = Path(__file__).resolve().parent / "crd_schemas"

KUSTOMIZATIONS = sorted(str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.rglob("kustomization.yaml"))
OVERLAYS = [k for k in KUSTOMIZATIONS if k.startswith("overlays/")]
# Oldest and newest Kubernetes minor versions the manifests are checked against.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")


def kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail("kubectl is missing: run scripts/bootstrap.sh (it installs Debian's kubernetes-client)")
    return exe


@functools.lru_cache(maxsize=None)
def render(kustomization: str) -> tuple[dict, ...]:
    """The objects `kubectl kustomize deploy/kubernetes/KUSTOMIZATION` prints."""
    r = subprocess.run([kubectl(), "kustomize", str(DEPLOY / kustomization)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{r.stderr}"
    return tuple(d for d in yaml.safe_load_all(r.stdout) if d)


def custom_resource_schema(api_version: str, kind: str) -> dict | None:
    group, _, version = api_version.rpartition("/")
    path = CRD_SCHEMAS / f"{group}_{version}_{kind}.json.gz"
    if not path.exists():
        return None
    return _strict(json.loads(gzip.decompress(path.read_bytes())))


def _strict(schema: dict) -> dict:
    """Forbid fields a structural CRD schema does not list (the API server would silently prune them)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # Every object has apiVersion/kind/metadata; CRD schemas list metadata as a bare object.
    schema.setdefault("properties", {}).update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                                "metadata": {"type": "object"}})
    return schema


def validate_custom_resource(obj: dict) -> list[str]:
    """Schema errors of one custom resource, as 'path: message' lines; raises LookupError for an unknown kind."""
    schema = custom_resource_schema(obj["apiVersion"], obj["kind"])
    if schema is None:
        raise LookupError(f"no vendored CRD schema for {obj['apiVersion']} {obj['kind']}")
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in validator.iter_errors(obj)]


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod template in a workload."""
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [(obj["metadata"]["name"], spec["template"])]
    if obj["kind"] == "LeaderWorkerSet":
        lwt = spec["leaderWorkerTemplate"]
        out = [(f"{obj['metadata']['name']} workers", lwt["workerTemplate"])]
        if "leaderTemplate" in lwt:
            out.append((f"{obj['metadata']['name']} leader", lwt["leaderTemplate"]))
        return out
    return []
