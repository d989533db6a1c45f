"""Attention for the decoder's packed batches: metadata built once per step, called per layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from erank_fast.engine.kv_pool import KVPool
from erank_fast.ops.arena_attention import (
    ArenaRows,
    arena_attention_cpu,
    kernel_applies,
    takes_brgemm,
    write_kv,
)
from erank_fast.ops.causal_attention import causal_attention
from erank_fast.ops.decode_attention import DecodeRows, decode_attention_cpu
from erank_fast.ops.dispatch import use_triton
from erank_fast.ops.prefix_attention import prefix_attention
from erank_fast.ops.shared_prefix_prefill import shared_prefix_prefill
from erank_fast.ops.suffix_attention import suffix_attention


@dataclass(frozen=True)
class StepMeta:
    """Where a step's packed tokens come from and where their K/V go. Documents are ordered so
    that those of one query group are contiguous; groups are numbered 0..G-1 within the step.

    q_cu_seqlens [B+1]: doc b's new tokens are rows q_cu_seqlens[b]:[b+1].
    own_base [B], own_start [B]: doc b's first own arena row, and own tokens before this step.
    group_q_cu [G+1]: rows of each group; prefix_start [G], prefix_len [G]: its prefix rows.
    write_rows [N]: the arena row of each new token's K/V.
    max_q_tokens, max_own_len, max_group_tokens: host-side maxima for kernel grids.
    docs: (group, own_base, own_start, new tokens) per document; prefixes: (start, len) per group.
    """

    q_cu_seqlens: torch.Tensor
    own_base: torch.Tensor
    own_start: torch.Tensor
    group_q_cu: torch.Tensor
    prefix_start: torch.Tensor
    prefix_len: torch.Tensor
    write_rows: torch.Tensor
    max_q_tokens: int
    max_own_len: int
    max_group_tokens: int
    docs: tuple[tuple[int, int, int, int], ...]
    prefixes: tuple[tuple[int, int], ...]

    @classmethod
    def build(cls, lens: list[int], own_base: list[int], own_start: list[int], groups: list[int],
              prefixes: list[tuple[int, int]], device) -> "StepMeta":
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)
        group_rows = [0] * len(prefixes)
        for g, n in zip(groups, lens):
            group_rows[g] += n
        group_cu = [0]
        for n in group_rows:
            group_cu.append(group_cu[-1] + n)
        write_rows = [b + s + j for b, s, n in zip(own_base, own_start, lens) for j in range(n)]

        def t(x):
            return torch.tensor(x, dtype=torch.int64, device=device)

        return cls(t(cu), t(own_base), t(own_start), t(group_cu), t([p for p, _ in prefixes]),
                   t([n for _, n in prefixes]), t(write_rows),
                   max_q_tokens=max(lens),
                   max_own_len=max(s + n for s, n in zip(own_start, lens)),
                   max_group_tokens=max(group_rows),
                   docs=tuple(zip(groups, own_base, own_start, lens)), prefixes=tuple(prefixes))


class SharedPrefixAttention:
    """New tokens of many documents: prefix part (shared per query) + own causal part.

    ``queries``: where the queries come from when they are not every new token's (each
    document's last few tokens, ``last_tokens``); K and V are still every new
    token's, written where ``meta`` says. ``int8_attention``: the CPU kernel's prefill attention
    in int8 (``ops.arena_attention``; the engine sets it for ``quantize="int8"`` where it
    runs)."""

    def __init__(self, pool: KVPool, meta: StepMeta, scale: float, impl: str,
                 queries: StepMeta | None = None, int8_attention: bool = False):
        self.pool, self.scale, self.impl = pool, scale, impl
        self.int8_attention = int8_attention
        self.write_rows, self.meta = meta.write_rows, queries or meta
        self.rows: ArenaRows | None = None  # built by the first layer that needs them

    def __call__(self, layer: int, q, k, v, real_queries: int | None = None):
        m = self.meta
        k_arena, v_arena = self.pool.k[layer], self.pool.v[layer]
        write_kv(k_arena, v_arena, self.write_rows, k, v)
        if not use_triton(self.impl, q) and m.docs:
            # CPU: the C++ kernel reads the arena in place, any number of tokens per document
            # (rows of q past the documents' get zeros: no copy for padding).
            out = arena_attention_cpu(q, k_arena, v_arena, self._arena_rows(q.device),
                                      self.scale, self.int8_attention)
            if out is not None:
                return out
            if m.max_q_tokens == 1:  # bf16 without AVX512-BF16: the decode kernel
                out = decode_attention_cpu(q[:real_queries], k_arena, v_arena, DecodeRows.of_step(
                    m.docs, m.prefixes, q.device), self.scale)
                if out is not None:
                    return padded(out, q.shape[0])
        return padded(self._paths(q[:real_queries], k_arena, v_arena), q.shape[0])

    def kernel_args(self, layer: int, q: torch.Tensor) -> tuple | None:
        """What this layer's C++ kernel path reads, for ``decoder_layer_`` (one call per layer):
        (K arena, V arena, the new tokens' arena rows, q_cu, own_base, own_start, prefix_start,
        prefix_len, scale, whether the brgemm kernel runs, whether attention is int8); None where
        the step takes another path. q: a tensor like the layer's queries (device, dtype, head
        dim)."""
        m = self.meta
        k_arena, v_arena = self.pool.k[layer], self.pool.v[layer]
        if (self.write_rows is not m.write_rows or not m.docs or use_triton(self.impl, q)
                or not kernel_applies(q, k_arena, self.int8_attention)
                or v_arena.stride() != k_arena.stride()
                or not k_arena.is_contiguous() or not v_arena.is_contiguous()):
            return None
        r = self._arena_rows(q.device)
        brgemm = takes_brgemm(q.dtype, r)
        return (k_arena, v_arena, self.write_rows, r.q_cu, r.own_base, r.own_start,
                r.prefix_start, r.prefix_len, self.scale, brgemm,
                self.int8_attention and not brgemm)

    def _arena_rows(self, device) -> ArenaRows:
        """The C++ kernels' per-document rows, built by the first layer that needs them."""
        if self.rows is None:
            self.rows = ArenaRows.of_step(self.meta.docs, self.meta.prefixes, device)
        return self.rows

    def _paths(self, q, k_arena, v_arena):
        """The PyTorch and Triton paths (their K/V written)."""
        m = self.meta
        if m.max_q_tokens > 1 and not use_triton(self.impl, q):
            # PyTorch path, prefill: one fused SDPA per group beats materialised score blocks.
            return shared_prefix_prefill(q, k_arena, v_arena, list(m.prefixes), list(m.docs),
                                             self.scale)
        out_p, lse_p = prefix_attention(q, k_arena, v_arena, m.group_q_cu, m.prefix_start,
                                        m.prefix_len, self.scale, impl=self.impl,
                                        max_q_tokens=m.max_group_tokens)
        return suffix_attention(q, k_arena, v_arena, m.own_base, m.own_start, m.q_cu_seqlens,
                                out_p, lse_p, self.scale, impl=self.impl,
                                max_q_tokens=m.max_q_tokens, max_own_len=m.max_own_len)


def last_tokens(meta: StepMeta, keep: list[int]) -> StepMeta:
    """The same documents with only their last keep[b] new tokens as queries: each sees what
    it saw among all the new tokens (own_start moves past the tokens dropped before it)."""
    lens = [n for *_, n in meta.docs]
    return StepMeta.build(keep, [b for _, b, _, _ in meta.docs],
                          [s + n - k for (_, _, s, n), k in zip(meta.docs, keep)],
                          [g for g, *_ in meta.docs], list(meta.prefixes),
                          meta.write_rows.device) if keep != lens else meta


class PrefixPrefillAttention:
    """Query prefixes computed once: causal within each prefix; K/V written to arena rows."""

    def __init__(self, pool: KVPool, rows: torch.Tensor, cu_seqlens: list[int], scale: float):
        self.pool, self.rows, self.cu, self.scale = pool, rows, cu_seqlens, scale

    def __call__(self, layer: int, q, k, v, real_queries: int | None = None):
        write_kv(self.pool.k[layer], self.pool.v[layer], self.rows, k, v)
        return padded(causal_attention(q[:real_queries], k, v, self.cu, self.scale), q.shape[0])


def padded(out: torch.Tensor, rows: int) -> torch.Tensor:
    """out [n, ...] with zero rows appended up to ``rows`` (padding queries' outputs)."""
    return out if out.shape[0] == rows else F.pad(out, (0, 0, 0, 0, 0, rows - out.shape[0]))
