"""Decode attention, one new token per document: erank_fast (the shared prefix read once per
step for all documents + each own context, split-K when long), as Triton kernels (CUDA), as its
PyTorch path and, on CPU, as its two C++ kernels (``cpu_arena``: the shared-prefix kernel the
engine runs, its one-token path; ``cpu_decode``: the decode-only kernel kept for dtypes the
first lacks), against per-sequence SDPA over each document's own copy of [prefix; own]."""

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
PREFIX, OWN = B["decode_prefix"], B["own"]


def cost(batch: int):
    d, hq, hkv = B["d"], B["hq"], B["hkv"]
    itemsize = torch.finfo(B["dtype"]).bits // 8
    flops = 4 * d * hq * batch * (PREFIX + OWN)
    # The floor: prefix K/V once, every document's own K/V, queries and outputs.
    bytes_moved = itemsize * (2 * PREFIX * hkv * d + 2 * batch * OWN * hkv * d + 2 * batch * hq * d)
    return flops, bytes_moved


def cpu_kernel(provider: str, inputs):
    """The engine's CPU call on these inputs (one query group), or a skip where it is not built."""
    from erank_fast.ops.arena_attention import ArenaRows, arena_attention_cpu
    from erank_fast.ops.decode_attention import DecodeRows, decode_attention_cpu

    q, k, v, _, prefix_start, prefix_len, own_base, own_start, _ = inputs
    docs = [(0, b, s, 1) for b, s in zip(own_base.tolist(), own_start.tolist())]
    prefixes = [(int(prefix_start[0]), int(prefix_len[0]))]
    scale = q.shape[-1] ** -0.5
    if provider == "cpu_arena":
        rows = ArenaRows.of_step(docs, prefixes)
        run = lambda: arena_attention_cpu(q, k, v, rows, scale)
    else:
        rows = DecodeRows.of_step(docs, prefixes, q.device)
        run = lambda: decode_attention_cpu(q, k, v, rows, scale)
    if run() is None:
        pytest.skip(f"{provider}: erank_fast's CPU kernel does not run here for head dim "
                    f"{q.shape[-1]}, {q.dtype} (not built, or a shape it does not cover)")
    return run


@pytest.mark.parametrize("provider",
                         ["triton", "torch", "cpu_arena", "cpu_decode", "sdpa_per_sequence"])
@pytest.mark.parametrize("batch", B["batches"])
def test_decode_attention(benchmark, batch, provider):
    if provider == "triton" and DEVICE.type != "cuda":
        pytest.skip("Triton kernels are timed on CUDA only (the CPU interpreter checks them)")
    if provider.startswith("cpu_") and DEVICE.type != "cpu":
        pytest.skip("erank_fast's C++ kernels run on CPU tensors")
    inputs = shared_prefix_inputs(PREFIX, batch, OWN - 1, 1, B["hq"], B["hkv"], B["d"], B["dtype"])
    if provider.startswith("cpu_"):
        fn = cpu_kernel(provider, inputs)
    elif provider == "sdpa_per_sequence":
        fn = per_document_sdpa(inputs[0], inputs[1], inputs[2], PREFIX, batch, OWN - 1, 1,
                               B["d"] ** -0.5)
    else:
        fn = shared_prefix_attention(*inputs, impl=provider, max_q_tokens=1, max_own_len=OWN)
    benchmark.group = f"decode-attention B={batch} P={PREFIX} own={OWN}"
    seconds = bench(benchmark, fn)
    benchmark.extra_info.update(roofline_info(seconds, *cost(batch)))
    benchmark.extra_info.update(provider=provider, batch=batch, prefix=PREFIX, own=OWN,
                                dtype=str(B["dtype"]))
