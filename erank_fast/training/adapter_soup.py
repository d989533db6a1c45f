"""Weight averaging of LoRA adapters ("model soup") without approximation.

The average of adapters' deltas, Σ wᵢ · sᵢ · Bᵢ Aᵢ, is itself one LoRA adapter: stack the
ranks, A = [w₁ s₁/s · A₁; w₂ s₂/s · A₂; …] and B = [B₁ B₂ …], with scale s = alpha / Σ rᵢ. The
result's rank is the sum of the inputs' ranks, and every merged weight is exactly the weighted
average of the adapters' merged weights (up to float rounding).
"""

from __future__ import annotations

import torch

from erank_fast.models.lora import PREFIX, lora_pairs, lora_scale, read_adapter


def average_adapters(sources: list, weights: list[float] | None = None
                     ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config and float32 tensors of one adapter whose delta is Σ wᵢ · deltaᵢ (default
    weights: equal, summing to 1). The adapters must adapt the same modules of the same base."""
    if len(sources) < 2:
        raise ValueError("averaging needs at least two adapters")
    weights = list(weights) if weights is not None else [1.0 / len(sources)] * len(sources)
    if len(weights) != len(sources):
        raise ValueError(f"{len(sources)} adapters but {len(weights)} weights")
    loaded = [read_adapter(s) for s in sources]
    pairs = [lora_pairs(t) for _, t in loaded]  # refuses malformed tensors
    if any(p.keys() != pairs[0].keys() for p in pairs[1:]):
        raise ValueError("the adapters adapt different modules; they cannot be averaged")
    modules = sorted(pairs[0])
    for module in modules:
        shapes = {(p[module][1].shape[0], p[module][0].shape[1]) for p in pairs}
        if len(shapes) > 1:
            raise ValueError(f"{module!r} has deltas of shapes {sorted(shapes)}: the adapters "
                             "were trained for different base models")
    rank = sum(c["r"] for c, _ in loaded)
    scale = 2.0                                    # any positive value; alpha follows it
    config = dict(loaded[0][0], r=rank, lora_alpha=scale * rank, use_rslora=False)
    tensors = {}
    for module in modules:
        a_parts, b_parts = [], []
        for w, (cfg, _), p in zip(weights, loaded, pairs):
            a, b = p[module]
            a_parts.append(a.float() * (w * lora_scale(cfg, a.shape[0]) / scale))
            b_parts.append(b.float())
        tensors[f"{PREFIX}{module}.lora_A.weight"] = torch.cat(a_parts, dim=0).contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = torch.cat(b_parts, dim=1).contiguous()
    return config, tensors
