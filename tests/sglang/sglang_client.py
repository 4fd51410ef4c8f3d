"""One SGLang client process for the tests: load_plugins(), then SGLang's real loader loads one rank.

Run as ``python tests/sglang/sglang_client.py '<json config>'`` with the SGLang
venv's python, or forked by ``client_zygote.py`` (the tests' way: the imports
are made once); prints one JSON line (prefixed ``RESULT ``) on stdout. A fresh
process per case: SGLang's ``load_plugins()`` runs once per process and its
hooks patch module state.

Config keys: ``mode`` (``plugins`` = discovery only, ``load`` = load a rank),
``seed_url``, ``rank``, ``fleet`` (the FleetSpec model fields, to rebuild the
expected weights), ``extra_param`` (add a tensor the seeds lack),
``class_name`` (pose as a draft model), ``publish`` (publish a ServerArgs with
this dtype/tp_size so the plugin derives the identity from it).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from types import SimpleNamespace


def main(config: dict) -> dict:
    from testbed.sglang_pieces import prepare_cpu_sglang_env

    prepare_cpu_sglang_env()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry

    from rfork_agent import sglang_plugin

    if config.get("publish"):
        from sglang.srt.runtime_context import publish
        from sglang.srt.server_args import ServerArgs

        publish(ServerArgs(model_path="dummy", device="cpu", **config["publish"]), role="scheduler")

    import sglang.srt.model_loader.loader as sglang_loader

    original_attr = sglang_loader.RemoteInstanceModelLoader.__dict__[
        "load_model_from_remote_instance_by_transfer_engine"]
    load_plugins()
    patched_attr = sglang_loader.RemoteInstanceModelLoader.__dict__[
        "load_model_from_remote_instance_by_transfer_engine"]
    result = {
        "patched": sglang_plugin.HOOK_TARGET in HookRegistry._patched,
        "registered": sglang_plugin.HOOK_TARGET in HookRegistry._hooks,
        "hook_active": sglang_plugin.hook_active(),
        "loader_method_replaced": patched_attr is not original_attr,
    }
    if config["mode"] == "plugins":
        return result

    from mooncake.engine import TransferEngine
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.model_loader.remote_instance_weight_loader_utils import register_memory_region_v1

    from testbed.sglang_pieces import module_with_parameters
    from testbed.verify import expected_tensors

    fleet = SimpleNamespace(**config["fleet"])
    rank = config.get("rank", 0)
    expected = expected_tensors(fleet, rank)
    blank = {name: torch.zeros_like(t) for name, t in expected.items()}
    if config.get("extra_param"):
        blank["model.extra_not_on_seeds.weight"] = torch.zeros(64, dtype=next(iter(expected.values())).dtype)
    model = module_with_parameters(blank, config.get("class_name", "Qwen2ForCausalLM"))

    # As SGLang's RemoteInstanceWeightTransporter.init_engine does on the client.
    engine = TransferEngine()
    assert engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    session_id = f"127.0.0.1:{engine.get_rpc_port()}"
    params = dict(model.named_parameters())
    if all(p.numel() for p in params.values()):
        register_memory_region_v1(model, engine)  # SGLang's own registration
    else:
        # v1 registers each parameter and TransferEngine refuses 0 bytes; v2 (the
        # CUDA path) registers allocator blocks and never sees a zero-byte one.
        for p in params.values():
            if p.numel():
                assert engine.register_memory(p.data_ptr(), p.numel() * p.element_size()) == 0

    host, port = config["seed_url"].removeprefix("http://").rsplit(":", 1)
    load_config = LoadConfig(
        load_format="remote_instance", tp_rank=rank,
        remote_instance_weight_loader_seed_instance_ip=host,
        remote_instance_weight_loader_seed_instance_service_port=int(port),
        remote_instance_weight_loader_backend="transfer_engine",
        remote_instance_weight_loader_transfer_engine=engine,
        remote_instance_weight_loader_transfer_engine_session_id=session_id,
    )
    loader = sglang_loader.RemoteInstanceModelLoader(load_config)
    started = time.perf_counter()
    try:
        ok = loader.load_model_from_remote_instance_by_transfer_engine(model, engine, config["seed_url"], rank)
        result["error"] = None
    except Exception as exc:  # noqa: BLE001 - reported to the test
        ok = False
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["seconds"] = time.perf_counter() - started
    result["ok"] = ok
    result["post_load_calls"] = model.post_load_calls
    mismatched, untouched = [], []
    for name, want in expected.items():
        got = params[name]
        if not torch.equal(got.view(torch.uint8) if got.numel() else got, want.view(torch.uint8) if want.numel() else want):
            mismatched.append(name)
        if got.numel() and not torch.count_nonzero(got.view(torch.uint8)):
            untouched.append(name)
    result["mismatched"] = mismatched
    result["untouched"] = untouched
    result["tensors"] = len(expected)
    record = sglang_plugin.last_load
    result["last_load"] = None if record is None else {
        "path": record.path, "reason": record.reason, "identity": record.identity, "job_id": record.job_id,
        "bytes_total": record.bytes_total, "bytes_by_seed": record.bytes_by_seed,
        "served_as_peer": record.served_as_peer, "withdrawal": record.withdrawal,
    }
    return result


def run_and_exit(config: dict) -> None:
    """Run one case, print its RESULT line, exit the process (the tier's zygote forks into this)."""
    try:
        outcome = main(config)
    except Exception:  # noqa: BLE001 - the test prints this
        outcome = {"crash": traceback.format_exc()}
    sys.stdout.write("RESULT " + json.dumps(outcome) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: unloading SGLang and torch took 5-28 s per process on a
    # loaded 2-core machine (measured), nothing after the RESULT line is under test, and the
    # caller's time limit counted it.
    os._exit(0)


if __name__ == "__main__":
    # SIGINT raises KeyboardInterrupt, as in an SGLang started from a terminal, even when the suite
    # runs where SIGINT is ignored (a background job of a non-interactive shell, nohup): Python keeps
    # an inherited SIG_IGN, and test_plugin_interrupt's Ctrl-C would then be lost.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_and_exit(json.loads(sys.argv[1]))
