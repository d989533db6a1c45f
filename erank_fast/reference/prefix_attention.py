"""Shared-prefix attention, the oracle: every new token of a query group attends to the group's
prefix, one token and one head at a time in float64."""

from __future__ import annotations

import torch


def prefix_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_cu_seqlens: torch.Tensor,
    kv_starts: torch.Tensor,
    kv_lens: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal attention of each group's queries over that group's prefix K/V.

    q: [N, Hq, D], the new tokens of all documents, grouped: group g owns rows
       q_cu_seqlens[g]:q_cu_seqlens[g+1].
    k, v: [T, Hkv, D], the K/V arena: group g's prefix is rows kv_starts[g] .. + kv_lens[g].
    Returns out [N, Hq, D] (q's dtype) and lse [N, Hq] float32; a group with an empty prefix
    gets out 0 and lse -inf, so that merging with it is the identity.
    """
    n, hq, _ = q.shape
    group = hq // k.shape[1]
    out = torch.zeros_like(q)
    lse = torch.full((n, hq), float("-inf"), dtype=torch.float32, device=q.device)
    q_cu, starts, lens = q_cu_seqlens.tolist(), kv_starts.tolist(), kv_lens.tolist()
    for g in range(len(q_cu) - 1):
        keys = slice(starts[g], starts[g] + lens[g])
        if lens[g] == 0:
            continue
        for row in range(q_cu[g], q_cu[g + 1]):
            for h in range(hq):
                scores = (k[keys, h // group].double() @ q[row, h].double()) * scale
                lse[row, h] = torch.logsumexp(scores, 0).float()
                out[row, h] = (torch.softmax(scores, 0) @ v[keys, h // group].double()).to(q.dtype)
    return out, lse
