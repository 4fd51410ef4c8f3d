"""--device validation shared by `rfork fork`, `rfork testbed` and the seed stand-in (CPU-only machine)."""

from __future__ import annotations

import argparse

import pytest
import torch

from rfork_agent import fork_cli
from rfork_agent.devices import DeviceError, check_device
from testbed import orchestrator

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "cpu:0", "", "CUDA"])
def test_malformed_device_is_refused(name):
    with pytest.raises(DeviceError, match="must be 'cpu', 'cuda' or 'cuda:N'"):
        check_device(name)


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_says_so(name):
    with pytest.raises(DeviceError, match="no CUDA device is available here"):
        check_device(name)


@no_cuda
def test_testbed_cli_refuses_cuda_without_a_gpu(capsys):
    parser = argparse.ArgumentParser()
    orchestrator.add_arguments(parser)
    assert orchestrator.main(parser.parse_args(["--device", "cuda", "--model", "tiny"])) == 2
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err


@no_cuda
def test_fork_cli_refuses_cuda_without_a_gpu(capsys):
    parser = argparse.ArgumentParser()
    fork_cli.add_arguments(parser)
    args = parser.parse_args(["--scheduler", "http://127.0.0.1:9", "--like-seed", "http://127.0.0.1:9",
                              "--device", "cuda"])
    assert fork_cli.main(args) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_allocate_like_defaults_to_cpu_and_lays_out_the_manifest():
    tensors, buffer = fork_cli.allocate_like({"a": [0, 3, 2], "b": [0, 5, 2]}, torch)
    assert buffer.device.type == "cpu" and buffer.numel() == 256 + 10  # b starts on the next 256-byte boundary
    assert tensors["b"].data_ptr() - tensors["a"].data_ptr() == 256
    assert tensors["b"].dtype == torch.int16 and not buffer.any()


def test_testbed_options_carry_the_devices():
    parser = argparse.ArgumentParser()
    orchestrator.add_arguments(parser)
    options = orchestrator.options_from_args(parser.parse_args(["--model", "tiny"]))
    assert (options.device, options.seed_device) == ("cpu", None)
    with pytest.raises(DeviceError, match="got 'gpu1'"):
        orchestrator.options_from_args(parser.parse_args(["--model", "tiny", "--seed-device", "gpu1"]))


def test_fleet_passes_the_seed_device_to_every_seed(tmp_path, monkeypatch):
    from testbed.fleet import Fleet, FleetSpec

    fleet = Fleet(FleetSpec(seeds=1, device="cuda:1"))
    fleet.log_dir = tmp_path
    spawned = []
    monkeypatch.setattr(fleet, "_spawn", lambda cmd, name, stdout=None: spawned.append(cmd))
    fleet._spawn_seed(0)
    cmd = spawned[0]
    assert cmd[cmd.index("--device") + 1] == "cuda:1"
