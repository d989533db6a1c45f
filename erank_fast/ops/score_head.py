"""The vocabulary-streaming score head: erank_fast/kernels/score_head.py on CUDA (or the Triton
interpreter), one C++ pass over the lm_head in small-batch blocks for bfloat16 on a CPU with
oneDNN's bfloat16 brgemm (ops/csrc/vocab_head.cpp), a PyTorch path streaming vocabulary chunks
elsewhere; the oracle of all three is erank_fast.reference.score_head."""

from __future__ import annotations

import os

import torch

from erank_fast.ops.cpu_extension import cpu_kernels
from erank_fast.ops.dispatch import cdiv, dot_precision, next_power_of_2, use_triton

BLOCK_B, BLOCK_V, BLOCK_H = 16, 128, 64
NUM_WARPS, NUM_STAGES = 4, 3
# Vocabulary splits per row tile: enough programs to fill a GPU at small batch.
TARGET_PROGRAMS = 528
MAX_TOKEN_IDS = 16
# The Triton interpreter (CPU) runs every program and loop iteration in Python: there, large
# vocabularies stream in at most this many tiles per row tile (same results, fewer steps).
INTERPRETER_TILES = 64
# The PyTorch path's vocabulary chunk: a [rows, 8192] float32 block at a time.
VOCAB_CHUNK = 8192


def _block_v(vocab: int, on_gpu: bool) -> int:
    return BLOCK_V if on_gpu else max(BLOCK_V, next_power_of_2(cdiv(vocab, INTERPRETER_TILES)))


@torch.library.custom_op("erank_fast::score_head", mutates_args=())
def _score_head_triton(hidden: torch.Tensor, weight: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from erank_fast.kernels.score_head import _score_head_kernel

    rows, h = hidden.shape
    vocab = weight.shape[0]
    row_tiles = cdiv(rows, BLOCK_B)
    block_v = _block_v(vocab, hidden.is_cuda)
    splits = max(1, min(cdiv(TARGET_PROGRAMS, row_tiles), cdiv(vocab, block_v)))
    per_split = cdiv(cdiv(vocab, splits), block_v) * block_v
    splits = cdiv(vocab, per_split)
    part_max = torch.empty((splits, rows), dtype=torch.float32, device=hidden.device)
    part_arg = torch.empty((splits, rows), dtype=torch.int32, device=hidden.device)
    part_sum = torch.empty((splits, rows), dtype=torch.float32, device=hidden.device)
    _score_head_kernel[(row_tiles, splits)](
        hidden, weight, part_max, part_arg, part_sum, rows, vocab, h, per_split,
        hidden.stride(0), weight.stride(0), part_max.stride(0),
        BLOCK_B=BLOCK_B, BLOCK_V=block_v, BLOCK_H=BLOCK_H, PRECISION=dot_precision(hidden.dtype),
        num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    best, split = part_max.max(dim=0)  # first maximal split: the smallest id among ties
    best_id = part_arg.gather(0, split[None]).squeeze(0).long()
    lse = best + torch.log((part_sum * torch.exp(part_max - best[None])).sum(0))
    return best, best_id, lse


@_score_head_triton.register_fake
def _(hidden, weight):
    rows = hidden.shape[0]
    f = hidden.new_empty((rows,), dtype=torch.float32)
    return f, hidden.new_empty((rows,), dtype=torch.int64), f.clone()


def pack_vocab_chunks(weight: torch.Tensor, vocab_chunk: int = VOCAB_CHUNK
                      ) -> list[torch.Tensor] | None:
    """The lm_head's vocabulary chunks packed for oneDNN (``ops.packed_linear``), for the
    PyTorch path's chunk loop; None where packing is not available for this weight."""
    from erank_fast.ops.packed_linear import pack_weight, packing_available

    if not packing_available(weight):
        return None
    return [pack_weight(weight[v0 : v0 + vocab_chunk].contiguous())
            for v0 in range(0, weight.shape[0], vocab_chunk)]


def pack_vocab_blocks(weight: torch.Tensor) -> torch.Tensor | None:
    """The lm_head in the small-batch blocks of ``ops/csrc/small_linear.cpp``, for the CPU's
    vocabulary-streaming head (``ops/csrc/vocab_head.cpp``): a bfloat16 weight on a CPU with
    oneDNN's bfloat16 brgemm (AMX, AVX512-BF16); None elsewhere, or with
    ``ERANK_FAST_SMALL_ROWS=0`` (then the chunked PyTorch path runs)."""
    from erank_fast.ops.packed_linear import small_rows_apply

    if os.environ.get("ERANK_FAST_SMALL_ROWS", "1") == "0" or not small_rows_apply(weight):
        return None
    return cpu_kernels().small_linear_pack(weight.detach())


def _blocks_apply(hidden: torch.Tensor, blocks: torch.Tensor | None) -> bool:
    return (blocks is not None and hidden.dtype == torch.bfloat16 and hidden.device.type == "cpu"
            and hidden.stride(-1) == 1)


def score_head(hidden: torch.Tensor, weight: torch.Tensor, token_ids: torch.Tensor, *,
               impl: str = "auto", packed_chunks: list[torch.Tensor] | None = None,
               blocks: torch.Tensor | None = None):
    """hidden [B, H] (final hidden states), weight [V, H] (lm_head), token_ids [K <= 16] ->
    (max logit [B] f32, argmax [B] int64 (ties to the smallest id), lse [B] f32,
    logits of token_ids [B, K] f32). Never materialises a [B, V] tensor. ``packed_chunks``
    (``pack_vocab_chunks(weight)``): the PyTorch path multiplies by these instead. ``blocks``
    (``pack_vocab_blocks(weight)``): bfloat16 rows on CPU stream these in one C++ pass, every
    logit a float32 sum of the bfloat16 products (those of a float32 copy of the weight, summed
    in another order)."""
    _check_shapes(hidden, weight)
    if token_ids.numel() > MAX_TOKEN_IDS:
        raise ValueError(f"at most {MAX_TOKEN_IDS} token ids, got {token_ids.numel()}")
    if _blocks_apply(hidden, blocks):
        best, best_id, lse = cpu_kernels().vocab_head(hidden, blocks, weight.shape[0], True)
        return best, best_id, lse, _token_logits(hidden, weight, token_ids)
    if not use_triton(impl, hidden):
        return score_head_torch(hidden, weight, token_ids, packed_chunks=packed_chunks)
    if hidden.shape[0] == 0:
        empty = hidden.new_empty((0,), dtype=torch.float32)
        return empty, empty.long(), empty, hidden.new_empty((0, token_ids.numel()), dtype=torch.float32)
    hidden = hidden.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    best, best_id, lse = _score_head_triton(hidden, weight)
    gathered = _token_logits(hidden, weight, token_ids)
    return best, best_id, lse, gathered


def greedy_tokens(hidden: torch.Tensor, weight: torch.Tensor, *, impl: str = "auto",
                  packed_chunks: list[torch.Tensor] | None = None,
                  vocab_chunk: int = VOCAB_CHUNK, blocks: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """hidden [B, H], weight [V, H] -> argmax [B] int64 of hidden @ weight.T (ties to the
    smallest id): the score head's argmax without its log-sum-exp and digit logits, which a
    reasoning step's greedy token does not use (on CPU, 100 rows × SmolLM2's 49152-token
    vocabulary: ~40 % of the score head's time). The PyTorch path compares each chunk's logits
    in the model's dtype: the same maxima as their float32 copies, so the same ids.
    ``packed_chunks``: as ``score_head``'s (cut at ``vocab_chunk``); ``blocks``: as
    ``score_head``'s (the maximum of float32 sums, no rounding to the model's dtype)."""
    _check_shapes(hidden, weight)
    if _blocks_apply(hidden, blocks):
        return cpu_kernels().vocab_head(hidden, blocks, weight.shape[0], False)[1]
    if use_triton(impl, hidden):
        if hidden.shape[0] == 0:
            return hidden.new_empty((0,), dtype=torch.int64)
        weight = weight if weight.stride(-1) == 1 else weight.contiguous()
        return _score_head_triton(hidden.contiguous(), weight)[1]
    from erank_fast.ops.packed_linear import packed_matmul

    best = best_id = None
    for i, v0 in enumerate(range(0, weight.shape[0], vocab_chunk)):
        logits = (packed_matmul(hidden, packed_chunks[i]) if packed_chunks is not None
                  else hidden @ weight[v0 : v0 + vocab_chunk].T)
        chunk_max, chunk_arg = logits.max(dim=-1)  # the first maximum, as argmax
        if best is None:
            best, best_id = chunk_max, chunk_arg
            continue
        take = chunk_max > best  # strict: earlier chunks keep ties (smallest id wins)
        best_id = torch.where(take, chunk_arg + v0, best_id)
        best = torch.maximum(best, chunk_max)
    return best_id


def _check_shapes(hidden: torch.Tensor, weight: torch.Tensor) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} does not match weight {tuple(weight.shape)}")


def _token_logits(hidden, weight, token_ids):
    """[B, K] float32 logits of K <= 16 tokens: a tiny matmul, in float32 so that low-precision
    weights do not round the logits the score is read from."""
    return hidden.float() @ weight[token_ids].float().T


def score_head_torch(hidden, weight, token_ids, vocab_chunk: int = VOCAB_CHUNK,
                      packed_chunks=None):
    """The PyTorch path: logits chunk by chunk with an online log-sum-exp and argmax."""
    from erank_fast.ops.packed_linear import packed_matmul

    b = hidden.shape[0]
    v = weight.shape[0]
    dev = hidden.device
    best = torch.full((b,), float("-inf"), dtype=torch.float32, device=dev)
    best_id = torch.zeros((b,), dtype=torch.int64, device=dev)
    sum_exp = torch.zeros((b,), dtype=torch.float32, device=dev)
    gathered = _token_logits(hidden, weight, token_ids)
    for v0 in range(0, v, vocab_chunk):
        if packed_chunks is not None:
            logits = packed_matmul(hidden, packed_chunks[v0 // vocab_chunk]).float()
        else:
            logits = (hidden @ weight[v0 : v0 + vocab_chunk].T).float()
        # The first maximum, as torch.argmax over the vocabulary; max with indices is ~3x
        # faster than argmax on CPU (a 100 x 8192 chunk: 0.19 against 0.58 ms).
        chunk_max, chunk_arg = logits.max(dim=-1)
        new_best = torch.maximum(best, chunk_max)
        # Online log-sum-exp: rescale the running sum to the new maximum.
        sum_exp = sum_exp * torch.exp(best - new_best) + torch.exp(logits - new_best[:, None]).sum(-1)
        take = chunk_max > best  # strict: earlier chunks keep ties (smallest id wins)
        best_id = torch.where(take, chunk_arg + v0, best_id)
        best = new_best
    return best, best_id, best + torch.log(sum_exp), gathered
