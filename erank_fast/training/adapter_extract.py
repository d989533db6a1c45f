"""A full fine-tune's change to its base model, as a LoRA adapter.

Each linear weight's difference ΔW = W_tuned − W_base is replaced by its best rank-r
approximation (the leading r singular directions: the closest rank-r matrix in Frobenius norm),
split as B = U_r √S_r, A = √S_r V_rᵀ with scale 1. The adapter then merges, loads and ships like
any trained one (``erank_fast.models.lora``). What an adapter on linear layers cannot carry
(embeddings, norms) is measured and reported, never dropped silently; the truncation's error is
reported per module, and the extracted model's scores are what decide whether it is close enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from erank_fast.models.loading import read_state_dict, resolve_model_path
from erank_fast.models.lora import PREFIX, write_adapter
from erank_fast.training.arguments import ScriptParser

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Extraction:
    config: dict
    tensors: dict[str, torch.Tensor]
    relative_error: dict[str, float] = field(default_factory=dict)  # ‖ΔW − BA‖ / ‖ΔW‖
    uncarried: dict[str, float] = field(default_factory=dict)       # ‖Δ‖ / ‖W‖, not in the adapter


def _module_name(weight_name: str, modules) -> str | None:
    """The module an adapter would target for this weight, or None when it is not a linear
    layer the adapter covers."""
    if not weight_name.endswith(".weight"):
        return None
    name = weight_name[: -len(".weight")]
    return name if name.rsplit(".", 1)[-1] in modules else None


@torch.no_grad()
def extract_adapter(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], rank: int,
                    modules=LINEAR_MODULES, base_name: str = "") -> Extraction:
    """The rank-``rank`` LoRA adapter closest to ``tuned − base`` on the linear ``modules``
    (state dicts by the same names). Raises ValueError when the two are not one architecture."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    if base.keys() != tuned.keys():
        only_base = sorted(base.keys() - tuned.keys())[:5]
        only_tuned = sorted(tuned.keys() - base.keys())[:5]
        raise ValueError(f"the checkpoints have different weights (only in the base: "
                         f"{only_base}; only in the fine-tune: {only_tuned}): not one architecture")
    tensors, errors, uncarried, targets = {}, {}, {}, set()
    for name in sorted(base):
        w0, w1 = base[name], tuned[name]
        if w0.shape != w1.shape:
            raise ValueError(f"{name!r} has shape {tuple(w0.shape)} in the base and "
                             f"{tuple(w1.shape)} in the fine-tune: not the same base model")
        delta = w1.double() - w0.double()
        norm = float(delta.norm())
        module = _module_name(name, modules)
        if norm == 0.0:
            continue
        if module is None or delta.dim() != 2:
            uncarried[name] = norm / max(float(w0.double().norm()), 1e-30)
            continue
        if rank > min(delta.shape):
            raise ValueError(f"rank {rank} exceeds {module!r}'s smaller dimension "
                             f"{min(delta.shape)}")
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        root = s[:rank].sqrt()
        b, a = u[:, :rank] * root, root[:, None] * vh[:rank]
        errors[module] = float(s[rank:].norm()) / norm
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.float().contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = b.float().contiguous()
        targets.add(module.rsplit(".", 1)[-1])
    if not tensors:
        raise ValueError("no linear weight differs between the checkpoints: nothing to extract")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
              "r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "bias": "none",
              "use_rslora": False, "use_dora": False, "target_modules": sorted(targets)}
    return Extraction(config, tensors, errors, uncarried)


def state_dict(name: str) -> dict[str, torch.Tensor]:
    """A local checkpoint's or an offline model's weights, as stored."""
    path = resolve_model_path(name)
    if path is None:
        raise FileNotFoundError(f"{name!r} is neither a local checkpoint nor an offline model")
    return read_state_dict(path)


def main(argv=None) -> None:
    parser = ScriptParser(description="Extract a full fine-tune's change to its base model as a "
                                      "LoRA adapter (truncated SVD).")
    parser.add_argument("checkpoint", help="the full fine-tune's checkpoint directory")
    parser.add_argument("--base", required=True, help="the model it was fine-tuned from")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--out", required=True, help="adapter directory to write")
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        parser.error(f"{args.out} exists; choose another --out or remove it")
    try:
        result = extract_adapter(state_dict(args.base), state_dict(args.checkpoint), args.rank,
                                 base_name=args.base)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    write_adapter(result.config, result.tensors, args.out)
    errors = sorted(result.relative_error.values())
    print(f"{len(errors)} linear weights at rank {args.rank} -> {args.out}; relative error "
          f"‖ΔW − BA‖/‖ΔW‖ median {errors[len(errors) // 2]:.3f}, max {errors[-1]:.3f}")
    for name, change in sorted(result.uncarried.items(), key=lambda kv: -kv[1]):
        print(f"  not carried by the adapter: {name} (‖Δ‖/‖W‖ = {change:.2e})")
