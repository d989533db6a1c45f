"""Test helpers: full-sequence logits through erank_fast's decoder."""

from __future__ import annotations

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


def train_script(name: str):
    """An entry script of train/ as a module, to call its ``main`` (scripts are no package)."""
    import importlib.util
    import sys
    from pathlib import Path

    module_name = f"train_script_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = Path(__file__).resolve().parents[1] / "train" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
