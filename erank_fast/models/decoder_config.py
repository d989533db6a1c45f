"""Decoder hyper-parameters, read from the checkpoint's own Hugging Face config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

# The config.json keys whose defaults differ between transformers' config classes (Qwen3's
# head_dim is 128 when absent; Llama's is hidden_size / heads): read directly only when stated.
_STATED_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "rms_norm_eps", "tie_word_embeddings")


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
    hf_config: Any  # the transformers config (or config.json's values), kept for RoPE

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
    def from_checkpoint(cls, path: str | Path) -> "DecoderConfig":
        """From a checkpoint directory's ``config.json``. Read directly when it states every
        hyper-parameter the decoder uses and plain RoPE (what transformers' config class would
        give, without importing it: importing one pulls ``torch.distributed``, ~2 s of a cold
        start); otherwise through ``transformers.AutoConfig``."""
        raw = json.loads((Path(path) / "config.json").read_text())
        rope = _plain_rope(raw)
        if rope is not None and all(raw.get(key) is not None for key in _STATED_KEYS):
            return cls.from_hf(SimpleNamespace(**{**raw, "rope_parameters": rope}))
        from transformers import AutoConfig

        return cls.from_hf(AutoConfig.from_pretrained(path))

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


def _plain_rope(raw: dict) -> dict | None:
    """``{"rope_type": "default", "rope_theta": θ}`` from a config.json in either layout
    (transformers 5's ``rope_parameters``, or the older top-level ``rope_theta`` without
    ``rope_scaling``); None for any other RoPE, which transformers' config classes resolve."""
    rope = raw.get("rope_parameters")
    if rope is None and raw.get("rope_scaling") is None and raw.get("rope_theta") is not None:
        rope = {"rope_type": "default", "rope_theta": raw["rope_theta"]}
    if (isinstance(rope, dict) and rope.get("rope_type", "default") == "default"
            and rope.get("rope_theta") is not None and set(rope) <= {"rope_type", "rope_theta"}):
        return {"rope_type": "default", "rope_theta": rope["rope_theta"]}
    return None
