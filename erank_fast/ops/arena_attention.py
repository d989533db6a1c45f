"""Shared-prefix attention of a step's new tokens over the K/V arena on CPU, through erank_fast's
C++ kernel (``ops/csrc/shared_prefix_attention.cpp``): every new token of every document
against its query's prefix rows and, causally, its own rows, read in place; no padding, no mask
tensor, no per-document Python. float32 scores, softmax and accumulation (AVX512-BF16 dot
products for bfloat16 inputs; on a CPU without AVX-512, a portable float32 kernel). Documents
with one new token (decode) take the kernel's own path, keys rather than rows in the vector
lanes. bfloat16 prefill steps on a CPU with AMX run ``shared_prefix_attention_brgemm.cpp``
instead: the same attention with its two products on AMX tiles (raw tile instructions, or
oneDNN's brgemm micro-kernels where the process may not use them directly; a step's one-token
documents, decoding beside the prefill, still on the vector kernel's decode path). Equal to
prefix_attention + suffix_attention merged by LSE (tests/test_torch_ops.py);
None where the kernel does not apply, and the caller runs the PyTorch paths instead.

``int8_attention`` (the engine's ``quantize="int8"`` on a float32 model, where the CPU has
AVX512-VNNI): the prefill tiles' two products in int8 (``ops/csrc/int8_attention.h``): keys and
values less their document's mean, int8 with a scale per key, query rows int8 with a scale per
row, P per block of 32 keys uint8 with a scale per row; the softmax in float32. Decode rows
stay float32. The engine then keeps its K/V arena in bfloat16 (half the bytes a decode step
reads; ``arena_write_`` rounds to nearest even), which the kernel reads under float32 queries.
On erank-smol, DL19 nDCG@10 0.5730 against the int8 layers' 0.5782 with float32 attention
(float32: 0.5755).

On a CPU without AVX-512 (``bfloat16_arena_available``) the engine's ``quantize="int8"`` keeps
the bfloat16 arena too, with float32 attention: decode steps widen the keys and values as they
read them (the bytes they are bound by, halved), prefill tiles read a float32 copy of their
document's keys and values made once per thread."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from erank_fast.ops.cpu_extension import cpu_kernels

HEAD_DIMS = (64, 128)


@dataclass(frozen=True)
class ArenaRows:
    """Per document of a step (int64 tensors): q_cu [B+1] (its new tokens are rows
    q_cu[b]:q_cu[b+1] of q), own_base [B] and own_start [B] (its first own arena row, and own
    tokens before this step), prefix_start [B] and prefix_len [B] (its query's prefix rows)."""

    q_cu: torch.Tensor
    own_base: torch.Tensor
    own_start: torch.Tensor
    prefix_start: torch.Tensor
    prefix_len: torch.Tensor
    new_tokens: int  # q_cu[-1]: the step's new tokens (q may have padding rows after them)

    @classmethod
    def of_step(cls, docs, prefixes, device="cpu") -> "ArenaRows":
        """docs: (group, own_base, own_start, new tokens) per document; prefixes: (first row,
        length) per group (``StepMeta.docs`` / ``.prefixes``)."""
        cu = [0]
        for *_, n in docs:
            cu.append(cu[-1] + n)

        def t(values):
            return torch.tensor(values, dtype=torch.int64, device=device)

        return cls(t(cu), t([b for _, b, _, _ in docs]), t([s for _, _, s, _ in docs]),
                   t([prefixes[g][0] for g, *_ in docs]), t([prefixes[g][1] for g, *_ in docs]),
                   cu[-1])


# Steps with at least this many new tokens per document (prefill) take the brgemm kernel where
# it runs: its tiles are 32 rows, so a decode step's 1-token documents would waste most of them.
BRGEMM_MIN_TOKENS_PER_DOC = 4


@functools.cache
def brgemm_available() -> bool:
    """Whether oneDNN multiplies bfloat16 tiles here (AMX): then bfloat16 prefill attention runs
    as matrix tiles (``shared_prefix_attention_brgemm``), ~3.5x faster than the AVX512-BF16
    vector kernel on a 2-core Xeon with AMX at 18 documents x 150-340 tokens after an 80-token
    prefix (``bench/bench_cpu_prefill_attention.py``)."""
    kernels = cpu_kernels()
    return kernels is not None and kernels.shared_prefix_attention_brgemm_available()


@functools.cache
def int8_attention_available(dtype: torch.dtype) -> bool:
    """Whether the kernel runs its prefill attention in int8 for this dtype here (float32 on a
    CPU with AVX512-VNNI: ``vpdpbusd`` does 4x an FMA's multiply-adds)."""
    kernels = cpu_kernels()
    return (dtype == torch.float32 and kernels is not None
            and kernels.shared_prefix_attention_int8_available())


@functools.cache
def bfloat16_arena_available(dtype: torch.dtype) -> bool:
    """Whether the kernel reads a bfloat16 arena under queries of this dtype here without int8
    attention (float32, on a CPU without AVX-512: the portable kernels)."""
    kernels = cpu_kernels()
    return (dtype == torch.float32 and kernels is not None
            and kernels.shared_prefix_attention_bf16_arena())


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, rows: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor) -> None:
    """k_cache[rows] = k and v_cache[rows] = v (cast to the arena's dtype: float32 rows into
    int8 attention's bfloat16 arena): on CPU one C++ pass of row copies
    (``ops/csrc/arena_write.cpp``; advanced indexing's index_put copies ~4x slower there),
    elsewhere, or without the kernels, advanced indexing."""
    kernels = cpu_kernels() if k_cache.device.type == "cpu" else None
    if (kernels is not None and k.dim() == 3 and k.dtype == v.dtype
            and (k.dtype == k_cache.dtype
                 or (k.dtype == torch.float32 and k_cache.dtype == torch.bfloat16))
            and k.shape == v.shape and k_cache.shape == v_cache.shape
            and k_cache.is_contiguous() and v_cache.is_contiguous()
            and k.stride()[1:] == v.stride()[1:] == (k.shape[2], 1)):
        kernels.arena_write_(k_cache, v_cache, rows, k, v)
        return
    k_cache[rows] = k.to(k_cache.dtype)
    v_cache[rows] = v.to(v_cache.dtype)


def kernel_applies(q: torch.Tensor, k_cache: torch.Tensor, int8_attention: bool = False) -> bool:
    """Whether the C++ kernel runs for these tensors on this machine (float32 queries over a
    bfloat16 arena too: with int8 attention, or where ``bfloat16_arena_available``)."""
    mixed = (q.dtype == torch.float32 and k_cache.dtype == torch.bfloat16
             and (int8_attention and int8_attention_available(q.dtype)
                  or bfloat16_arena_available(q.dtype)))
    if (q.device.type != "cpu" or q.shape[-1] not in HEAD_DIMS
            or (k_cache.dtype != q.dtype and not mixed) or k_cache.stride(-1) != 1):
        return False
    kernels = cpu_kernels()
    dtype = str(q.dtype).removeprefix("torch.")
    return kernels is not None and kernels.shared_prefix_attention_supports(dtype)


def takes_brgemm(dtype: torch.dtype, rows: ArenaRows) -> bool:
    """Whether a step of these rows runs the brgemm prefill kernel (bfloat16, prefill-sized
    documents, AMX here) rather than the vector kernel."""
    return (dtype == torch.bfloat16
            and rows.new_tokens >= BRGEMM_MIN_TOKENS_PER_DOC * len(rows.own_base)
            and brgemm_available())


def arena_attention_cpu(q, k_cache, v_cache, rows: ArenaRows, scale: float,
                        int8_attention: bool = False):
    """q [N, Hq, D] packed by document; k_cache, v_cache [T, Hkv, D] (this step's K/V already
    written) -> out [N, Hq, D] in q's dtype, or None where the kernel does not apply.
    int8_attention: the prefill attention in int8 (only where ``int8_attention_available``)."""
    if not kernel_applies(q, k_cache, int8_attention) or v_cache.stride() != k_cache.stride():
        return None
    q = q if q.stride(-1) == 1 else q.contiguous()
    if takes_brgemm(q.dtype, rows):
        return cpu_kernels().shared_prefix_attention_brgemm(
            q, k_cache, v_cache, rows.q_cu, rows.own_base, rows.own_start, rows.prefix_start,
            rows.prefix_len, scale)
    return cpu_kernels().shared_prefix_attention(q, k_cache, v_cache, rows.q_cu, rows.own_base,
                                                 rows.own_start, rows.prefix_start,
                                                 rows.prefix_len, scale, int8_attention)
