"""The score head, the oracle: full-vocabulary logits, then their max, argmax, log-sum-exp and
the logits of a few token ids."""

from __future__ import annotations

import torch


def score_head_ref(hidden: torch.Tensor, weight: torch.Tensor, token_ids: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [B, H] × weight [V, H]ᵀ -> (max logit [B] float32, argmax id [B] int64 (ties to
    the smallest id), log-sum-exp [B] float32, logits of ``token_ids`` [B, K] float32). Logits
    are computed in hidden's dtype, as the lm_head of the model would."""
    logits = (hidden @ weight.T).float()
    return (logits.max(-1).values, logits.argmax(-1), torch.logsumexp(logits, -1),
            logits[:, token_ids])
