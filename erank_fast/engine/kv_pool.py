"""The K/V arena: one [tokens, Hkv, D] K and V tensor per layer, allocated from a memory budget,
holding each query's prefix once and each document's own context as contiguous row ranges."""

from __future__ import annotations

import torch

from erank_fast.models.decoder_config import DecoderConfig


class RangeAllocator:
    """First-fit allocation of contiguous row ranges; freed neighbours merge."""

    def __init__(self, size: int):
        self.size = size
        self.free: list[tuple[int, int]] = [(0, size)] if size else []  # (start, length), sorted

    def alloc(self, n: int) -> int | None:
        """First row of a free range of n rows, or None when none is large enough."""
        if n == 0:
            return 0
        for i, (start, length) in enumerate(self.free):
            if length >= n:
                if length == n:
                    del self.free[i]
                else:
                    self.free[i] = (start + n, length - n)
                return start
        return None

    def release(self, start: int, n: int) -> None:
        if n == 0:
            return
        i = 0
        while i < len(self.free) and self.free[i][0] < start:
            i += 1
        self.free.insert(i, (start, n))
        # Merge with the following and the preceding range where they touch.
        if i + 1 < len(self.free) and start + n == self.free[i + 1][0]:
            self.free[i] = (start, n + self.free.pop(i + 1)[1])
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == start:
            prev = self.free.pop(i - 1)
            self.free[i - 1] = (prev[0], prev[1] + self.free[i - 1][1])

    @property
    def in_use(self) -> int:
        return self.size - sum(n for _, n in self.free)

    def grow(self, size: int) -> None:
        """Extend to ``size`` rows; the new ones are free."""
        old, self.size = self.size, size
        self.release(old, size - old)


class KVPool:
    """K/V rows for every layer. Rows are zero until written, so they are always finite.

    ``tokens`` rows are allocated to prompts and generated tokens; one more row at the end,
    ``scratch_row``, is never allocated: padding documents of a padded decode step (CUDA
    graphs) write and read it."""

    SCRATCH_ROWS = 1

    def __init__(self, config: DecoderConfig, tokens: int, dtype: torch.dtype, device):
        shape = (tokens + self.SCRATCH_ROWS, config.num_kv_heads, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.ranges = RangeAllocator(tokens)
        self.scratch_row = tokens

    @property
    def tokens(self) -> int:
        return self.ranges.size

    def grow(self, tokens: int) -> None:
        """Room for ``tokens`` rows, every row kept at its index (documents in flight keep their
        K/V); the new rows are zero and free. One layer's tensors are replaced at a time, so
        the memory held at once is the old arena plus one layer's new K or V."""
        old = self.tokens
        if tokens <= old:
            return
        for cache in (self.k, self.v):
            for i, rows in enumerate(cache):
                bigger = rows.new_zeros((tokens + self.SCRATCH_ROWS, *rows.shape[1:]))
                bigger[:old].copy_(rows[:old])
                cache[i] = bigger
        self.ranges.grow(tokens)
        self.scratch_row = tokens

    @property
    def bytes(self) -> int:
        """Bytes of the K and V tensors (every layer, the scratch row included)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    @staticmethod
    def bytes_per_token(config: DecoderConfig, dtype: torch.dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize
