"""Launcher for own-context attention merged with the prefix part
(see erank_fast.reference.suffix_attention)."""

from __future__ import annotations

from erank_fast.reference.suffix_attention import suffix_attention_ref


def suffix_attention(q, k_cache, v_cache, slots, own_start, q_cu_seqlens, prefix_out, prefix_lse,
                     scale: float):
    """See ``suffix_attention_ref`` for shapes; returns the merged output [N, Hq, D]."""
    if q.shape[1] % k_cache.shape[2] or q.shape[2] != k_cache.shape[3]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}")
    if prefix_out.shape != q.shape or prefix_lse.shape != q.shape[:2]:
        raise ValueError("prefix_out / prefix_lse do not match q")
    return suffix_attention_ref(q, k_cache, v_cache, slots, own_start, q_cu_seqlens, prefix_out,
                                prefix_lse, scale)
