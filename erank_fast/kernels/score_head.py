"""Vocabulary-streaming score head: per row of final hidden states, what greedy decoding and
the score read need from the logits, without writing a [rows, vocab] tensor.

    logits[b, v] = hidden[b] · weight[v]     (rounded to the model dtype, as the lm_head would)
    max[b], argmax[b] (ties → smallest id), lse[b] = log Σ_v exp(logits[b, v])

Each program owns BLOCK_B rows and one slice of the vocabulary (split), streams it in BLOCK_V
tiles (an online max / sum-exp), and writes one partial (max, argmax, sum-exp) per row and
split; the launcher combines the few splits. Bytes: the lm_head is read once per row tile
(V·H·2 bytes for bf16); FLOPs: 2·B·V·H.
"""

import triton
import triton.language as tl


@triton.jit
def _score_head_kernel(
    hidden_ptr, weight_ptr, part_max_ptr, part_arg_ptr, part_sum_ptr,
    rows, vocab, hidden_size, vocab_per_split,
    stride_h_b, stride_w_v, stride_part_s,
    BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < rows
    v_lo = split * vocab_per_split
    v_hi = tl.minimum(v_lo + vocab_per_split, vocab)

    best = tl.full([BLOCK_B], float("-inf"), tl.float32)
    best_id = tl.zeros([BLOCK_B], tl.int32)
    sum_exp = tl.zeros([BLOCK_B], tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        v_ok = v < v_hi
        acc = tl.zeros([BLOCK_B, BLOCK_V], tl.float32)
        for h0 in range(0, hidden_size, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            h_ok = h < hidden_size
            x = tl.load(hidden_ptr + b[:, None].to(tl.int64) * stride_h_b + h[None, :],
                        mask=b_ok[:, None] & h_ok[None, :], other=0.0)
            w = tl.load(weight_ptr + v[:, None].to(tl.int64) * stride_w_v + h[None, :],
                        mask=v_ok[:, None] & h_ok[None, :], other=0.0)
            acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
        logits = acc.to(hidden_ptr.dtype.element_ty).to(tl.float32)
        logits = tl.where(v_ok[None, :], logits, float("-inf"))
        tile_max = tl.max(logits, 1)
        tile_arg = tl.argmax(logits, 1, tie_break_left=True) + v0
        new_best = tl.maximum(best, tile_max)
        sum_exp = sum_exp * tl.exp(best - new_best) + tl.sum(tl.exp(logits - new_best[:, None]), 1)
        best_id = tl.where(tile_max > best, tile_arg, best_id)  # strict: earlier ids keep ties
        best = new_best
    tl.store(part_max_ptr + split * stride_part_s + b, best, mask=b_ok)
    tl.store(part_arg_ptr + split * stride_part_s + b, best_id, mask=b_ok)
    tl.store(part_sum_ptr + split * stride_part_s + b, sum_exp, mask=b_ok)
