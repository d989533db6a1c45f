"""Linear layers with their weights packed once for oneDNN (CPU).

A plain ``F.linear`` on CPU lays the weight out for the matmul kernel again on every call; for a
decode step (tens of rows) that costs more than the multiply (measured on a 2-core AMD EPYC with
AVX512-BF16, SmolLM2 shapes, bfloat16: 1 row 74 → 30 µs, 40 rows 139 → 103 µs, 2048 rows
4.8 → 4.0 ms; the 49152-row vocabulary projection at 40 rows 5.9 → 3.4 ms). Packing once at load
removes that. bfloat16 results are bit-identical to ``F.linear``; float32 goes through oneDNN
instead of MKL (2.3× faster on that CPU at prefill sizes) and differs by float32 rounding only.

Packed weights are copies: only weights erank_fast owns are packed (a model loaded from a path),
never the live parameters of a model being trained.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from erank_fast.ops.int8_linear import Int8Linear

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
# The row-count hint of the packing; the layout it picks served 1..2048 rows equally here.
BATCH_HINT = 64


def packing_available(weight: torch.Tensor) -> bool:
    """Whether oneDNN packs this weight on this CPU: float32 anywhere oneDNN runs, bfloat16
    only where oneDNN has bf16 kernels (AVX512-BW/VL/DQ or AVX-NE-CONVERT; on an AVX2-only CPU
    ``F.linear`` keeps bfloat16 weights plain)."""
    if not (weight.device.type == "cpu" and weight.dtype in PACKABLE_DTYPES
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    return weight.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight [out, in] in oneDNN's layout (an opaque tensor for ``packed_matmul``)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT)


def packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """x [..., in] @ weight.T (+ bias) with a weight from ``pack_weight``."""
    shape = x.shape
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), packed, bias, "none",
                                             [], "")
    return out.view(*shape[:-1], out.shape[-1])


class PackedLinear(nn.Module):
    """An inference-only ``nn.Linear`` whose weight is packed once."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", pack_weight(linear.weight), persistent=False)
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        # Element-wise work in the GEMM's epilogue (``linear_silu`` and the like): measured on
        # a 2-core AMD EPYC (Zen 4, AVX512-BF16) at SmolLM2's MLP, 2048 rows, 6 % faster than
        # separate passes in bfloat16 and 4 % slower in float32, so bfloat16 only.
        self.epilogues = linear.weight.dtype == torch.bfloat16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_matmul(x, self.packed, self.bias)


def linear_silu(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """silu(linear(x)); on a packed weight, the activation runs in the GEMM's epilogue."""
    if isinstance(linear, PackedLinear) and linear.epilogues:
        return torch.ops.mkldnn._linear_pointwise(x, linear.packed, linear.bias, "swish", [], "")
    return F.silu(linear(x), inplace=True)


def linear_mul(linear: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """linear(x) * other (``other`` may be overwritten); on a packed weight, in the epilogue."""
    if isinstance(linear, PackedLinear) and linear.epilogues:
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, linear.packed, linear.bias,
                                                         "mul")
    return other.mul_(linear(x))


def linear_add(linear: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + linear(x) (``residual`` may be updated in place); on a packed weight, the sum
    runs in the GEMM's epilogue, in float32 before the one rounding to the output dtype; on
    int8 weights, in the pass that scales the GEMM's rows back (``ops.int8_linear``)."""
    if isinstance(linear, Int8Linear):
        return linear.add_into(residual, x)
    if isinstance(linear, PackedLinear) and linear.epilogues:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, linear.packed,
                                                         linear.bias, "add")
    return residual.add_(linear(x))


def pack_linears(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` below ``module`` by a ``PackedLinear`` where packing is
    available for its weight, after checking one against ``F.linear``; returns how many."""
    targets = [(parent, name, child) for parent in module.modules()
               for name, child in parent.named_children() if type(child) is nn.Linear
               and packing_available(child.weight)]
    if not targets:
        return 0
    _, _, probe = targets[0]
    x = torch.randn(3, probe.in_features, dtype=probe.weight.dtype)
    try:
        packed = PackedLinear(probe)
    except RuntimeError:  # this oneDNN build cannot pack this dtype here: keep the plain path
        return 0
    with torch.inference_mode():
        if not torch.allclose(packed(x).float(), F.linear(x, probe.weight, probe.bias).float(),
                              rtol=1e-2, atol=1e-2):
            return 0  # this oneDNN build computes something else: keep the plain path
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    return len(targets)
