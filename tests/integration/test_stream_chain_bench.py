"""bench/stream_chain.py end to end: real processes, real TransferEngines on loopback, bytes checked per hop."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("mooncake.engine")

from bench.stream_chain import main  # noqa: E402

pytestmark = [pytest.mark.cpu_only, pytest.mark.timeout(180)]


def test_a_chain_of_two_hops_gets_every_byte_to_each(tmp_path, capsys):
    out = tmp_path / "chain.json"
    rc = main(["--hops", "2", "--size", "8MiB", "--chunk-size", "1MiB", "--tensors", "5", "--batch-chunks", "2",
               "--land-rate", "50MB/s", "--json", str(out)])
    assert rc == 0, capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["every_hop_verified"] and [h["hop"] for h in result["hops"]] == [1, 2]
    assert result["chunks"] == 10  # five 1.6 MiB tensors in 1 MiB chunks: each split in two
    assert result["head_landing_seconds"] > 0.1  # 8 MiB paced at 50 MB/s: 0.17 s
    assert all(h["seconds_after_head_started"] >= result["head_landing_seconds"] - 0.05 for h in result["hops"])


@pytest.mark.parametrize("argv, message", [
    (["--hops", "0"], "--hops must be 1-32"),
    (["--size", "12 parsecs"], "error: "),
    (["--land-rate", "fast"], "error: "),
])
def test_bad_flags_get_a_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
