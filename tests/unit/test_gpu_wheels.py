"""scripts/gpu_wheels.py: Mooncake's wheel cut to engine.so and the libraries it loads, with a matching RECORD."""

from __future__ import annotations

import base64
import doctest
import hashlib
import importlib.util
import shutil
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_wheels", REPO / "scripts" / "gpu_wheels.py")
gpu_wheels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_wheels)

LIBS = Path("/lib/x86_64-linux-gnu")


def _elf(name: str) -> bytes:
    path = LIBS / name
    if not path.exists():
        pytest.skip(f"{path} not on this machine")
    return path.read_bytes()


@pytest.fixture
def fake_wheel(tmp_path: Path) -> Path:
    """A wheel laid out as Mooncake's: engine.so (here libm, which needs libc: from the host) beside a
    bundled library it does not need (here libz) and a large daemon binary."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) not installed")
    wheel = tmp_path / "mooncake_transfer_engine_cuda13-0.3.14-cp312-cp312-manylinux_2_28_x86_64.whl"
    info = "mooncake_transfer_engine_cuda13-0.3.14.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mooncake/__init__.py", "")
        z.writestr("mooncake/engine.so", _elf("libm.so.6"))
        z.writestr("mooncake_transfer_engine_cuda13.libs/libz-abc.so.1", _elf("libz.so.1"))
        z.writestr("mooncake/mooncake_master", b"\0" * (2 << 20))
        z.writestr(f"{info}/METADATA", "Name: mooncake-transfer-engine-cuda13\nVersion: 0.3.14\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\n")
        z.writestr(f"{info}/RECORD", "stale\n")
    return wheel


def test_slim_wheel_keeps_the_engine_and_python_and_drops_the_rest(fake_wheel: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    slim = gpu_wheels.slim_mooncake(fake_wheel, out_dir)
    with zipfile.ZipFile(slim) as z:
        names = set(z.namelist())
        record = z.read("mooncake_transfer_engine_cuda13-0.3.14.dist-info/RECORD").decode()
        payload = {n: z.read(n) for n in names}
    assert "mooncake/engine.so" in names and "mooncake/__init__.py" in names
    assert "mooncake_transfer_engine_cuda13.libs/libz-abc.so.1" not in names  # engine.so does not load it
    assert "mooncake/mooncake_master" not in names  # a daemon rfork never runs
    # RECORD lists every file with its real hash and size (pip checks them), itself without one.
    rows = {line.split(",")[0]: line for line in record.splitlines()}
    assert set(rows) == names
    for name, data in payload.items():
        if name.endswith("RECORD"):
            assert rows[name] == f"{name},,"
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert rows[name] == f"{name},sha256={digest},{len(data)}"


def test_a_wheel_without_the_engine_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("other/__init__.py", "")
        z.writestr("other-1.0.dist-info/RECORD", "")
    with pytest.raises(SystemExit, match="no mooncake/engine.so"):
        gpu_wheels.slim_mooncake(wheel, tmp_path)


def test_doctests() -> None:
    assert doctest.testmod(gpu_wheels).failed == 0
