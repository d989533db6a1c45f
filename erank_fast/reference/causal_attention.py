"""Causal self-attention of packed independent sequences, the oracle: an explicit masked
softmax per sequence and head, in float64."""

from __future__ import annotations

import torch


def causal_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         cu_seqlens: list[int], scale: float) -> torch.Tensor:
    """q [N, Hq, D], k, v [N, Hkv, D] packed; sequence s owns rows cu_seqlens[s]:[s+1].
    Returns [N, Hq, D] in q's dtype."""
    out = torch.empty_like(q)
    group = q.shape[1] // k.shape[1]
    for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        future = torch.ones(b - a, b - a, dtype=torch.bool).triu(1)
        for h in range(q.shape[1]):
            kh, vh = k[a:b, h // group].double(), v[a:b, h // group].double()
            scores = (q[a:b, h].double() @ kh.T * scale).masked_fill(future, float("-inf"))
            out[a:b, h] = (torch.softmax(scores, -1) @ vh).to(q.dtype)
    return out
