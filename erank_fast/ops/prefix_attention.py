"""Launcher for shared-prefix attention (see erank_fast.reference.prefix_attention)."""

from __future__ import annotations

import torch

from erank_fast.reference.prefix_attention import prefix_attention_ref


def prefix_attention(q, k, v, q_cu_seqlens, kv_cu_seqlens, scale: float):
    """q [N, Hq, D]; k, v [P_total, Hkv, D]; cu_seqlens [G+1] int -> (out [N, Hq, D], lse [N, Hq])."""
    if q.shape[1] % k.shape[1] or q.shape[2] != k.shape[2] or k.shape != v.shape:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q_cu_seqlens.numel() != kv_cu_seqlens.numel():
        raise ValueError("q_cu_seqlens and kv_cu_seqlens must describe the same groups")
    return prefix_attention_ref(q, k, v, q_cu_seqlens, kv_cu_seqlens, scale)
