"""Own-context attention merged with the prefix part: erank_fast/kernels/suffix_attention.py
on CUDA (or the Triton interpreter), a PyTorch path elsewhere; the oracle of both is
erank_fast.reference.suffix_attention."""

from __future__ import annotations

import torch

from erank_fast.ops.attention_merge import merge_attention
from erank_fast.ops.dispatch import (
    LOG2E,
    block_d,
    cdiv,
    dot_precision,
    max_segment,
    next_power_of_2,
    use_triton,
)

BLOCK_N = 64
NUM_WARPS, NUM_STAGES = 4, 3
# Split-K decode when a step has one token per document, long own contexts, and too few
# (document, KV head) programs to fill the GPU.
SPLIT_MIN_KEYS = 512
SPLIT_TARGET_PROGRAMS = 512
# Upper bound on the float32 score block of one chunk of documents (bytes).
_CHUNK_BYTES = 256 * 2**20


@torch.library.custom_op("erank_fast::suffix_attention", mutates_args=())
def _suffix_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                             own_base: torch.Tensor, own_start: torch.Tensor,
                             q_cu_seqlens: torch.Tensor, prefix_out: torch.Tensor,
                             prefix_lse: torch.Tensor, max_q_tokens: int, max_own_len: int,
                             scale: float) -> torch.Tensor:
    from erank_fast.kernels import suffix_attention as kern

    n, hq, d = q.shape
    hkv = k_cache.shape[1]
    group = hq // hkv
    docs = own_base.numel()
    out = torch.empty_like(q)
    if n == 0:
        return out
    common = dict(HEAD_DIM=d, BLOCK_D=block_d(d), PRECISION=dot_precision(q.dtype))
    splits = 1
    if max_q_tokens == 1 and n == docs and max_own_len >= SPLIT_MIN_KEYS:
        splits = min(cdiv(SPLIT_TARGET_PROGRAMS, docs * hkv), cdiv(max_own_len, BLOCK_N))
    if splits <= 1:
        block_m = min(64, max(16, next_power_of_2(max_q_tokens * group)))
        grid = (cdiv(max_q_tokens * group, block_m), docs, hkv)
        kern._suffix_attention_kernel[grid](
            q, k_cache, v_cache, own_base, own_start, q_cu_seqlens, prefix_out, prefix_lse, out,
            scale * LOG2E, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
            v_cache.stride(0), v_cache.stride(1), prefix_out.stride(0),
            prefix_out.stride(1), prefix_lse.stride(0), out.stride(0), out.stride(1),
            GROUP=group, BLOCK_M=block_m, BLOCK_N=BLOCK_N, num_warps=NUM_WARPS,
            num_stages=NUM_STAGES, **common)
        return out
    keys_per_split = cdiv(cdiv(max_own_len, splits), BLOCK_N) * BLOCK_N
    part_out = torch.empty((splits, n, hq, d), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((splits, n, hq), dtype=torch.float32, device=q.device)
    kern._suffix_attention_split_kernel[(docs, hkv, splits)](
        q, k_cache, v_cache, own_base, own_start, part_out, part_lse, scale * LOG2E, keys_per_split,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), part_out.stride(0), part_out.stride(1),
        part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        GROUP=group, BLOCK_M=max(16, next_power_of_2(group)), BLOCK_N=BLOCK_N,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES, **common)
    kern._merge_splits_kernel[(n, hq)](
        part_out, part_lse, prefix_out, prefix_lse, out, part_out.stride(0), part_out.stride(1),
        part_out.stride(2), part_lse.stride(0), part_lse.stride(1), prefix_out.stride(0),
        prefix_out.stride(1), prefix_lse.stride(0), out.stride(0), out.stride(1),
        SPLITS=splits, HEAD_DIM=d, BLOCK_D=block_d(d))
    return out


@_suffix_attention_triton.register_fake
def _(q, k_cache, v_cache, own_base, own_start, q_cu_seqlens, prefix_out, prefix_lse, max_q_tokens,
      max_own_len, scale):
    return torch.empty_like(q)


def suffix_attention(q, k_cache, v_cache, own_base, own_start, q_cu_seqlens, prefix_out, prefix_lse,
                     scale: float, *, impl: str = "auto", max_q_tokens: int | None = None,
                     max_own_len: int | None = None):
    """Causal attention of each document's new tokens over its own K/V, merged with the prefix
    part. Shapes as in ``erank_fast.reference.suffix_attention``; max_q_tokens (most new tokens of a document)
    and max_own_len (longest own context after this step) are computed if omitted."""
    if q.dim() != 3 or k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(f"expected q [N, Hq, D] and caches [T, Hkv, D]; got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    if q.shape[1] % k_cache.shape[1] or q.shape[2] != k_cache.shape[2]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}")
    if prefix_out.shape != q.shape or prefix_lse.shape != q.shape[:2]:
        raise ValueError("prefix_out / prefix_lse do not match q")
    if not use_triton(impl, q):
        return _suffix_attention_torch(q, k_cache, v_cache, own_base, own_start, q_cu_seqlens,
                                       prefix_out, prefix_lse, scale, max_q_tokens, max_own_len)
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in their last dimension")
    if max_q_tokens is None:
        max_q_tokens = max_segment(q_cu_seqlens)
    if max_own_len is None:
        lens = q_cu_seqlens[1:] - q_cu_seqlens[:-1]
        max_own_len = int((own_start + lens).max().item()) if lens.numel() else 0
    q = q if q.stride(-1) == 1 else q.contiguous()
    return _suffix_attention_triton(q, k_cache, v_cache, own_base, own_start, q_cu_seqlens,
                                    prefix_out.contiguous(), prefix_lse.contiguous(),
                                    max_q_tokens, max_own_len, scale)


def _suffix_attention_torch(q, k_cache, v_cache, own_base, own_start, q_cu_seqlens, prefix_out,
                            prefix_lse, scale, max_q_tokens=None, max_own_len=None):
    """The PyTorch path: a pure decode step (one new token per document) as one batched
    gather and two batched matmuls; otherwise documents in chunks, each one padded, masked
    score block."""
    n, hq, d = q.shape
    if max_q_tokens is None:
        max_q_tokens = max_segment(q_cu_seqlens)
    if max_q_tokens == 1 and n == own_base.numel():  # every document feeds exactly one token
        keys = max_own_len if max_own_len is not None else int(own_start.max().item()) + 1
        own_out, own_lse = _own_decode(q, k_cache, v_cache, own_base, own_start, keys, scale)
        return merge_attention(own_out, own_lse, prefix_out, prefix_lse)[0]
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
    out, _ = merge_attention(own_out, own_lse, prefix_out, prefix_lse)
    return out


def _own_decode(q, k_cache, v_cache, own_base, own_start, keys: int, scale):
    """Own-context attention of one new token per document, all documents at once: document b's
    token (own position own_start[b]) attends to its arena rows own_base[b] .. + own_start[b].
    Scores and softmax in float32; the weights meet V in V's dtype (as the fused CPU kernel
    does). Returns (out [B, Hq, D] in q's dtype, lse [B, Hq] float32)."""
    b, hq, d = q.shape
    hkv = k_cache.shape[1]
    group = hq // hkv
    dev = q.device
    pos = torch.arange(keys, device=dev)
    index = (own_base[:, None] + pos[None]).clamp_(max=k_cache.shape[0] - 1).reshape(-1)
    k = k_cache.index_select(0, index).view(b, keys, hkv, d)
    v = v_cache.index_select(0, index).view(b, keys, hkv, d)
    qg = q.view(b, hkv, group, d).float()
    scores = torch.matmul(qg, k.float().permute(0, 2, 3, 1)).mul_(scale)  # [B, Hkv, G, keys]
    hidden = pos[None, :] > own_start[:, None]  # later rows: padding or other documents'
    scores.masked_fill_(hidden[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    weights = scores.sub_(lse[..., None]).exp_().to(v.dtype)
    # Rows past a document's context may hold anything (another document's values, NaN in rows
    # nobody owns): weight 0 times NaN is NaN, so they are zeroed in the gathered copy.
    v.masked_fill_(hidden[:, :, None, None], 0.0)
    out = torch.matmul(weights, v.permute(0, 2, 1, 3))  # [B, Hkv, G, D]
    return out.reshape(b, hq, d).to(q.dtype), lse.reshape(b, hq)


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
