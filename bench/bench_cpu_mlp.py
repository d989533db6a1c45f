"""A decoder's MLP on CPU in bfloat16 at a prefill step's size: residual + down(silu(gate(x)) *
up(x)) for SmolLM2's 30 layers (576 -> 1536 -> 576) at 4096 rows, each layer's weights its
own, as a step meets them. erank_fast's engine path (on AMX, the weight blocks on tiles with
the epilogues overlapping the products, ``ops/csrc/tile_linear.cpp``) against oneDNN's packed
inner product with the same epilogues (what steps of this size ran on before), and oneDNN
without any epilogue (the GEMMs alone: the floor the epilogues are measured from), in the same
run. Memory as the engine has it: freed activations reused, not mapped afresh on every call
(``keep_freed_memory``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.hardware import DEVICE, bench, roofline_info
from tests.kernels.kernel_cases import SMOKE

HIDDEN, INTERMEDIATE = 576, 1536
LAYERS, ROWS = (2, 300) if SMOKE else (30, 4096)


def mlp_layers():
    from erank_fast.ops import packed_linear as pl

    generator = torch.Generator().manual_seed(0)

    def linear(out_features, in_features):
        layer = nn.Linear(in_features, out_features, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(out_features, in_features, generator=generator)
                               * in_features**-0.5)
        return pl.PackedLinear(layer.bfloat16(), small_rows=True)

    return [(linear(INTERMEDIATE, HIDDEN), linear(INTERMEDIATE, HIDDEN),
             linear(HIDDEN, INTERMEDIATE)) for _ in range(LAYERS)]


@pytest.mark.parametrize("provider", ["engine", "onednn", "onednn-no-epilogues"])
def test_cpu_mlp(benchmark, provider):
    from erank_fast.cpu import keep_freed_memory
    from erank_fast.ops import packed_linear as pl

    probe = torch.zeros(8, 64, dtype=torch.bfloat16)
    if DEVICE.type != "cpu" or pl.cpu_kernels() is None or not pl.packing_available(probe):
        pytest.skip("oneDNN's bfloat16 packing and erank_fast's C++ kernels: CPU only")
    keep_freed_memory()
    layers = mlp_layers()
    if provider == "engine" and not all(p.many_rows for layer in layers for p in layer):
        pytest.skip("no AMX tile kernel here: steps of this size run on oneDNN")
    x = torch.randn(ROWS, HIDDEN, generator=torch.Generator().manual_seed(1)).bfloat16()
    residual = torch.randn(ROWS, HIDDEN).bfloat16()
    pointwise = torch.ops.mkldnn._linear_pointwise

    def fn():
        out = None
        for gate, up, down in layers:
            if provider == "engine":
                out = pl.linear_add(down, pl.linear_silu_mul(gate, up, x), residual.clone())
            elif provider == "onednn":
                h = pointwise(x, gate.packed, None, "swish", [], "")
                h = pointwise.binary(x, h, up.packed, None, "mul")
                out = pointwise.binary(h, residual.clone(), down.packed, None, "add")
            else:
                h = pointwise(x, gate.packed, None, "none", [], "")
                pointwise(x, up.packed, None, "none", [], "")
                out = pointwise(h, down.packed, None, "none", [], "")
        return out

    with torch.inference_mode():
        benchmark.group = f"cpu mlp, {LAYERS} layers x {ROWS} rows, {HIDDEN}->{INTERMEDIATE}"
        seconds = bench(benchmark, fn)
    flops = 6 * ROWS * HIDDEN * INTERMEDIATE * LAYERS
    weight_bytes = 3 * HIDDEN * INTERMEDIATE * 2 * LAYERS
    benchmark.extra_info.update(roofline_info(seconds, flops, weight_bytes + 4 * ROWS * HIDDEN * 2))
    benchmark.extra_info.update(provider=provider, layers=LAYERS, rows=ROWS, dtype="bfloat16")
