"""Parse and format byte sizes and byte rates given by people.

Decimal (kB, MB, GB) and binary (KiB, MiB, GiB) units are both accepted, as
``ls``/``iperf`` users expect; a bare number is bytes.

    >>> parse_size("64MiB")
    67108864
    >>> parse_rate("100MB/s")
    100000000.0
"""

from __future__ import annotations

import math
import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


class UnitError(ValueError):
    """A size or rate string could not be understood."""


def parse_size(text: str | int) -> int:
    """Bytes in ``text`` ("600MiB", "1.5GB", "4096"). Raises UnitError."""
    if isinstance(text, int):
        if text < 0:
            raise UnitError(f"size {text} is negative; give a byte count >= 0")
        return text
    match = _PATTERN.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise UnitError(
            f"cannot read size {text!r}: use a number with an optional unit, e.g. 4096, 64MiB, 1.5GB"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_rate(text: str | float | None) -> float | None:
    """Bytes per second in ``text`` ("100MB/s", "1GiB/s", "inf"); None/"inf"/"0" mean uncapped."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        stripped = text.strip().lower()
        if stripped in ("inf", "none", "unlimited", "uncapped", "0"):
            return None
        if stripped.endswith("/s"):
            stripped = stripped[:-2]
        elif stripped.endswith("ps"):
            stripped = stripped[:-2]
        try:
            value = float(parse_size(stripped))
        except UnitError:
            raise UnitError(
                f"cannot read rate {text!r}: use a size per second, e.g. 100MB/s, 1GiB/s, or 'inf'"
            ) from None
    if math.isinf(value) or value == 0:
        return None
    if value < 0 or math.isnan(value):
        raise UnitError(f"rate {text!r} must be positive (or 'inf' for uncapped)")
    return value


def format_bytes(n: float) -> str:
    """'1.50 GiB' style, for progress lines and tables."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def format_rate(bps: float | None) -> str:
    """'100.0 MB/s' (decimal, like network links), or 'uncapped'."""
    if bps is None or math.isinf(bps):
        return "uncapped"
    return f"{bps / 1e6:.1f} MB/s"
