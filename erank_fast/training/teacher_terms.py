"""The teacher's terms of the listwise loss, each over the groups of one batch (rows [N], group
ids [N]): the teacher's softmax (``group_kl``) and its pairwise margins (``margin_mse``), both
on the student's expected scores (``erank_fast.training.listwise``)."""

from __future__ import annotations

import torch


def margin_mse(target: torch.Tensor, student: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean over the unordered within-group pairs (i, j) of ((s_i − s_j) − (t_i − t_j))²
    (rows [N], group ids [N]); 0 when no group has two rows."""
    pairs = torch.triu(groups[:, None] == groups[None, :], diagonal=1)
    residual = (student[:, None] - student[None, :]) - (target[:, None] - target[None, :])
    return (residual.square() * pairs).sum() / pairs.sum().clamp(min=1)


def group_kl(target_logits: torch.Tensor, student_logits: torch.Tensor,
             groups: torch.Tensor) -> torch.Tensor:
    """Mean over groups of KL(softmax(target) ‖ softmax(student)), each softmax taken within a
    group (rows [N], group ids [N])."""
    total = target_logits.new_zeros(())
    ids = torch.unique(groups)
    for g in ids:
        rows = groups == g
        p = torch.log_softmax(target_logits[rows], 0)
        q = torch.log_softmax(student_logits[rows], 0)
        total = total + (p.exp() * (p - q)).sum()
    return total / len(ids)
