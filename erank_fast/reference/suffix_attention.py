"""Own-context attention merged with the prefix part, the oracle: one token and one head at a
time in float64, the merge written out as softmax over the union of the two key sets."""

from __future__ import annotations

import torch


def suffix_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    own_base: torch.Tensor,
    own_start: torch.Tensor,
    q_cu_seqlens: torch.Tensor,
    prefix_out: torch.Tensor,
    prefix_lse: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of each document's new tokens over its own keys, merged with the prefix.

    q: [N, Hq, D], new tokens packed by document: doc b owns rows q_cu_seqlens[b]:[b+1].
    k_cache, v_cache: [T, Hkv, D], the K/V arena; doc b's own key j is row own_base[b] + j, for
       j = 0 .. own_start[b] + n_b - 1 (the new tokens' K/V are already written there).
    own_start: [B] own tokens before this step; new token i of doc b sees keys 0..own_start[b]+i.
    prefix_out [N, Hq, D], prefix_lse [N, Hq] float32: the prefix part (lse -inf if none).
    Returns the merged output [N, Hq, D] in q's dtype:
        (e^lse_p · out_p + Σ_j e^{s_j} v_j) / (e^lse_p + Σ_j e^{s_j}),  s_j = scale · q·k_j.
    """
    hq = q.shape[1]
    group = hq // k_cache.shape[1]
    out = torch.empty_like(q)
    cu, base, start = q_cu_seqlens.tolist(), own_base.tolist(), own_start.tolist()
    for b in range(len(cu) - 1):
        for i, row in enumerate(range(cu[b], cu[b + 1])):
            keys = slice(base[b], base[b] + start[b] + i + 1)
            for h in range(hq):
                scores = (k_cache[keys, h // group].double() @ q[row, h].double()) * scale
                top = torch.maximum(scores.max(), prefix_lse[row, h].double())
                w_own = torch.exp(scores - top)
                w_prefix = torch.exp(prefix_lse[row, h].double() - top)
                total = w_own @ v_cache[keys, h // group].double() + w_prefix * prefix_out[row, h].double()
                out[row, h] = (total / (w_own.sum() + w_prefix)).to(q.dtype)
    return out
