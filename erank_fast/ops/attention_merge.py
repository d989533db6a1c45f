"""Merge two partial attention results over disjoint key sets by their log-sum-exp."""

from __future__ import annotations

import torch


def merge_attention(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """out_* [N, H, D], lse_* [N, H] float32 (natural log; -inf for an empty key set).

    softmax over A ∪ B = (e^{lse_a}·out_a + e^{lse_b}·out_b) / (e^{lse_a} + e^{lse_b});
    computed against the larger LSE so nothing overflows. Returns (out [N, H, D] in out_a's
    dtype, lse [N, H] float32)."""
    lse = torch.logaddexp(lse_a, lse_b)
    # An empty set has lse -inf and weight 0; both empty cannot happen (a token sees itself).
    w_a = torch.exp(lse_a - lse).nan_to_num_(0.0)[..., None]
    w_b = torch.exp(lse_b - lse).nan_to_num_(0.0)[..., None]
    out = out_a.float() * w_a + out_b.float() * w_b
    return out.to(out_a.dtype), lse
