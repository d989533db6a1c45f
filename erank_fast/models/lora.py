"""Read, write and merge LoRA adapters (peft's saved format) into a model's weights, without peft.

Plain LoRA on linear layers is what ``train/sft.py`` trains and what erank_fast ships; other
peft variants (DoRA, biases, embeddings, modules_to_save) are refused with a clear error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def read_adapter(adapter_dir) -> tuple[dict, dict[str, torch.Tensor]]:
    """The adapter's config and its tensors; clear errors for a missing or unsupported adapter."""
    directory = Path(adapter_dir)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{directory} is not a LoRA adapter directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    unsupported = [
        what for what, bad in (
            (f"peft_type {config.get('peft_type')}", config.get("peft_type", "LORA") != "LORA"),
            ("DoRA", bool(config.get("use_dora"))),
            (f"bias={config.get('bias')!r}", config.get("bias", "none") != "none"),
            ("fan_in_fan_out", bool(config.get("fan_in_fan_out"))),
            ("modules_to_save", bool(config.get("modules_to_save"))),
            ("alpha_pattern", bool(config.get("alpha_pattern"))),
            ("trainable_token_indices", bool(config.get("trainable_token_indices"))),
        ) if bad
    ]
    if unsupported:
        raise ValueError(
            f"{directory}: erank_fast merges plain LoRA adapters only (this one has "
            f"{', '.join(unsupported)}); merge it with peft's merge_and_unload() and pass the "
            "merged checkpoint instead")
    return config, load_file(str(directory / WEIGHTS_FILE))


def write_adapter(config: dict, tensors: dict[str, torch.Tensor], target) -> Path:
    """A plain peft-layout adapter directory (float32), readable by ``read_adapter``."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / WEIGHTS_FILE))
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return target


def lora_pairs(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name → its (A, B) tensors; refuses anything but complete lora_A / lora_B pairs."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], {})[part] = tensor
                break
        else:
            raise ValueError(f"unexpected tensor {key!r} in the adapter (plain LoRA has only "
                             "lora_A / lora_B weights)")
    for module, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"adapter tensors for {module!r} are incomplete: {sorted(pair)}")
    return {module: (pair["lora_A"], pair["lora_B"]) for module, pair in pairs.items()}


def lora_scale(config: dict, rank: int) -> float:
    """The factor LoRA multiplies B @ A by: alpha / rank, or alpha / √rank with rsLoRA."""
    alpha = config.get("lora_alpha", rank)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def lora_deltas(config: dict, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module name → the float32 weight delta scale · B @ A it adds."""
    return {module: lora_scale(config, a.shape[0]) * (b.float() @ a.float())
            for module, (a, b) in lora_pairs(tensors).items()}


@torch.no_grad()
def merge_lora_into(weights: dict[str, torch.Tensor], adapter_dir) -> None:
    """Add each adapted layer's delta in place to ``weights[f"{layer}.weight"]`` (a state dict,
    or a model's live weights by the same names), in the weight's dtype."""
    config, tensors = read_adapter(adapter_dir)
    for name, delta in lora_deltas(config, tensors).items():
        weight = weights.get(f"{name}.weight")
        if weight is None or weight.shape != delta.shape:
            found = "missing" if weight is None else f"weight {tuple(weight.shape)}"
            raise ValueError(f"{adapter_dir}: the adapter does not fit this model (trained for "
                             f"another base?): {name!r} needs a weight {tuple(delta.shape)} "
                             f"({found})")
        weight.add_(delta.to(device=weight.device, dtype=weight.dtype))


def merge_lora(model: torch.nn.Module, adapter_dir) -> torch.nn.Module:
    """Add each adapted layer's delta to its weight in place (in float32 when the weight is)."""
    merge_lora_into({f"{name}.weight": module.weight for name, module in model.named_modules()
                     if isinstance(getattr(module, "weight", None), torch.Tensor)}, adapter_dir)
    return model
