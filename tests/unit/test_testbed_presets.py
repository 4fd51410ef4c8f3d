"""Model presets match SGLang's parameter names and shapes; weights regenerate byte-exact."""

from __future__ import annotations

import pytest
import torch

from prometheus_client import CollectorRegistry
from testbed.decode import BatchScheduler, DecodeConfig, DecodeMetrics, ForwardPass, Request
from testbed.presets import (
    ARCHITECTURES,
    ZERO_BYTE_TENSOR,
    Architecture,
    ModelSpec,
    PresetError,
    get_preset,
    preset_for_size,
    resolve_spec,
)
from testbed.weights import digests, manifest, materialize

pytestmark = pytest.mark.cpu_only

MiB = 2**20


def shapes(spec, rank=0):
    return {t.name: t.shape for t in spec.rank_tensors(rank)}


def test_qwen2_5_0_5b_names_shapes_and_param_count():
    spec = get_preset("qwen2.5-0.5b")
    s = shapes(spec)
    assert list(s)[:4] == [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.qkv_proj.weight",
        "model.layers.0.self_attn.qkv_proj.bias",
        "model.layers.0.self_attn.o_proj.weight",
    ]
    assert s["model.embed_tokens.weight"] == (151936, 896)
    assert s["model.layers.0.self_attn.qkv_proj.weight"] == (896 + 2 * 128, 896)
    assert s["model.layers.0.self_attn.qkv_proj.bias"] == (1152,)
    assert s["model.layers.23.mlp.gate_up_proj.weight"] == (2 * 4864, 896)
    assert s["model.layers.23.mlp.down_proj.weight"] == (896, 4864)
    assert s["model.layers.23.post_attention_layernorm.weight"] == (896,)
    assert list(s)[-1] == "model.norm.weight"
    assert "lm_head.weight" not in s  # tied: SGLang's named_parameters() has no lm_head
    assert len(s) == 1 + 24 * 7 + 1
    assert spec.num_params == pytest.approx(494_032_768, rel=0.01)
    assert spec.total_bytes == spec.num_params * 2


def test_llama_3_2_1b_names_shapes_and_param_count():
    spec = get_preset("llama-3.2-1b")
    s = shapes(spec)
    assert s["model.layers.0.self_attn.qkv_proj.weight"] == (2048 + 2 * 512, 2048)
    assert "model.layers.0.self_attn.qkv_proj.bias" not in s
    assert s["model.layers.15.mlp.gate_up_proj.weight"] == (16384, 2048)
    assert "model.layers.16.mlp.down_proj.weight" not in s
    assert spec.num_params == pytest.approx(1.24e9, rel=0.01)


def test_untied_model_has_lm_head_last():
    s = shapes(get_preset("llama-3.1-8b"))
    assert list(s)[-1] == "lm_head.weight" and s["lm_head.weight"] == (128256, 4096)


@pytest.mark.parametrize("rank", [0, 1])
def test_tp2_sharding_follows_sglang_parallel_layers(rank):
    spec = get_preset("qwen2.5-0.5b", tp_size=2)
    s = shapes(spec, rank)
    assert s["model.embed_tokens.weight"] == (151936 // 2, 896)          # vocab-parallel
    assert s["model.layers.0.self_attn.qkv_proj.weight"] == (448 + 2 * 64, 896)  # 7 q heads, 1 kv head
    assert s["model.layers.0.self_attn.qkv_proj.bias"] == (576,)
    assert s["model.layers.0.self_attn.o_proj.weight"] == (896, 448)     # row-parallel
    assert s["model.layers.0.mlp.gate_up_proj.weight"] == (4864, 896)    # column-parallel
    assert s["model.layers.0.mlp.down_proj.weight"] == (896, 2432)
    assert s["model.layers.0.input_layernorm.weight"] == (896,)          # replicated
    assert spec.total_bytes == 2 * spec.rank_bytes(rank)


def test_kv_heads_are_replicated_when_tp_exceeds_them():
    # 2 kv heads over 4 ranks: each rank keeps one whole kv head (QKVParallelLinear).
    s = shapes(get_preset("tiny", tp_size=4))
    assert s["model.layers.0.self_attn.qkv_proj.weight"] == (64 + 2 * 64, 256)


def test_vocab_padding_and_bad_tp_are_reported():
    assert ARCHITECTURES["qwen2.5-0.5b"].padded_vocab(1) == 151936
    odd = ARCHITECTURES["tiny"].__class__("llama", 64, 128, 1, 1, 1, 1000, True)
    assert odd.padded_vocab(1) == 1024
    with pytest.raises(PresetError, match="num_heads=14 is not divisible by tp_size=4"):
        get_preset("qwen2.5-0.5b", tp_size=4)
    with pytest.raises(PresetError, match="unknown model preset"):
        get_preset("gpt-5")


@pytest.mark.parametrize("target", ["32MiB", "48MiB", "600MiB", "3GiB"])
@pytest.mark.parametrize("tp_size", [1, 2])
def test_preset_for_size_is_within_5_percent(target, tp_size):
    spec = preset_for_size(target, tp_size=tp_size)
    wanted = {"32MiB": 32 * MiB, "48MiB": 48 * MiB, "600MiB": 600 * MiB, "3GiB": 3 * 2**30}[target]
    assert abs(spec.total_bytes / wanted - 1) < 0.05, spec.describe()
    assert spec.name == preset_for_size(wanted, tp_size=tp_size).name  # same target, same identity
    assert spec.rank_tensors(0)[0].name == "model.embed_tokens.weight"


def test_preset_for_size_scales_layers_at_full_width_and_rejects_too_small():
    big = preset_for_size(3 * 2**30)
    assert big.arch.hidden_size == 2048 and big.arch.num_layers > 16
    assert preset_for_size(600 * MiB).arch.num_layers == 16
    with pytest.raises(PresetError, match="too small"):
        preset_for_size(1000)


def test_zero_byte_tensor_is_included_mid_model():
    spec = get_preset("tiny", include_zero_byte=True)
    names = [t.name for t in spec.rank_tensors(0)]
    assert ZERO_BYTE_TENSOR in names and names[-1] != ZERO_BYTE_TENSOR
    assert shapes(spec)[ZERO_BYTE_TENSOR] == (0,)
    assert ZERO_BYTE_TENSOR not in shapes(get_preset("tiny"))
    w = materialize(spec, 0, rng_seed=1)
    assert manifest(w)[ZERO_BYTE_TENSOR][1:] == [0, 2]
    assert ZERO_BYTE_TENSOR in digests(w.tensors)


def test_materialize_lays_tensors_in_one_aligned_buffer():
    spec = resolve_spec("tiny", dtype="float32", tp_size=2)
    w = materialize(spec, 1, rng_seed=7)
    m = manifest(w)
    assert list(m) == [t.name for t in spec.rank_tensors(1)]
    for name, (ptr, numel, esize) in m.items():
        assert esize == 4 and numel == w.tensors[name].numel()
        assert w.ptr <= ptr and ptr + numel * esize <= w.ptr + w.nbytes
        assert (ptr - w.ptr) % 256 == 0
    assert w.tensors["model.layers.0.input_layernorm.weight"].float().mean() == pytest.approx(1.0, abs=0.01)


def test_materialize_is_deterministic_and_seed_dependent():
    spec = get_preset("tiny", tp_size=2, include_zero_byte=True)
    first = digests(materialize(spec, 0, rng_seed=1234).tensors)
    assert digests(materialize(spec, 0, rng_seed=1234).tensors) == first
    other_seed = digests(materialize(spec, 0, rng_seed=1235).tensors)
    changed = {n for n in first if first[n] != other_seed[n]}
    assert changed == set(first) - {ZERO_BYTE_TENSOR}
    # Sharded tensors differ between ranks; replicated norms are the same bytes.
    rank1 = digests(materialize(spec, 1, rng_seed=1234).tensors)
    assert rank1["model.norm.weight"] == first["model.norm.weight"]
    assert rank1["model.embed_tokens.weight"] != first["model.embed_tokens.weight"]


def test_scheduler_records_ttft_and_token_weighted_itl():
    registry = CollectorRegistry()
    metrics = DecodeMetrics(registry, "m")
    sched = BatchScheduler(DecodeConfig(output_tokens=3, max_prefill_tokens=4, prompt_tokens=2), metrics)
    for rid in range(3):
        assert sched.add(Request(rid, arrival=0.0, prompt=[1, 2], max_new_tokens=3))
    batch = sched.schedule()
    assert batch.kind == "prefill" and len(batch.requests) == 2  # prefill budget: 4 tokens
    sched.finish_step(batch, [5, 6], now=0.3)
    batch = sched.schedule()
    assert batch.kind == "prefill" and [r.rid for r in batch.requests] == [2]
    sched.finish_step(batch, [7], now=0.35)
    for now in (0.36, 0.38):
        sched.finish_step(sched.schedule(), [8, 8, 8], now=now)
    assert sched.schedule() is None and sched.completed == 3
    labels = {"model_name": "m", "engine_type": "unified"}
    assert registry.get_sample_value("sglang:time_to_first_token_seconds_count", {**labels, "is_streaming": "true"}) == 3
    assert registry.get_sample_value("sglang:inter_token_latency_seconds_count", labels) == 6
    # The first two requests waited through the third's prefill: 60 ms then 20 ms.
    assert registry.get_sample_value("sglang:inter_token_latency_seconds_bucket", {**labels, "le": "0.04"}) == 4
    assert registry.get_sample_value("sglang:e2e_request_latency_seconds_count", {**labels, "is_streaming": "true"}) == 3


def test_full_queue_rejects_and_counts_aborts():
    registry = CollectorRegistry()
    sched = BatchScheduler(DecodeConfig(max_queued_requests=2), DecodeMetrics(registry, "m"))
    results = [sched.add(Request(i, 0.0, [1], 1)) for i in range(3)]
    assert results == [True, True, False]
    assert registry.get_sample_value("sglang:num_aborted_requests_total",
                                     {"model_name": "m", "engine_type": "unified"}) == 1


def test_forward_pass_runs_on_every_rank_and_dtype():
    for dtype in ("bfloat16", "float32"):
        spec = get_preset("tiny", dtype=dtype, tp_size=2)
        fwd = ForwardPass([materialize(spec, r, 3) for r in range(2)], layers_per_step=len(spec.rank_tensors(0)))
        out = fwd.run([1, 2, 3, 4], [1, 3])
        assert len(out) == 2 and all(0 <= t < fwd.vocab_rows for t in out)
        assert torch.isfinite(fwd.embed.float()).all()


@pytest.mark.parametrize("tp_size", [1, 2, 4])
def test_tiny_moe_has_over_40000_tensors_per_rank_in_checkpoint_expert_layout(tp_size):
    spec = get_preset("tiny-moe", tp_size=tp_size)
    s = shapes(spec, tp_size - 1)
    assert len(s) == 3 + 105 * (2 + 1 + 128 * 3 + 2) == 40_848
    assert s["model.layers.0.mlp.gate.weight"] == (128, 32)                              # router: replicated
    assert s["model.layers.104.mlp.experts.127.gate_proj.weight"] == (16 // tp_size, 32)  # column-parallel
    assert s["model.layers.104.mlp.experts.127.up_proj.weight"] == (16 // tp_size, 32)
    assert s["model.layers.0.mlp.experts.0.down_proj.weight"] == (32, 16 // tp_size)       # row-parallel
    assert "model.layers.0.mlp.gate_up_proj.weight" not in s
    assert list(s)[-1] == "lm_head.weight"
    assert 40 * MiB < spec.total_bytes < 48 * MiB  # over all ranks: small, so forks of it stay quick


def test_moe_family_and_experts_go_together_and_sizes_stay_dense():
    with pytest.raises(PresetError, match="needs num_experts > 0"):
        Architecture("moe", 32, 16, 1, 4, 2, 128, False)
    with pytest.raises(PresetError, match="only it may have experts"):
        Architecture("llama", 32, 16, 1, 4, 2, 128, False, num_experts=4)
    with pytest.raises(PresetError, match="sized models are dense"):
        preset_for_size("64MiB", base="tiny-moe")


def test_forward_pass_routes_through_experts():
    spec = ModelSpec("moe-probe", Architecture("moe", 32, 16, 2, 4, 2, 128, False, num_experts=8), tp_size=2)
    fwd = ForwardPass([materialize(spec, r, 3) for r in range(2)], layers_per_step=4)
    out = fwd.run([1, 2, 3, 4, 5, 6], [0, 5])
    assert len(out) == 2 and all(0 <= t < fwd.vocab_rows for t in out)
