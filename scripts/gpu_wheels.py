"""Bring the wheels a GPU device host lacks into gpu_wheels/, small enough to carry.

    .venv/bin/python scripts/gpu_wheels.py [--dest gpu_wheels] [--python-version 3.12]

The device hosts run Python 3.12 with torch but without a package index, so
bench/gpu_run.sh and bench/qos_battery.sh install what rfork needs from
gpu_wheels/: mooncake-transfer-engine-cuda13 and the service stack. A device call carries
at most 64 MiB with the working tree, and Mooncake's CUDA wheel alone is 50 MB
(165 MB unpacked): most of it is Mooncake Store, its expert-parallel and
process-group extensions and their daemons, none of which rfork loads. The
wheel is rewritten with only its Python files and ``mooncake/engine.so`` with
the shared libraries it needs (followed through ELF ``NEEDED`` entries):
~9 MB. Its RECORD is rewritten to match, so pip installs it as any wheel.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SERVICE_WHEELS = (
    "fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
    "annotated-doc", "typing-extensions", "anyio", "uvicorn", "apscheduler", "tzlocal", "httptools",
    "opentelemetry-api",
)
MOONCAKE_WHEEL = "mooncake-transfer-engine-cuda13"
ENGINE = "mooncake/engine.so"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


def is_shared_object(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.endswith(".so") or ".so." in base


def library_closure(start: str, needed: dict[str, list[str]], by_soname: dict[str, str]) -> set[str]:
    """The wheel members ``start`` loads: itself and every library reached through NEEDED that the wheel holds.

    ``needed`` maps a member to its NEEDED sonames, ``by_soname`` a soname to the member carrying it;
    sonames the wheel does not carry (libc, libcudart, libibverbs) come from the host.

        >>> sorted(library_closure("m/e.so", {"m/e.so": ["a.so", "libc.so.6"], "l/a.so": ["b.so"], "l/b.so": []},
        ...                        {"a.so": "l/a.so", "b.so": "l/b.so"}))
        ['l/a.so', 'l/b.so', 'm/e.so']
    """
    keep, todo = set(), [start]
    while todo:
        member = todo.pop()
        if member in keep:
            continue
        keep.add(member)
        todo.extend(by_soname[s] for s in needed.get(member, []) if s in by_soname)
    return keep


def needed_sonames(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim_mooncake(wheel: Path, dest: Path) -> Path:
    """Rewrite Mooncake's wheel with its Python files and engine.so's library closure only."""
    with zipfile.ZipFile(wheel) as zin, tempfile.TemporaryDirectory() as tmp:
        names = zin.namelist()
        libraries = [n for n in names if is_shared_object(n)]
        for name in libraries:
            zin.extract(name, tmp)
        needed = {n: needed_sonames(Path(tmp, n)) for n in libraries}
        by_soname = {n.rsplit("/", 1)[-1]: n for n in libraries}
        if ENGINE not in by_soname.values():
            raise SystemExit(f"{wheel.name} has no {ENGINE}: not a Mooncake transfer-engine wheel")
        keep_libraries = library_closure(ENGINE, needed, by_soname)
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        keep = [n for n in names if n != record and not n.endswith("/")
                and (n in keep_libraries or (not is_shared_object(n) and is_small_file(zin, n)))]
        out = dest / wheel.name
        tmp_out = out.with_suffix(".tmp")
        with zipfile.ZipFile(tmp_out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
            lines = []
            for name in keep:
                data = zin.read(name)
                zout.writestr(zin.getinfo(name), data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
                lines.append(record_line(name, data))
            lines.append(f"{record},,")
            zout.writestr(record, "\n".join(lines) + "\n")
    tmp_out.replace(out)
    return out


def is_small_file(zin: zipfile.ZipFile, name: str) -> bool:
    """Python sources and metadata stay; Mooncake's bundled daemons and benchmarks (MBs each, no suffix) go."""
    return zin.getinfo(name).file_size < 1 << 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=Path("gpu_wheels"))
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        platform_flags = [f for p in PLATFORMS for f in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", args.python_version, *platform_flags, "-d", download,
                        MOONCAKE_WHEEL, *SERVICE_WHEELS], check=True)
        for wheel in sorted(Path(download).glob("*.whl")):
            if wheel.name.startswith(MOONCAKE_WHEEL.replace("-", "_")):
                slim = slim_mooncake(wheel, args.dest)
                print(f"{slim}: {wheel.stat().st_size / 1e6:.1f} MB -> {slim.stat().st_size / 1e6:.1f} MB")
            else:
                (args.dest / wheel.name).write_bytes(wheel.read_bytes())
    total = sum(w.stat().st_size for w in args.dest.glob("*.whl"))
    print(f"{args.dest}: {len(list(args.dest.glob('*.whl')))} wheels, {total / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
