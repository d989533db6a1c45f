"""Each document's causal attention over its own K/V, merged with its shared-prefix part."""

from __future__ import annotations

import torch

from erank_fast.reference.attention_merge import merge_attention_ref

# Upper bound on the float32 score block of one chunk of documents (bytes).
_CHUNK_BYTES = 256 * 2**20


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
    Returns the merged output [N, Hq, D] in q's dtype.
    """
    n, hq, d = q.shape
    hkv = k_cache.shape[1]
    group = hq // hkv
    cu = q_cu_seqlens.tolist()
    lens = [cu[b + 1] - cu[b] for b in range(len(cu) - 1)]
    starts = own_start.tolist()
    own_out = torch.empty_like(q)
    own_lse = torch.empty((n, hq), dtype=torch.float32, device=q.device)
    b0 = 0
    while b0 < len(lens):
        # Chunk documents so the padded [docs, Hq, rows, keys] score block stays bounded.
        b1, rows, keys = b0, 0, 0
        while b1 < len(lens):
            r, kk = max(rows, lens[b1]), max(keys, starts[b1] + lens[b1])
            if b1 > b0 and (b1 - b0 + 1) * hq * r * kk * 4 > _CHUNK_BYTES:
                break
            rows, keys, b1 = r, kk, b1 + 1
        _own_chunk(q, k_cache, v_cache, own_base, lens, starts, cu, b0, b1, rows, keys,
                   group, scale, own_out, own_lse)
        b0 = b1
    out, _ = merge_attention_ref(own_out, own_lse, prefix_out, prefix_lse)
    return out


def _own_chunk(q, k_cache, v_cache, own_base, lens, starts, cu, b0, b1, rows, keys,
               group, scale, own_out, own_lse):
    hkv, d = k_cache.shape[1], k_cache.shape[2]
    nb = b1 - b0
    dev = q.device
    qp = q.new_zeros((nb, rows, hkv * group, d), dtype=torch.float32)
    for i, b in enumerate(range(b0, b1)):
        qp[i, : lens[b]] = q[cu[b] : cu[b + 1]].float()
    qp = qp.view(nb, rows, hkv, group, d).permute(0, 2, 3, 1, 4).reshape(nb, hkv, group * rows, d)
    # Arena rows of each document's keys; rows past the arena's end are clamped, then masked.
    index = (own_base[b0:b1, None] + torch.arange(keys, device=dev)[None]).clamp(max=k_cache.shape[0] - 1)
    kp = k_cache[index].float().permute(0, 2, 3, 1)  # [nb, Hkv, D, keys]
    vp = v_cache[index].float().permute(0, 2, 1, 3)  # [nb, Hkv, keys, D]
    scores = torch.matmul(qp, kp) * scale  # [nb, Hkv, group*rows, keys]
    row = torch.arange(rows, device=dev)
    start = torch.tensor(starts[b0:b1], device=dev)
    allowed = torch.arange(keys, device=dev)[None, None, :] <= (start[:, None, None] + row[None, :, None])
    allowed = allowed[:, None, None, :, :].expand(nb, 1, group, rows, keys).reshape(nb, 1, group * rows, keys)
    scores = scores.masked_fill(~allowed, float("-inf"))
    # Cache rows past a document's length hold stale or uninitialised values (maybe NaN):
    # zero them, since a zero attention weight times NaN would still be NaN.
    valid = torch.arange(keys, device=dev)[None, :] < (start + torch.tensor(lens[b0:b1], device=dev))[:, None]
    vp = vp.masked_fill(~valid[:, None, :, None], 0.0)
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse[..., None]), vp)  # [nb, Hkv, group*rows, D]
    out = out.view(nb, hkv, group, rows, d).permute(0, 3, 1, 2, 4).reshape(nb, rows, hkv * group, d)
    lse = lse.view(nb, hkv, group, rows).permute(0, 3, 1, 2).reshape(nb, rows, hkv * group)
    for i, b in enumerate(range(b0, b1)):
        own_out[cu[b] : cu[b + 1]] = out[i, : lens[b]].to(own_out.dtype)
        own_lse[cu[b] : cu[b + 1]] = lse[i, : lens[b]]
