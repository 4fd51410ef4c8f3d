"""Where forked (or served) weights live: ``cpu`` or a CUDA device.

One check shared by `rfork fork`, `rfork testbed` and the seed stand-in, so
asking for a GPU on a machine without one fails up front with a sentence
instead of deep inside torch or the TransferEngine.

    >>> check_device("cpu")
    'cpu'
    >>> check_device("tpu")
    Traceback (most recent call last):
    ...
    rfork_agent.devices.DeviceError: --device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'
"""

from __future__ import annotations

import re

_DEVICE = re.compile(r"^(cpu|cuda)(:\d+)?$")


class DeviceError(ValueError):
    """The requested device is malformed or not present on this machine."""


def check_device(name: str) -> str:
    """Return ``name`` if this process can allocate on it; raise DeviceError otherwise.

    ``cuda`` needs a torch built with CUDA that sees a GPU; ``cuda:N`` needs at
    least N+1 visible GPUs (CUDA_VISIBLE_DEVICES renumbers them).
    """
    match = _DEVICE.match(name or "")
    if not match or name == "cpu:0" or (match.group(1) == "cpu" and match.group(2)):
        raise DeviceError(f"--device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if name == "cpu":
        return name
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {name}: no CUDA device is available here (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False); use --device cpu or run on a machine with a GPU")
    index = int(match.group(2)[1:]) if match.group(2) else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"--device {name}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return name
