"""Test helpers: tiny random-weight models and full-sequence logits through erank_fast's decoder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from erank_fast.ops.causal_attention import causal_attention


class PlainCausal:
    """Attention for one packed batch of independent sequences, no cache."""

    def __init__(self, cu_seqlens, scale):
        self.cu, self.scale = cu_seqlens, scale

    def __call__(self, layer, q, k, v):
        return causal_attention(q, k, v, self.cu, self.scale)


@torch.inference_mode()
def decoder_logits(decoder, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] float32 logits of one sequence through erank_fast's decoder."""
    device = decoder.lm_head_weight.device
    x = torch.tensor(ids, device=device)
    attention = PlainCausal([0, len(ids)], decoder.config.head_dim**-0.5)
    hidden = decoder(x, torch.arange(len(ids), device=device), attention)
    return (hidden @ decoder.lm_head_weight.T).float()


def make_tiny_model(family: str, vocab_size: int, seed: int = 0, **overrides):
    """A small random-weight causal LM of a family, float32, eval mode."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size,
                  initializer_range=0.1, max_position_embeddings=4096)
    common.update(overrides)
    torch.manual_seed(seed)
    cls = {"qwen3": (Qwen3Config, Qwen3ForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
           "llama": (LlamaConfig, LlamaForCausalLM)}[family]
    if family == "qwen3":
        common.setdefault("head_dim", 32)
    model = cls[1](cls[0](**common)).eval()
    for p in model.parameters():  # norms start at 1: perturb them so they are tested too
        if p.dim() == 1:
            p.data.add_(0.1 * torch.randn_like(p))
    return model


def boost_digits(model, tokenizer, factor: float = 6.0):
    """Make digit tokens likely at every position, so a random model writes readable scores."""
    from erank_fast.scoring import ScoreTokens

    digits = list(ScoreTokens.from_tokenizer(tokenizer).digits)
    with torch.no_grad():
        model.get_output_embeddings().weight[digits] *= factor
    return model


def load_script(name: str):
    """A script of train/ as a module (train/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).parents[1] / "train" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
