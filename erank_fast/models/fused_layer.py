"""A decoder layer of a small bfloat16 CPU step in one C++ call (``ops/csrc/decoder_layer.cpp``).

Decode steps (tens of rows) spend a quarter of their time between ops: on a 2-core Xeon with
AMX, ~6 ms of a ~24 ms SmolLM2 step went to the Python and dispatch around its 30 layers' ~400
op calls. Where every op of a layer would take the C++ CPU kernels anyway — bfloat16 rows, at
most ``SMALL_ROWS`` of them, every projection on its small-batch blocks, the RMSNorm and RoPE
kernels, the arena attention kernel — the layer runs as one call of the same kernels in the same
order: bit for bit the Python layer's result (``tests/test_fused_layer.py``). Anything else (a
prefill-sized step, float32, int8, CUDA, a subset of rows read) takes the Python layer.
"""

from __future__ import annotations

import torch

from erank_fast.ops.cpu_extension import cpu_kernels
from erank_fast.ops.packed_linear import SMALL_ROWS, PackedLinear


def run_fused_layer(layer, x: torch.Tensor, rotation, attention) -> bool:
    """Run ``layer`` (a ``DecoderLayer``) on x in place as one C++ call where that applies;
    returns whether it ran (False: nothing was done, the caller runs the Python layer)."""
    if not (x.dtype == torch.bfloat16 and x.dim() == 2 and 0 < x.shape[0] <= SMALL_ROWS
            and x.is_contiguous() and rotation.kernel is not None
            and torch.is_inference_mode_enabled()):
        return False
    weights = _layer_weights(layer)
    kernel_args = getattr(attention, "kernel_args", None)
    if weights is None or kernel_args is None:
        return False
    attn = layer.self_attn
    args = kernel_args(attn.layer, _queries_like(rotation, x, attn))
    if args is None:
        return False
    norms, blocks, biases, dims, eps = weights
    cpu_kernels().decoder_layer_(x, norms, blocks, biases, dims, eps, rotation.cos, rotation.sin,
                                 *args)
    return True


def _queries_like(rotation, x: torch.Tensor, attn) -> torch.Tensor:
    """An empty tensor with the layer's query device, dtype and head dim (what the attention
    checks), made once per forward pass (kept on its ``Rotation``)."""
    probe = rotation.__dict__.get("_queries_like")
    if probe is None or probe.dtype != x.dtype or probe.shape[1:] != (attn.num_heads,
                                                                      attn.head_dim):
        probe = rotation._queries_like = x.new_empty((0, attn.num_heads, attn.head_dim))
    return probe


def _layer_weights(layer):
    """The layer's norms, projection blocks, biases, dims and eps, or None where some op of it
    would not take the C++ kernels; cached on the layer while its modules stay the same (packing
    and quantising replace them)."""
    attn, mlp = layer.self_attn, layer.mlp
    linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj,
               mlp.down_proj]
    key, cached = layer.__dict__.get("_fused_weights", (None, None))
    if key is not None and all(a is b for a, b in zip(key, linears)):
        return cached
    norms = [layer.input_layernorm, layer.post_attention_layernorm]
    if attn.q_norm is not None:
        norms += [attn.q_norm, attn.k_norm]
    usable = (attn.qkv_proj is None and cpu_kernels() is not None
              and all(isinstance(p, PackedLinear) and p.blocks is not None for p in linears)
              and all(n.weight.dtype == torch.bfloat16 and not n.quantize_output
                      and n.eps == norms[0].eps for n in norms))
    weights = None
    if usable:
        weights = ([n.weight for n in norms], [p.blocks for p in linears],
                   [p.bias32 for p in linears],
                   [attn.num_heads, attn.num_kv_heads, attn.head_dim, mlp.gate_proj.out_features],
                   norms[0].eps)
    layer.__dict__["_fused_weights"] = (linears, weights)
    return weights
