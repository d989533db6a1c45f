"""Shared-prefix attention for the prefill of many documents' suffixes: erank_fast (prefix part
read once per tile of documents + own causal part, merged) against per-document SDPA over each
document's concatenated [prefix; suffix] K/V (what a generic engine with prefix caching does),
and against erank_fast's PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from erank_fast.ops.prefix_attention import prefix_attention
from erank_fast.ops.suffix_attention import suffix_attention
from hardware import DEVICE, bench, roofline_info

if DEVICE.type == "cuda":
    DTYPE, HQ, HKV, D, DOCS, S = torch.bfloat16, 32, 8, 128, 100, 256
    PREFIXES = [64, 512, 1024, 2048]
else:
    DTYPE, HQ, HKV, D, DOCS, S = torch.float32, 8, 2, 64, 16, 64
    PREFIXES = [64, 512]


def make_inputs(prefix: int, docs: int = DOCS, s: int = S, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE, DTYPE)

    k_pre, v_pre = r(prefix, HKV, D), r(prefix, HKV, D)
    k_own, v_own = r(docs, s, HKV, D), r(docs, s, HKV, D)
    q = r(docs * s, HQ, D)
    return q, k_pre, v_pre, k_own, v_own


def erank_fast_attention(q, k_pre, v_pre, k_own, v_own, impl="auto"):
    docs, s = k_own.shape[:2]
    scale = D**-0.5
    group_cu = torch.tensor([0, docs * s], device=DEVICE, dtype=torch.int32)
    kv_cu = torch.tensor([0, k_pre.shape[0]], device=DEVICE, dtype=torch.int32)
    q_cu = torch.arange(0, docs * s + 1, s, device=DEVICE, dtype=torch.int32)
    own_start = torch.zeros(docs, dtype=torch.int64, device=DEVICE)
    slots = torch.arange(docs, device=DEVICE)

    def run():
        out_p, lse_p = prefix_attention(q, k_pre, v_pre, group_cu, kv_cu, scale, impl=impl,
                                        max_q_tokens=docs * s)
        return suffix_attention(q, k_own, v_own, slots, own_start, q_cu, out_p, lse_p, scale,
                                impl=impl, max_q_tokens=s, max_own_len=s)

    return run


def per_document_sdpa(q, k_pre, v_pre, k_own, v_own):
    """Each document's K/V is its own copy of [prefix; suffix]; causal, bottom-right aligned."""
    from torch.nn.attention.bias import causal_lower_right

    docs, s = k_own.shape[:2]
    p = k_pre.shape[0]
    group = HQ // HKV
    k = torch.cat([k_pre[None].expand(docs, -1, -1, -1), k_own], 1).repeat_interleave(group, 2)
    v = torch.cat([v_pre[None].expand(docs, -1, -1, -1), v_own], 1).repeat_interleave(group, 2)
    k, v = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    qd = q.view(docs, s, HQ, D).transpose(1, 2).contiguous()
    mask = causal_lower_right(s, p + s)

    def run():
        return F.scaled_dot_product_attention(qd, k, v, attn_mask=mask)

    return run


def cost(prefix: int, docs: int = DOCS, s: int = S):
    pairs = docs * s * prefix + docs * s * (s + 1) / 2
    flops = 4 * D * HQ * pairs
    itemsize = torch.finfo(DTYPE).bits // 8
    bytes_moved = itemsize * (2 * docs * s * HQ * D + 2 * prefix * HKV * D + 2 * docs * s * HKV * D)
    return flops, bytes_moved


PROVIDERS = ["erank_fast", "sdpa_per_document", "reference"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefix_attention_prefill(benchmark, prefix, provider):
    inputs = make_inputs(prefix)
    if provider == "erank_fast":
        fn = erank_fast_attention(*inputs)
    elif provider == "reference":
        if DEVICE.type == "cuda" and prefix > 512:
            pytest.skip("the reference is only timed at small prefixes on GPU")
        fn = erank_fast_attention(*inputs, impl="torch")
    else:
        fn = per_document_sdpa(*inputs)
    benchmark.group = f"prefix-prefill P={prefix}"
    seconds = bench(benchmark, fn)
    flops, bytes_moved = cost(prefix)
    benchmark.extra_info.update(roofline_info(seconds, flops, bytes_moved))
    benchmark.extra_info.update(provider=provider, prefix=prefix, docs=DOCS, suffix=S,
                                dtype=str(DTYPE), heads=f"{HQ}/{HKV}x{D}")
