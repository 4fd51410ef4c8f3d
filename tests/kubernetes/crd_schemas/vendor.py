"""Extract the OpenAPI v3 schema of each served CRD version into a gzipped JSON file here.

The manifests' custom resources are validated against these (tests/kubernetes/test_manifests.py).
Re-vendor from the projects' published CRD files (SOURCES.md names them):

    python tests/kubernetes/crd_schemas/vendor.py CRD.yaml [CRD.yaml ...]

Writes GROUP_VERSION_KIND.json.gz (e.g. monitoring.coreos.com_v1_PodMonitor.json.gz).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def schema_path(group: str, version: str, kind: str) -> Path:
    return HERE / f"{group}_{version}_{kind}.json.gz"


def vendor(crd_file: str) -> list[Path]:
    written = []
    for doc in yaml.safe_load_all(Path(crd_file).read_text()):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            path = schema_path(spec["group"], version["name"], spec["names"]["kind"])
            body = json.dumps(version["schema"]["openAPIV3Schema"], sort_keys=True, separators=(",", ":"))
            # mtime=0: the same schema gives the same bytes (no spurious diffs on re-vendoring)
            path.write_bytes(gzip.compress(body.encode(), mtime=0))
            written.append(path)
    return written


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for p in vendor(arg):
            print(p.name)
