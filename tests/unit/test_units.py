"""Sizes and rates typed by people (rfork_api/units.py): what is read, and what is refused with a reason."""

from __future__ import annotations

import math

import pytest

from rfork_api.units import MAX_BYTES, UnitError, format_rate, parse_rate, parse_size


@pytest.mark.parametrize("text, expected", [
    ("4096", 4096),
    (" 4096 ", 4096),
    ("0", 0),
    ("-0", 0),
    ("64MiB", 64 * 2**20),
    ("64mib", 64 * 2**20),
    ("64 MiB", 64 * 2**20),
    ("1.5GB", 1_500_000_000),
    ("1.1GB", 1_100_000_000),          # exact: a float would give 1100000000.0000002
    ("1.5KiB", 1536),
    ("4096B", 4096),
    ("4K", 4000),
    ("4kB", 4000),
    ("2TiB", 2 * 2**40),
    ("4096.0", 4096),
    ("4.096e3", 4096),
    ("1e3", 1000),
    ("0.5KiB", 512),
    (".5KiB", 512),
    ("0e999999999", 0),
    (str(MAX_BYTES), MAX_BYTES),
    (4096, 4096),
])
def test_sizes_that_are_read(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, says", [
    ("4096.5", "not a whole number of bytes"),
    ("0.1KiB", "not a whole number of bytes"),   # 102.4 bytes
    ("1e-999999999", "not a whole number of bytes"),
    ("1e400", "too large"),
    ("1e99999999999999999999", "too large"),
    ("9.3e18", "too large"),
    (str(MAX_BYTES + 1), "too large"),
    ("1" + "0" * 5000, "5001 characters"),
    ("-1", "negative"),
    ("-1MiB", "negative"),
    ("inf", "cannot read size"),
    ("nan", "cannot read size"),
    ("infinity", "cannot read size"),
    ("", "cannot read size"),
    ("MiB", "cannot read size"),
    ("64XB", "unknown unit 'XB'"),
    ("64Mbit", "unknown unit 'Mbit'"),
    ("64MB/s", "unknown unit 'MB/s'"),
    ("64Mi", "unknown unit 'Mi'"),
    ("0x1000", "unknown unit 'x1000'"),
    ("1,000", "unknown unit ',000'"),
    (-1, "outside 0.."),
    (2**64, "outside 0.."),
    (True, "not a byte count"),
    (4096.0, "not a byte count"),
])
def test_sizes_that_are_refused_say_why_and_what_is_accepted(text, says):
    with pytest.raises(UnitError) as info:
        parse_size(text)
    assert says in str(info.value)
    assert len(str(info.value)) < 300  # one readable line, never an echo of a huge input


@pytest.mark.parametrize("text, expected", [
    ("100MB/s", 100e6),
    ("100mB/s", 100e6),
    ("2GiB/s", 2 * 2**30),
    ("1.5GB/s", 1.5e9),
    ("1000", 1000.0),
    ("1000B/s", 1000.0),
    ("1000 bytes/s", 1000.0),
    # bits are bits: 8 of them to a byte
    ("2Gbps", 2e9 / 8),
    ("2gbps", 2e9 / 8),
    ("2Gbit/s", 2e9 / 8),
    ("2 Gbits/s", 2e9 / 8),
    ("100Mbps", 100e6 / 8),
    ("100Mbit/S", 100e6 / 8),
    ("8bps", 1.0),
    ("1Gibit/s", 2**30 / 8),
    # the words
    ("unlimited", None),
    ("uncapped", None),
    ("UNLIMITED", None),
    ("inf", None),
    ("0", 0.0),
    ("0MB/s", 0.0),
    ("0Gbps", 0.0),
    ("paused", 0.0),
    (None, None),
    (0, 0.0),
    (2e9, 2e9),
    (math.inf, None),
])
def test_rates_that_are_read(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text, says", [
    ("2Gb/s", "ambiguous (bits or bytes?): write 2Gbit/s or 2Gbps for bits, 2GB/s for bytes"),
    ("2gb/s", "ambiguous (bits or bytes?)"),
    ("2GBps", "ambiguous (bits or bytes?)"),
    ("2MiBps", "ambiguous (bits or bytes?)"),
    ("2GBPS", "ambiguous (bits or bytes?)"),
    ("100MB", "no time unit: write 100MB/s"),
    ("100M", "no time unit"),
    ("100Mbit", "no time unit"),
    ("none", "ambiguous: say 'unlimited' for no cap, or 0 to pause"),
    ("off", "ambiguous"),
    ("nan", "ambiguous"),
    ("-inf", "ambiguous"),
    ("1e400", "too large"),
    ("1e400MB/s", "too large"),
    ("1e99999999999999999999", "too large"),
    ("1" + "0" * 5000, "characters"),
    ("-5MB/s", "negative"),
    ("0.5", "below 1 byte/s"),
    ("1bps", "below 1 byte/s"),
    ("1e-999999999", "below 1 byte/s"),
    ("100MB/h", "unknown unit"),
    ("100 furlongs/s", "unknown unit"),
    ("", "cannot read rate"),
    (-1, "not 0 or 1.."),
    (math.nan, "not 0 or 1.."),
    (-math.inf, "not 0 or 1.."),
    (1e400, None),   # a float literal overflow is already inf: unlimited, read above
])
def test_rates_that_are_refused_say_why(text, says):
    if says is None:
        assert parse_rate(text) is None
        return
    with pytest.raises(UnitError) as info:
        parse_rate(text)
    assert says in str(info.value)
    assert len(str(info.value)) < 300


def test_the_refusals_list_the_accepted_forms():
    with pytest.raises(UnitError, match="bits/s like 10Gbps or 10Gbit/s.*'unlimited', or 0 to pause"):
        parse_rate("lots")


@pytest.mark.parametrize("rate, text", [(None, "uncapped"), (0.0, "paused"), (2e9, "2000.0 MB/s")])
def test_format_rate(rate, text):
    assert format_rate(rate) == text
