"""Prefill attention of many documents' suffixes under one shared prefix: erank_fast's prefix
part (the prefix K/V read once per tile of documents) + own causal part merged by LSE, as Triton
kernels (CUDA) and as its PyTorch path, against per-document SDPA over each document's own copy
of [prefix; suffix] (what a generic engine with prefix caching computes)."""

from __future__ import annotations

import pytest
import torch

from bench.hardware import DEVICE, bench, roofline_info
from tests.kernels.kernel_cases import (
    BENCH,
    per_document_sdpa,
    shared_prefix_attention,
    shared_prefix_inputs,
)

B = BENCH
PROVIDERS = ["triton", "torch", "sdpa_per_document"]


def cost(prefix: int):
    docs, s, d, hq, hkv = B["docs"], B["suffix"], B["d"], B["hq"], B["hkv"]
    flops = 4 * d * hq * (docs * s * prefix + docs * s * (s + 1) / 2)
    itemsize = torch.finfo(B["dtype"]).bits // 8
    return flops, itemsize * (2 * docs * s * hq * d + 2 * prefix * hkv * d + 2 * docs * s * hkv * d)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("prefix", B["prefixes"])
def test_shared_prefix_prefill(benchmark, prefix, provider):
    if provider == "triton" and DEVICE.type != "cuda":
        pytest.skip("Triton kernels are timed on CUDA only (the CPU interpreter checks them)")
    inputs = shared_prefix_inputs(prefix, B["docs"], 0, B["suffix"], B["hq"], B["hkv"], B["d"],
                                  B["dtype"])
    if provider == "sdpa_per_document":
        fn = per_document_sdpa(inputs[0], inputs[1], inputs[2], prefix, B["docs"], 0,
                               B["suffix"], B["d"] ** -0.5)
    else:
        fn = shared_prefix_attention(*inputs, impl=provider, max_q_tokens=B["suffix"],
                                     max_own_len=B["suffix"])
    benchmark.group = f"shared-prefix prefill P={prefix}"
    seconds = bench(benchmark, fn)
    benchmark.extra_info.update(roofline_info(seconds, *cost(prefix)))
    benchmark.extra_info.update(provider=provider, prefix=prefix, docs=B["docs"],
                                suffix=B["suffix"], dtype=str(B["dtype"]),
                                heads=f"{B['hq']}/{B['hkv']}x{B['d']}")
