"""Shared-prefix attention for prefill steps on the PyTorch path (CPU). float32: one fused
SDPA per chunk of a query group's documents. bfloat16/float16: per document, the query heads of
each KV head against its [prefix; own] keys as two matmuls around a float32 softmax, the
arithmetic of transformers' own ("eager") attention in these dtypes; on a 2-core AMD EPYC
(AVX512-BF16) it ran 1.9× faster than the fused CPU kernel, which reaches ~55 GFLOP/s there.
On CUDA the engine runs the two Triton kernels (prefix part, own part merged by LSE) instead.
Tested against the references of the two ops (tests/test_torch_ops.py)."""

from __future__ import annotations

import functools

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
    if q.dtype in (torch.bfloat16, torch.float16) and q.device.type == "cpu":
        return _per_document_prefill(q, k_cache, v_cache, prefixes, docs, scale)
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


def _per_document_prefill(q, k_cache, v_cache, prefixes, docs, scale):
    """One document at a time: scores [Hkv, G·n, keys] = Q K^T in q's dtype, a float32 softmax
    with the document's mask, then P V (the GQA query heads of a KV head stacked as rows)."""
    out = torch.empty_like(q)
    hq, d = q.shape[1:]
    hkv = k_cache.shape[1]
    group = hq // hkv
    row = 0
    for g, base, start, n in docs:
        p0, plen = prefixes[g]
        qd = q[row : row + n].view(n, hkv, group, d).permute(1, 2, 0, 3).reshape(hkv, group * n, d)
        own = slice(base, base + start + n)
        keys = torch.cat([k_cache[p0 : p0 + plen], k_cache[own]]).permute(1, 2, 0)
        values = torch.cat([v_cache[p0 : p0 + plen], v_cache[own]]).transpose(0, 1)
        scores = torch.matmul(qd, keys).float().mul_(scale)
        scores += _mask(n, plen, start, group, q.device)
        weights = torch.softmax(scores, dim=-1).to(q.dtype)
        o = torch.matmul(weights, values)  # [Hkv, G·n, D]
        out[row : row + n] = o.view(hkv, group, n, d).permute(2, 0, 1, 3).reshape(n, hq, d)
        row += n
    return out


@functools.lru_cache(maxsize=1024)
def _mask(n: int, prefix: int, start: int, group: int, device) -> torch.Tensor:
    """Additive mask [G·n, prefix + start + n]: new token i sees the prefix and own keys
    j <= start + i."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(start + n, device=device)[None, :]
    own = torch.zeros(n, start + n, device=device).masked_fill_(j > start + i, float("-inf"))
    return torch.cat([torch.zeros(n, prefix, device=device), own], 1).repeat(group, 1)
