"""KV storage: each query's prefix stored once, and each document's own context in a slot."""

from __future__ import annotations

import torch

from erank_fast.models.config import DecoderConfig


class PrefixKV:
    """The prefixes of all query groups of a call, packed: group g owns rows cu[g]:cu[g+1] of
    each layer's [P_total, Hkv, D] K and V."""

    def __init__(self, config: DecoderConfig, prefix_lens: list[int], dtype, device):
        self.cu = [0]
        for n in prefix_lens:
            self.cu.append(self.cu[-1] + n)
        self.cu_tensor = torch.tensor(self.cu, dtype=torch.int32, device=device)
        shape = (self.cu[-1], config.num_kv_heads, config.head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]

    def length(self, group: int) -> int:
        return self.cu[group + 1] - self.cu[group]


class OwnKV:
    """Per-document K/V (suffix + generated tokens): layer tensors [slots, capacity, Hkv, D].

    A document keeps its slot until its batch ends, so finishing documents cost no copies;
    capacity grows by doubling when a document's context outgrows it. Unwritten rows are zero
    (finite), so attention paths that mask them may still multiply them."""

    def __init__(self, config: DecoderConfig, slots: int, capacity: int, dtype, device):
        self.config, self.dtype, self.device = config, dtype, device
        shape = (slots, capacity, config.num_kv_heads, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1]

    def ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        new_capacity = max(needed, 2 * self.capacity)
        for cache in (self.k, self.v):
            for i, t in enumerate(cache):
                grown = t.new_zeros((t.shape[0], new_capacity, *t.shape[2:]))
                grown[:, : t.shape[1]] = t
                cache[i] = grown
