"""Decoder hyper-parameters, read from the checkpoint's own Hugging Face config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class DecoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    rope_type: str
    hf_config: Any  # the transformers config, kept for RoPE initialisation

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {self.model_type!r} is not supported; erank_fast runs "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} decoders"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope_type {self.rope_type!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)}"
            )

    @classmethod
    def from_hf(cls, hf_config: Any) -> "DecoderConfig":
        """Build from a ``transformers`` config of a Qwen3, Qwen2 or Llama checkpoint."""
        model_type = getattr(hf_config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported; erank_fast runs "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} decoders"
            )
        if getattr(hf_config, "use_sliding_window", False):
            raise ValueError("sliding-window attention checkpoints are not supported")
        act = getattr(hf_config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported (expected 'silu')")
        num_heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
        rope = getattr(hf_config, "rope_parameters", None) or {}
        if model_type == "qwen2":
            qkv_bias = True  # Qwen2 always has q/k/v biases
        else:
            qkv_bias = bool(getattr(hf_config, "attention_bias", False))
        if getattr(hf_config, "mlp_bias", False):
            raise ValueError("checkpoints with MLP biases are not supported")
        return cls(
            model_type=model_type,
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            rms_norm_eps=hf_config.rms_norm_eps,
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            qk_norm=model_type == "qwen3",
            rope_type=rope.get("rope_type", "default"),
            hf_config=hf_config,
        )

    def rope_inv_freq(self) -> tuple[torch.Tensor, float]:
        """RoPE inverse frequencies [head_dim // 2] (float32) and the cos/sin scaling factor,
        computed by the same functions transformers uses for this checkpoint."""
        if self.rope_type == "default":
            theta = self.hf_config.rope_parameters["rope_theta"]
            exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim
            return 1.0 / (theta**exponent), 1.0
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        return ROPE_INIT_FUNCTIONS[self.rope_type](self.hf_config)
