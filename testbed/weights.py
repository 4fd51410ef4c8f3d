"""Deterministic weights for one tensor-parallel rank, in one registrable buffer.

``materialize`` lays a rank's parameters out as typed views into a single flat
``uint8`` buffer, so the seed makes one ``register_memory`` call per rank (as
SGLang's v2 registration merges adjacent weight blocks). Every tensor is filled
from its own generator seeded by (rng_seed, rank for sharded tensors, name), so
any process — the seed, the verifier, a test — regenerates identical bytes, and
replicated tensors (norms) are identical on every rank as they are in SGLang.

    >>> from testbed.presets import get_preset
    >>> w = materialize(get_preset("tiny"), rank=0, rng_seed=1234)
    >>> manifest(w)["model.norm.weight"][1:]
    [256, 2]
    >>> digests(w.tensors) == digests(materialize(get_preset("tiny"), 0, 1234).tensors)
    True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from testbed.presets import ModelSpec, Parallel

TORCH_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}

ALIGNMENT = 256
"""Byte alignment of each tensor inside the buffer: what CUDA's caching allocator
gives, and enough for any dtype view."""

INIT_STD = 0.02
"""Standard deviation of matrices and biases (the usual initializer_range), which
keeps the stand-in's decode loop numerically tame."""


@dataclass
class RankWeights:
    """One rank's parameters: named typed views into ``buffer``.

        >>> from testbed.presets import get_preset
        >>> w = materialize(get_preset("tiny"), rank=0, rng_seed=1)
        >>> w.nbytes >= w.tensor_bytes        # one registration (w.ptr, w.nbytes) covers all
        True
        >>> tuple(w.tensors["model.embed_tokens.weight"].shape)
        (2048, 256)
    """

    spec: ModelSpec
    rank: int
    buffer: torch.Tensor
    """Flat ``uint8`` storage behind every tensor (alignment padding is zero)."""
    tensors: dict[str, torch.Tensor]
    """Views in ``named_parameters()`` order."""

    @property
    def ptr(self) -> int:
        return self.buffer.data_ptr()

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    @property
    def tensor_bytes(self) -> int:
        """Bytes of parameters (excludes alignment padding)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def materialize(spec: ModelSpec, rank: int, rng_seed: int, device: str | torch.device = "cpu") -> RankWeights:
    """Allocate rank ``rank``'s parameters of ``spec`` and fill them deterministically.

    ``device`` is where the buffer lives ("cpu" here; "cuda" when a GPU seed
    stands in): generation runs on the CPU either way so the bytes never depend
    on the device's RNG.
    """
    dtype = TORCH_DTYPES[spec.dtype]
    layout = []
    offset = 0
    for t in spec.rank_tensors(rank):
        nbytes = t.numel * spec.element_size
        layout.append((t, offset, nbytes))
        offset = _align(offset + nbytes)
    # empty + zeroing only the padding: every other byte is written once by its
    # generator, and a second pass over a GiB of fresh pages costs seconds.
    buffer = torch.empty(max(offset, 1), dtype=torch.uint8, device=device)
    tensors: dict[str, torch.Tensor] = {}
    end = 0
    for t, start, nbytes in layout:
        buffer[end:start].zero_()
        view = buffer[start:start + nbytes].view(dtype).view(t.shape)
        _fill(view, _tensor_seed(rng_seed, rank, t.name, t.parallel), _is_norm(t.name))
        tensors[t.name] = view
        end = start + nbytes
    buffer[end:].zero_()
    return RankWeights(spec, rank, buffer, tensors)


def manifest(weights: RankWeights) -> dict[str, list[int]]:
    """SGLang's weights-info dict: ``{name: [data_ptr, numel, element_size]}`` in order."""
    return {name: [t.data_ptr(), t.numel(), t.element_size()] for name, t in weights.tensors.items()}


def digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """BLAKE2b-256 of each tensor's bytes (zero-byte tensors hash the empty string).

    Works for any dtype, bfloat16 included, and for CUDA tensors (copied to the
    host first).
    """
    out = {}
    for name, tensor in tensors.items():
        h = hashlib.blake2b(digest_size=32)
        if tensor.numel():
            raw = tensor.detach().contiguous().view(torch.uint8).reshape(-1)
            if raw.device.type != "cpu":
                raw = raw.cpu()
            h.update(memoryview(raw.numpy()))
        out[name] = h.hexdigest()
    return out


def _fill(view: torch.Tensor, seed: int, is_norm: bool) -> None:
    if view.numel() == 0:
        return
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if view.device.type == "cpu":
        target = view
    else:
        target = torch.empty(view.shape, dtype=view.dtype)
    # normal_ on a CPU tensor draws serially from the generator, so the bytes do
    # not depend on the thread count of the process that regenerates them.
    target.normal_(mean=1.0 if is_norm else 0.0, std=INIT_STD, generator=generator)
    if target is not view:
        view.copy_(target)


def _tensor_seed(rng_seed: int, rank: int, name: str, parallel: Parallel) -> int:
    # Replicated tensors are the same bytes on every rank, as in SGLang.
    where = "all" if parallel is Parallel.REPLICATED else f"rank{rank}"
    digest = hashlib.blake2b(f"{rng_seed}/{where}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT
