"""The models the fleet simulator forks: one TP rank's parameters as SGLang names and sizes them.

``deepseek-v3`` is DeepSeek-V3/R1 (671B, FP8 block-quantised, 128x128 blocks with
float32 ``weight_scale_inv``) under TP8 without expert parallelism, in the layout
SGLang's ``DeepseekV3ForCausalLM`` registers: MLA attention with the fused
``q_a`` / ``kv_a`` projection, three dense layers, then 58 MoE layers whose 256
routed experts are fused into ``w13_weight`` / ``w2_weight`` (each rank holds a
1/8 slice of every expert) plus one shared expert; vocab-parallel embeddings and
``lm_head`` in bfloat16. One rank is about 85 GB.

``llama-3.1-70b`` (TP8) and ``qwen2.5-7b`` (TP1) come from the testbed's
shape rules (``testbed.presets``), bfloat16.

    >>> m = rank_manifest("deepseek-v3")
    >>> 80e9 < sum(n * e for _, n, e in m.values()) < 90e9
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rfork_api.units import UnitError
from testbed.presets import ARCHITECTURES, Architecture, ModelSpec, PresetError, get_preset, preset_for_size

GB = 10**9


class UnknownPreset(ValueError):
    """A model preset the simulator does not know."""


@dataclass(frozen=True)
class SimModel:
    name: str
    tp_size: int
    tensors: tuple[tuple[str, int, int], ...]
    """(name, numel, element_size) of rank 0, in registration order."""

    @property
    def rank_bytes(self) -> int:
        return sum(n * e for _, n, e in self.tensors)


def _deepseek_v3(tp: int = 8) -> SimModel:
    hidden, vocab, layers, dense_layers = 7168, 129280, 61, 3
    heads, q_lora, kv_lora, nope, rope, v_dim = 128, 1536, 512, 128, 64, 128
    dense_inter, moe_inter, experts = 18432, 2048, 256
    fp8, bf16, f32 = 1, 2, 4
    block = 128
    out: list[tuple[str, int, int]] = []

    def linear(name: str, rows: int, cols: int) -> None:
        """An FP8 block-quantised linear layer: the weight and its per-128x128-block scales."""
        out.append((f"{name}.weight", rows * cols, fp8))
        out.append((f"{name}.weight_scale_inv", math.ceil(rows / block) * math.ceil(cols / block), f32))

    vocab_shard = math.ceil(vocab / tp / 64) * 64
    out.append(("model.embed_tokens.weight", vocab_shard * hidden, bf16))
    for i in range(layers):
        p = f"model.layers.{i}"
        linear(f"{p}.self_attn.fused_qkv_a_proj_with_mqa", q_lora + kv_lora + rope, hidden)  # replicated
        out.append((f"{p}.self_attn.q_a_layernorm.weight", q_lora, bf16))
        linear(f"{p}.self_attn.q_b_proj", heads * (nope + rope) // tp, q_lora)
        out.append((f"{p}.self_attn.kv_a_layernorm.weight", kv_lora, bf16))
        linear(f"{p}.self_attn.kv_b_proj", heads * (nope + v_dim) // tp, kv_lora)
        linear(f"{p}.self_attn.o_proj", hidden, heads * v_dim // tp)
        out.append((f"{p}.input_layernorm.weight", hidden, bf16))
        out.append((f"{p}.post_attention_layernorm.weight", hidden, bf16))
        if i < dense_layers:
            linear(f"{p}.mlp.gate_up_proj", 2 * dense_inter // tp, hidden)
            linear(f"{p}.mlp.down_proj", hidden, dense_inter // tp)
            continue
        out.append((f"{p}.mlp.gate.weight", experts * hidden, bf16))
        out.append((f"{p}.mlp.gate.e_score_correction_bias", experts, f32))
        shard = moe_inter // tp
        out.append((f"{p}.mlp.experts.w13_weight", experts * 2 * shard * hidden, fp8))
        out.append((f"{p}.mlp.experts.w13_weight_scale_inv",
                    experts * math.ceil(2 * shard / block) * math.ceil(hidden / block), f32))
        out.append((f"{p}.mlp.experts.w2_weight", experts * hidden * shard, fp8))
        out.append((f"{p}.mlp.experts.w2_weight_scale_inv",
                    experts * math.ceil(hidden / block) * math.ceil(shard / block), f32))
        linear(f"{p}.mlp.shared_experts.gate_up_proj", 2 * moe_inter // tp, hidden)
        linear(f"{p}.mlp.shared_experts.down_proj", hidden, moe_inter // tp)
    out.append(("model.norm.weight", hidden, bf16))
    out.append(("lm_head.weight", vocab_shard * hidden, bf16))
    return SimModel("deepseek-v3", tp, tuple(out))


LLAMA_31_70B = Architecture("llama", 8192, 28672, 80, 64, 8, 128256, tie_word_embeddings=False)
"""Llama-3.1-70B's config.json shapes (too large for a testbed stand-in, so only the simulator has it)."""


def _from_testbed(name: str, tp: int, architecture: Architecture | None = None) -> SimModel:
    spec = ModelSpec(name, architecture, "bfloat16", tp) if architecture else get_preset(name, tp_size=tp)
    return SimModel(name, tp, tuple((t.name, t.numel, spec.element_size) for t in spec.rank_tensors(0)))


PRESETS = {
    "deepseek-v3": lambda: _deepseek_v3(8),
    "llama-3.1-70b": lambda: _from_testbed("llama-3.1-70b", 8, LLAMA_31_70B),
    "qwen2.5-7b": lambda: _from_testbed("qwen2.5-7b", 1),
    # The testbed's own presets (TP1), so a testbed run can be simulated with its very tensors.
    **{name: (lambda name=name: _from_testbed(name, 1)) for name in ARCHITECTURES if name != "qwen2.5-7b"},
}
SIZED_PREFIX = "size:"
"""``size:256MiB``: the testbed's Llama-shaped stand-in of that size (``rfork testbed --model-size``)."""


def get_model(name: str) -> SimModel:
    if name.startswith(SIZED_PREFIX):
        try:
            spec = preset_for_size(name[len(SIZED_PREFIX):])
        except (PresetError, UnitError) as exc:
            raise UnknownPreset(f"model {name!r}: {exc}") from None
        return SimModel(name, 1, tuple((t.name, t.numel, spec.element_size) for t in spec.rank_tensors(0)))
    try:
        return PRESETS[name]()
    except KeyError:
        raise UnknownPreset(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}, "
                            f"or {SIZED_PREFIX}SIZE (e.g. {SIZED_PREFIX}256MiB)") from None


def is_known(name: str) -> bool:
    return name in PRESETS or name.startswith(SIZED_PREFIX)


def rank_manifest(name: str) -> dict[str, list[int]]:
    """Rank 0's manifest ``{name: [ptr, numel, element_size]}`` at made-up, 256-byte-aligned addresses."""
    ptr, out = 1 << 32, {}
    for tensor, numel, esize in get_model(name).tensors:
        out[tensor] = [ptr, numel, esize]
        ptr += (numel * esize + 255) // 256 * 256 + 256
    return out
