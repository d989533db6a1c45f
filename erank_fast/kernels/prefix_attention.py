"""Shared-prefix attention (Hydragen / cascade style): all new tokens of a query group against
that group's prefix K/V, non-causal, returning the partial output and its log-sum-exp.

    out[t, h] = Σ_j softmax_j(q[t, h] · k[j, h // G] · scale) v[j, h // G],   j over the prefix
    lse[t, h] = log Σ_j exp(q[t, h] · k[j, h // G] · scale)                     (natural log)

GQA packing (gqa.py): one tile holds BLOCK_M rows of (token, query head) pairs that
share one KV head, so a prefix K/V block is loaded once for GROUP heads × BLOCK_M / GROUP tokens
of many documents.
Group g's prefix is rows kv_start[g] .. kv_start[g] + kv_len[g] - 1 of the K/V arena.
Bytes: the prefix K/V is read once per tile instead of once per document. FLOPs: 4·D per
(row, key) pair.
"""

import triton
import triton.language as tl

from erank_fast.kernels.gqa import _load_q_tile


@triton.jit
def _prefix_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, q_cu_ptr, kv_start_ptr, kv_len_ptr,
    scale_log2,
    stride_q_n, stride_q_h, stride_k_n, stride_k_h, stride_v_n, stride_v_h,
    stride_out_n, stride_out_h, stride_lse_n,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    group = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_start = tl.load(q_cu_ptr + group)
    n_tokens = tl.load(q_cu_ptr + group + 1) - q_start
    rows_total = n_tokens * GROUP
    kv_start = tl.load(kv_start_ptr + group)
    kv_end = kv_start + tl.load(kv_len_ptr + group)
    q, row_ok, _, token, head, d, d_ok = _load_q_tile(
        q_ptr, q_start, n_tokens, pid_m, kv_head, stride_q_n, stride_q_h, GROUP, HEAD_DIM,
        BLOCK_D, BLOCK_M)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Tiles past this group's rows (the grid covers the largest group) skip the key loop.
    kv_stop = tl.where(pid_m * BLOCK_M < rows_total, kv_end, kv_start)
    for n0 in range(kv_start, kv_stop, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < kv_end
        k = tl.load(k_ptr + n[:, None] * stride_k_n + kv_head * stride_k_h + d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + n[:, None] * stride_v_n + kv_head * stride_v_h + d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # An empty prefix leaves l_i = 0: output 0 and lse -inf, the identity of the merge.
    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, (m_i + tl.log2(tl.where(has_keys, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    tl.store(out_ptr + token[:, None] * stride_out_n + head[:, None] * stride_out_h + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + token * stride_lse_n + head, lse, mask=row_ok)
