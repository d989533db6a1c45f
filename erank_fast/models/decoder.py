"""One decoder for Qwen3, Qwen2 and Llama, with Hugging Face parameter names.

The decoder works on packed tokens: ``input_ids`` and ``positions`` are 1-D over all tokens of a
batch, and attention is delegated to an ``Attention`` object built by the engine for that batch
(shared prefix, own KV, masks). The decoder itself knows nothing about caches or documents.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from erank_fast.models.decoder_config import DecoderConfig
from erank_fast.models.fused_layer import run_fused_layer
from erank_fast.models.rope import Rotary, Rotation
from erank_fast.ops.cpu_extension import cpu_kernels
from erank_fast.ops.int8_linear import Int8Linear, QuantizedRows, silu_mul_quantized
from erank_fast.ops.packed_linear import linear_add, linear_silu_mul
from erank_fast.ops.rms_norm import rms_norm_kernel


class Attention(Protocol):
    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        real_queries: int | None = None,
    ) -> torch.Tensor:
        """q [N, Hq, D], k and v [N, Hkv, D] (RoPE applied) -> output [N, Hq, D].
        real_queries: only q's first rows are queries; the output's other rows are zeros
        (a step padded for the linear layers, ``RealRows``)."""
        ...


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        # Set on the norms before int8 linear layers (``quantize_decoder_layers``): the output
        # is quantised per row in the same pass.
        self.quantize_output = False

    def forward(self, x: torch.Tensor) -> torch.Tensor | QuantizedRows:
        if self.quantize_output:
            return QuantizedRows(*cpu_kernels().rms_norm_quantize(
                x.reshape(-1, x.shape[-1]), self.weight, self.eps))
        if torch.is_inference_mode_enabled() and (kernel := rms_norm_kernel(x, self.weight)):
            # CPU inference: one pass, float32 inside, one rounding (ops.rms_norm).
            return kernel(x.reshape(-1, x.shape[-1]), self.weight, self.eps).view(x.shape)
        if x.dtype == torch.float32 or not torch.is_inference_mode_enabled():
            # As transformers does: normalise in float32, cast back, then the weight (training
            # and exactness see this arithmetic).
            return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)
        # Inference in bf16/fp16: one fused pass (float32 inside, one rounding at the end).
        return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)


class SelfAttention(nn.Module):
    def __init__(self, config: DecoderConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        h, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(h, config.num_heads * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(h, config.num_kv_heads * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(h, config.num_kv_heads * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.num_heads * d, h, bias=False)
        self.qkv_proj: nn.Module | None = None  # q, k and v as one GEMM (int8_linear)
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, rotation: Rotation, attention: Attention, residual: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """residual + o_proj(attention(...)) (the residual may be updated in place). ``rows``:
        only these tokens' outputs (every token's K and V are still computed and stored)."""
        n, d = x.shape[0], self.head_dim
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(
                [self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], dim=-1)
            q, k, v = q.view(n, self.num_heads, d), k.view(n, -1, d), v.view(n, -1, d)
        else:
            q = self.q_proj(x).view(n, self.num_heads, d)
            k = self.k_proj(x).view(n, self.num_kv_heads, d)
            v = self.v_proj(x).view(n, self.num_kv_heads, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotation(q, k)
        if rows is not None:
            q, residual = q[rows], residual[rows]
        out = attention(self.layer, q, k, v)
        return linear_add(self.o_proj, out.reshape(q.shape[0], self.num_heads * d), residual)


class MLP(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        h, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, f, bias=False)
        self.up_proj = nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + down(silu(gate(x)) * up(x)); on packed weights the activation, product
        and sum run in the GEMMs' epilogues (``ops.packed_linear``); on int8 weights in one
        fused pass that also quantises the product (``ops.int8_linear``)."""
        if isinstance(self.gate_proj, Int8Linear):
            return linear_add(self.down_proj, silu_mul_quantized(self.gate_proj, self.up_proj, x),
                              residual)
        return linear_add(self.down_proj, linear_silu_mul(self.gate_proj, self.up_proj, x),
                          residual)


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SelfAttention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, rotation: Rotation, attention: Attention,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None and run_fused_layer(self, x, rotation, attention):
            return x  # updated in place by one C++ call (models/fused_layer.py)
        x = self.self_attn(self.input_layernorm(x), rotation, attention, residual=x, rows=rows)
        return self.mlp(self.post_attention_layernorm(x), residual=x)


class DecoderBody(nn.Module):
    """Parameters under the ``model.`` prefix of a Hugging Face causal-LM checkpoint."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        # Given its (empty) weight, the embedding skips its random init: under the meta device
        # that init runs torch's Python reference ops, which import torch._dynamo (1-3 s of a
        # cold start).
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Decoder(nn.Module):
    """A causal LM whose ``state_dict`` keys are those of the Hugging Face checkpoint."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.model = DecoderBody(config)
        self.rotary = Rotary(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Set by an engine that packs the linear layers for oneDNN (CPU) where its kernels are
        # made per row count (``packed_linear.padding_pays``): pass them row counts from a
        # few buckets only (``padded_rows``) — except steps of more than
        # ``unpadded_above`` rows, where every linear layer runs on kernels made once for all
        # row counts (``PackedLinear.many_rows``: the AMX tile kernel).
        # Likewise steps of at most ``unpadded_below`` rows, which every linear layer takes on
        # a kernel that builds nothing per row count (int8's few-rows kernel).
        self.pad_rows = False
        self.unpadded_above: int | None = None
        self.unpadded_below: int | None = None

    def _rows_run(self, n: int) -> int:
        """The rows a padded step of n rows runs as (n where no padding is needed)."""
        if (self.unpadded_above is not None and n > self.unpadded_above
                or self.unpadded_below is not None and n <= self.unpadded_below):
            return n
        return padded_rows(n)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """[vocab, hidden]: the output projection (the embedding matrix when tied)."""
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attention: Attention,
                rows: torch.Tensor | None = None, rows_attention: Attention | None = None
                ) -> torch.Tensor:
        """input_ids, positions: [N] int64 over all packed tokens -> final hidden [N, hidden]
        (after the last norm). Logits are left to the score head, which streams the vocabulary.

        rows [R] (with ``rows_attention``, the attention of just those tokens' queries): the
        final hidden states of these tokens only. Every layer still stores every token's K/V,
        but the last one computes its attention output and MLP for these rows alone (the
        readout needs one or two rows per document: ~3 % of a 30-layer prefill's FLOPs)."""
        n = input_ids.shape[0]
        kept = n if rows is None else len(rows)
        if self.pad_rows:
            # Padding tokens run through the linear layers only: attention sees the real rows
            # and stores their K/V alone; the output keeps the real rows.
            pad = self._rows_run(n) - n
            if pad:
                input_ids, positions = F.pad(input_ids, (0, pad)), F.pad(positions, (0, pad))
                attention = RealRows(attention, n, n)
            if rows is not None and (pad or self._rows_run(kept) > kept):
                rows = torch.cat([rows, rows[-1:].expand(self._rows_run(kept) - kept)])
                rows_attention = RealRows(rows_attention, n, kept)
        x = self.model.embed_tokens(input_ids)
        rotation = Rotation(self.rotary, positions, x.dtype)
        *layers, last = self.model.layers
        for layer in layers:
            x = layer(x, rotation, attention)
        if rows is not None:
            x = last(x, rotation, rows_attention, rows=rows)
        else:
            x = last(x, rotation, attention)
        return self.model.norm(x[:kept])


def padded_rows(n: int) -> int:
    """The row count a step of n tokens is padded to on CPU: a multiple of 16 up to 256 rows,
    of 256 above. oneDNN builds a GEMM kernel for every new row count (7-27 ms for a prefill
    step's shapes, each of a layer's projections) and runs whole 256-row blocks fastest: on a
    2-core Xeon with AMX, bfloat16, SmolLM2's gate projection at 1887 rows 1.9 ms, at 2048
    1.35 ms, after a first call of 27 and 7 ms."""
    quantum = 16 if n <= 256 else 256
    return -(-n // quantum) * quantum


class RealRows:
    """An attention callable seen through padded steps: the first ``kv_rows`` tokens' K/V are
    stored, the first ``q_rows`` queries attend, the padding's outputs are zeros."""

    def __init__(self, attention: Attention, kv_rows: int, q_rows: int):
        self.attention, self.kv_rows, self.q_rows = attention, kv_rows, q_rows

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 real_queries: int | None = None):
        n = self.kv_rows
        return self.attention(layer, q, k[:n], v[:n], real_queries=self.q_rows)

    def kernel_args(self, layer: int, q: torch.Tensor) -> tuple | None:
        """The wrapped attention's ``kernel_args`` (the padding rows are written nowhere and
        get zeros); None where queries are a subset of the tokens."""
        kernel_args = getattr(self.attention, "kernel_args", None)
        if kernel_args is None or self.q_rows != self.kv_rows:
            return None
        return kernel_args(layer, q)
