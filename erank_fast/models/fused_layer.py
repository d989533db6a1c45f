"""A decoder layer of a CPU step in one C++ call (``ops/csrc/decoder_layer.cpp``).

Decode steps (tens to hundreds of rows) spend a share of their time between ops: on a 2-core
Xeon with AMX, ~6 ms of a ~24 ms bfloat16 SmolLM2 step went to the Python and dispatch around
its 30 layers' ~400 op calls; on a 2-core Zen 2, ~20 ms of a ~300 ms float32 one. Where every op
of a layer would take the C++ CPU kernels anyway, the layer runs as one call of the same kernels
in the same order: bit for bit the Python layer's result (``tests/test_fused_layer.py``). Three
kinds of layers qualify:

- bfloat16 steps of at most ``SMALL_ROWS`` rows whose projections all have small-batch blocks
  (``decoder_layer_``: AMX);
- float32 layers on oneDNN's packed weights (``decoder_layer_packed_``: oneDNN's linear, ATen's
  SiLU, product and sums, as the Python layer calls them), steps of any size;
- int8 layers (``quantize="int8"``, ``decoder_layer_int8_``: oneDNN's int8 GEMMs, or for steps
  of at most ``FEW_ROWS`` rows of 7-bit weights the few-rows kernel, and the row kernels around
  them, ``ops.int8_linear``), float32 or bfloat16, steps of any size, biases on q, k and v only.

All also need the RMSNorm and RoPE kernels and the arena attention kernel. Anything else (CUDA,
bfloat16 without blocks, a subset of rows read) takes the Python layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erank_fast.ops.cpu_extension import cpu_kernels
from erank_fast.ops.int8_linear import FEW_ROWS, Int8Linear
from erank_fast.ops.packed_linear import SMALL_ROWS, PackedLinear


@dataclass(frozen=True)
class LayerWeights:
    """What ``decoder_layer_`` (``kind`` "blocks"), ``decoder_layer_packed_`` ("packed") or
    ``decoder_layer_int8_`` ("int8") reads of a layer."""

    kind: str
    dtype: torch.dtype
    norms: list
    weights: list  # blocks, packed weights, or the int8 ones: qkv, o, gate, up, down
    biases: list  # int8: [the qkv bias or None]
    dims: list
    eps: float
    w_scales: list | None = None  # int8: per output channel, and oneDNN's zero points
    w_zeros: list | None = None
    few_weights: list | None = None  # int8: the plain 7-bit weights for few rows, and their
    few_sums: list | None = None  # sums (``Int8Linear.few_rows_weight``), or [] (oneDNN only)


def run_fused_layer(layer, x: torch.Tensor, rotation, attention) -> bool:
    """Run ``layer`` (a ``DecoderLayer``) on x in place as one C++ call where that applies;
    returns whether it ran (False: nothing was done, the caller runs the Python layer)."""
    if not (x.dtype in (torch.bfloat16, torch.float32) and x.dim() == 2 and x.shape[0] > 0
            and x.is_contiguous() and torch.is_inference_mode_enabled()
            and rotation.kernel is not None):
        return False
    w = _layer_weights(layer)
    kernel_args = getattr(attention, "kernel_args", None)
    if (w is None or w.dtype != x.dtype or kernel_args is None
            or (w.kind == "blocks" and x.shape[0] > SMALL_ROWS)):
        return False
    attn = layer.self_attn
    args = kernel_args(attn.layer, _queries_like(rotation, x, attn))
    if args is None:
        return False
    kernels = cpu_kernels()
    if w.kind == "int8":
        kernels.decoder_layer_int8_(x, w.norms, w.weights, w.w_scales, w.w_zeros,
                                    w.few_weights, w.few_sums, FEW_ROWS, w.biases[0],
                                    w.dims, w.eps, rotation.cos, rotation.sin, *args)
        return True
    layer_op = kernels.decoder_layer_ if w.kind == "blocks" else kernels.decoder_layer_packed_
    layer_op(x, w.norms, w.weights, w.biases, w.dims, w.eps, rotation.cos, rotation.sin, *args)
    return True


def _queries_like(rotation, x: torch.Tensor, attn) -> torch.Tensor:
    """An empty tensor with the layer's query device, dtype and head dim (what the attention
    checks), made once per forward pass (kept on its ``Rotation``)."""
    probe = rotation.__dict__.get("_queries_like")
    if probe is None or probe.dtype != x.dtype or probe.shape[1:] != (attn.num_heads,
                                                                      attn.head_dim):
        probe = rotation._queries_like = x.new_empty((0, attn.num_heads, attn.head_dim))
    return probe


def _layer_weights(layer) -> LayerWeights | None:
    """The layer's weights for one of the three C++ layers, or None where some op of it would
    not take the C++ kernels; cached on the layer while its modules stay the same (packing and
    quantising replace them)."""
    attn, mlp = layer.self_attn, layer.mlp
    modules = [attn.q_proj, attn.k_proj, attn.v_proj, attn.qkv_proj, attn.o_proj, mlp.gate_proj,
               mlp.up_proj, mlp.down_proj]
    key, cached = layer.__dict__.get("_fused_weights", (None, None))
    if key is not None and all(a is b for a, b in zip(key, modules)):
        return cached
    layer.__dict__["_fused_weights"] = (modules, _weights_of(layer))
    return layer.__dict__["_fused_weights"][1]


def _weights_of(layer) -> LayerWeights | None:
    attn, mlp = layer.self_attn, layer.mlp
    norms = [layer.input_layernorm, layer.post_attention_layernorm]
    if attn.q_norm is not None:
        norms += [attn.q_norm, attn.k_norm]
    dtype = norms[0].weight.dtype
    if attn.qkv_proj is not None:
        return _int8_weights_of(layer, norms, dtype)
    linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj,
               mlp.down_proj]
    if not (cpu_kernels() is not None
            and all(isinstance(p, PackedLinear) for p in linears)
            and all(n.weight.dtype == dtype and not n.quantize_output and n.eps == norms[0].eps
                    for n in norms)):
        return None
    dims = [attn.num_heads, attn.num_kv_heads, attn.head_dim, mlp.gate_proj.out_features]
    if dtype == torch.bfloat16 and all(p.blocks is not None for p in linears):
        return LayerWeights("blocks", dtype, [n.weight for n in norms],
                            [p.blocks for p in linears], [p.bias32 for p in linears], dims,
                            norms[0].eps)
    if dtype == torch.float32 and all(p.blocks is None and not p.epilogues for p in linears):
        return LayerWeights("packed", dtype, [n.weight for n in norms],
                            [p.packed for p in linears], [p.bias for p in linears], dims,
                            norms[0].eps)
    return None


def _int8_weights_of(layer, norms, dtype) -> LayerWeights | None:
    """An int8 layer's (``quantize_decoder_layers``): its input norms quantise their output,
    the q/k norms (Qwen3) do not. Biases on q, k and v only: a layer with others (none of
    the architectures erank_fast loads has them) takes the Python layer."""
    attn, mlp = layer.self_attn, layer.mlp
    linears = [attn.qkv_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    if not (cpu_kernels() is not None and dtype in (torch.float32, torch.bfloat16)
            and all(isinstance(p, Int8Linear) and p.dtype == dtype for p in linears)
            and all(p.bias is None for p in linears[1:])
            and all(n.weight.dtype == dtype and n.eps == norms[0].eps for n in norms)
            and all(n.quantize_output for n in norms[:2])
            and not any(n.quantize_output for n in norms[2:])):
        return None
    dims = [attn.num_heads, attn.num_kv_heads, attn.head_dim, mlp.gate_proj.out_features]
    few = all(p.few_rows_weight is not None for p in linears)
    return LayerWeights("int8", dtype, [n.weight for n in norms], [p.packed for p in linears],
                        [attn.qkv_proj.bias], dims, norms[0].eps,
                        w_scales=[p.w_scale for p in linears], w_zeros=[p.w_zero for p in linears],
                        few_weights=[p.few_rows_weight for p in linears] if few else [],
                        few_sums=[p.few_rows_sums for p in linears] if few else [])
