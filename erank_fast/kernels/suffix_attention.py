"""Each document's causal attention over its own K/V (suffix + generated tokens), varlen, merged
in the epilogue with the shared-prefix part by log-sum-exp:

    own:    o_own[i, h], lse_own[i, h] over keys j <= own_start + i of the document, whose own
            K/V are rows own_base .. own_base + own_len - 1 of the K/V arena
    merged: out = (e^{lse_own} o_own + e^{lse_pre} o_pre) / (e^{lse_own} + e^{lse_pre})   (fp32)

Rows are GQA-packed as in prefix_attention. In decode (one new token per document) a long own
context is split over SPLITS programs (split-K): ``_suffix_attention_split_kernel`` writes
partial (output, lse) per split and ``_merge_splits_kernel`` combines them with the prefix.
Bytes: each document's own K/V read once; FLOPs: 4·D per (row, visible key) pair.
"""

import triton
import triton.language as tl

from erank_fast.kernels.gqa import _load_q_tile


@triton.jit
def _own_block(q, k_ptr, v_ptr, kv_base, kv_head, lo, hi, limit, d, d_ok, m_i, l_i, acc,
               scale_log2, stride_k_n, stride_k_h, stride_v_n, stride_v_h,
               BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Online softmax over own keys lo..hi-1 (arena rows kv_base + j); row r sees j <= limit[r]."""
    for n0 in range(lo, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < hi
        k = tl.load(k_ptr + (kv_base + n[:, None]) * stride_k_n + kv_head * stride_k_h + d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        s = tl.where(n_ok[None, :] & (n[None, :] <= limit[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # Rows that have seen no key yet keep m = -inf; use 0 as their reference to avoid NaN.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_ref[:, None])
        alpha = tl.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + (kv_base + n[:, None]) * stride_v_n + kv_head * stride_v_h + d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _suffix_attention_kernel(
    q_ptr, k_ptr, v_ptr, own_base_ptr, own_start_ptr, q_cu_ptr, pre_out_ptr, pre_lse_ptr, out_ptr,
    scale_log2,
    stride_q_n, stride_q_h, stride_k_n, stride_k_h, stride_v_n, stride_v_h,
    stride_pre_n, stride_pre_h, stride_pre_lse_n, stride_out_n, stride_out_h,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    doc = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_start = tl.load(q_cu_ptr + doc)
    n_new = tl.load(q_cu_ptr + doc + 1) - q_start
    own_start = tl.load(own_start_ptr + doc)
    own_base = tl.load(own_base_ptr + doc).to(tl.int64)

    q, row_ok, local, token, head, d, d_ok = _load_q_tile(
        q_ptr, q_start, n_new, pid_m, kv_head, stride_q_n, stride_q_h, GROUP, HEAD_DIM, BLOCK_D,
        BLOCK_M)
    mask_q = row_ok[:, None] & d_ok[None, :]

    limit = own_start + local  # causal: new token i sees own keys 0 .. own_start + i
    last_local = tl.minimum((pid_m + 1) * BLOCK_M - 1, n_new * GROUP - 1) // GROUP
    hi = tl.where(pid_m * BLOCK_M < n_new * GROUP, own_start + last_local + 1, 0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    m_i, l_i, acc = _own_block(q, k_ptr, v_ptr, own_base, kv_head, 0, hi, limit, d, d_ok,
                               m_i, l_i, acc, scale_log2, stride_k_n, stride_k_h, stride_v_n,
                               stride_v_h, BLOCK_N, PRECISION)

    # Epilogue: merge with the prefix part (natural-log LSE, fp32).
    lse_own = (m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0))) * 0.6931471805599453
    o_own = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    lse_pre = tl.load(pre_lse_ptr + token * stride_pre_lse_n + head, mask=row_ok,
                      other=float("-inf"))
    o_pre = tl.load(pre_out_ptr + token[:, None] * stride_pre_n + head[:, None] * stride_pre_h
                    + d[None, :], mask=mask_q, other=0.0).to(tl.float32)
    m = tl.maximum(lse_own, lse_pre)
    m = tl.where(m == float("-inf"), 0.0, m)  # padding rows of the tile: no keys on either side
    w_own = tl.exp(lse_own - m)
    w_pre = tl.exp(lse_pre - m)
    total = tl.where(row_ok, w_own + w_pre, 1.0)
    out = (o_own * w_own[:, None] + o_pre * w_pre[:, None]) / total[:, None]
    tl.store(out_ptr + token[:, None] * stride_out_n + head[:, None] * stride_out_h + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask_q)


@triton.jit
def _suffix_attention_split_kernel(
    q_ptr, k_ptr, v_ptr, own_base_ptr, own_start_ptr, part_out_ptr, part_lse_ptr,
    scale_log2, keys_per_split,
    stride_q_n, stride_q_h, stride_k_n, stride_k_h, stride_v_n, stride_v_h,
    stride_po_s, stride_po_n, stride_po_h, stride_pl_s, stride_pl_n,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    """Decode (one new token per document, token index = document index): keys of split s are
    s·keys_per_split .. (s+1)·keys_per_split - 1, clipped to the document's own length."""
    doc = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    own_len = tl.load(own_start_ptr + doc) + 1
    own_base = tl.load(own_base_ptr + doc).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < GROUP
    head = kv_head * GROUP + rows
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    mask_q = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + doc * stride_q_n + head[:, None] * stride_q_h + d[None, :], mask=mask_q,
                other=0.0)
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, own_len)
    limit = tl.zeros([BLOCK_M], tl.int32) + own_len - 1
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    m_i, l_i, acc = _own_block(q, k_ptr, v_ptr, own_base, kv_head, lo, hi, limit, d, d_ok,
                               m_i, l_i, acc, scale_log2, stride_k_n, stride_k_h, stride_v_n,
                               stride_v_h, BLOCK_N, PRECISION)
    has = l_i > 0
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    tl.store(part_out_ptr + split * stride_po_s + doc * stride_po_n + head[:, None] * stride_po_h
             + d[None, :], out, mask=mask_q)
    tl.store(part_lse_ptr + split * stride_pl_s + doc * stride_pl_n + head, lse, mask=row_ok)


@triton.jit
def _merge_splits_kernel(
    part_out_ptr, part_lse_ptr, pre_out_ptr, pre_lse_ptr, out_ptr,
    stride_po_s, stride_po_n, stride_po_h, stride_pl_s, stride_pl_n,
    stride_pre_n, stride_pre_h, stride_pre_lse_n, stride_out_n, stride_out_h,
    SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One (token, head): merge the SPLITS partial results and the prefix part by their LSE."""
    token = tl.program_id(0)
    head = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    m = tl.load(pre_lse_ptr + token * stride_pre_lse_n + head)
    for s in range(SPLITS):
        m = tl.maximum(m, tl.load(part_lse_ptr + s * stride_pl_s + token * stride_pl_n + head))
    w = tl.exp(tl.load(pre_lse_ptr + token * stride_pre_lse_n + head) - m)
    total = w
    acc = w * tl.load(pre_out_ptr + token * stride_pre_n + head * stride_pre_h + d, mask=d_ok,
                      other=0.0).to(tl.float32)
    for s in range(SPLITS):
        w = tl.exp(tl.load(part_lse_ptr + s * stride_pl_s + token * stride_pl_n + head) - m)
        total += w
        acc += w * tl.load(part_out_ptr + s * stride_po_s + token * stride_po_n
                           + head * stride_po_h + d, mask=d_ok, other=0.0)
    tl.store(out_ptr + token * stride_out_n + head * stride_out_h + d,
             (acc / total).to(out_ptr.dtype.element_ty), mask=d_ok)
