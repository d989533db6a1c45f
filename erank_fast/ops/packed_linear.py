"""Linear layers with their weights packed once for oneDNN (CPU).

A plain ``F.linear`` on CPU lays the weight out for the matmul kernel again on every call; for a
decode step (tens of rows) that costs more than the multiply (measured on a 2-core AMD EPYC with
AVX512-BF16, SmolLM2 shapes, bfloat16: 1 row 74 → 30 µs, 40 rows 139 → 103 µs, 2048 rows
4.8 → 4.0 ms; the 49152-row vocabulary projection at 40 rows 5.9 → 3.4 ms). Packing once at load
removes that. bfloat16 results are bit-identical to ``F.linear``; float32 goes through oneDNN
instead of MKL (2.3× faster on that CPU at prefill sizes) and differs by float32 rounding only.

Packed weights are copies: only weights erank_fast owns are packed (a model loaded from a path),
never the live parameters of a model being trained.

Steps of a few rows (decode) read each weight once and do little with it, and there oneDNN's
inner product reads the weights at about half the memory's speed. Where the CPU has oneDNN's
bfloat16 brgemm micro-kernels (AMX), a bfloat16 layer keeps a second copy of its weight in
blocks of 64 output columns (``ops/csrc/small_linear.cpp``) for steps of at most ``SMALL_ROWS``
rows, when that copy fits: the layers' weights again, taken only while they are at most
``SMALL_ROWS_MEMORY_SHARE`` of the machine's memory (SmolLM2-135M: 212 MB). Steps of more rows
take the same blocks on AMX tiles where that kernel applies (``ops/csrc/tile_linear.cpp``: its
epilogues overlap the products, where oneDNN's add a quarter to the MLP's time), oneDNN's
packed weight elsewhere.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn
from torch.nn import functional as F

from erank_fast.ops.cpu_extension import cpu_kernels
from erank_fast.ops.int8_linear import FEW_ROWS, Int8Linear

log = logging.getLogger("erank_fast")

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
# The row-count hint of the packing; the layout it picks served 1..2048 rows equally here.
BATCH_HINT = 64
# Steps of at most this many rows use a layer's small-batch blocks where it has them
# (``small_linear``; measured in bench/NOTES.md, "Linear layers for few rows").
SMALL_ROWS = 768
# The small-batch copies are made while they take at most this share of the machine's memory.
SMALL_ROWS_MEMORY_SHARE = 1 / 8


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
    """An inference-only ``nn.Linear`` whose weight is packed once (``small_rows``: and kept
    again in small-batch blocks for steps of at most ``SMALL_ROWS`` rows)."""

    def __init__(self, linear: nn.Linear, small_rows: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", pack_weight(linear.weight), persistent=False)
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        # Element-wise work in the GEMM's epilogue (``linear_silu`` and the like): measured on
        # a 2-core AMD EPYC (Zen 4, AVX512-BF16) at SmolLM2's MLP, 2048 rows, 6 % faster than
        # separate passes in bfloat16 and 4 % slower in float32, so bfloat16 only.
        self.epilogues = linear.weight.dtype == torch.bfloat16
        blocks = bias32 = None
        if small_rows and small_rows_apply(linear.weight):
            blocks = cpu_kernels().small_linear_pack(linear.weight.detach())
            bias32 = bias.float() if bias is not None else None
        self.register_buffer("blocks", blocks, persistent=False)
        self.register_buffer("bias32", bias32, persistent=False)
        # Steps above SMALL_ROWS rows take the blocks too where the AMX tile kernel applies.
        self.many_rows = blocks is not None and cpu_kernels().tile_linear_applies(
            SMALL_ROWS + 1, self.in_features)

    # small_linear's epilogues (erank_cpu::Epilogue in ops/csrc/erank_cpu.h)
    NONE, SILU, MUL, ADD = 0, 1, 2, 3

    def small(self, x: torch.Tensor) -> bool:
        """Whether x's rows go through the small-batch blocks."""
        return (self.blocks is not None and x.dim() == 2 and x.dtype == torch.bfloat16
                and x.stride(-1) == 1
                and 0 < x.shape[0] and (x.shape[0] <= SMALL_ROWS or self.many_rows))

    def small_matmul(self, x: torch.Tensor, epilogue: int = NONE) -> torch.Tensor:
        """x @ weight.T (+ bias), then SiLU for ``SILU``, on the small-batch blocks."""
        return cpu_kernels().small_linear(x, self.blocks, self.out_features, self.bias32,
                                          epilogue)

    def small_into(self, other: torch.Tensor, x: torch.Tensor, epilogue: int) -> bool:
        """other = self(x) * other (``MUL``) or + other (``ADD``) in place on the small-batch
        blocks; False, and nothing done, where they do not apply."""
        if not (self.small(x) and other.dim() == 2 and other.stride(-1) == 1
                and other.dtype == torch.bfloat16):
            return False
        cpu_kernels().small_linear_into_(other, x, self.blocks, self.out_features, self.bias32,
                                         epilogue)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.small(x):
            return self.small_matmul(x)
        return packed_matmul(x, self.packed, self.bias)


def small_rows_apply(weight: torch.Tensor) -> bool:
    """Whether a weight can have small-batch blocks here: bfloat16 on CPU, an even number of
    input features, and oneDNN's bfloat16 brgemm on this CPU (the kernels built)."""
    kernels = cpu_kernels()
    return (weight.dtype == torch.bfloat16 and weight.device.type == "cpu"
            and weight.shape[1] % 2 == 0 and kernels is not None
            and kernels.small_linear_available())


def linear_silu(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """silu(linear(x)); on a packed weight, the activation runs in the GEMM's epilogue."""
    if isinstance(linear, PackedLinear) and linear.small(x):
        return linear.small_matmul(x, PackedLinear.SILU)
    if isinstance(linear, PackedLinear) and linear.epilogues:
        return torch.ops.mkldnn._linear_pointwise(x, linear.packed, linear.bias, "swish", [], "")
    return F.silu(linear(x), inplace=True)


def linear_mul(linear: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """linear(x) * other (``other`` may be overwritten); on a packed weight, in the epilogue."""
    if isinstance(linear, PackedLinear) and linear.small_into(other, x, PackedLinear.MUL):
        return other
    if isinstance(linear, PackedLinear) and linear.epilogues:
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, linear.packed, linear.bias,
                                                         "mul")
    return other.mul_(linear(x))


def linear_silu_mul(gate: nn.Module, up: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """silu(gate(x)) * up(x), the MLP's product: on small-batch blocks one op (on AMX tiles both
    projections of a tile before one epilogue), the same values as ``linear_mul(up, x,
    linear_silu(gate, x))``, which runs elsewhere."""
    if (isinstance(gate, PackedLinear) and isinstance(up, PackedLinear) and gate.small(x)
            and up.small(x)):
        return cpu_kernels().small_linear_gate_up(x, gate.blocks, up.blocks, gate.out_features,
                                                  gate.bias32, up.bias32)
    return linear_mul(up, x, linear_silu(gate, x))


def linear_add(linear: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + linear(x) (``residual`` may be updated in place); on a packed weight, the sum
    runs in the GEMM's epilogue, in float32 before the one rounding to the output dtype; on
    int8 weights, in the pass that scales the GEMM's rows back (``ops.int8_linear``)."""
    if isinstance(linear, Int8Linear):
        return linear.add_into(residual, x)
    if isinstance(linear, PackedLinear) and linear.small_into(residual, x, PackedLinear.ADD):
        return residual
    if isinstance(linear, PackedLinear) and linear.epilogues:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, linear.packed,
                                                         linear.bias, "add")
    return residual.add_(linear(x))


def pack_linears(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` below ``module`` by a ``PackedLinear`` where packing is
    available for its weight, after checking one against ``F.linear``; returns how many. Each
    also gets small-batch blocks where they apply and all of them fit (``SMALL_ROWS_MEMORY_SHARE``;
    ``ERANK_FAST_SMALL_ROWS=0`` turns them off)."""
    targets = [(parent, name, child) for parent in module.modules()
               for name, child in parent.named_children() if type(child) is nn.Linear
               and packing_available(child.weight)]
    if not targets:
        return 0
    _, _, probe = targets[0]
    x = torch.randn(3, probe.in_features, dtype=probe.weight.dtype)
    small_rows = _small_rows_fit([child.weight for *_, child in targets])
    try:
        packed = PackedLinear(probe, small_rows)
    except RuntimeError:  # this oneDNN build cannot pack this dtype here: keep the plain path
        return 0
    with torch.inference_mode():
        want = F.linear(x, probe.weight, probe.bias).float()
        if not torch.allclose(packed_matmul(x, packed.packed, packed.bias).float(), want,
                              rtol=1e-2, atol=1e-2):
            return 0  # this oneDNN build computes something else: keep the plain path
        if packed.small(x) and not torch.allclose(packed(x).float(), want, rtol=1e-2, atol=1e-2):
            small_rows = False  # nor the small-batch blocks
            packed = PackedLinear(probe)
    for parent, name, child in targets:
        setattr(parent, name, packed if child is probe else PackedLinear(child, small_rows))
    return len(targets)


def rows_unpadded_above(module: nn.Module) -> int | None:
    """The row count above which every linear layer below ``module`` runs on a kernel made
    once for all row counts (the AMX tile kernel, ``PackedLinear.many_rows``), so steps of more
    rows need no padding to a few row counts; None where some layer does not."""
    if _every_linear(module, lambda m: isinstance(m, PackedLinear) and m.many_rows):
        return SMALL_ROWS
    return None


def rows_unpadded_below(module: nn.Module) -> int | None:
    """``FEW_ROWS`` where every linear layer below ``module`` is int8 with the few-rows
    kernel's weights: steps of at most that many rows then run on a kernel that builds nothing
    per row count, so padding them to a few row counts (``models.decoder.padded_rows``) is
    only work (a 2-document decode step computed 16 rows); else None."""
    if _every_linear(module, lambda m: isinstance(m, Int8Linear)
                     and m.few_rows_weight is not None):
        return FEW_ROWS
    return None


def _every_linear(module: nn.Module, test) -> bool:
    """Whether ``module`` has linear layers (packed, int8 or plain) and ``test`` holds for
    each."""
    linears = [m for m in module.modules() if isinstance(m, (PackedLinear, Int8Linear, nn.Linear))]
    return bool(linears) and all(test(m) for m in linears)


def padding_pays(dtype: torch.dtype) -> bool:
    """Whether a CPU step of packed layers is padded to a few row counts (``padded_rows``):
    where oneDNN makes a kernel for each new row count, as for bfloat16 and int8, and for
    float32 on CPUs with AVX-512 (its brgemm kernels). Without AVX-512 its float32 kernels take
    any row count at the same speed and build nothing per count (a 2-core Zen 2, SmolLM2's
    projections at 1,777-4,096 rows: first call as fast as the next, 148-157 GFLOP/s), so
    padding there is work for nothing (1.0-2.2 % of a think-off call)."""
    from erank_fast.cpu import cpu_info

    return dtype != torch.float32 or "avx512f" in cpu_info()["flags"]


def _small_rows_fit(weights: list[torch.Tensor]) -> bool:
    """Whether the layers get small-batch blocks: where they apply, unless turned off, and
    while their copies take at most ``SMALL_ROWS_MEMORY_SHARE`` of this machine's memory."""
    if os.environ.get("ERANK_FAST_SMALL_ROWS", "1") == "0" or not small_rows_apply(weights[0]):
        return False
    extra = sum(w.numel() * w.element_size() for w in weights)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if extra > memory * SMALL_ROWS_MEMORY_SHARE:
        log.info("linear layers: no small-batch copies (%.1f GB, more than 1/%d of this "
                 "machine's memory)", extra / 1e9, round(1 / SMALL_ROWS_MEMORY_SHARE))
        return False
    return True
