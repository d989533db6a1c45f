"""Launcher for the vocabulary-streaming score head (see erank_fast.reference.score_head)."""

from __future__ import annotations

import torch

from erank_fast.reference.score_head import score_head_ref


def score_head(hidden: torch.Tensor, weight: torch.Tensor, token_ids: torch.Tensor):
    """hidden [B, H], weight [V, H], token_ids [K] -> (max [B], argmax [B], lse [B], logits [B, K])."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} does not match weight {tuple(weight.shape)}")
    return score_head_ref(hidden, weight, token_ids)
