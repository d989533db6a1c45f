"""Attention for the decoder's packed batches: built once per batch, called once per layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erank_fast.engine.kv_cache import OwnKV, PrefixKV
from erank_fast.ops._dispatch import use_triton
from erank_fast.ops.causal_attention import causal_attention
from erank_fast.ops.prefix_attention import prefix_attention
from erank_fast.ops.suffix_attention import suffix_attention
from erank_fast.reference.shared_prefix_prefill import shared_prefix_prefill_ref


@dataclass(frozen=True)
class StepMeta:
    """Where a step's packed tokens come from. Documents are ordered by query group.

    q_cu_seqlens [B+1]: doc b's new tokens are rows q_cu_seqlens[b]:[b+1].
    slots [B], own_start [B]: doc b's own-KV slot and own tokens before this step.
    group_q_cu [G+1]: rows of each query group of the call (empty for absent groups).
    write_slot, write_pos [N]: where each new token's K/V goes in the own cache.
    max_q_tokens, max_own_len, max_group_tokens: host-side maxima for kernel grids.
    """

    q_cu_seqlens: torch.Tensor
    slots: torch.Tensor
    own_start: torch.Tensor
    group_q_cu: torch.Tensor
    write_slot: torch.Tensor
    write_pos: torch.Tensor
    max_q_tokens: int
    max_own_len: int
    max_group_tokens: int
    docs: tuple[tuple[int, int, int, int], ...]  # (group, slot, own_start, new tokens)

    @classmethod
    def build(cls, lens: list[int], slots: list[int], own_start: list[int], groups: list[int],
              num_groups: int, device) -> "StepMeta":
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)
        group_rows = [0] * num_groups
        for g, n in zip(groups, lens):
            group_rows[g] += n
        group_cu = [0]
        for n in group_rows:
            group_cu.append(group_cu[-1] + n)
        write_slot = [s for s, n in zip(slots, lens) for _ in range(n)]
        write_pos = [p for s, n in zip(own_start, lens) for p in range(s, s + n)]

        def t(x):
            return torch.tensor(x, dtype=torch.int64, device=device)

        return cls(t(cu), t(slots), t(own_start), t(group_cu), t(write_slot), t(write_pos),
                   max_q_tokens=max(lens), max_own_len=max(s + n for s, n in zip(own_start, lens)),
                   max_group_tokens=max(group_rows),
                   docs=tuple(zip(groups, slots, own_start, lens)))


class SharedPrefixAttention:
    """New tokens of many documents: prefix part (shared per query) + own causal part, merged."""

    def __init__(self, prefix: PrefixKV, own: OwnKV, meta: StepMeta, scale: float, impl: str):
        self.prefix, self.own, self.meta, self.scale, self.impl = prefix, own, meta, scale, impl

    def __call__(self, layer: int, q, k, v):
        m = self.meta
        self.own.k[layer][m.write_slot, m.write_pos] = k
        self.own.v[layer][m.write_slot, m.write_pos] = v
        if m.max_q_tokens > 1 and not use_triton(self.impl, q):
            return shared_prefix_prefill_ref(q, self.prefix.k[layer], self.prefix.v[layer],
                                             self.prefix.cu, self.own.k[layer], self.own.v[layer],
                                             m.docs, self.scale)
        out_p, lse_p = prefix_attention(q, self.prefix.k[layer], self.prefix.v[layer],
                                        m.group_q_cu, self.prefix.cu_tensor, self.scale,
                                        impl=self.impl, max_q_tokens=m.max_group_tokens)
        return suffix_attention(q, self.own.k[layer], self.own.v[layer], m.slots, m.own_start,
                                m.q_cu_seqlens, out_p, lse_p, self.scale, impl=self.impl,
                                max_q_tokens=m.max_q_tokens, max_own_len=m.max_own_len)


class PrefixPrefillAttention:
    """Query prefixes computed once: causal within each prefix; K/V stored into ``PrefixKV``."""

    def __init__(self, prefix: PrefixKV, rows: slice, cu_seqlens: list[int], scale: float):
        self.prefix, self.rows, self.cu, self.scale = prefix, rows, cu_seqlens, scale

    def __call__(self, layer: int, q, k, v):
        self.prefix.k[layer][self.rows] = k
        self.prefix.v[layer][self.rows] = v
        return causal_attention(q, k, v, self.cu, self.scale)
