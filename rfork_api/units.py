"""Parse and format byte sizes and byte rates given by people.

Sizes are whole bytes: a bare number, or a number with a decimal (kB, MB, GB,
TB; K, M, G, T) or binary (KiB, MiB, GiB, TiB) unit, case-insensitive.

Rates are bytes per second unless they say bits. Because network operators
quote links in bits and storage people in bytes, a rate's unit must say which:

- bytes: ``B/s``, ``MB/s``, ``GB/s``, ``MiB/s``, ``GiB/s``, ... (capital ``B``), or a bare number;
- bits: ``bps``, ``Mbps``, ``Gbps``, ``Mbit/s``, ``Gbit/s``, ... (``bps`` or ``bit``);
- refused as ambiguous: ``Gb/s`` and ``GBps`` (each is read both ways in the wild);
- ``unlimited`` (or ``uncapped``) means no cap; ``0`` (or ``paused``) means no bytes at all.

Numbers are read exactly (``1.1GB`` is 1,100,000,000 bytes, not a float's
neighbour); infinities, NaN, negatives, fractional bytes and values above
``MAX_BYTES`` are refused with a message saying what is accepted.

    >>> parse_size("64MiB")
    67108864
    >>> parse_rate("100MB/s")
    100000000.0
    >>> parse_rate("8Gbps")                    # bits: 8e9 / 8 bytes/s
    1000000000.0
    >>> parse_rate("0"), parse_rate("unlimited")
    (0.0, None)
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation, localcontext

MAX_BYTES = 2**63 - 1
"""Largest size (bytes) or rate (bytes/s) accepted: what a signed 64-bit integer holds (8 EiB)."""

UNLIMITED = None
"""``parse_rate``'s answer for "no cap"."""

PAUSED = 0.0
"""``parse_rate``'s answer for "no bytes at all" (a paused seed)."""

_MAX_TEXT = 64
"""Longer input is refused before any arithmetic: no real size needs it."""

_PREFIXES = {
    "": 1,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15,
    "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50,
}
_NUMBER = re.compile(r"^([+-]?)((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(.*)$")
# A unit is a prefix (longest first, so "Ki" is not "K" + "iB") and a base unit.
_UNIT = re.compile(r"^(ki|mi|gi|ti|pi|k|m|g|t|p|)(.*)$", re.IGNORECASE)
_UNLIMITED_WORDS = ("unlimited", "uncapped", "inf", "infinity")
_PAUSED_WORDS = ("paused",)
_AMBIGUOUS_WORDS = ("none", "off", "no", "max", "nan", "-inf", "-infinity")

SIZE_FORMS = "a whole number of bytes, e.g. 4096, 64MiB, 1.5GB (units B, kB/MB/GB/TB, KiB/MiB/GiB/TiB)"
RATE_FORMS = ("bytes/s like 100MB/s or 2GiB/s, bits/s like 10Gbps or 10Gbit/s, a bare number of bytes/s, "
              "'unlimited', or 0 to pause")


class UnitError(ValueError):
    """A size or rate string could not be understood; the message says what is accepted."""


def _number(text: str, what: str, forms: str) -> tuple[Decimal, str, str]:
    """The number at the start of ``text`` (exact), as typed, and the unit after it."""
    if len(text) > _MAX_TEXT:
        raise UnitError(f"cannot read {what} {text[:20]!r}... ({len(text)} characters): give {forms}")
    match = _NUMBER.match(text.strip())
    if not match:
        raise UnitError(f"cannot read {what} {text!r}: give {forms}")
    sign, digits, unit = match.groups()
    try:
        value = Decimal(digits)
    except InvalidOperation:  # an exponent beyond Decimal's range: 1e99999999999999999999 or its inverse
        if "-" not in digits.lower().partition("e")[2]:
            unit = "bytes" if what == "size" else "bytes/s"
            raise UnitError(f"{what} {text!r} is too large: at most {MAX_BYTES} {unit} (8 EiB)") from None
        value = Decimal("1e-999")  # far below one byte, like the number typed
    if sign == "-" and value != 0:
        raise UnitError(f"{what} {text!r} is negative: give {forms}")
    return value, sign + digits, unit.strip()


def _scaled(value: Decimal, scale: int | Decimal, what: str, text: str) -> Decimal | None:
    """``value * scale`` exactly, or None when it is far below one byte; UnitError above MAX_BYTES."""
    unit = "bytes" if what == "size" else "bytes/s"
    too_large = UnitError(f"{what} {text!r} is too large: at most {MAX_BYTES} {unit} (8 EiB)")
    if value == 0:
        return Decimal(0)
    # Magnitudes first, so an exponent like 1e999999 costs no arithmetic.
    if value.adjusted() > 25:
        raise too_large
    if value.adjusted() < -25:
        return None
    with localcontext() as ctx:
        ctx.prec = 2 * _MAX_TEXT + 40  # every digit typed, times the unit, exactly
        result = value * Decimal(scale)
    if result > MAX_BYTES:
        raise too_large
    return result


def parse_size(text: str | int) -> int:
    """Bytes in ``text`` ("600MiB", "1.5GB", "4096"). Raises UnitError.

        >>> parse_size("1.5KiB")
        1536
        >>> parse_size("4096.5")
        Traceback (most recent call last):
        ...
        rfork_api.units.UnitError: size '4096.5' is not a whole number of bytes: give a whole number of bytes, \
e.g. 4096, 64MiB, 1.5GB (units B, kB/MB/GB/TB, KiB/MiB/GiB/TiB)
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise UnitError(f"size {text!r} is not a byte count: give {SIZE_FORMS}")
    if isinstance(text, int):
        if not 0 <= text <= MAX_BYTES:
            raise UnitError(f"size {text} is outside 0..{MAX_BYTES}: give {SIZE_FORMS}")
        return text
    value, _, unit = _number(text, "size", SIZE_FORMS)
    prefix, base = _UNIT.match(unit).groups()
    # Sizes are bytes whatever the case of the b: nobody means bits by a chunk size.
    if base.lower() not in ("", "b", "byte", "bytes") or (prefix.lower().endswith("i") and not base):
        raise UnitError(f"cannot read size {text!r}: unknown unit {unit!r}; give {SIZE_FORMS}")
    nbytes = _scaled(value, _PREFIXES[prefix.lower()], "size", text)
    if nbytes is None or nbytes != nbytes.to_integral_value():
        raise UnitError(f"size {text!r} is not a whole number of bytes: give {SIZE_FORMS}")
    return int(nbytes)


def parse_rate(text: str | float | None) -> float | None:
    """Bytes per second in ``text``; None = unlimited, 0.0 = paused. Raises UnitError.

    ``None`` (not given) is unlimited; numbers (int/float) are bytes/s. A
    positive rate is at least 1 byte/s: anything slower is a typo for 0.

        >>> parse_rate("10Gbit/s")
        1250000000.0
        >>> parse_rate("2Gb/s")
        Traceback (most recent call last):
        ...
        rfork_api.units.UnitError: rate '2Gb/s' is ambiguous (bits or bytes?): write 2Gbit/s or 2Gbps for bits, \
2GB/s for bytes
    """
    if text is None:
        return UNLIMITED
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise UnitError(f"rate {text!r} is not a rate: give {RATE_FORMS}")
    if isinstance(text, (int, float)):
        if text == math.inf:
            return UNLIMITED
        if not (text == 0 or 1 <= text <= MAX_BYTES):  # also NaN
            raise UnitError(f"rate {text!r} is not 0 or 1..{MAX_BYTES} bytes/s: give {RATE_FORMS}")
        return float(text)
    word = text.strip().lower()
    if word in _UNLIMITED_WORDS:
        return UNLIMITED
    if word in _PAUSED_WORDS:
        return PAUSED
    if word in _AMBIGUOUS_WORDS:
        raise UnitError(f"rate {text!r} is ambiguous: say 'unlimited' for no cap, or 0 to pause; "
                        f"accepted: {RATE_FORMS}")
    value, number, unit = _number(text, "rate", RATE_FORMS)
    prefix, base = _UNIT.match(unit).groups()
    if base.endswith("/S"):
        base = base[:-2] + "/s"
    scale: int | Decimal = _PREFIXES[prefix.lower()]
    if not unit or base == "B/s" or base.lower() in ("byte/s", "bytes/s"):
        pass  # bytes/s
    elif base == "bps" or base.lower() in ("bit/s", "bits/s"):
        scale = Decimal(scale) / 8
    elif base == "b/s" or base.lower() == "bps":  # Gb/s, GBps: each read both ways in the wild
        raise UnitError(f"rate {text!r} is ambiguous (bits or bytes?): write {number}{prefix}bit/s or "
                        f"{number}{prefix}bps for bits, {number}{prefix}B/s for bytes")
    elif base.lower() in ("", "b", "bit", "bits", "byte", "bytes"):
        raise UnitError(f"rate {text!r} has no time unit: write {number}{prefix}B/s for bytes/s or "
                        f"{number}{prefix}bps for bits/s")
    else:
        raise UnitError(f"cannot read rate {text!r}: unknown unit {unit!r}; give {RATE_FORMS}")
    rate = _scaled(value, scale, "rate", text)
    if rate is None or 0 < rate < 1:
        raise UnitError(f"rate {text!r} is below 1 byte/s: give 0 to pause, or {RATE_FORMS}")
    return float(rate)


def format_bytes(n: float) -> str:
    """'1.50 GiB' style, for progress lines and tables."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def format_rate(bps: float | None) -> str:
    """'100.0 MB/s' (decimal, like network links), 'uncapped', or 'paused' (0)."""
    if bps is None or math.isinf(bps):
        return "uncapped"
    if bps == 0:
        return "paused"
    return f"{bps / 1e6:.1f} MB/s"
