"""Causal self-attention of several independent sequences (used to prefill query prefixes)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: list[int],
                     scale: float) -> torch.Tensor:
    """q [N, Hq, D], k, v [N, Hkv, D] packed; sequence s owns rows cu_seqlens[s]:[s+1].
    Returns [N, Hq, D]. A few long sequences per call, so a loop of fused SDPA calls."""
    out = torch.empty_like(q)
    for s in range(len(cu_seqlens) - 1):
        a, b = cu_seqlens[s], cu_seqlens[s + 1]
        if a == b:
            continue
        o = F.scaled_dot_product_attention(
            q[a:b].transpose(0, 1)[None], k[a:b].transpose(0, 1)[None], v[a:b].transpose(0, 1)[None],
            is_causal=True, scale=scale, enable_gqa=True,
        )
        out[a:b] = o[0].transpose(0, 1)
    return out
