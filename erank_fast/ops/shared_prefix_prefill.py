"""Shared-prefix attention for prefill steps on the PyTorch path (CPU), as one fused SDPA per
query group. On CUDA the engine runs the two Triton kernels (prefix part, own part merged by
LSE) instead; in decode steps the PyTorch prefix-once paths of those ops are faster and used.
Tested against the references of the two ops (tests/test_torch_ops.py)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def shared_prefix_prefill(q, k_cache, v_cache, prefixes: list[tuple[int, int]],
                              docs: list[tuple[int, int, int, int]], scale: float) -> torch.Tensor:
    """Prefill attention of many documents' new tokens: each attends to its query group's prefix
    (non-causal) and causally to its own K/V. Equal to prefix_attention + suffix_attention
    merged, but one fused SDPA per group over each document's [prefix; own] keys, which on CPU
    is much faster than materialising padded score blocks.

    q [N, Hq, D] packed by document; k_cache, v_cache [T, Hkv, D], the K/V arena (its rows must be
    finite, also those no document owns); prefixes[g] = (first arena row, length) of group g's
    prefix; docs[b] = (group, own_base, own_start, new tokens) in q's order, grouped by group.
    Returns [N, Hq, D]."""
    out = torch.empty_like(q)
    row, b0 = 0, 0
    while b0 < len(docs):
        g = docs[b0][0]
        b1 = b0
        while b1 < len(docs) and docs[b1][0] == g:
            b1 += 1
        rows = sum(n for *_, n in docs[b0:b1])
        p0, plen = prefixes[g]
        # Documents of similar length together, a few at a time: little padding per SDPA call.
        starts = {}
        r = row
        for b in range(b0, b1):
            starts[b] = r
            r += docs[b][3]
        by_length = sorted(range(b0, b1), key=lambda b: docs[b][3])
        for c in range(0, len(by_length), _DOCS_PER_CALL):
            chunk = by_length[c : c + _DOCS_PER_CALL]
            q_chunk = torch.cat([q[starts[b] : starts[b] + docs[b][3]] for b in chunk])
            o = _group_prefill(q_chunk, k_cache[p0 : p0 + plen], v_cache[p0 : p0 + plen],
                               k_cache, v_cache, [docs[b] for b in chunk], scale)
            r = 0
            for b in chunk:
                out[starts[b] : starts[b] + docs[b][3]] = o[r : r + docs[b][3]]
                r += docs[b][3]
        row, b0 = row + rows, b1
    return out


_DOCS_PER_CALL = 16


def _group_prefill(q, pk, pv, k_cache, v_cache, docs, scale):
    p = pk.shape[0]
    nb = len(docs)
    n_max = max(n for *_, n in docs)
    own_max = max(s + n for _, _, s, n in docs)
    hq, d = q.shape[1:]
    hkv = pk.shape[1]
    base = torch.tensor([b for _, b, _, _ in docs], device=q.device)
    index = (base[:, None] + torch.arange(own_max, device=q.device)[None]).clamp(
        max=k_cache.shape[0] - 1)
    keys = torch.cat([pk[None].expand(nb, -1, -1, -1), k_cache[index]], 1)
    values = torch.cat([pv[None].expand(nb, -1, -1, -1), v_cache[index]], 1)
    qp = q.new_zeros((nb, n_max, hq, d))
    i = torch.arange(n_max, device=q.device)
    j = torch.arange(own_max, device=q.device)
    starts = torch.tensor([s for _, _, s, _ in docs], device=q.device)
    lens = torch.tensor([n for *_, n in docs], device=q.device)
    row = 0
    for b, (*_, n) in enumerate(docs):
        qp[b, :n] = q[row : row + n]
        row += n
    # Own key j is visible to new token i when j <= own_start + i; padding rows see key 0 only.
    own_mask = j[None, None, :] <= (starts[:, None, None] + i[None, :, None])
    own_mask &= (i[None, :, None] < lens[:, None, None]) | (j[None, None, :] == 0)
    prefix_mask = (i[None, :, None] < lens[:, None, None]).expand(nb, n_max, p)
    mask = torch.cat([prefix_mask, own_mask], dim=2)[:, None]
    o = F.scaled_dot_product_attention(qp.transpose(1, 2), keys.transpose(1, 2),
                                       values.transpose(1, 2), attn_mask=mask, scale=scale,
                                       enable_gqa=hq != hkv)
    o = o.transpose(1, 2)
    return torch.cat([o[b, :n] for b, (*_, n) in enumerate(docs)])
