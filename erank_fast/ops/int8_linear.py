"""int8 linear layers for CPU inference (``quantize="int8"``): weights int8 per output channel,
activations uint8 per token (row), multiplied by oneDNN's int8 GEMM (AMX-INT8, AVX512-VNNI, or
AVX2 with 7-bit weights).

A token's activations are quantised with their own scale (max |x| / 127, zero point 128); the
GEMM returns sum((x_q - 128) w_q) * w_scale in the model's dtype (float32 or bfloat16) and the
row's scale is applied after it. One scale per tensor, the only kind oneDNN's int8 linear
accepts, breaks erank-smol's ranking (Spearman 0.74-0.94 against float32 on DL19 queries); one
per token keeps it (erank-smol on DL19: nDCG@10 0.5735 with bfloat16 and 0.5782 with float32
against 0.5755 without int8; a base model whose scores bunch together reorders far more:
``bench/NOTES.md``, "quantize=int8"). The row-wise work around the GEMMs is fused with its
neighbours in C++ (``ops/csrc/int8_rows.cpp``): RMSNorm then quantise, SiLU x up then quantise,
scale-and-add into the residual.

A float32 or bfloat16 model's decoder layers are quantised, on a CPU with AMX-INT8,
AVX512-VNNI or AVX2; embeddings, norms, attention, the K/V arena and the score head stay in the
model's dtype. Without VNNI (AVX2 alone: AMD Zen 2/3, Intel before Ice Lake) oneDNN multiplies
uint8 by int8 through 16-bit sums of pairs (``vpmaddubsw``), which saturate when both operands
use 8 bits (255 * 127 * 2 > 32767: errors of ~20 % of a result seen); with weights of 7 bits
(|w| <= 63, ``weight_levels``) no pair sum can saturate and the GEMM is exact, at a weight
rounding step twice as coarse. Which dtype goes
with int8 follows ``dtype`` as without it: ``"auto"`` gives bfloat16 on AMX (where bfloat16
GEMMs run ~8x float32's) and float32 on an AVX512-VNNI CPU without bfloat16 units (an Ice Lake
Xeon: int8 GEMMs 1.9-3.5x float32's, bfloat16's a quarter of float32's; ``bench/NOTES.md``,
"int8 on a float32 model").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from erank_fast.ops.cpu_extension import cpu_kernels

# oneDNN's packing takes a row-count hint; the prefill steps' 2048 rows (the packed layout
# serves decode steps' rows equally, measured on the AMX Xeon).
ROWS_HINT = 2048
# Activations' uint8 zero point (``ops/csrc/int8_rows.cpp`` writes round(x / scale) + 128).
ZERO_POINT = 128
# The largest |int8 weight|: 127, or 63 where the GEMM sums pairs in 16 bits (no VNNI).
FULL_LEVELS, PAIR_SAFE_LEVELS = 127, 63
# Steps of at most this many rows take ``int8_few_rows_linear`` where it applies (7-bit
# weights, float32 output): on a 2-core Zen 3 it ran SmolLM2's layers 5-10x faster than
# oneDNN's AVX2 int8 GEMM at 1-3 rows, 1.1-1.8x at 32-64, level at 100 (``bench/NOTES.md``).
FEW_ROWS = 64
VNNI_FLAGS = {"amx_int8", "avx512_vnni"}


def weight_levels() -> int:
    """The largest |int8 weight| this CPU's int8 GEMM multiplies exactly: 127 with AMX-INT8 or
    AVX512-VNNI (32-bit sums of four products), 63 without (16-bit sums of two, which 8-bit
    weights would saturate against uint8 activations)."""
    from erank_fast.cpu import cpu_info

    return FULL_LEVELS if set(cpu_info()["flags"]) & VNNI_FLAGS else PAIR_SAFE_LEVELS


def int8_unavailable_reason(dtype: torch.dtype) -> str | None:
    """Why int8 linear layers cannot run here (None when they can)."""
    from erank_fast.cpu import cpu_info

    if dtype not in (torch.float32, torch.bfloat16):
        return f"int8 quantisation serves float32 and bfloat16 models (this one is {dtype})"
    flags = set(cpu_info()["flags"])
    if not flags & (VNNI_FLAGS | {"avx2"}):
        return "this CPU has neither AMX-INT8, AVX512-VNNI nor AVX2 (no fast int8 GEMM in oneDNN)"
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        return "this torch build has no oneDNN int8 linear"
    if cpu_kernels() is None:
        return "erank_fast's CPU kernels could not be built here"
    return None


def few_rows_kernels(levels: int, dtype: torch.dtype):
    """The CPU kernels when ``int8_few_rows_linear`` computes oneDNN's int8 GEMM exactly for
    these weights (at most 7 bits: its 16-bit pair sums cannot saturate) and output dtype
    (float32), else None."""
    kernels = cpu_kernels()
    if (levels > PAIR_SAFE_LEVELS or dtype != torch.float32 or kernels is None
            or not kernels.int8_few_rows_available()):
        return None
    return kernels


@dataclass
class QuantizedRows:
    """Activations quantised per row: q uint8 [N, H] (zero point 128), scale float32 [N]."""

    q: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def dequantized(self) -> torch.Tensor:
        """The float32 rows these stand for: (q - 128) * scale."""
        return (self.q.float() - ZERO_POINT) * self.scale[:, None]


def quantize_rows(x: torch.Tensor) -> QuantizedRows:
    return QuantizedRows(*cpu_kernels().quantize_rows(x.reshape(-1, x.shape[-1])))


def quantize_weight_rows(weight: torch.Tensor, levels: int = FULL_LEVELS
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [out, in] as int8 in [-levels, levels] (symmetric, no zero point) and one
    float32 scale per output row, max |w| / levels: ``w_q * scale[:, None]`` is within half a
    step of each weight."""
    if not 1 <= levels <= FULL_LEVELS:
        raise ValueError(f"levels must be in 1..{FULL_LEVELS}, got {levels}")
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / levels
    return torch.round(w / scale[:, None]).clamp_(-levels, levels).to(torch.int8), scale


class Int8Linear(nn.Module):
    """An inference-only ``nn.Linear`` with int8 weights (symmetric, one scale per output
    channel, at most ``levels`` in magnitude: ``weight_levels()`` by default) packed for
    oneDNN; bias kept in float32."""

    def __init__(self, linear: nn.Linear, levels: int | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype = linear.weight.dtype  # of the GEMM's output, as the layer's was
        self.levels = weight_levels() if levels is None else levels
        w_q, scale = quantize_weight_rows(linear.weight, self.levels)
        packed = torch.ops.onednn.qlinear_prepack(w_q, [ROWS_HINT, self.in_features])
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("w_scale", scale, persistent=False)
        self.register_buffer("w_zero", torch.zeros(self.out_features, dtype=torch.int64),
                             persistent=False)
        # Steps of up to FEW_ROWS rows (decode) multiply a plain copy of the weights (one more
        # byte a weight) where the few-rows kernel gives oneDNN's exact result: 7-bit weights,
        # float32 output, an AVX2 build.
        few = few_rows_kernels(self.levels, self.dtype)
        self.register_buffer("few_rows_weight", w_q if few else None, persistent=False)
        self.register_buffer("few_rows_sums", w_q.sum(1, dtype=torch.int32) if few else None,
                             persistent=False)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def unscaled(self, x: QuantizedRows) -> torch.Tensor:
        """(x.q - 128) @ W_q.T * w_scale in the layer's dtype, before each row's own scale."""
        if self.few_rows_weight is not None and x.q.shape[0] <= FEW_ROWS:
            return cpu_kernels().int8_few_rows_linear(x.q, self.few_rows_weight,
                                                      self.few_rows_sums, self.w_scale)
        return torch.ops.onednn.qlinear_pointwise(
            x.q, 1.0, ZERO_POINT, self.packed, self.w_scale, self.w_zero, None, 1.0, 0,
            self.dtype, "none", [], "")

    def forward(self, x: torch.Tensor | QuantizedRows) -> torch.Tensor:
        rows = x if isinstance(x, QuantizedRows) else quantize_rows(x)
        y = self.unscaled(rows)
        cpu_kernels().scale_rows_(y, rows.scale)
        if self.bias is not None:
            y += self.bias.to(y.dtype)
        shape = x.shape[:-1] if isinstance(x, torch.Tensor) else x.shape[:1]
        return y.view(*shape, self.out_features)

    def add_into(self, residual: torch.Tensor, x: torch.Tensor | QuantizedRows) -> torch.Tensor:
        """residual + self(x), in place in ``residual``: one rounding, scaled and added in one
        pass. With a bias (no architecture erank_fast loads has one on the projections that
        add into the residual) it is ``forward``'s output added, two roundings."""
        if self.bias is not None:
            return residual.add_(self(x))
        rows = x if isinstance(x, QuantizedRows) else quantize_rows(x)
        cpu_kernels().scaled_add_(residual, self.unscaled(rows), rows.scale)
        return residual


def silu_mul_quantized(gate: Int8Linear, up: Int8Linear, x: QuantizedRows) -> QuantizedRows:
    """silu(gate(x)) * up(x), quantised per row for the down projection (one fused pass)."""
    if gate.bias is not None or up.bias is not None:
        raise ValueError("int8 MLP projections with biases are not supported")
    return QuantizedRows(*cpu_kernels().silu_mul_quantize(gate.unscaled(x), up.unscaled(x),
                                                          x.scale))


def stacked(*linears: nn.Linear) -> nn.Linear:
    """One linear layer computing the given ones' outputs side by side (their weights stacked):
    int8 weights have one scale per output row, so quantising the stack is quantising each."""
    first = linears[0]
    out = nn.Linear(first.in_features, sum(lin.out_features for lin in linears),
                    bias=first.bias is not None, dtype=first.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([lin.weight for lin in linears]))
        if out.bias is not None:
            out.bias.copy_(torch.cat([lin.bias for lin in linears]))
    return out


def quantize_decoder_layers(layers: nn.ModuleList) -> int:
    """Replace every decoder layer's linear layers by ``Int8Linear`` (q, k and v as one,
    ``qkv_proj``: one GEMM and one scaling pass instead of three) and mark its norms to
    quantise their output; returns how many linear layers were replaced."""
    count = 0
    for layer in layers:
        attn = layer.self_attn
        attn.qkv_proj = Int8Linear(stacked(attn.q_proj, attn.k_proj, attn.v_proj))
        attn.q_proj = attn.k_proj = attn.v_proj = None
        count += 3
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, Int8Linear(child))
                    count += 1
        layer.input_layernorm.quantize_output = True
        layer.post_attention_layernorm.quantize_output = True
    return count
