"""Test helpers: full-sequence logits through erank_fast's decoder."""

from __future__ import annotations

import torch

from erank_fast.ops.causal_attention import causal_attention


class PlainCausal:
    """Attention for one packed batch of independent sequences, no cache."""

    def __init__(self, cu_seqlens, scale):
        self.cu, self.scale = cu_seqlens, scale

    def __call__(self, layer, q, k, v):
        return causal_attention(q, k, v, self.cu, self.scale)


@torch.inference_mode()
def decoder_logits(decoder, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] float32 logits of one sequence through erank_fast's decoder."""
    device = decoder.lm_head_weight.device
    x = torch.tensor(ids, device=device)
    attention = PlainCausal([0, len(ids)], decoder.config.head_dim**-0.5)
    hidden = decoder(x, torch.arange(len(ids), device=device), attention)
    return (hidden @ decoder.lm_head_weight.T).float()
