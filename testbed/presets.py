"""Model shapes for the seed stand-in: SGLang's parameter names, shapes and TP sharding.

Pure (no torch): a ``ModelSpec`` lists, for each tensor-parallel rank, the
parameters SGLang's ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` report from
``named_parameters()`` — fused ``qkv_proj`` and ``gate_up_proj``, no
``lm_head.weight`` when the embeddings are tied — with the per-rank shapes
SGLang's parallel layers allocate:

- ``qkv_proj`` / ``gate_up_proj`` are column-parallel (output rows split; KV
  heads replicated when ``tp_size >= num_kv_heads``, as ``QKVParallelLinear`` does);
- ``o_proj`` / ``down_proj`` are row-parallel (input columns split);
- ``embed_tokens`` / ``lm_head`` are vocab-parallel (vocab padded to a multiple
  of 64, or 64·tp when that does not divide, as ``VocabParallelEmbedding`` does);
- norms are replicated.

``tiny-moe`` is a mixture-of-experts shape with over 40,000 small tensors per
rank, for the many-segments path of the data plane (see ``Architecture.num_experts``).

    >>> spec = get_preset("qwen2.5-0.5b", tp_size=2)
    >>> spec.rank_tensors(1)[1].name, spec.rank_tensors(1)[1].shape
    ('model.layers.0.self_attn.qkv_proj.weight', (576, 896))
    >>> round(get_preset("qwen2.5-0.5b").num_params / 1e6)
    494
    >>> abs(preset_for_size(48 * 2**20).total_bytes / (48 * 2**20) - 1) < 0.05
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum

from rfork_api.units import format_bytes, parse_size

DTYPE_SIZES: dict[str, int] = {"bfloat16": 2, "float16": 2, "float32": 4}
"""Element size in bytes of each dtype the stand-in can hold."""

DEFAULT_PRESET = "qwen2.5-0.5b"
"""The model `rfork testbed` forks and `rfork testbed-seed` serves when given none."""

VOCAB_PADDING = 64
"""SGLang's DEFAULT_VOCAB_PADDING_SIZE (layers/vocab_parallel_embedding.py)."""

ZERO_BYTE_TENSOR = "model.layers.0.self_attn.k_scale"
"""Name of the optional zero-numel tensor. Quantisation scales like this one are
where SGLang has met empty parameters (issues #20818, #32905)."""


class PresetError(ValueError):
    """A preset name, size or parallelism the stand-in cannot build."""


class Parallel(str, Enum):
    """How SGLang splits a parameter across tensor-parallel ranks."""

    REPLICATED = "replicated"
    COLUMN = "column"
    """Output rows split (``ColumnParallelLinear``, ``QKVParallelLinear``, ``MergedColumnParallelLinear``)."""
    ROW = "row"
    """Input columns split (``RowParallelLinear``)."""
    VOCAB = "vocab"
    """Vocabulary rows split after padding (``VocabParallelEmbedding``, ``ParallelLMHead``)."""


@dataclass(frozen=True)
class Architecture:
    """The config.json fields that decide parameter shapes.

        >>> ARCHITECTURES["llama-3.2-1b"].head_dim
        64
    """

    family: str
    """``llama`` (no qkv bias), ``qwen2`` (qkv bias) or ``moe`` (no qkv bias, experts: ``num_experts``)."""
    hidden_size: int
    intermediate_size: int
    """The MLP's width; for ``moe``, each expert's (``moe_intermediate_size`` in config.json)."""
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim_override: int | None = None
    num_experts: int = 0
    """Experts per layer (``moe`` only). Each layer then has a router (``mlp.gate``) and,
    per expert, ``mlp.experts.E.{gate,up,down}_proj.weight`` as MoE checkpoints (Qwen3-MoE,
    Mixtral-style) name them: 3 tensors per expert per layer, tens of thousands per rank.
    SGLang's ``FusedMoE`` loads them into two fused tensors per layer (``experts.w13_weight``,
    ``experts.w2_weight``), so its own manifest is short; a stack that keeps experts unfused,
    or a quantised one with per-expert scales, meets this many."""

    def __post_init__(self) -> None:
        if (self.family == "moe") != (self.num_experts > 0):
            raise PresetError(f"family {self.family!r} with num_experts={self.num_experts}: "
                              "a 'moe' family needs num_experts > 0, and only it may have experts")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_heads

    @property
    def qkv_bias(self) -> bool:
        return self.family == "qwen2"

    def check_tp(self, tp_size: int) -> None:
        """Raise PresetError unless SGLang could shard this model over ``tp_size`` ranks."""
        if tp_size < 1:
            raise PresetError(f"tp_size must be at least 1, got {tp_size}")
        problems = []
        if self.num_heads % tp_size:
            problems.append(f"num_heads={self.num_heads} is not divisible by tp_size={tp_size}")
        if tp_size < self.num_kv_heads and self.num_kv_heads % tp_size:
            problems.append(f"num_kv_heads={self.num_kv_heads} is not divisible by tp_size={tp_size}")
        if tp_size >= self.num_kv_heads and tp_size % self.num_kv_heads:
            problems.append(f"tp_size={tp_size} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.intermediate_size % tp_size:
            problems.append(f"intermediate_size={self.intermediate_size} is not divisible by tp_size={tp_size}")
        if problems:
            raise PresetError("; ".join(problems) + "; choose a tp_size that divides the head counts")

    def padded_vocab(self, tp_size: int) -> int:
        """Vocab rows over all ranks, padded as ``VocabParallelEmbedding`` pads them."""
        pad = VOCAB_PADDING
        if _round_up(self.vocab_size, pad) % tp_size:
            pad *= tp_size
        return _round_up(self.vocab_size, pad)


ARCHITECTURES: dict[str, Architecture] = {
    # Shapes from each model's config.json on the Hugging Face hub.
    "qwen2.5-0.5b": Architecture("qwen2", 896, 4864, 24, 14, 2, 151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": Architecture("qwen2", 1536, 8960, 28, 12, 2, 151936, tie_word_embeddings=True),
    "qwen2.5-7b": Architecture("qwen2", 3584, 18944, 28, 28, 4, 152064, tie_word_embeddings=False),
    "llama-3.2-1b": Architecture("llama", 2048, 8192, 16, 32, 8, 128256, tie_word_embeddings=True),
    "llama-3.2-3b": Architecture("llama", 3072, 8192, 28, 24, 8, 128256, tie_word_embeddings=True),
    "llama-3.1-8b": Architecture("llama", 4096, 14336, 32, 32, 8, 128256, tie_word_embeddings=False),
    # About 8 MiB in bfloat16: qkv bias and an untied lm_head, so tests meet every
    # parameter kind; shards over tp 1, 2 and 4.
    "tiny": Architecture("qwen2", 256, 704, 4, 4, 2, 2048, tie_word_embeddings=False),
    # Qwen3-235B-A22B's 128 experts, over 105 layers (it has 94) so one rank holds
    # 40,848 tensors, each expert matrix 1 KiB in bfloat16: about 41 MiB per rank.
    # Shards over tp 1, 2 and 4.
    "tiny-moe": Architecture("moe", 32, 16, 105, 4, 2, 512, tie_word_embeddings=False, num_experts=128),
}


@dataclass(frozen=True)
class TensorSpec:
    """One parameter as SGLang names it, with its full (all-rank) shape.

        >>> t = TensorSpec("model.layers.0.mlp.down_proj.weight", (896, 4864), Parallel.ROW)
        >>> t.shard_shape(2)
        (896, 2432)
    """

    name: str
    shape: tuple[int, ...]
    parallel: Parallel
    kv_rows: tuple[int, int] | None = None
    """For ``qkv_proj``: (q rows, kv rows per k or v) over all heads; KV rows are
    replicated instead of split once tp_size exceeds the KV head count."""
    kv_head_dim: int = 0
    num_kv_heads: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def shard_shape(self, tp_size: int) -> tuple[int, ...]:
        """The shape rank ``r`` of ``tp_size`` allocates (the same on every rank)."""
        if tp_size == 1 or self.parallel is Parallel.REPLICATED:
            return self.shape
        if self.kv_rows is not None:
            q_rows, kv_rows = self.kv_rows
            kv_per_rank = max(self.num_kv_heads // tp_size, 1) * self.kv_head_dim
            return (q_rows // tp_size + 2 * kv_per_rank, *self.shape[1:])
        if self.parallel in (Parallel.COLUMN, Parallel.VOCAB):
            return (_divide(self.shape[0], tp_size, self.name), *self.shape[1:])
        return (*self.shape[:-1], _divide(self.shape[-1], tp_size, self.name))


@dataclass(frozen=True)
class RankTensor:
    """A parameter as one rank holds it (what ``named_parameters()`` shows there)."""

    name: str
    shape: tuple[int, ...]
    parallel: Parallel

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ModelSpec:
    """A model the stand-in holds: named tensors in SGLang's order, for every TP rank.

    ``tensors`` are the full (all-rank) parameters; ``rank_tensors(r)`` the
    shards rank ``r`` allocates. ``total_bytes`` counts every rank, as a seed
    process holding all ranks registers them.

        >>> spec = get_preset("tiny")
        >>> spec.name, spec.dtype, spec.tp_size, spec.element_size
        ('tiny', 'bfloat16', 1, 2)
        >>> spec.tensors[0].name
        'model.embed_tokens.weight'
    """

    name: str
    arch: Architecture
    dtype: str = "bfloat16"
    tp_size: int = 1
    include_zero_byte: bool = False
    tensors: tuple[TensorSpec, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_SIZES:
            raise PresetError(f"dtype {self.dtype!r} is not supported; use one of {', '.join(DTYPE_SIZES)}")
        self.arch.check_tp(self.tp_size)
        if not self.tensors:
            object.__setattr__(self, "tensors", _build_tensors(self.arch, self.tp_size, self.include_zero_byte))

    @property
    def element_size(self) -> int:
        return DTYPE_SIZES[self.dtype]

    @property
    def num_params(self) -> int:
        """Parameters of the logical model (padded vocab included, as SGLang allocates)."""
        return sum(t.numel for t in self.tensors)

    def rank_tensors(self, rank: int) -> tuple[RankTensor, ...]:
        """What rank ``rank`` allocates, in ``named_parameters()`` order."""
        if not 0 <= rank < self.tp_size:
            raise PresetError(f"rank {rank} is out of range for tp_size={self.tp_size}")
        return tuple(RankTensor(t.name, t.shard_shape(self.tp_size), t.parallel) for t in self.tensors)

    def rank_bytes(self, rank: int) -> int:
        return sum(t.numel for t in self.rank_tensors(rank)) * self.element_size

    @property
    def total_bytes(self) -> int:
        """Bytes over all ranks (replicated tensors counted once per rank)."""
        return sum(self.rank_bytes(r) for r in range(self.tp_size))

    def describe(self) -> str:
        a = self.arch
        experts = f" experts={a.num_experts} ({len(self.tensors)} tensors per rank)" if a.num_experts else ""
        return (f"{self.name}: {a.family} hidden={a.hidden_size} inter={a.intermediate_size} "
                f"layers={a.num_layers} heads={a.num_heads}/{a.num_kv_heads} vocab={a.vocab_size}{experts} "
                f"{self.dtype} tp={self.tp_size}, {format_bytes(self.total_bytes)}")


def get_preset(name: str, dtype: str = "bfloat16", tp_size: int = 1,
               include_zero_byte: bool = False) -> ModelSpec:
    """The named preset (see ``ARCHITECTURES``). Raises PresetError for an unknown name."""
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise PresetError(f"unknown model preset {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ModelSpec(name, arch, dtype, tp_size, include_zero_byte)


def preset_for_size(nbytes: int | str, base: str = "llama-3.2-1b", dtype: str = "bfloat16",
                    tp_size: int = 1, include_zero_byte: bool = False) -> ModelSpec:
    """A ``base``-shaped model of about ``nbytes`` bytes over all ranks (under 0.5% off from ~30 MiB up).

    Above the base's embedding plus one layer, the width stays and the layer
    count scales; below it the model keeps the base's depth and narrows (head
    size kept, fewer heads), since one Llama-1B layer alone is 121 MB. Whatever
    whole layers cannot hit is made up by the vocabulary, one padded row group
    at a time. The name records the shape, so seeds built from the same target
    share an identity.

        >>> preset_for_size("600MiB").arch.num_layers
        16
    """
    target = parse_size(nbytes)
    base_arch = ARCHITECTURES.get(base)
    if base_arch is None:
        raise PresetError(f"unknown base preset {base!r}; choose one of {', '.join(ARCHITECTURES)}")
    if base_arch.num_experts:
        raise PresetError(f"sized models are dense; {base!r} has experts: use it as a preset (--preset {base})")
    if dtype not in DTYPE_SIZES:
        raise PresetError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPE_SIZES)}")
    widths = list(_narrower(base_arch, tp_size))
    for i, arch in enumerate(widths):
        sized = _fit(arch, target, dtype, tp_size, include_zero_byte, is_base=i == 0,
                     depth=base_arch.num_layers, narrowest=i == len(widths) - 1)
        if sized is not None:
            name = f"{base}-h{sized.hidden_size}-l{sized.num_layers}-v{sized.vocab_size}"
            return ModelSpec(name, sized, dtype, tp_size, include_zero_byte)
    smallest = _smallest_bytes(base_arch, dtype, tp_size, include_zero_byte)
    raise PresetError(
        f"{format_bytes(target)} is too small for a {base}-shaped model with tp_size={tp_size}; "
        f"ask for at least {format_bytes(smallest)}"
    )


def resolve_spec(preset: str | None = None, size: int | str | None = None, dtype: str = "bfloat16",
                 tp_size: int = 1, include_zero_byte: bool = False) -> ModelSpec:
    """The spec a seed's flags describe: ``size`` (Llama-shaped) wins over ``preset``.

    The seed stand-in and the verifier both call this, so they always agree.
    """
    if size is not None:
        return preset_for_size(size, dtype=dtype, tp_size=tp_size, include_zero_byte=include_zero_byte)
    return get_preset(preset or "tiny", dtype=dtype, tp_size=tp_size, include_zero_byte=include_zero_byte)


# -- internals ---------------------------------------------------------------

def _build_tensors(a: Architecture, tp_size: int, include_zero_byte: bool) -> tuple[TensorSpec, ...]:
    h, hd = a.hidden_size, a.head_dim
    q_rows, kv_rows = a.num_heads * hd, a.num_kv_heads * hd
    vocab = a.padded_vocab(tp_size)
    qkv = dict(kv_rows=(q_rows, kv_rows), kv_head_dim=hd, num_kv_heads=a.num_kv_heads)
    out = [TensorSpec("model.embed_tokens.weight", (vocab, h), Parallel.VOCAB)]
    for i in range(a.num_layers):
        p = f"model.layers.{i}"
        out.append(TensorSpec(f"{p}.self_attn.qkv_proj.weight", (q_rows + 2 * kv_rows, h), Parallel.COLUMN, **qkv))
        if a.qkv_bias:
            out.append(TensorSpec(f"{p}.self_attn.qkv_proj.bias", (q_rows + 2 * kv_rows,), Parallel.COLUMN, **qkv))
        if include_zero_byte and i == 0:
            # Mid-model rather than last, so chunk planning has to step over it.
            out.append(TensorSpec(ZERO_BYTE_TENSOR, (0,), Parallel.REPLICATED))
        out.append(TensorSpec(f"{p}.self_attn.o_proj.weight", (h, q_rows), Parallel.ROW))
        if a.num_experts:
            out.append(TensorSpec(f"{p}.mlp.gate.weight", (a.num_experts, h), Parallel.REPLICATED))
            for e in range(a.num_experts):
                # Tensor-parallel MoE splits each expert like a dense MLP.
                out += [
                    TensorSpec(f"{p}.mlp.experts.{e}.gate_proj.weight", (a.intermediate_size, h), Parallel.COLUMN),
                    TensorSpec(f"{p}.mlp.experts.{e}.up_proj.weight", (a.intermediate_size, h), Parallel.COLUMN),
                    TensorSpec(f"{p}.mlp.experts.{e}.down_proj.weight", (h, a.intermediate_size), Parallel.ROW),
                ]
        else:
            out += [
                TensorSpec(f"{p}.mlp.gate_up_proj.weight", (2 * a.intermediate_size, h), Parallel.COLUMN),
                TensorSpec(f"{p}.mlp.down_proj.weight", (h, a.intermediate_size), Parallel.ROW),
            ]
        out += [
            TensorSpec(f"{p}.input_layernorm.weight", (h,), Parallel.REPLICATED),
            TensorSpec(f"{p}.post_attention_layernorm.weight", (h,), Parallel.REPLICATED),
        ]
    out.append(TensorSpec("model.norm.weight", (h,), Parallel.REPLICATED))
    if not a.tie_word_embeddings:
        # Tied models alias lm_head to embed_tokens; named_parameters() dedups it away.
        out.append(TensorSpec("lm_head.weight", (vocab, h), Parallel.VOCAB))
    return tuple(out)


def _narrower(base: Architecture, tp_size: int):
    """``base`` then ever narrower copies (same head size, KV ratio and MLP ratio) that shard over tp."""
    group = base.num_heads // base.num_kv_heads
    ratio = base.intermediate_size / base.hidden_size
    heads = base.num_heads
    first = True
    while heads >= 1:
        kv = max(heads // group, 1)
        hidden = heads * base.head_dim
        inter = _round_up(int(hidden * ratio), 64 * tp_size)
        arch = base if first else replace(base, hidden_size=hidden, intermediate_size=inter,
                                          num_heads=heads, num_kv_heads=kv, head_dim_override=base.head_dim)
        first = False
        try:
            arch.check_tp(tp_size)
        except PresetError:
            pass
        else:
            yield arch
        heads -= group if heads > group else 1


def _fit(arch: Architecture, target: int, dtype: str, tp_size: int, include_zero_byte: bool, *,
         is_base: bool, depth: int, narrowest: bool) -> Architecture | None:
    """``arch`` with layers and vocab chosen so the total is just under ``target``, or None."""
    def total(a: Architecture) -> int:
        return ModelSpec("probe", a, dtype, tp_size, include_zero_byte).total_bytes

    rows = VOCAB_PADDING * tp_size  # a multiple of 64·tp pads to itself on every rank
    per_layer = (total(replace(arch, num_layers=1, vocab_size=rows))
                 - total(replace(arch, num_layers=0, vocab_size=rows)))
    if is_base:
        # Full width: keep the real vocabulary and scale the depth (at least one layer).
        layers = (target - total(replace(arch, num_layers=0))) // per_layer
        if layers < 1:
            return None
    else:
        # Narrowed: keep the base's depth within ~80% of the bytes (the vocabulary
        # takes the rest); only the narrowest width may go shallower.
        layers = min(depth, int(0.8 * target) // per_layer)
        if layers < 1 or (layers < depth and not narrowest):
            return None
    sized = replace(arch, num_layers=layers, vocab_size=rows)
    spare = target - total(sized)
    if spare < 0:
        return None
    return replace(sized, vocab_size=rows * (1 + spare // _vocab_group_bytes(arch, dtype, rows)))


def _vocab_group_bytes(arch: Architecture, dtype: str, rows: int) -> int:
    """Bytes one group of ``rows`` vocab rows adds over all ranks (embedding, plus lm_head if untied)."""
    copies = 1 if arch.tie_word_embeddings else 2
    return rows * arch.hidden_size * DTYPE_SIZES[dtype] * copies


def _smallest_bytes(base: Architecture, dtype: str, tp_size: int, include_zero_byte: bool) -> int:
    narrowest = list(_narrower(base, tp_size))[-1]
    return ModelSpec("probe", replace(narrowest, num_layers=1, vocab_size=VOCAB_PADDING * tp_size), dtype, tp_size,
                     include_zero_byte).total_bytes


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _divide(n: int, d: int, name: str) -> int:
    if n % d:
        raise PresetError(f"tensor {name!r}: dimension {n} does not split over tp_size={d}")
    return n // d
