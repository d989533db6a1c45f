"""Vocabulary-streaming score head: what greedy decoding and the score read need from the
logits, without ever holding a [rows, vocab] tensor."""

from __future__ import annotations

import torch

DEFAULT_VOCAB_CHUNK = 8192


def score_head_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [B, H] × weight [V, H]ᵀ streamed over V in chunks.

    Returns, per row: max logit [B] float32, argmax id [B] int64 (ties to the smallest id, as
    torch.argmax), log-sum-exp [B] float32, and the logits of ``token_ids`` [K] as [B, K]
    float32. Logits are computed in hidden's dtype, as the lm_head of the model would."""
    b = hidden.shape[0]
    v = weight.shape[0]
    dev = hidden.device
    best = torch.full((b,), float("-inf"), dtype=torch.float32, device=dev)
    best_id = torch.zeros((b,), dtype=torch.int64, device=dev)
    sum_exp = torch.zeros((b,), dtype=torch.float32, device=dev)
    gathered = (hidden @ weight[token_ids].T).float()
    for v0 in range(0, v, vocab_chunk):
        logits = (hidden @ weight[v0 : v0 + vocab_chunk].T).float()
        chunk_arg = logits.argmax(dim=-1)  # first maximum, as torch.argmax over the vocabulary
        chunk_max = logits.gather(1, chunk_arg[:, None])[:, 0]
        new_best = torch.maximum(best, chunk_max)
        # Online log-sum-exp: rescale the running sum to the new maximum.
        sum_exp = sum_exp * torch.exp(best - new_best) + torch.exp(logits - new_best[:, None]).sum(-1)
        take = chunk_max > best  # strict: earlier chunks keep ties (smallest id wins)
        best_id = torch.where(take, chunk_arg + v0, best_id)
        best = new_best
    return best, best_id, best + torch.log(sum_exp), gathered
