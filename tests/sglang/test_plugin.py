"""The plugin through SGLang's own plugin framework: discovery, enable/disable, bad configuration."""

from __future__ import annotations

import pytest

from tests.sglang.conftest import client_env, run_python, run_sglang_client

HOOK = "sglang.srt.model_loader.loader.RemoteInstanceModelLoader.load_model_from_remote_instance_by_transfer_engine"


def test_entry_point_is_installed_in_sglang_group():
    proc = run_python(
        "from importlib.metadata import entry_points\n"
        "print([(e.name, e.value) for e in entry_points(group='sglang.srt.plugins')])"
    )
    assert proc.returncode == 0, proc.stderr
    assert "('rfork', 'rfork_agent.sglang_plugin:register')" in proc.stdout


def test_enabled_plugin_is_loaded_by_load_plugins_and_hook_is_active():
    result, stderr = run_sglang_client(
        {"mode": "plugins"}, client_env(RFORK_SCHEDULER_URL="http://127.0.0.1:9"))
    assert result == {"patched": True, "registered": True, "hook_active": True, "loader_method_replaced": True}
    assert "Loaded plugin rfork from group sglang.srt.plugins" in stderr
    assert f"rfork plugin: hook active on {HOOK}" in stderr


def test_disabled_plugin_registers_nothing_and_leaves_the_loader_alone():
    result, stderr = run_sglang_client({"mode": "plugins"}, client_env())
    assert result == {"patched": False, "registered": False, "hook_active": False, "loader_method_replaced": False}
    assert "Executed general plugin: rfork" in stderr  # discovered and run, chose to do nothing
    assert "rfork plugin: hook active" not in stderr


@pytest.mark.parametrize("env, message", [
    ({"RFORK_SCHEDULER_URL": "10.0.0.5:8700"}, "is not an http(s) URL"),
    ({"RFORK_SCHEDULER_URL": "http://127.0.0.1:9", "RFORK_CHUNK_SIZE": "lots"}, "RFORK_CHUNK_SIZE='lots'"),
    ({"RFORK_SCHEDULER_URL": "http://127.0.0.1:9", "RFORK_TP_SIZE": "0"}, "RFORK_TP_SIZE='0'"),
])
def test_malformed_environment_is_logged_loudly_and_hooks_nothing(env, message):
    result, stderr = run_sglang_client({"mode": "plugins"}, client_env(**env))
    assert result["registered"] is False and result["loader_method_replaced"] is False
    assert "Failed to execute general plugin: rfork" in stderr
    assert message in stderr


def test_a_failed_patch_is_reported_as_an_error():
    # Break the target the way a renamed SGLang method would: apply_hooks logs
    # and continues; the plugin must say rfork is NOT active.
    code = (
        "from testbed.sglang_pieces import prepare_cpu_sglang_env; prepare_cpu_sglang_env()\n"
        "import logging, sys; logging.basicConfig(stream=sys.stderr, level=logging.INFO)\n"
        "import sglang.srt.model_loader.loader as L\n"
        "del L.RemoteInstanceModelLoader.load_model_from_remote_instance_by_transfer_engine\n"
        "from sglang.srt.plugins import load_plugins; load_plugins()\n"
        "from rfork_agent import sglang_plugin; print('active', sglang_plugin.hook_active())\n"
    )
    proc = run_python(code, client_env(RFORK_SCHEDULER_URL="http://127.0.0.1:9"))
    assert proc.returncode == 0, proc.stderr
    assert "active False" in proc.stdout
    assert "rfork plugin: SGLang did NOT apply rfork's hook" in proc.stderr
