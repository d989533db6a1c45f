"""Prefill attention on CPU in bfloat16, the shapes of a reranking call: ~18 documents of 150-340
tokens after one 80-token query prefix (SmolLM2's 9 query and 3 K/V heads of 64), as one 4096-
token prefill step of the peers' workload holds them. erank_fast's engine kernel (on AMX, the
brgemm micro-kernel one, ``ops/csrc/shared_prefix_attention_brgemm.cpp``) against its
AVX512-BF16 vector kernel on the same inputs, the baseline in the same run."""

from __future__ import annotations

import random

import pytest
import torch

from bench.hardware import DEVICE, bench, roofline_info
from tests.kernels.kernel_cases import SMOKE

HQ, HKV, D, PREFIX = 9, 3, 64, 80
LENGTHS = [20, 9, 33] if SMOKE else [random.Random(0).randint(150, 340) for _ in range(18)]


def step_inputs():
    """q [N, 9, 64] of the documents' new tokens and a K/V arena holding the prefix then each
    document's own rows; the step's ArenaRows."""
    from erank_fast.ops.arena_attention import ArenaRows

    generator = torch.Generator().manual_seed(0)
    docs, base = [], PREFIX
    for n in LENGTHS:
        docs.append((0, base, 0, n))
        base += n
    k, v = (torch.randn(base, HKV, D, generator=generator).bfloat16() for _ in range(2))
    q = torch.randn(sum(LENGTHS), HQ, D, generator=generator).bfloat16()
    return q, k, v, ArenaRows.of_step(docs, [(0, PREFIX)])


def cost() -> tuple[float, float]:
    """FLOPs of the visible scores (each token's prefix and own keys up to itself, both
    products), and the bytes of q, the K/V read once and the output."""
    visible = sum(n * (PREFIX + (n + 1) / 2) for n in LENGTHS) * HQ
    tokens = sum(LENGTHS)
    return 4 * D * visible, 2 * (2 * tokens * HQ * D + 2 * (PREFIX + tokens) * HKV * D)


@pytest.mark.parametrize("provider", ["engine", "vector"])
def test_cpu_prefill_attention(benchmark, provider):
    from erank_fast.ops.arena_attention import arena_attention_cpu, brgemm_available
    from erank_fast.ops.cpu_extension import cpu_kernels

    if DEVICE.type != "cpu" or cpu_kernels() is None:
        pytest.skip("erank_fast's C++ kernels run on CPU tensors, where they are built")
    q, k, v, rows = step_inputs()
    if provider == "engine":
        if not brgemm_available():
            pytest.skip("no bfloat16 brgemm (AMX) here: the engine runs the vector kernel")

        def fn():
            return arena_attention_cpu(q, k, v, rows, D**-0.5)
    else:
        if not cpu_kernels().shared_prefix_attention_supports("bfloat16"):
            pytest.skip("the vector kernel is built for bfloat16 only on AVX512-BF16 CPUs")

        def fn():
            return cpu_kernels().shared_prefix_attention(
                q, k, v, rows.q_cu, rows.own_base, rows.own_start, rows.prefix_start,
                rows.prefix_len, D**-0.5)
    if fn() is None:
        pytest.skip("erank_fast's CPU attention kernel does not run here for bfloat16")
    benchmark.group = f"cpu prefill attention, {len(LENGTHS)} documents after {PREFIX} tokens"
    seconds = bench(benchmark, fn)
    benchmark.extra_info.update(roofline_info(seconds, *cost()))
    benchmark.extra_info.update(provider=provider, documents=len(LENGTHS), prefix=PREFIX,
                                tokens=sum(LENGTHS), dtype="bfloat16",
                                heads=f"{HQ}/{HKV}x{D}")


@pytest.mark.parametrize("provider", ["float32", "int8"])
def test_cpu_prefill_attention_int8(benchmark, provider):
    """The same step in float32, as ``quantize="int8"`` on a float32 model runs it where the CPU
    has AVX512-VNNI (both products in int8, over its bfloat16 arena: ``ops/csrc/
    int8_attention.h``) against the float32 kernel over a float32 arena, the baseline."""
    from erank_fast.ops.arena_attention import arena_attention_cpu, int8_attention_available
    from erank_fast.ops.cpu_extension import cpu_kernels

    if DEVICE.type != "cpu" or cpu_kernels() is None:
        pytest.skip("erank_fast's C++ kernels run on CPU tensors, where they are built")
    if not int8_attention_available(torch.float32):
        pytest.skip("int8 attention needs AVX512-VNNI")
    q, k, v, rows = step_inputs()
    q = q.float()
    if provider == "int8":
        def fn():
            return arena_attention_cpu(q, k, v, rows, D**-0.5, int8_attention=True)
    else:
        k, v = k.float(), v.float()

        def fn():
            return arena_attention_cpu(q, k, v, rows, D**-0.5)
    benchmark.group = (f"cpu prefill attention in float32, {len(LENGTHS)} documents after "
                       f"{PREFIX} tokens")
    seconds = bench(benchmark, fn)
    benchmark.extra_info.update(roofline_info(seconds, *cost()))
    benchmark.extra_info.update(provider=provider, documents=len(LENGTHS), prefix=PREFIX,
                                tokens=sum(LENGTHS), dtype="float32",
                                heads=f"{HQ}/{HKV}x{D}")
