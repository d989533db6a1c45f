"""GQA packing shared by the attention kernels: one tile holds BLOCK_M rows of (token, query
head) pairs that share one KV head, row r being token r // GROUP and head
kv_head · GROUP + r % GROUP, so a K/V block loaded once serves GROUP heads of many tokens."""

import triton
import triton.language as tl


@triton.jit
def _load_q_tile(q_ptr, q_start, n_tokens, pid_m, kv_head, stride_q_n, stride_q_h,
                 GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_M: tl.constexpr):
    """Rows pid_m · BLOCK_M ... of the packed [n_tokens · GROUP, HEAD_DIM] queries starting
    at token q_start. Returns (q tile, row-valid mask, local token index, token, head, d,
    d-valid mask); invalid rows load zeros."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_tokens * GROUP
    local = rows // GROUP
    token = q_start + local
    head = kv_head * GROUP + rows % GROUP
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = tl.load(q_ptr + token[:, None] * stride_q_n + head[:, None] * stride_q_h + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    return q, row_ok, local, token, head, d, d_ok
