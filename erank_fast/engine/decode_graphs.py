"""Decode steps replayed from CUDA graphs.

A pure decode step feeds exactly one token per document, so its work depends only on how many
documents and query groups it has: the decoder forward over a padded batch is captured once per
(batch bucket, group bucket, own-context bucket) and replayed, one graph launch instead of
several hundred kernel launches from Python. Every input lives in one static int64 buffer that
a step fills with a single host-to-device copy.

Padding: the padding documents join the last query group (so they add rows to tiles that read
that prefix anyway, not prefix reads), write and attend to the arena's scratch row, and their
outputs are dropped; padding groups own no rows and an empty prefix. The Triton launchers'
host-side bounds are fixed per graph: one token per document, the batch bucket as the largest
group, and the own-context bucket (which decides the split-K plan) as the longest own context.

``capture=False`` runs exactly the padded step a graph would replay, eagerly; it is how the
padding is tested on machines without CUDA.
"""

from __future__ import annotations

import torch

from erank_fast.config import check_cuda_graphs
from erank_fast.engine.attention import SharedPrefixAttention, StepMeta
from erank_fast.engine.kv_pool import KVPool
from erank_fast.models.decoder import Decoder
from erank_fast.ops.dispatch import next_power_of_2, use_triton
from erank_fast.ops.suffix_attention import SPLIT_MIN_KEYS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
                 448, 512)
_FIELDS = ("ids", "positions", "own_base", "own_start", "write_rows")


def graph_mode(mode: str, decoder: Decoder, impl: str) -> str:
    """The engine's setting: "on", "off" or "padded" ("auto": on when the model is on CUDA and
    the Triton kernels run, whose launches a graph can record)."""
    check_cuda_graphs(mode)
    capturable = decoder.lm_head_weight.is_cuda and use_triton(impl, decoder.lm_head_weight)
    if mode == "on" and not capturable:
        raise ValueError('cuda_graphs="on" needs the model on a CUDA device and the Triton '
                         'kernels (backend "auto" or "triton")')
    if mode == "auto":
        return "on" if capturable else "off"
    return mode


def batch_bucket(batch: int) -> int | None:
    """The smallest bucket holding ``batch`` documents, or None above the largest."""
    return next((b for b in BATCH_BUCKETS if b >= batch), None)


def own_bucket(max_own_len: int) -> int:
    """Own-context bound a graph is captured with: below SPLIT_MIN_KEYS every length shares
    the single-pass plan; above, the next power of two (the split-K plan covers it)."""
    return SPLIT_MIN_KEYS - 1 if max_own_len < SPLIT_MIN_KEYS else next_power_of_2(max_own_len)


class _PaddedStep:
    """Static inputs, attention metadata and (once captured) the graph of one bucket."""

    def __init__(self, decoder: Decoder, pool: KVPool, scale: float, impl: str, batch: int,
                 groups: int, own_len: int):
        device = decoder.lm_head_weight.device
        self.groups = groups
        self.buffer = torch.zeros(len(_FIELDS) * batch + 3 * groups + 1, dtype=torch.int64,
                                  device=device)
        views = torch.split(self.buffer, [batch] * len(_FIELDS) + [groups + 1, groups, groups])
        self.ids, self.positions, own_base, own_start, write_rows = views[:len(_FIELDS)]
        group_q_cu, prefix_start, prefix_len = views[len(_FIELDS):]
        meta = StepMeta(torch.arange(batch + 1, device=device), own_base, own_start, group_q_cu,
                        prefix_start, prefix_len, write_rows, max_q_tokens=1, max_own_len=own_len,
                        max_group_tokens=batch, docs=(), prefixes=())
        self.decoder = decoder
        self.attention = SharedPrefixAttention(pool, meta, scale, impl)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None

    def forward(self) -> torch.Tensor:
        return self.decoder(self.ids, self.positions, self.attention)


class DecodeGraphs:
    """Pure decode steps (one new token per document) of one engine over one K/V arena."""

    def __init__(self, decoder: Decoder, pool: KVPool, scale: float, impl: str, *, capture: bool):
        if capture and not decoder.lm_head_weight.is_cuda:
            raise RuntimeError("CUDA graphs need the model on a CUDA device")
        self.decoder, self.pool, self.scale, self.impl, self.capture = (
            decoder, pool, scale, impl, capture)
        self._steps: dict[tuple[int, int, int], _PaddedStep] = {}
        self._mempool = torch.cuda.graph_pool_handle() if capture else None

    @staticmethod
    def fits(batch: int) -> bool:
        return batch_bucket(batch) is not None

    @property
    def shapes(self) -> frozenset:
        """The padded step shapes built so far: (batch bucket, groups, own-context bound)."""
        return frozenset(self._steps)

    @property
    def captured(self) -> int:
        """Graphs captured so far."""
        return sum(s.graph is not None for s in self._steps.values())

    def run(self, ids: list[int], positions: list[int], own_base: list[int], own_start: list[int],
            groups: list[int], prefixes: list[tuple[int, int]]) -> torch.Tensor:
        """Final hidden states [B, hidden] of one decode step. Documents are in group order
        (``groups[b]``: 0..G-1, non-decreasing); ``own_start[b]``: own tokens before this step;
        ``prefixes[g]``: (first arena row, length) of group g's prefix."""
        n, g = len(ids), len(prefixes)
        batch = batch_bucket(n)
        if batch is None:
            raise ValueError(f"{n} documents exceed the largest decode bucket {BATCH_BUCKETS[-1]}")
        key = (batch, next_power_of_2(g), own_bucket(max(own_start) + 1))
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = _PaddedStep(self.decoder, self.pool, self.scale, self.impl,
                                                  *key)
        pad, scratch = batch - n, self.pool.scratch_row
        group_cu = [0] * (step.groups + 1)
        for group in groups:
            group_cu[group + 1] += 1
        group_cu[g] += pad  # padding documents join the last group
        for i in range(1, step.groups + 1):
            group_cu[i] += group_cu[i - 1]
        empty = [0] * (step.groups - g)
        host = (ids + [0] * pad + positions + [0] * pad + own_base + [scratch] * pad
                + own_start + [0] * pad
                + [b + s for b, s in zip(own_base, own_start)] + [scratch] * pad
                + group_cu + [p for p, _ in prefixes] + empty + [length for _, length in prefixes]
                + empty)
        step.buffer.copy_(torch.tensor(host, dtype=torch.int64), non_blocking=True)
        if not self.capture:
            return step.forward()[:n]
        if step.graph is None:
            self._capture(step)
        step.graph.replay()
        return step.output[:n]

    def _capture(self, step: _PaddedStep) -> None:
        # Run once outside the capture (Triton compiles for these shapes), then capture. Both
        # compute the current step; its K/V writes are idempotent, and the replay computes it
        # once more.
        device = self.decoder.lm_head_weight.device
        main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
        side.wait_stream(main)
        with torch.cuda.device(device):
            with torch.cuda.stream(side):
                step.forward()
            main.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._mempool):
                step.output = step.forward()
        step.graph = graph
