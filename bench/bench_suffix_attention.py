"""Decode attention, one new token per document: erank_fast (shared prefix read once per step
for all documents + own context, split-K when long) against per-sequence SDPA decoding over each
document's own copy of [prefix; own] (flash decoding when the backend has it)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from erank_fast.ops.prefix_attention import prefix_attention
from erank_fast.ops.suffix_attention import suffix_attention
from hardware import DEVICE, bench, roofline_info

if DEVICE.type == "cuda":
    DTYPE, HQ, HKV, D, PREFIX, OWN = torch.bfloat16, 32, 8, 128, 2048, 300
    BATCHES = [64, 256]
else:
    DTYPE, HQ, HKV, D, PREFIX, OWN = torch.float32, 8, 2, 64, 512, 100
    BATCHES = [16, 64]


def make_inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE, DTYPE)

    return r(batch, HQ, D), r(PREFIX, HKV, D), r(PREFIX, HKV, D), r(batch, OWN, HKV, D), \
        r(batch, OWN, HKV, D)


def erank_fast_decode(q, k_pre, v_pre, k_own, v_own, impl="auto"):
    batch = q.shape[0]
    scale = D**-0.5
    group_cu = torch.tensor([0, batch], device=DEVICE, dtype=torch.int32)
    kv_cu = torch.tensor([0, PREFIX], device=DEVICE, dtype=torch.int32)
    q_cu = torch.arange(batch + 1, device=DEVICE, dtype=torch.int32)
    own_start = torch.full((batch,), OWN - 1, dtype=torch.int64, device=DEVICE)
    slots = torch.arange(batch, device=DEVICE)

    def run():
        out_p, lse_p = prefix_attention(q, k_pre, v_pre, group_cu, kv_cu, scale, impl=impl,
                                        max_q_tokens=batch)
        return suffix_attention(q, k_own, v_own, slots, own_start, q_cu, out_p, lse_p, scale,
                                impl=impl, max_q_tokens=1, max_own_len=OWN)

    return run


def per_sequence_sdpa(q, k_pre, v_pre, k_own, v_own):
    batch = q.shape[0]
    group = HQ // HKV
    k = torch.cat([k_pre[None].expand(batch, -1, -1, -1), k_own], 1).repeat_interleave(group, 2)
    v = torch.cat([v_pre[None].expand(batch, -1, -1, -1), v_own], 1).repeat_interleave(group, 2)
    k, v = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    qd = q[:, :, None, :]

    def run():
        return F.scaled_dot_product_attention(qd, k, v)

    return run


def cost(batch: int):
    itemsize = torch.finfo(DTYPE).bits // 8
    flops = 4 * D * HQ * batch * (PREFIX + OWN)
    # The floor: prefix K/V once, every document's own K/V, queries and outputs.
    bytes_moved = itemsize * (2 * PREFIX * HKV * D + 2 * batch * OWN * HKV * D + 2 * batch * HQ * D)
    return flops, bytes_moved


@pytest.mark.parametrize("provider", ["erank_fast", "sdpa_per_sequence", "reference"])
@pytest.mark.parametrize("batch", BATCHES)
def test_decode_attention(benchmark, batch, provider):
    inputs = make_inputs(batch)
    fn = {"erank_fast": lambda: erank_fast_decode(*inputs),
          "reference": lambda: erank_fast_decode(*inputs, impl="torch"),
          "sdpa_per_sequence": lambda: per_sequence_sdpa(*inputs)}[provider]()
    benchmark.group = f"decode-attention B={batch} P={PREFIX} own={OWN}"
    seconds = bench(benchmark, fn)
    flops, bytes_moved = cost(batch)
    benchmark.extra_info.update(roofline_info(seconds, flops, bytes_moved))
    benchmark.extra_info.update(provider=provider, batch=batch, prefix=PREFIX, own=OWN,
                                dtype=str(DTYPE))
