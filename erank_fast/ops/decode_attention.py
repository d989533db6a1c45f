"""Decode attention on CPU (one new token per document) through erank_fast's C++ kernel
(``ops/csrc/decode_attention.cpp``): each document's token against its query's prefix rows and
its own rows of the K/V arena, read in place, float32 softmax and accumulation. Equal to the
prefix + own paths merged by LSE (tests/test_torch_ops.py); None when the kernel is not available
for these tensors, and the caller runs those paths instead."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erank_fast.ops.cpu_extension import cpu_kernels

HEAD_DIMS = (64, 128)
DTYPES = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class DecodeRows:
    """Per document: its prefix rows prefix_start .. + prefix_len and own rows own_base ..
    + own_len of the arena (int64 [B] each; the same for every layer of a step)."""

    prefix_start: torch.Tensor
    prefix_len: torch.Tensor
    own_base: torch.Tensor
    own_len: torch.Tensor

    @classmethod
    def of_step(cls, docs, prefixes, device) -> "DecodeRows":
        """docs: (group, own_base, own_start, new tokens) per document; prefixes: (first row,
        length) per group (``StepMeta.docs`` / ``.prefixes``). Own rows include this step's."""
        def t(values):
            return torch.tensor(values, dtype=torch.int64, device=device)

        return cls(t([prefixes[g][0] for g, *_ in docs]), t([prefixes[g][1] for g, *_ in docs]),
                   t([b for _, b, _, _ in docs]), t([s + n for _, _, s, n in docs]))


def decode_attention_cpu(q, k_cache, v_cache, rows: DecodeRows, scale: float):
    """q [B, Hq, D] -> out [B, Hq, D], or None where the kernel does not apply."""
    if (q.device.type != "cpu" or q.dtype not in DTYPES or q.shape[-1] not in HEAD_DIMS
            or k_cache.dtype != q.dtype or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1):
        return None
    kernels = cpu_kernels()
    if kernels is None:
        return None
    q = q if q.stride(-1) == 1 else q.contiguous()
    out, _ = kernels.decode_attention(q, k_cache, v_cache, rows.prefix_start, rows.prefix_len,
                                      rows.own_base, rows.own_len, scale)
    return out
