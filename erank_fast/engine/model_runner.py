"""The model runner: the forward passes of a step over the K/V arena.

Prefix prefill computes each new query prefix once (causal within the prefix) and stores its
K/V; a step feeds every scheduled document's pending tokens (suffix prefill, decode, or both)
with shared-prefix attention, and returns the final hidden states of every fed token. Pure
decode steps (one token per document) replay CUDA graphs when they are on.
"""

from __future__ import annotations

import torch

from erank_fast.engine.attention import (
    PrefixPrefillAttention,
    SharedPrefixAttention,
    StepMeta,
    last_tokens,
)
from erank_fast.engine.decode_graphs import DecodeGraphs, graph_mode
from erank_fast.engine.kv_pool import KVPool
from erank_fast.engine.work import Doc, Group
from erank_fast.models.decoder import Decoder


class ModelRunner:
    def __init__(self, decoder: Decoder, impl: str, cuda_graphs: str,
                 int8_attention: bool = False):
        """impl: "auto" (Triton kernels on CUDA, PyTorch elsewhere), "torch" or "triton".
        cuda_graphs: "auto", "on", "off" or "padded" (``decode_graphs.graph_mode``).
        int8_attention: the steps' prefill attention in int8 (``SharedPrefixAttention``)."""
        self.decoder, self.impl, self.int8_attention = decoder, impl, int8_attention
        self.cuda_graphs = graph_mode(cuda_graphs, decoder, impl)
        self.graphs: DecodeGraphs | None = None
        self.scale = decoder.config.head_dim**-0.5

    @property
    def device(self) -> torch.device:
        return self.decoder.lm_head_weight.device

    def prefill_prefixes(self, groups: list[Group], pool: KVPool, max_batch_tokens: int) -> None:
        """Compute and store the K/V of each group's prefix, several prefixes per pass."""
        g0 = 0
        while g0 < len(groups):
            g1, tokens = g0 + 1, len(groups[g0].prefix)
            while g1 < len(groups) and tokens + len(groups[g1].prefix) <= max_batch_tokens:
                tokens += len(groups[g1].prefix)
                g1 += 1
            chunk = [g for g in groups[g0:g1] if g.prefix]
            if chunk:
                cu = [0]
                for g in chunk:
                    cu.append(cu[-1] + len(g.prefix))
                rows = self._tensor([g.kv_start + j for g in chunk for j in range(len(g.prefix))])
                attention = PrefixPrefillAttention(pool, rows, cu, self.scale)
                self.decoder(self._tensor([t for g in chunk for t in g.prefix]),
                             self._tensor([j for g in chunk for j in range(len(g.prefix))]),
                             attention)
            g0 = g1

    def step(self, docs: list[Doc], pool: KVPool, keep: list[int]) -> torch.Tensor:
        """Feed every document's pending tokens (documents of a group contiguous); returns the
        final hidden states [sum(keep), H] of each document's last keep[b] fed tokens, in
        order (the rows its readout or sampler reads)."""
        group_index: dict[int, int] = {}
        for d in docs:
            group_index.setdefault(id(d.group), len(group_index))
        prefixes = list({id(d.group): (d.group.kv_start, len(d.group.prefix)) for d in docs}.values())
        lens = [len(d.pending) for d in docs]
        ids = [t for d in docs for t in d.pending]
        positions = [len(d.group.prefix) + d.own_len + j for d, n in zip(docs, lens)
                     for j in range(n)]
        own_base, own_start = [d.kv_start for d in docs], [d.own_len for d in docs]
        groups = [group_index[id(d.group)] for d in docs]
        graphs = self._decode_graphs(pool) if max(lens) == 1 else None
        if graphs is not None and graphs.fits(len(docs)):
            return graphs.run(ids, positions, own_base, own_start, groups, prefixes)
        meta = StepMeta.build(lens, own_base, own_start, groups, prefixes, self.device)
        attention = SharedPrefixAttention(pool, meta, self.scale, self.impl,
                                          int8_attention=self.int8_attention)
        if keep == lens:
            return self.decoder(self._tensor(ids), self._tensor(positions), attention)
        ends = meta.q_cu_seqlens[1:].tolist()
        rows = self._tensor([e - k + j for e, k in zip(ends, keep) for j in range(k)])
        queries = SharedPrefixAttention(pool, meta, self.scale, self.impl,
                                        queries=last_tokens(meta, keep),
                                        int8_attention=self.int8_attention)
        return self.decoder(self._tensor(ids), self._tensor(positions), attention, rows=rows,
                            rows_attention=queries)

    def _decode_graphs(self, pool: KVPool) -> DecodeGraphs | None:
        """The decode-step graphs over the current arena (None when off)."""
        if self.cuda_graphs == "off":
            return None
        if self.graphs is None or self.graphs.pool is not pool:
            self.graphs = DecodeGraphs(self.decoder, pool, self.scale, self.impl,
                                       capture=self.cuda_graphs == "on")
        return self.graphs

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)
