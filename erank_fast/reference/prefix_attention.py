"""Shared-prefix attention: every new token of a query group attends to the group's prefix."""

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
    n, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    out = torch.zeros_like(q)
    lse = torch.full((n, hq), float("-inf"), dtype=torch.float32, device=q.device)
    q_cu, starts, lens = q_cu_seqlens.tolist(), kv_starts.tolist(), kv_lens.tolist()
    for g in range(len(q_cu) - 1):
        q0, q1, k0, k1 = q_cu[g], q_cu[g + 1], starts[g], starts[g] + lens[g]
        if q1 == q0 or k1 == k0:
            continue
        # GQA packing: the query heads of one KV head form one [rows, D] block against it.
        qg = q[q0:q1].float().view(q1 - q0, hkv, group, d).permute(1, 0, 2, 3)
        qg = qg.reshape(hkv, (q1 - q0) * group, d)
        kg = k[k0:k1].float().permute(1, 2, 0)  # [Hkv, D, P]
        vg = v[k0:k1].float().permute(1, 0, 2)  # [Hkv, P, D]
        scores = torch.bmm(qg, kg) * scale
        lse_g = torch.logsumexp(scores, dim=-1)
        og = torch.bmm(torch.exp(scores - lse_g[..., None]), vg)
        og = og.view(hkv, q1 - q0, group, d).permute(1, 0, 2, 3).reshape(q1 - q0, hq, d)
        out[q0:q1] = og.to(q.dtype)
        lse[q0:q1] = lse_g.view(hkv, q1 - q0, group).permute(1, 0, 2).reshape(q1 - q0, hq)
    return out, lse
