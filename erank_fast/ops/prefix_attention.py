"""Shared-prefix attention: erank_fast/kernels/prefix_attention.py on CUDA (or the Triton
interpreter), a PyTorch path elsewhere; the oracle of both is erank_fast.reference.prefix_attention."""

from __future__ import annotations

import torch

from erank_fast.ops.dispatch import (
    LOG2E,
    block_d,
    cdiv,
    dot_precision,
    max_segment,
    use_triton,
)

BLOCK_M, BLOCK_N = 64, 64
NUM_WARPS, NUM_STAGES = 4, 3


@torch.library.custom_op("erank_fast::prefix_attention", mutates_args=())
def _prefix_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             q_cu_seqlens: torch.Tensor, kv_starts: torch.Tensor,
                             kv_lens: torch.Tensor, max_q_tokens: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    from erank_fast.kernels.prefix_attention import _prefix_attention_kernel

    n, hq, d = q.shape
    hkv = k.shape[1]
    out = torch.empty_like(q)
    lse = torch.empty((n, hq), dtype=torch.float32, device=q.device)
    groups = q_cu_seqlens.numel() - 1
    if n == 0 or groups == 0:
        return out, lse
    grid = (cdiv(max(max_q_tokens, 1) * (hq // hkv), BLOCK_M), groups, hkv)
    _prefix_attention_kernel[grid](
        q, k, v, out, lse, q_cu_seqlens, kv_starts, kv_lens, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), lse.stride(0),
        GROUP=hq // hkv, HEAD_DIM=d, BLOCK_D=block_d(d), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        PRECISION=dot_precision(q.dtype), num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return out, lse


@_prefix_attention_triton.register_fake
def _(q, k, v, q_cu_seqlens, kv_starts, kv_lens, max_q_tokens, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


def prefix_attention(q, k, v, q_cu_seqlens, kv_starts, kv_lens, scale: float, *,
                     impl: str = "auto", max_q_tokens: int | None = None):
    """Non-causal attention of each query group's new tokens over that group's prefix.

    q [N, Hq, D]: group g owns rows q_cu_seqlens[g]:[g+1] ([G+1], int). k, v [T, Hkv, D]: the
    K/V arena; group g's prefix is rows kv_starts[g] .. kv_starts[g] + kv_lens[g] - 1 ([G] each).
    max_q_tokens: the largest group's row count (computed if omitted). Returns (out [N, Hq, D]
    in q's dtype, lse [N, Hq] float32); an empty prefix gives out 0 and lse -inf."""
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"expected q [N, Hq, D] and k, v [P, Hkv, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1] or q.shape[2] != k.shape[2]:
        raise ValueError(f"incompatible heads or head_dim: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if not q_cu_seqlens.numel() - 1 == kv_starts.numel() == kv_lens.numel():
        raise ValueError("q_cu_seqlens [G+1], kv_starts [G] and kv_lens [G] must describe the same groups")
    if not use_triton(impl, q):
        return _prefix_attention_torch(q, k, v, q_cu_seqlens, kv_starts, kv_lens, scale)
    if max_q_tokens is None:
        max_q_tokens = max_segment(q_cu_seqlens)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return _prefix_attention_triton(q, k, v, q_cu_seqlens, kv_starts, kv_lens, max_q_tokens, scale)


def _prefix_attention_torch(q, k, v, q_cu_seqlens, kv_starts, kv_lens, scale):
    """The PyTorch path: per group, the query heads of one KV head packed into one block."""
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
